"""SAR ship detection in HRSID's release layout: COCO boxes, letterboxed square tensors.

Layout (HRSID's, and the shared SSDD copy's)::

    root/JPEGImages/*.jpg
    root/annotations/train2017.json     COCO: images, annotations (bbox), categories
    root/annotations/test2017.json

or any COCO file pair (``train=``, ``test=``, ``images=``), or ultralytics' ``data.yaml`` layout
(:mod:`hqbench.data.yolo_layout`), which give the same samples.

Images are letterboxed (aspect ratio kept, grey 114 padding, centred) to ``imgsz`` x ``imgsz`` and
scaled to [0, 1]. Targets are torchmetrics detection dicts: ``boxes`` (xyxy, letterboxed pixels),
``labels`` (categories renumbered 0.. in id order), ``iscrowd``. Nothing is written under ``root``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hqbench.data.base import BenchmarkDataModule, check_sizes, seeded_draw
from hqbench.data.coco import Sample, image_dir_of, read_coco_file
from hqbench.data.images import convert_image, image_size, read_image
from hqbench.data.yolo_layout import read_yolo_split
from hqbench.models.card import ModelCard

SPLITS = {"train": "train2017", "test": "test2017"}
PAD_VALUE = 114  # ultralytics' letterbox grey


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
    canvas.paste(convert_image(image, "RGB").resize((nw, nh), Image.BILINEAR), pad)
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
        image, scale, (px, py) = letterbox(read_image(s.path, "RGB"), self.imgsz)  # read_image names a bad file
        xywh = torch.tensor(s.boxes, dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1) * scale + torch.tensor([px, py, px, py])
        return image, {"boxes": boxes, "labels": torch.tensor(s.labels, dtype=torch.long),
                       "iscrowd": torch.tensor(s.iscrowd, dtype=torch.long), "image_id": torch.tensor(s.image_id)}


def collate(batch: list) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack images; keep targets as a list (images hold different numbers of boxes)."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def read_coco_split(root: Path, split: str) -> tuple[list[Sample], list[str]]:
    """Samples (sorted by file name) and class names of ``root/annotations/<split>.json`` (HRSID's layout).

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing.
        ValueError: see :func:`hqbench.data.coco.read_coco_file`.
    """
    ann_path = root / "annotations" / f"{split}.json"
    if not ann_path.is_file():
        raise FileNotFoundError(f"SAR annotation file {ann_path} does not exist; expected the HRSID layout "
                                "root/JPEGImages/*.jpg + root/annotations/{train2017,test2017}.json "
                                "(or data.train=PATH.json data.test=PATH.json, or data.root=PATH/data.yaml)")
    image_dir = root / "JPEGImages"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"SAR image folder {image_dir} does not exist; expected root/JPEGImages/*.jpg")
    return read_coco_file(ann_path, image_dir)


def write_yolo_dataset(root: str | Path, out_dir: str | Path) -> Path:
    """Mirror ``root`` in the layout ultralytics trains from; returns its ``data.yaml``.

    ultralytics finds labels by replacing ``/images/`` with ``/labels/`` in an image path, which
    HRSID's ``JPEGImages/`` never matches, and ``root`` is read-only: so ``out_dir`` gets
    ``images/{train,test}/`` (symlinks to ``root``'s files), ``labels/{train,test}/*.txt`` (class
    cx cy w h, normalised) and ``data.yaml``. Crowd boxes are left out.
    """
    root, out_dir = Path(root).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if root.is_file():  # a data.yaml: the other layouts are read for `hqbench test`, not converted for training
        raise ValueError(f"data.root={root}: hqbench train converts HRSID's layout (a folder) only; "
                         "train on a data.yaml with ultralytics itself")
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

    Batches are ``(images (N, 3, imgsz, imgsz), [target dict, ...])``; see :func:`collate`. The data
    is one of three layouts: HRSID's (``root`` a folder), any COCO file pair (``train`` and ``test``),
    or ultralytics' (``root`` a ``data.yaml``, see :mod:`hqbench.data.yolo_layout`).

    Args:
        root: folder holding ``JPEGImages/`` and ``annotations/``; or an ultralytics ``data.yaml``;
            ignored when ``train`` and ``test`` are given.
        card: a ModelCard whose ``input_size`` sets ``imgsz`` (or call :meth:`set_card` later).
        imgsz: letterboxed square side when no card is given.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        eval_limit: use only the first ``eval_limit`` test images (by file name); ``None`` = all.
        calib_size: calibration images drawn from ``train2017``.
        seed: seed of the ``torch.Generator`` that draws the calibration images.
        train, test: a COCO annotation file each (calibration and evaluation), instead of ``root``'s.
        images: the folder their ``file_name`` entries are relative to; ``None``: see
            :func:`hqbench.data.coco.image_dir_of` (HRSID's ``JPEGImages/``, else the json's folder).
    """

    def __init__(self, root: str | Path | None, card: ModelCard | None = None, imgsz: int = 512,
                 batch_size: int = 16, num_workers: int = 0, eval_limit: int | None = None, calib_size: int = 64,
                 seed: int = 0, train: str | Path | None = None, test: str | Path | None = None,
                 images: str | Path | None = None):
        super().__init__()
        check_sizes(eval_limit, calib_size, batch_size, num_workers)
        if (train is None) != (test is None):
            raise ValueError(f"data.train and data.test name a COCO file pair; give both (got data.train={train}, "
                             f"data.test={test})")
        if images is not None and train is None:
            raise ValueError(f"data.images={images} applies to data.train/data.test COCO files only")
        if train is not None and root is not None and Path(root).expanduser() != Path(train).expanduser():
            # the data YAML's root defaults to data.train; another root alongside the pair would be ignored
            raise ValueError(f"data.root={root} and data.train/data.test are alternatives; give one of them")
        if root is None and train is None:
            raise FileNotFoundError("no SAR data: pass data.root=PATH (HRSID folder or data.yaml) "
                                    "or data.train=PATH.json data.test=PATH.json")
        self.files = {"train": Path(train).expanduser(), "test": Path(test).expanduser()} if train else None
        self.images = images
        self.root = self.files["test"].parent if self.files else Path(root).expanduser()
        self.data_yaml = self.root if self.files is None and self.root.suffix in (".yaml", ".yml") else None
        if self.files or self.data_yaml:  # what a result row names as its data
            self.source = str(self.files["test"] if self.files else self.data_yaml)
        self.imgsz = card.input_size if card is not None else imgsz
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_limit, self.calib_size, self.seed = eval_limit, calib_size, seed
        self.classes: list[str] = []
        self._splits: dict[str, list[Sample]] = {}
        self._where: dict[str, str] = {}
        self._calib: list[Sample] | None = None

    def set_card(self, card: ModelCard) -> None:
        """Letterbox to ``card.input_size`` from now on."""
        self.imgsz = card.input_size

    def _split(self, name: str) -> list[Sample]:
        if name not in self._splits:
            self._splits[name], classes = self._read(name)
            if self.classes and classes != self.classes:
                raise ValueError(f"{self.root}: categories differ between splits: {self.classes} vs {classes}")
            self.classes = classes
        return self._splits[name]

    def _read(self, name: str) -> tuple[list[Sample], list[str]]:
        """``name``'s samples and class names from whichever layout was given; records where they came from."""
        if self.files:
            path = self.files[name]
            self._where[name] = str(path)
            return read_coco_file(path, image_dir_of(path, self.images))
        if self.data_yaml:
            samples, classes, key = read_yolo_split(self.data_yaml, name)
            self._where[name] = f"{self.data_yaml} ({key}:)"
            return samples, classes
        if not self.root.is_dir():
            raise FileNotFoundError(f"SAR data root {self.root} does not exist")
        self._where[name] = f"{self.root / 'annotations' / SPLITS[name]}.json"
        return read_coco_split(self.root, SPLITS[name])

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
            raise ValueError(f"{cut}the {len(samples)} test images of {self._where['test']} hold no (non-crowd) boxes, "
                             "so mAP50 is undefined; the test split needs annotations")
        return samples

    def _calib_samples(self) -> list[Sample]:
        if self._calib is None:
            pool = self._split("train")
            if self.calib_size > len(pool):
                raise ValueError(f"calib_size={self.calib_size} but {self._where['train']} lists only "
                                 f"{len(pool)} images")
            self._calib = [pool[i] for i in seeded_draw(len(pool), self.calib_size, self.seed)]
        return self._calib

    def _loader(self, samples: list[Sample]) -> DataLoader:
        return DataLoader(SARShipDataset(samples, self.imgsz), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate)
