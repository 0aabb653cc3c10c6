"""SAR ship detection in HRSID's release layout: COCO boxes, letterboxed square tensors.

Layout (HRSID's, and the shared SSDD copy's)::

    root/JPEGImages/*.jpg
    root/annotations/train2017.json     COCO: images, annotations (bbox), categories
    root/annotations/test2017.json

Images are letterboxed (aspect ratio kept, grey 114 padding, centred) to ``imgsz`` x ``imgsz`` and
scaled to [0, 1]. Targets are torchmetrics detection dicts: ``boxes`` (xyxy, letterboxed pixels),
``labels`` (categories renumbered 0.. in id order), ``iscrowd``. Nothing is written under ``root``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hqbench.data.base import BenchmarkDataModule, check_sizes, seeded_draw
from hqbench.data.coco import check_coco
from hqbench.data.images import image_size, read_image
from hqbench.models.card import ModelCard

SPLITS = {"train": "train2017", "test": "test2017"}
PAD_VALUE = 114  # ultralytics' letterbox grey


@dataclass(frozen=True)
class Sample:
    """One image with its COCO boxes (xywh, original pixels) and renumbered labels."""

    path: Path
    image_id: int
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]
    iscrowd: tuple[int, ...]


def letterbox(image: Image.Image, size: int) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to ``size`` x ``size``, centred.

    Returns:
        ``(tensor (3, size, size) in [0, 1], scale, (pad_x, pad_y))``: a point ``p`` of the image
        lands at ``p * scale + pad``.
    """
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), (PAD_VALUE,) * 3)
    pad = ((size - nw) // 2, (size - nh) // 2)
    canvas.paste(image.convert("RGB").resize((nw, nh), Image.BILINEAR), pad)
    tensor = torch.from_numpy(np.array(canvas, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
    return tensor, scale, pad


class SARShipDataset(Dataset):
    """Letterboxed images and torchmetrics-style target dicts for a list of :class:`Sample`."""

    def __init__(self, samples: list[Sample], imgsz: int):
        self.samples, self.imgsz = samples, imgsz

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.samples[i]
        image, scale, (px, py) = letterbox(read_image(s.path), self.imgsz)  # read_image names a bad file
        xywh = torch.tensor(s.boxes, dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1) * scale + torch.tensor([px, py, px, py])
        return image, {"boxes": boxes, "labels": torch.tensor(s.labels, dtype=torch.long),
                       "iscrowd": torch.tensor(s.iscrowd, dtype=torch.long), "image_id": torch.tensor(s.image_id)}


def collate(batch: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack images; keep targets as a list (images hold different numbers of boxes)."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def read_coco_split(root: Path, split: str) -> tuple[list[Sample], list[str]]:
    """Samples (sorted by file name) and class names of ``root/annotations/<split>.json``.

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing.
        ValueError: any bad entry (see :func:`hqbench.data.coco.check_coco`), named with the file,
            its index, id and value; a missing image raises ``MissingImageError``, both kinds.
    """
    ann_path = root / "annotations" / f"{split}.json"
    if not ann_path.is_file():
        raise FileNotFoundError(f"SAR annotation file {ann_path} does not exist; expected the HRSID layout "
                                "root/JPEGImages/*.jpg + root/annotations/{train2017,test2017}.json")
    try:
        coco = json.loads(ann_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"SAR annotation file {ann_path} is not valid JSON: {err}") from err
    image_dir = root / "JPEGImages"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"SAR image folder {image_dir} does not exist; expected root/JPEGImages/*.jpg")
    check_coco(coco, ann_path, image_dir)  # every entry, before any is used
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    images = {im["id"]: im for im in coco["images"]}
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for a in coco["annotations"]:
        per_image[a["image_id"]].append(a)
    samples = []
    for image_id, im in images.items():
        path = image_dir / im["file_name"]
        anns = per_image[image_id]
        samples.append(Sample(path, image_id, tuple(tuple(map(float, a["bbox"])) for a in anns),
                              tuple(label_of[a["category_id"]] for a in anns),
                              tuple(int(a.get("iscrowd", 0)) for a in anns)))
    return sorted(samples, key=lambda s: s.path.name), [c["name"] for c in categories]


def write_yolo_dataset(root: str | Path, out_dir: str | Path) -> Path:
    """Mirror ``root`` in the layout ultralytics trains from; returns its ``data.yaml``.

    ultralytics finds labels by replacing ``/images/`` with ``/labels/`` in an image path, which
    HRSID's ``JPEGImages/`` never matches, and ``root`` is read-only: so ``out_dir`` gets
    ``images/{train,test}/`` (symlinks to ``root``'s files), ``labels/{train,test}/*.txt`` (class
    cx cy w h, normalised) and ``data.yaml``. Crowd boxes are left out.
    """
    root, out_dir = Path(root).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if out_dir == root or root in out_dir.parents:
        raise ValueError(f"out_dir {out_dir} lies inside the data root {root}; hqbench never writes there")
    names: list[str] = []
    for split, coco_split in SPLITS.items():
        samples, names = read_coco_split(root, coco_split)
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
        for s in samples:
            link = out_dir / "images" / split / s.path.name
            if not link.exists():
                link.symlink_to(s.path)
            w, h = image_size(s.path)
            rows = [f"{c} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                    for (x, y, bw, bh), c, crowd in zip(s.boxes, s.labels, s.iscrowd) if not crowd]
            (out_dir / "labels" / split / f"{s.path.stem}.txt").write_text("\n".join(rows) + "\n" if rows else "")
    yaml = out_dir / "data.yaml"
    yaml.write_text(f"path: {out_dir}\ntrain: images/train\nval: images/test\nnames:\n"
                    + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return yaml


class SARShipDataModule(BenchmarkDataModule):
    """Test batches from ``test2017`` and seeded calibration batches from ``train2017``.

    Batches are ``(images (N, 3, imgsz, imgsz), [target dict, ...])``; see :func:`collate`.

    Args:
        root: folder holding ``JPEGImages/`` and ``annotations/``.
        card: a ModelCard whose ``input_size`` sets ``imgsz`` (or call :meth:`set_card` later).
        imgsz: letterboxed square side when no card is given.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        eval_limit: use only the first ``eval_limit`` test images (by file name); ``None`` = all.
        calib_size: calibration images drawn from ``train2017``.
        seed: seed of the ``torch.Generator`` that draws the calibration images.
    """

    def __init__(self, root: str | Path, card: ModelCard | None = None, imgsz: int = 512, batch_size: int = 16,
                 num_workers: int = 0, eval_limit: int | None = None, calib_size: int = 64, seed: int = 0):
        super().__init__()
        check_sizes(eval_limit, calib_size, batch_size, num_workers)
        self.root = Path(root).expanduser()
        self.imgsz = card.input_size if card is not None else imgsz
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_limit, self.calib_size, self.seed = eval_limit, calib_size, seed
        self.classes: list[str] = []
        self._splits: dict[str, list[Sample]] = {}
        self._calib: list[Sample] | None = None

    def set_card(self, card: ModelCard) -> None:
        """Letterbox to ``card.input_size`` from now on."""
        self.imgsz = card.input_size

    def _split(self, name: str) -> list[Sample]:
        if name not in self._splits:
            if not self.root.is_dir():
                raise FileNotFoundError(f"SAR data root {self.root} does not exist")
            self._splits[name], classes = read_coco_split(self.root, SPLITS[name])
            if self.classes and classes != self.classes:
                raise ValueError(f"{self.root}: categories differ between splits: {self.classes} vs {classes}")
            self.classes = classes
        return self._splits[name]

    @property
    def eval_files(self) -> list[Path]:
        """Test images in feeding order, cut to ``eval_limit``."""
        return [s.path for s in self._eval_samples()]

    @property
    def train_files(self) -> list[Path]:
        """Every image ``train2017`` lists (the pool calibration draws from, and what training sees)."""
        return [s.path for s in self._split("train")]

    @property
    def calibration_files(self) -> list[Path]:
        """Calibration images drawn from ``train2017`` with the seeded generator, in feeding order."""
        return [s.path for s in self._calib_samples()]

    def setup(self, stage: str | None = None) -> None:
        """Read both splits (cached), so a layout error stops the run before evaluation starts."""
        self._eval_samples()
        self._calib_samples()

    def _eval_samples(self) -> list[Sample]:
        samples = self._split("test")[: self.eval_limit]
        if not any(not crowd for s in samples for crowd in s.iscrowd):
            # torchmetrics would report mAP -1 (printed as -100.00): an empty benchmark, not a score.
            cut = f"the first {len(samples)} (data.eval_limit={self.eval_limit}) of " if self.eval_limit else ""
            raise ValueError(f"{cut}the {len(samples)} test images of {self.root / 'annotations'}/{SPLITS['test']}"
                             ".json hold no (non-crowd) boxes, so mAP50 is undefined; the test split needs annotations")
        return samples

    def _calib_samples(self) -> list[Sample]:
        if self._calib is None:
            pool = self._split("train")
            if self.calib_size > len(pool):
                raise ValueError(f"calib_size={self.calib_size} but {self.root / 'annotations'}/"
                                 f"{SPLITS['train']}.json lists only {len(pool)} images")
            self._calib = [pool[i] for i in seeded_draw(len(pool), self.calib_size, self.seed)]
        return self._calib

    def _loader(self, samples: list[Sample]) -> DataLoader:
        return DataLoader(SARShipDataset(samples, self.imgsz), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate)
