"""ImageNet, or any ImageFolder: a deterministic evaluation set and a seeded calibration set.

Layout::

    root/LOC_synset_mapping.txt      optional: lines "<wnid> <names>", in class-index order (ImageNet's)
    root/val/<class>/*.JPEG          evaluation images
    root/train/<class>/*.JPEG        calibration images (disjoint from val)

With the mapping file, class indices come from its line order, never from the folders present: a
subset's ``val/`` may hold only some classes, and ImageFolder-style indexing would then shift every
label. Without it, they come from ``train/``'s folder names, sorted (torchvision's ImageFolder order,
which a model trained on ``ImageFolder(train)`` learnt); ``val/`` may hold only some of them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from hqbench.data.base import BenchmarkDataModule, check_sizes, positive_int, seeded_draw
from hqbench.data.images import read_image
from hqbench.data.transforms import build_transform, channel_mode
from hqbench.models.card import ModelCard

MAPPING_FILE = "LOC_synset_mapping.txt"
# torchvision's ImageFolder extensions, so a folder it reads is read here alike.
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


class ImageListDataset(Dataset):
    """``(image, label)`` pairs from an explicit file list rather than a folder walk."""

    def __init__(self, samples: list[tuple[Path, int]], transform, mode: str = "RGB"):
        self.samples = samples
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        # Converted while the file is known, so a damaged or unconvertible file is named.
        return self.transform(read_image(path, self.mode)), label


def read_synset_mapping(path: Path) -> list[str]:
    """Wnids in class-index order from a ``LOC_synset_mapping.txt`` (first token of each line).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it lists no wnid or a wnid twice.
    """
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet class mapping {path} does not exist")
    wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise ValueError(f"ImageNet class mapping {path} is empty")
    dupes = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if dupes:
        raise ValueError(f"ImageNet class mapping {path} lists wnids more than once: {dupes[:5]}")
    return wnids


class ImageNetDataModule(BenchmarkDataModule):
    """Evaluation batches from ``val/`` and calibration batches from ``train/``.

    Args:
        root: folder holding ``val/``, ``train/`` and (ImageNet) ``LOC_synset_mapping.txt``.
        card: the model's ModelCard (preprocessing); may be given later with :meth:`set_card`,
            because the model is usually created after the datamodule.
        batch_size: images per batch for every loader.
        num_workers: DataLoader worker processes.
        eval_limit: use only the first ``eval_limit`` val images (sorted by path); ``None`` = all.
        calib_size: calibration images drawn from ``train/``.
        seed: seed of the ``torch.Generator`` that draws the calibration images.
        num_classes: outputs the model must have (``data.num_classes``); ``None``: as many as the
            mapping file or ``train/``'s folders name. Never fewer than they name.

    The chosen files are exposed as :attr:`eval_files` and :attr:`calibration_files` (in the order
    they are fed) so a result can record exactly what it saw.
    """

    def __init__(
        self,
        root: str | Path,
        card: ModelCard | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        eval_limit: int | None = None,
        calib_size: int = 256,
        seed: int = 0,
        num_classes: int | None = None,
    ):
        super().__init__()
        check_sizes(eval_limit, calib_size, batch_size, num_workers)
        self._num_classes = None if num_classes is None else positive_int("num_classes", num_classes)
        self.root = Path(root).expanduser()
        self.card = card
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.eval_limit = eval_limit
        self.calib_size = calib_size
        self.seed = seed
        self._classes: list[str] | None = None
        self._eval: list[tuple[Path, int]] | None = None
        self._calib: list[tuple[Path, int]] | None = None

    @property
    def classes(self) -> list[str]:
        """Class names in index order: ``LOC_synset_mapping.txt``'s wnids, else ``train/``'s folders, sorted."""
        if self._classes is None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"ImageNet root {self.root} does not exist")
            mapping = self.root / MAPPING_FILE
            self._classes = read_synset_mapping(mapping) if mapping.is_file() else self._folder_classes()
            if self._num_classes is not None and self._num_classes < len(self._classes):
                raise ValueError(f"data.num_classes={self._num_classes} but {self.class_source} names "
                                 f"{len(self._classes)} classes")
        return self._classes

    @property
    def num_classes(self) -> int:
        """Outputs the model must have: ``data.num_classes``, else the number of :attr:`classes`."""
        return self._num_classes if self._num_classes is not None else len(self.classes)

    @property
    def class_source(self) -> str:
        """Where :attr:`classes` come from, for messages."""
        mapping = self.root / MAPPING_FILE
        return str(mapping) if mapping.is_file() else f"the class folders of {self.root / 'train'}"

    def _folder_classes(self) -> list[str]:
        train = self.root / "train"
        if not train.is_dir():
            raise FileNotFoundError(f"ImageNet split folder {train} does not exist (and there is no {MAPPING_FILE}: "
                                    "class names come from train/'s folders)")
        names = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise ValueError(f"{train} holds no class folders; expected root/{{train,val}}/<class>/*.jpg")
        return names

    @property
    def eval_files(self) -> list[Path]:
        """Evaluation images: ``val/`` sorted by path, cut to ``eval_limit``."""
        return [p for p, _ in self._eval_samples()]

    @property
    def calibration_files(self) -> list[Path]:
        """Calibration images drawn from ``train/`` with the seeded generator, in feeding order."""
        return [p for p, _ in self._calib_samples()]

    def setup(self, stage: str | None = None) -> None:
        """Scan both splits (cached), so a layout error stops the run before evaluation starts."""
        self._eval_samples()
        self._calib_samples()

    def _eval_samples(self) -> list[tuple[Path, int]]:
        if self._eval is None:
            samples = self._scan("val")
            self._eval = samples[: self.eval_limit] if self.eval_limit is not None else samples
        return self._eval

    def _calib_samples(self) -> list[tuple[Path, int]]:
        if self._calib is None:
            pool = self._scan("train")
            if self.calib_size > len(pool):
                raise ValueError(
                    f"calib_size={self.calib_size} but {self.root / 'train'} holds only "
                    f"{len(pool)} images"
                )
            # The pool is sorted, so the draw does not depend on directory order.
            order = seeded_draw(len(pool), self.calib_size, self.seed)
            self._calib = [pool[i] for i in order]
        return self._calib

    def _scan(self, split: str) -> list[tuple[Path, int]]:
        index = {wnid: i for i, wnid in enumerate(self.classes)}
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"ImageNet split folder {split_dir} does not exist")
        samples = []
        folders = sorted(d for d in split_dir.iterdir()
                         if d.is_dir() and not d.name.startswith("."))
        for folder in folders:
            if folder.name not in index:
                where = (f"a wnid listed in {self.root / MAPPING_FILE}" if (self.root / MAPPING_FILE).is_file()
                         else f"a class folder of {self.root / 'train'} (where class names come from)")
                raise ValueError(f"class folder {folder} is not {where}")
            label = index[folder.name]
            samples += [(p, label) for p in sorted(folder.iterdir())
                        if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()]
        if not samples:
            raise ValueError(
                f"no images (*.JPEG, *.jpg, *.png, ...) under {split_dir}/<class>/; expected the "
                "ImageFolder layout root/{train,val}/<class>/*.JPEG"
            )
        return samples

    def train_dataloader(self) -> DataLoader:
        """Every image of ``train/`` (the calibration images among them), shuffled by Lightning's seed,
        with the evaluation preprocessing and a random horizontal flip: what ``hqbench train`` fine-tunes on."""
        return self._loader(self._scan("train"), train=True)

    def _loader(self, samples: list[tuple[Path, int]], train: bool = False) -> DataLoader:
        if self.card is None:
            raise RuntimeError(
                "ImageNetDataModule has no ModelCard; call set_card(card) with the card returned "
                "by hqbench.models.create_model before asking for a dataloader"
            )
        if self.card.num_classes != self.num_classes:
            data = (f"data.num_classes is {self._num_classes}" if self._num_classes is not None
                    else f"{self.class_source} lists {self.num_classes}")
            raise ValueError(f"model {self.card.name!r} has {self.card.num_classes} classes but {data}")
        transform = build_transform(self.card)
        if train:  # the flip acts on the decoded image, before resizing and normalising
            transform = T.Compose([T.RandomHorizontalFlip(), *transform.transforms])
        dataset = ImageListDataset(samples, transform, channel_mode(self.card))
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train,
                          num_workers=self.num_workers)
