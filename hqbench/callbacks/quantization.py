"""QuantizationCallback: calibrate, fake-quantize (or run integer-only) and test, then restore.

Drop it into any ``Trainer``. At the start of test/validate/predict it folds BN, attaches the
chosen calibrator through module hooks, runs an explicit calibration pass (``no_grad``, eval mode,
seeded data) and freezes the ranges; at the end it gives the float model back, so one
LightningModule can be tested under FP32, A, B, C and D in one process.

Lessons from Lightning's removed ``QuantizationAwareTraining``: ``forward`` is never wrapped,
nothing is observed outside the calibration pass, and the calibrated ranges live in this
callback's ``state_dict`` (a checkpoint restores them before ``on_test_start``, so
``Trainer.test(ckpt_path=...)`` skips recalibration).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from typing import Any, Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils._pytree import tree_map

from ..quant import ALIASES, TORCH_X86_ACT_GRID, canonical_name, prepare
from ..quant.baseline import torch_ao_ptq
from ..quant.model import QuantizedModel, default_input_fn

ENGINES = ("fake", "int")


@contextlib.contextmanager
def _progress(description: str, total: int):
    """A rich progress bar on a terminal; nothing at all otherwise (logs stay escape-free)."""
    if not sys.stdout.isatty():
        yield lambda: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


class QuantizationCallback(Callback):
    """Quantize a LightningModule for evaluation with method A-D (or torch.ao's default PTQ).

    Args:
        method: ``"A"``-``"D"``, a calibrator name, or ``"pytorch"``: PyTorch's default x86 PTQ
            (per-channel symmetric weights, HistogramObserver with reduce_range: 0..127 affine
            activations). See ``pytorch_via``.
        calib_dataloader: calibration batches; defaults to ``trainer.datamodule.calibration_dataloader()``.
        num_batches: calibration batches per pass (all when None).
        engine: ``"fake"`` (fake-quant) or ``"int"`` (the integer-only reference executor).
        input_fn: maps a batch to the module's positional inputs (default: ``batch[0]``).
        float_scopes: module names whose functional ops stay float (detector decoding).
        submodule: attribute holding the network, used by the ``"pytorch"`` baseline.
        pytorch_via: how ``"pytorch"`` runs. ``"fx"``: torch.ao itself (FX graph mode, reference
            model), replacing ``pl_module.<submodule>`` while active. ``"hooks"``: torch's default
            observers and ranges applied through hqbench's hooks, for networks torch.fx cannot
            trace (ultralytics' detectors); BN is folded as for A-D.
    """

    def __init__(self, method: str = "D", calib_dataloader: Iterable | None = None, num_batches: int | None = None,
                 engine: str = "fake", input_fn: Callable[[Any], tuple] = default_input_fn,
                 float_scopes: tuple[str, ...] = (), submodule: str = "model", pytorch_via: str = "fx"):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
        if pytorch_via not in ("fx", "hooks"):
            raise ValueError(f"unknown pytorch_via {pytorch_via!r}; valid: fx, hooks")
        self.method = "pytorch" if method == "pytorch" else canonical_name(method)
        if self.method == "pytorch" and engine != "fake":
            raise ValueError("the pytorch baseline runs as torch's reference model; use engine='fake'")
        self.calib_dataloader, self.num_batches, self.engine = calib_dataloader, num_batches, engine
        self.input_fn, self.float_scopes, self.submodule = input_fn, tuple(float_scopes), submodule
        self.pytorch_via = pytorch_via
        self.calib_seconds = 0.0
        self.summary: dict | None = None  # what the last activation quantized, kept after restore
        self.qmodel: QuantizedModel | None = None
        self._saved_state: dict | None = None
        self._undo: list[Callable[[], None]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, engine=self.engine)

    @property
    def letter(self) -> str:
        """The paper's letter for this method, or the method name."""
        return {v: k for k, v in ALIASES.items()}.get(self.method, self.method)

    # -------------------------------------------------------------- lifecycle
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._activate(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._activate(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._activate(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()  # also after an exception mid-test

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return dict(self._saved_state or {})

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved_state = dict(state_dict) or None

    # ---------------------------------------------------------------- helpers
    def _calibration_batches(self, trainer: L.Trainer, device: torch.device, limit: int | None = None) -> list:
        loader = self.calib_dataloader
        if loader is None:
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "calibration_dataloader"):
                raise ValueError("QuantizationCallback needs calib_dataloader=, or a datamodule with calibration_dataloader()")
            loader = dm.calibration_dataloader()
        limit = self.num_batches if limit is None else limit
        batches = [tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batch)
                   for batch in itertools.islice(loader, limit)]
        if not batches:
            raise ValueError("calibration data is empty: no batch was seen")
        return batches

    def _activate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._undo:
            return
        start = time.perf_counter()
        if self.method == "pytorch" and self.pytorch_via == "fx":
            self._activate_baseline(trainer, pl_module)
        else:
            hooks_baseline = self.method == "pytorch"  # torch's HistogramObserver = calibrator C, on 0..127
            method, act_grid = ("histogram", TORCH_X86_ACT_GRID) if hooks_baseline else (self.method, None)
            needs_data = self._saved_state is None  # a restored checkpoint needs one batch, to record the graph
            batches = self._calibration_batches(trainer, pl_module.device, limit=None if needs_data else 1)
            example = self.input_fn(batches[0])
            qmodel = prepare(pl_module, example, method, inplace=True, float_scopes=self.float_scopes,
                             act_grid=act_grid)
            self._undo.append(qmodel.remove)
            if needs_data:
                with _progress(f"calibrating {self.letter}", len(batches) * qmodel.num_passes) as advance:
                    qmodel.calibrate(batches, input_fn=self.input_fn, on_batch=lambda i, n: advance())
                self._saved_state = qmodel.quant_state_dict()
            else:
                qmodel.load_quant_state_dict(self._saved_state)
            if self.engine == "int":
                executor = qmodel.integer_executor()
                handle = pl_module.register_forward_hook(lambda m, args, out: executor(*args))
                self._undo.append(handle.remove)
            self.qmodel = qmodel
            self.summary = qmodel.summary()
        self.calib_seconds = time.perf_counter() - start

    def _activate_baseline(self, trainer, pl_module) -> None:
        network = getattr(pl_module, self.submodule, None)
        if network is None:
            raise ValueError(f"the pytorch baseline needs the network at pl_module.{self.submodule}; pass submodule=")
        batches = self._calibration_batches(trainer, pl_module.device)
        quantized = torch_ao_ptq(network, batches, self.input_fn(batches[0]), self.input_fn)
        setattr(pl_module, self.submodule, quantized)
        self._undo.append(lambda: setattr(pl_module, self.submodule, network))

    def _restore(self) -> None:
        while self._undo:
            self._undo.pop()()
        self.qmodel = None
