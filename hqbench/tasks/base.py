"""BenchmarkTask: the contract between a task's LightningModule and the runner, declared once.

A task class declares what the runner reads, as class attributes and three methods:

- ``METRIC``: the row's headline metric, logged as ``test/<METRIC>`` (a fraction); required.
- ``EXTRA_METRICS``: also recorded in the row, from ``test/<name>``.
- ``PYTORCH_VIA``: how the PyTorch column quantizes it: ``"fx"`` (torch.ao itself) or ``"hooks"``
  (torch's observers through hqbench's hooks, for networks torch.fx cannot trace).
- ``UNSUPPORTED``: engine name (or ``"peers"``, or a setting such as ``"mixed.criterion=kl"``) -> why
  this task cannot use it; refused before any work.
- ``float_scopes``: module names whose functional ops stay float (a detector's box decoding).
- ``paired_evidence(n_eval)``: what paired tests read (per-image outcomes, bootstrap
  replicates) for the ``METRIC`` of the last test run; none by default. Evidence is bound to the
  metric it was made for: a subclass that declares another ``METRIC`` and no evidence of its own
  has none, instead of inheriting its parent's (Top-1 intervals beside another metric).
- ``sample_scores(batch, output)``: ``METRIC``'s score per sample of one forward (Top-1 correct),
  for the paired intervals of ``hqbench analyze``'s sensitivity ranking; None by default (mAP).
- ``fit(cfg, console, command) -> Path``: ``hqbench train``; refused by default.

Its constructor takes ``(model, card, **the task YAML's module keys)``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, ClassVar, Mapping

import lightning as L
import torch
from omegaconf import OmegaConf

from hqbench.quant import AdaRoundSettings, Recipe

PYTORCH_ROUTES = ("fx", "hooks")


class MissingMetricError(KeyError):
    """A task's declared metric was not logged by its test run (a KeyError that prints as one line)."""

    def __str__(self) -> str:
        return str(self.args[0])


class BenchmarkTask(L.LightningModule):
    """Base class of hqbench's tasks (see the module docstring for the contract)."""

    METRIC: ClassVar[str]
    EXTRA_METRICS: ClassVar[tuple[str, ...]] = ()
    PYTORCH_VIA: ClassVar[str] = "fx"
    UNSUPPORTED: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        metric = getattr(cls, "METRIC", None)
        if not isinstance(metric, str) or not metric:
            raise TypeError(f"task {cls.__qualname__} must declare METRIC (the name logged as test/<METRIC>)")
        if cls.PYTORCH_VIA not in PYTORCH_ROUTES:
            raise TypeError(f"task {cls.__qualname__}: PYTORCH_VIA must be one of {PYTORCH_ROUTES}, "
                            f"got {cls.PYTORCH_VIA!r}")
        parent = next((b for b in cls.__mro__[1:] if isinstance(getattr(b, "METRIC", None), str)), None)
        if parent is not None and parent.METRIC != metric and "paired_evidence" not in cls.__dict__:
            cls.paired_evidence = BenchmarkTask.paired_evidence  # the parent's evidence measures another metric

    @property
    def float_scopes(self) -> tuple[str, ...]:
        return ()

    def paired_evidence(self, n_eval: int | None = None) -> dict:
        """Evidence for paired tests on ``METRIC`` from the last test run; none by default."""
        return {}

    def sample_scores(self, batch: Any, output: Any) -> torch.Tensor | None:
        """``METRIC``'s per-sample score of ``output`` (this module's forward on ``batch``), for the paired
        intervals of a sensitivity ranking; None where the metric does not split per sample (mAP)."""
        return None

    def metric_values(self, logged: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        """``METRIC`` and ``EXTRA_METRICS`` in percent, from what ``Trainer.test`` returned.

        Raises:
            MissingMetricError: a declared metric was not logged, in one line naming the task and the key.
        """
        def value(name: str) -> float:
            key = f"test/{name}"
            if key not in logged:
                raise MissingMetricError(f"task {type(self).__name__} declares the metric {name!r} but its test run logged no "
                               f"{key!r} (logged: {', '.join(sorted(logged)) or 'nothing'})")
            return 100.0 * float(logged[key])

        return value(self.METRIC), {name: round(value(name), 2) for name in self.EXTRA_METRICS}

    @classmethod
    def fit(cls, cfg, console, command: str = "") -> Path:
        """Train ``cfg.model`` on the data's training split; returns the written weights file."""
        raise NotImplementedError(f"task {cfg.task!r}: {cls.__qualname__} has no training (hqbench train)")


def quiet_lightning() -> None:
    """hqbench prints what it ran; Lightning's start-up banners and tips are noise here."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", ".*defined a `validation_step` but have no `val_dataloader`.*")
    # torch.ao's reference model (the PyTorch column) warns on every call that its API is deprecated.
    warnings.filterwarnings("ignore", ".*quantized tensor creation functions.*are deprecated.*")


def config_recipe(cfg) -> Recipe:
    """The recipe a task config's quantization keys describe, at W8A8 (cells set their widths).

    The trainer's precision is part of it: other than float32 (64-true: fake-quant sums exactly, as
    integer kernels do) it changes every torch-run number, FP32's too.
    """
    return Recipe(keep_8bit=cfg.get("keep_8bit"),
                  weight_range=str(cfg.get("weight_range", "minmax")),
                  weight_rounding=str(cfg.get("weight_rounding", "nearest")),
                  bias_correction=cfg.get("bias_correction", False),
                  adaround=AdaRoundSettings.from_mapping(cfg.get("adaround")),
                  mixed_samples=OmegaConf.select(cfg, "mixed.samples", default=None),
                  mixed_search=str(OmegaConf.select(cfg, "mixed.search", default="single")),
                  mixed_criterion=str(OmegaConf.select(cfg, "mixed.criterion", default="sqnr")),
                  precision=str(cfg.get("trainer", {}).get("precision", "32-true")))


def training_output(cfg) -> Path:
    """Where ``hqbench train`` writes: ``train.checkpoint``, or ``outputs/<model>.pt`` in the working folder.

    Never the shipped ``checkpoints/``, and never over an existing file unless ``train.overwrite=true``;
    checked before training starts, so no hour of training ends in a refusal.
    """
    out = Path(cfg.train.checkpoint or Path("outputs") / f"{cfg.model.name}.pt").expanduser()
    taken = [p for p in (out, out.with_suffix(".md")) if p.exists()]
    if taken and not cfg.train.get("overwrite", False):
        raise FileExistsError(f"{taken[0]} exists; pass train.checkpoint=NEW_PATH, or train.overwrite=true to replace it")
    return out


__all__ = ["BenchmarkTask", "MissingMetricError", "config_recipe", "quiet_lightning", "training_output"]
