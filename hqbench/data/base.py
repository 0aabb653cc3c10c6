"""BenchmarkDataModule: the loader contract every hqbench datamodule shares.

A benchmark datamodule serves *evaluation* samples (its test split: the same batches for
``test``, ``validate`` and ``predict``) and seeded *calibration* samples drawn from its training
split, unshuffled, through :meth:`calibration_dataloader`, which
:class:`~hqbench.callbacks.QuantizationCallback` reads. Subclasses say only where samples come
from and how a list of them becomes a ``DataLoader``.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from hqbench.models.card import ModelCard


def positive_int(key: str, value: Any, *, optional: bool = False) -> int | None:
    """``value`` if it is a positive integer (or ``None`` where ``optional``).

    Hydra hands an override such as ``data.calib_size=abc`` or ``=1.5`` through unchanged, so the
    type is checked here, where the value is consumed, not only its sign.

    Raises:
        ValueError: naming ``data.<key>``, the value and what is valid.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        valid = "a positive integer" + (", or null for all" if optional else "")
        raise ValueError(f"data.{key} must be {valid}; got {value!r}")
    return int(value)


def check_sizes(eval_limit: Any, calib_size: Any, batch_size: Any = 1, num_workers: Any = 0) -> None:
    """Validate the size keys every datamodule takes (see :func:`positive_int`)."""
    positive_int("eval_limit", eval_limit, optional=True)
    positive_int("calib_size", calib_size)
    positive_int("batch_size", batch_size)
    if isinstance(num_workers, bool) or not isinstance(num_workers, Integral) or num_workers < 0:
        raise ValueError(f"data.num_workers must be 0 (load in the main process) or a positive integer; "
                         f"got {num_workers!r}")


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


class EvaluationShare:
    """Under DDP: which of this rank's evaluation samples are real, and how to put results back in order.

    Lightning's ``DistributedSampler`` gives rank ``r`` of ``W`` the samples at positions
    ``r, r+W, ...`` of ``range(n)`` followed by repeats of the first samples, so every rank gets
    as many (synced metrics with per-sample list states, e.g. torchmetrics' mAP, need equal
    counts). A repeated sample would count twice in every metric: tasks mask it out with
    :meth:`padding` and keep the rest, which is exactly positions ``r, r+W, ... < n``;
    :func:`evaluation_order` interleaves the ranks' results back.
    """

    def __init__(self) -> None:
        self.seen = 0

    def reset(self) -> None:
        self.seen = 0

    def padding(self, trainer, count: int) -> torch.Tensor:
        """Bool mask over the next ``count`` samples of this rank: True where the sampler repeated one."""
        world = trainer.world_size if trainer is not None else 1
        positions = torch.arange(self.seen, self.seen + count)
        self.seen += count
        if world == 1:
            return torch.zeros(count, dtype=torch.bool)
        loader = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
        n = len(loader.dataset)
        return trainer.global_rank + world * positions >= n


def evaluation_order(shards: Sequence[Sequence[Any]]) -> list[Any]:
    """Per-sample results of every rank, without padding (rank ``r`` has positions ``r, r+W, ...``), in order."""
    world = len(shards)
    ordered: list[Any] = [None] * sum(len(s) for s in shards)
    for rank, shard in enumerate(shards):
        ordered[rank::world] = list(shard)
    return ordered
