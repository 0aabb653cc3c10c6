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
import sys
import time
from typing import Any, Callable, Iterable, Mapping

import lightning as L
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils._pytree import tree_map

from ._stages import EvaluationStageCallback
from ..methods import PYTORCH, check_engine, row_method
from ..quant import canonical_name, check_bits, prepare
from ..quant.adaround import check_adaround_options
from ..quant.baseline import torch_act_grid, torch_ao_ptq
from ..quant.distributed import is_distributed, recording, shard_batches
from ..quant.model import QuantizedModel, check_keep_8bit, check_weight_rounding, default_input_fn
from ..quant.weights import check_weight_range


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


class QuantizationCallback(EvaluationStageCallback):
    """Quantize a LightningModule for evaluation with method A-D (or torch.ao's default PTQ).

    Args:
        method: ``"A"``-``"D"``, a calibrator name, or ``"pytorch"``: PyTorch's default x86 PTQ
            (per-channel symmetric weights, HistogramObserver with reduce_range: 0..127 affine
            activations). See ``pytorch_via``.
        calib_dataloader: calibration batches; defaults to ``trainer.datamodule.calibration_dataloader()``.
        num_batches: calibration batches per pass (all when None).
        engine: ``"fake"`` (fake-quant), ``"int"`` (the integer-only reference executor) or
            ``"onnxruntime"`` (the calibrated model exported as ONNX QDQ and run by ONNX Runtime).
        input_fn: maps a batch to the module's positional inputs (default: ``batch[0]``).
        float_scopes: module names whose functional ops stay float (detector decoding).
        submodule: attribute holding the network, used by the ``"pytorch"`` baseline.
        pytorch_via: how ``"pytorch"`` runs. ``"fx"``: torch.ao itself (FX graph mode, reference
            model), replacing ``pl_module.<submodule>`` while active. ``"hooks"``: torch's default
            observers and ranges applied through hqbench's hooks, for networks torch.fx cannot
            trace (ultralytics' detectors); BN is folded as for A-D.
        act_bits, weight_bits, keep_8bit, weight_range, bias_correction, weight_rounding, adaround: as in
            :func:`hqbench.quant.quantize`; the ``"pytorch"`` baseline uses torch's observers at the
            matching widths (:mod:`hqbench.quant.baseline`).
        recalibrate: calibrate again at every test/validation/predict start (the default: during
            ``fit`` the weights change between validations), except right after a checkpoint
            restored calibrated ranges. ``False`` calibrates once and reuses the ranges.
        statistics: calibration statistics of the same method on the same model and calibration
            data (``callback.statistics`` of an earlier run, e.g. at another width): the ranges are
            chosen from them for this grid with no pass over the data. For evaluation only: the
            weights must not have changed since they were observed.
        ranges: MinMax (B) statistics of the same model and calibration data (``callback.statistics``
            of a B run): a range-then-histogram method (D, percentile, entropy, mse) takes its first
            pass from them instead of making it. Same conditions as ``statistics``.

    After a calibration, ``statistics`` holds that run's statistics (see
    :meth:`hqbench.quant.QuantizedModel.calibration_statistics`).
    """

    def __init__(self, method: str = "D", calib_dataloader: Iterable | None = None, num_batches: int | None = None,
                 engine: str = "fake", input_fn: Callable[[Any], tuple] = default_input_fn,
                 float_scopes: tuple[str, ...] = (), submodule: str = "model", pytorch_via: str = "fx",
                 act_bits: int = 8, weight_bits: int = 8, keep_8bit: tuple[str, ...] | str = (),
                 weight_range: str = "minmax", bias_correction: bool = False, weight_rounding: str = "nearest",
                 adaround: Mapping[str, Any] | None = None, recalibrate: bool = True, statistics: dict | None = None,
                 ranges: dict | None = None):
        check_engine(engine)
        if pytorch_via not in ("fx", "hooks"):
            raise ValueError(f"unknown pytorch_via {pytorch_via!r}; valid: fx, hooks")
        self.method = PYTORCH if method == PYTORCH else canonical_name(method)
        if self.method == PYTORCH and engine != "fake":
            raise ValueError("the pytorch baseline runs as torch's reference model; use engine='fake'")
        self.act_bits, self.weight_bits = check_bits(act_bits, "act_bits"), check_bits(weight_bits, "weight_bits")
        self.keep_8bit, self.weight_range = check_keep_8bit(keep_8bit), check_weight_range(weight_range)
        self.bias_correction, self.recalibrate = bool(bias_correction), bool(recalibrate)
        self.weight_rounding = check_weight_rounding(weight_rounding)
        self.adaround = check_adaround_options(adaround, self.weight_rounding)
        if self.method == PYTORCH:
            torch_act_grid(self.act_bits)  # refuse widths torch's quint8 observers cannot hold, now
            if self.keep_8bit or weight_range != "minmax" or self.bias_correction or weight_rounding != "nearest":
                raise ValueError("the pytorch baseline is torch's own recipe: keep_8bit, weight_range, "
                                 "bias_correction and weight_rounding apply to hqbench's methods only")
        self.calib_dataloader, self.num_batches, self.engine = calib_dataloader, num_batches, engine
        self.input_fn, self.float_scopes, self.submodule = input_fn, tuple(float_scopes), submodule
        self.pytorch_via = pytorch_via
        self.calib_seconds = 0.0
        self._given_statistics, self._given_ranges = statistics, ranges
        self.ranges_taken = False  # whether the last calibration took its first pass from ``ranges``
        self.statistics: dict | None = statistics
        self.summary: dict | None = None  # what the last activation quantized, kept after restore
        self.qmodel: QuantizedModel | None = None
        self._saved_state: dict | None = None
        self._from_checkpoint = False  # ranges came from load_state_dict: use them once before recalibrating
        self._undo: list[Callable[[], None]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, engine=self.engine, bits=f"w{self.weight_bits}a{self.act_bits}")

    @property
    def letter(self) -> str:
        """The paper's letter for this method, or the method name."""
        return row_method(self.method)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return dict(self._saved_state or {})

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved_state = dict(state_dict) or None
        self._from_checkpoint = self._saved_state is not None

    # ---------------------------------------------------------------- helpers
    def _batches_on(self, trainer: L.Trainer, device: torch.device, limit: int | None = None) -> list:
        """Calibration batches moved to ``device`` and converted as the trainer converts its own
        (``precision="64-true"`` makes them float64), ``num_batches`` of them unless ``limit`` says."""
        def to_device(batch):
            moved = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batch)
            return trainer.precision_plugin.convert_input(moved)

        return self._calibration_batches(trainer, self.num_batches if limit is None else limit, to_device)

    @staticmethod
    def _shard(trainer: L.Trainer, batches: list, qmodel) -> list | None:
        """Under DDP, rank ``r`` of ``W`` calibrates on batches ``r, r + W, ...``; None: calibrate on all.

        One process, fewer batches than processes, or a calibrator whose statistics cannot merge
        shards exactly (C): every rank calibrates on all the batches, as one process would.
        """
        world = trainer.world_size
        if world <= 1 or len(batches) < world:
            return None
        if not is_distributed():
            raise RuntimeError(f"trainer.world_size is {world} but no torch.distributed process group is running; "
                               "calibration statistics cannot be merged")
        mine = shard_batches(qmodel, batches, trainer.global_rank, world)
        return None if len(mine) == len(batches) else mine

    def _activate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._undo:
            return
        start = time.perf_counter()
        if self.method == PYTORCH and self.pytorch_via == "fx":
            self._activate_baseline(trainer, pl_module)
        else:
            hooks_baseline = self.method == PYTORCH  # torch's HistogramObserver = calibrator C, on its grid
            method, act_grid = ("histogram", torch_act_grid(self.act_bits)) if hooks_baseline else (self.method, None)
            needs_data = self._saved_state is None or (self.recalibrate and not self._from_checkpoint)
            shared = needs_data and self._given_statistics is not None
            fits_weights = self.bias_correction or self.weight_rounding != "nearest"
            # A restored state, or shared statistics with nothing to fit, needs one batch: to record the graph.
            full = needs_data and (not shared or fits_weights)
            batches = self._batches_on(trainer, pl_module.device, limit=None if full else 1)
            example = self.input_fn(batches[0])
            qmodel = prepare(pl_module, example, method, inplace=True, float_scopes=self.float_scopes,
                             act_grid=act_grid, act_bits=self.act_bits, weight_bits=self.weight_bits,
                             keep_8bit=self.keep_8bit, weight_range=self.weight_range)
            self._undo.append(qmodel.remove)
            if shared:
                qmodel.calibrate_from(self._given_statistics)
            elif needs_data:
                # Under DDP each rank observes its share and the statistics merge after every pass
                # (hqbench.quant.distributed); one process: all batches, nothing to merge.
                mine = self._shard(trainer, batches, qmodel)
                sync = contextlib.nullcontext(None) if mine is None else recording(qmodel)
                mine = batches if mine is None else mine
                ranges = self._given_ranges
                with _progress(f"calibrating {self.letter}", len(mine) * qmodel.passes_left(ranges)) as advance, \
                        sync as on_pass_end:
                    qmodel.calibrate(mine, input_fn=self.input_fn, on_batch=lambda i, n: advance(),
                                     on_pass_end=on_pass_end, ranges=ranges)
                self.ranges_taken = qmodel.passes_left(ranges) < qmodel.num_passes
                self.statistics = qmodel.calibration_statistics()
            if needs_data:
                # AdaRound and bias correction run on every batch, on every rank: the same result everywhere.
                qmodel.fit_weights(batches, weight_rounding=self.weight_rounding, adaround=self.adaround,
                                   bias_correction=self.bias_correction, input_fn=self.input_fn)
                self._saved_state = qmodel.quant_state_dict()
            else:
                qmodel.load_quant_state_dict(self._saved_state)
            self._from_checkpoint = False
            if self.engine != "fake":
                self._attach_engine(pl_module, qmodel, example)
            self.qmodel = qmodel
            self.summary = qmodel.summary()
        self.calib_seconds = time.perf_counter() - start

    def _attach_engine(self, pl_module: L.LightningModule, qmodel: QuantizedModel, example: tuple) -> None:
        """Route the module's forward through the integer executor or ONNX Runtime *instead of* torch.

        The engine replaces ``forward`` on the instance (a forward hook would run the torch network
        first and then discard its output, paying for both); the undo list puts it back.
        """
        if self.engine == "int":
            engine, close = qmodel.integer_executor(), None
        else:
            from ..quant.onnx_engine import OnnxRuntimeEngine

            engine = OnnxRuntimeEngine(qmodel, example)
            close = engine.close

        def forward(*args, **kwargs):
            if kwargs:  # the replayed graph was recorded without them: refuse rather than ignore them
                raise NotImplementedError(
                    f"engine={self.engine} replays the graph recorded at calibration, which cannot take forward's "
                    f"keyword arguments {sorted(kwargs)}; use engine=fake, or call forward with positional tensors only")
            return engine(*args)

        own = pl_module.__dict__.get("forward")  # an instance-level forward someone set before us

        def restore() -> None:
            if own is None:
                del pl_module.forward
            else:
                pl_module.forward = own
            if close is not None:
                close()

        pl_module.forward = forward
        self._undo.append(restore)

    def _activate_baseline(self, trainer, pl_module) -> None:
        network = getattr(pl_module, self.submodule, None)
        if network is None:
            raise ValueError(f"the pytorch baseline needs the network at pl_module.{self.submodule}; pass submodule=")
        batches = self._batches_on(trainer, pl_module.device)
        quantized = torch_ao_ptq(network, batches, self.input_fn(batches[0]), self.input_fn,
                                 weight_bits=self.weight_bits, act_bits=self.act_bits)
        setattr(pl_module, self.submodule, quantized)
        self._undo.append(lambda: setattr(pl_module, self.submodule, network))

    def _restore(self) -> None:
        # Folding ran inside Lightning's inference mode, so the folded tensors are inference tensors;
        # restoring them from on_exception/teardown (outside it) must happen in inference mode too.
        with torch.inference_mode():
            while self._undo:
                self._undo.pop()()
        self.qmodel = None
