"""Fashion-MNIST: the embedded classification benchmark, and the full set for training.

With ``root=None`` the datamodule uses the subset shipped inside the package
(``embedded/fashion_mnist_subset.npz``: the first 2000 images of the official test set for
evaluation and a seeded 1000-image pool of the training set for calibration), so a fresh machine
with no data and no network runs the benchmark for real. With ``root`` it reads the original idx
files (``train-images-idx3-ubyte[.gz]`` ...), e.g. Debian's ``/usr/share/datasets/fashion-mnist``.
Fashion-MNIST is (c) Zalando SE, MIT licence: see ``embedded/FASHION_MNIST_LICENSE``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hqbench.data.base import BenchmarkDataModule, check_sizes, positive_int, seeded_draw
from hqbench.data.transforms import build_transform
from hqbench.models.card import ModelCard

EMBEDDED = Path(__file__).with_name("embedded") / "fashion_mnist_subset.npz"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` of ``split`` ("train" or "test")."""
    arrays = []
    for stem in _FILES[split]:
        candidates = [root / stem, root / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"Fashion-MNIST file {candidates[1]} (or {candidates[0].name}) not found in {root}")
        arrays.append(read_idx(path))
    return arrays[0], arrays[1].astype(np.int64)


class ArrayImageDataset(Dataset):
    """uint8 greyscale arrays through a ModelCard transform (PIL, as for ImageNet)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


class FashionMNISTDataModule(BenchmarkDataModule):
    """Evaluation on the test split, calibration drawn from the training split with a seed.

    Args:
        root: folder with the idx files; ``None`` uses the embedded subset.
        card: the model's ModelCard (may be set later with :meth:`set_card`).
        eval_limit: evaluate the first N test images.
        calib_size: calibration images drawn (seeded) from the training images available.
        train_limit: train on a seeded subset of N training images (``hqbench train``).
    """

    def __init__(self, root: str | Path | None = None, card: ModelCard | None = None, batch_size: int = 100,
                 num_workers: int = 0, eval_limit: int | None = None, calib_size: int = 256, seed: int = 0,
                 train_limit: int | None = None):
        super().__init__()
        check_sizes(eval_limit, calib_size, batch_size, num_workers)
        positive_int("train_limit", train_limit, optional=True)
        self.root = None if root is None else Path(root).expanduser()
        self.card, self.batch_size, self.num_workers = card, batch_size, num_workers
        self.eval_limit, self.calib_size, self.seed, self.train_limit = eval_limit, calib_size, seed, train_limit
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def source(self) -> str:
        return "embedded demo data (Fashion-MNIST subset)" if self.root is None else str(self.root)

    @property
    def num_classes(self) -> int:
        """Fashion-MNIST's 10 classes: the task checks the model's outputs against it."""
        return len(CLASSES)

    @property
    def class_source(self) -> str:
        return "Fashion-MNIST"

    def setup(self, stage: str | None = None) -> None:
        if self._arrays is not None:
            return
        if self.root is None:
            if not EMBEDDED.is_file():
                raise FileNotFoundError(f"embedded Fashion-MNIST subset {EMBEDDED} is missing from the package")
            with np.load(EMBEDDED) as z:
                self._arrays = {"train": (z["train_images"], z["train_labels"]), "test": (z["test_images"], z["test_labels"])}
        else:
            if not self.root.is_dir():
                raise FileNotFoundError(f"Fashion-MNIST root {self.root} does not exist")
            self._arrays = {split: load_split(self.root, split) for split in _FILES}
        pool = len(self._arrays["train"][1])
        if self.calib_size > pool:
            raise ValueError(f"calib_size={self.calib_size} but {self.source} holds only {pool} training images")

    def _subset(self, split: str, indices) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._arrays[split]
        return images[indices], labels[indices]

    def _eval_indices(self) -> np.ndarray:
        n = len(self._arrays["test"][1])
        return np.arange(min(n, self.eval_limit) if self.eval_limit else n)

    def _seeded(self, count: int, salt: int) -> np.ndarray:
        return np.array(seeded_draw(len(self._arrays["train"][1]), count, self.seed * 1000 + salt), dtype=np.int64)

    @property
    def eval_files(self) -> list[str]:
        self.setup()
        return [f"test[{i}]" for i in self._eval_indices()]

    @property
    def calibration_files(self) -> list[str]:
        self.setup()
        return [f"train[{i}]" for i in self._seeded(self.calib_size, salt=1)]

    def _loader(self, arrays, shuffle: bool = False) -> DataLoader:
        if self.card is None:
            raise RuntimeError("FashionMNISTDataModule has no ModelCard; call set_card(card) first")
        return DataLoader(ArrayImageDataset(*arrays, build_transform(self.card)), batch_size=self.batch_size,
                          shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        n = len(self._arrays["train"][1])
        return self._loader(self._subset("train", self._seeded(min(self.train_limit or n, n), salt=2)), shuffle=True)

    def _eval_samples(self) -> tuple[np.ndarray, np.ndarray]:
        self.setup()
        return self._subset("test", self._eval_indices())

    def _calib_samples(self) -> tuple[np.ndarray, np.ndarray]:
        self.setup()
        return self._subset("train", self._seeded(self.calib_size, salt=1))


def build_embedded_subset(root: str | Path, out: str | Path = EMBEDDED) -> None:
    """Rebuild the embedded subset from the original idx files in ``root``."""
    train_images, train_labels = load_split(Path(root), "train")
    test_images, test_labels = load_split(Path(root), "test")
    pool = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(2024))[:1000].numpy()
    np.savez_compressed(out, test_images=test_images[:2000], test_labels=test_labels[:2000].astype(np.uint8),
                        train_images=train_images[pool], train_labels=train_labels[pool].astype(np.uint8),
                        train_source_indices=pool.astype(np.int32))
