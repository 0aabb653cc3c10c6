"""BenchmarkDataModule: the loader contract every hqbench datamodule shares.

A benchmark datamodule serves *evaluation* samples (its test split: the same batches for
``test``, ``validate`` and ``predict``) and seeded *calibration* samples drawn from its training
split, unshuffled, through :meth:`calibration_dataloader`, which
:class:`~hqbench.callbacks.QuantizationCallback` reads. Subclasses say only where samples come
from and how a list of them becomes a ``DataLoader``.
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from hqbench.models.card import ModelCard


def check_sizes(eval_limit: int | None, calib_size: int) -> None:
    if eval_limit is not None and eval_limit < 1:
        raise ValueError(f"eval_limit must be a positive integer or None, got {eval_limit}")
    if calib_size < 1:
        raise ValueError(f"calib_size must be a positive integer, got {calib_size}")


def seeded_draw(pool_size: int, count: int, seed: int) -> list[int]:
    """``count`` distinct indices of ``range(pool_size)``; a ``torch.Generator``, not Python's
    ``random``, so the draw is the same on every platform and rank."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(pool_size, generator=g)[:count].tolist()


class BenchmarkDataModule(L.LightningDataModule):
    """Base class: implement :meth:`_eval_samples`, :meth:`_calib_samples` and :meth:`_loader`."""

    card: ModelCard | None = None

    def set_card(self, card: ModelCard) -> None:
        """Set the ModelCard whose preprocessing (input size, normalisation) the loaders apply."""
        self.card = card

    def _eval_samples(self) -> Sequence[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _calib_samples(self) -> Sequence[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _loader(self, samples: Any) -> DataLoader:  # pragma: no cover - abstract
        raise NotImplementedError

    def test_dataloader(self) -> DataLoader:
        """Evaluation batches."""
        return self._loader(self._eval_samples())

    def val_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`: the benchmark's test split is what is measured."""
        return self._loader(self._eval_samples())

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`."""
        return self._loader(self._eval_samples())

    def calibration_dataloader(self) -> DataLoader:
        """Calibration batches, unshuffled, in ``calibration_files`` order."""
        return self._loader(self._calib_samples())
