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
import os
import sys
import time
from typing import Any, Callable, Iterable

import lightning as L
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils._pytree import tree_map

from ._stages import EvaluationStageCallback
from ..methods import PYTORCH, row_method
from ..quant import Recipe, canonical_name, fit_weights, prepare
from ..quant.baseline import torch_act_grid, torch_ao_ptq
from ..quant.distributed import is_distributed, recording, shard_batches
from ..quant.agreement import Agreement, output_steps
from ..quant.engines import create_engine, engine_entry
from ..quant.forward import default_input_fn
from ..quant.model import QuantizedModel
from ..quant.sensitivity import first_samples, promote


def _quiet(*args) -> None:
    """What :func:`_progress` yields off a terminal."""


@contextlib.contextmanager
def _progress(description: str, total: int | None):
    """A rich progress bar on a terminal; nothing at all otherwise (logs stay escape-free).

    Yields ``update``: ``update()`` moves the bar one on; ``update(done, total, what)`` (the shape of
    ``fit_weights``' ``on_progress``) sets it to ``done`` of ``total`` and describes it as ``what``.
    """
    if not sys.stdout.isatty():
        yield _quiet
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        task = progress.add_task(description, total=total)

        def update(done: int | None = None, total: int | None = None, what: str | None = None) -> None:
            if done is None:
                progress.advance(task)
            else:
                progress.update(task, completed=done, total=total, description=what or description)

        yield update


class QuantizationCallback(EvaluationStageCallback):
    """Quantize a LightningModule for evaluation with method A-D (or torch.ao's default PTQ).

    Args:
        method: ``"A"``-``"D"``, a calibrator name, or ``"pytorch"``: PyTorch's default x86 PTQ
            (per-channel symmetric weights, HistogramObserver with reduce_range: 0..127 affine
            activations). See ``pytorch_via``.
        recipe: widths, ``keep_8bit``, weight range and rounding, bias correction, AdaRound's
            settings (:class:`hqbench.quant.Recipe`; None: W8A8 defaults). The ``"pytorch"``
            baseline takes only the widths, with torch's observers at them
            (:mod:`hqbench.quant.baseline`).
        calib_dataloader: calibration batches; defaults to ``trainer.datamodule.calibration_dataloader()``.
        num_batches: calibration batches per pass (all when None).
        engine: a registered engine (:func:`hqbench.quant.engines.list_engines`): ``"fake"``
            (fake-quant), ``"int"`` (the integer-only reference executor), ``"onnxruntime"`` or
            ``"openvino"`` (the calibrated model exported as ONNX QDQ and run by that runtime's
            int8 kernels). ``engine_record`` then holds what the engine says of itself (version,
            settings, which layers ran in int8).
        agreement: with an engine other than ``"fake"``, also run the fake-quant model on every
            batch and measure the engine against it (:class:`hqbench.quant.agreement.Agreement`;
            ``agreement`` holds its summary after each run). Costs one more forward per batch.
        input_fn: maps a batch to the module's positional inputs (default: ``batch[0]``).
        float_scopes: module names whose functional ops stay float (detector decoding).
        submodule: attribute holding the network, used by the ``"pytorch"`` baseline.
        pytorch_via: how ``"pytorch"`` runs. ``"fx"``: torch.ao itself (FX graph mode, reference
            model), replacing ``pl_module.<submodule>`` while active. ``"hooks"``: torch's default
            observers and ranges applied through hqbench's hooks, for networks torch.fx cannot
            trace (ultralytics' detectors); BN is folded as for A-D.
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
        export: write the calibrated model at each test's end as ONNX QDQ to this ``.onnx`` path,
            with its ``.qstate.pt`` and ``.encodings.json`` (:func:`hqbench.quant.export.export_onnx`,
            rank 0 only); an existing file is an error unless ``export_overwrite``.
        ranking: a recipe with ``mixed_budget``: the points ranked by sensitivity (``callback.ranking``
            of an earlier run of the same method, calibration and widths, e.g. at another budget), so
            the promotion skips measuring it. Same conditions as ``statistics``.
        fit_suffix: appended to the name of every metric the module logs while a validation inside
            ``fit`` runs quantized (``val_acc`` -> ``val_acc_quant``), so quantized validation is never
            mistaken for the float model's; ``""`` keeps the names.

    Each calibration also goes to the trainer's loggers (any Lightning logger): ``quant/calib_seconds``
    and each point's chosen range, ``quant/<point>/lo`` and ``/hi``.

    After a calibration, ``statistics`` holds that run's statistics (see
    :meth:`hqbench.quant.QuantizedModel.calibration_statistics`).
    """

    def __init__(self, method: str = "D", recipe: Recipe | None = None, *, calib_dataloader: Iterable | None = None,
                 num_batches: int | None = None, engine: str = "fake", input_fn: Callable[[Any], tuple] = default_input_fn,
                 float_scopes: tuple[str, ...] = (), submodule: str = "model", pytorch_via: str = "fx",
                 recalibrate: bool = True, statistics: dict | None = None, ranges: dict | None = None,
                 fit_suffix: str = "_quant", export: str | os.PathLike | None = None, export_overwrite: bool = False,
                 agreement: bool = True, ranking: list[str] | None = None):
        engine_entry(engine)  # an unknown engine fails here, naming the valid ones
        if pytorch_via not in ("fx", "hooks"):
            raise ValueError(f"unknown pytorch_via {pytorch_via!r}; valid: fx, hooks")
        self.method = PYTORCH if method == PYTORCH else canonical_name(method)
        self.recipe = Recipe() if recipe is None else recipe
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"recipe must be a hqbench.quant.Recipe, got {type(recipe).__name__}")
        self.recalibrate = bool(recalibrate)
        if self.method == PYTORCH:
            if engine != "fake":
                raise ValueError("the pytorch baseline runs as torch's reference model; use engine='fake'")
            torch_act_grid(self.recipe.act_bits)  # refuse widths torch's quint8 observers cannot hold, now
            if not self.recipe.runs_torch_defaults():
                raise ValueError("the pytorch baseline is torch's own recipe: keep_8bit, weight_range, "
                                 "bias_correction, weight_rounding and mixed.budget apply to hqbench's methods only")
        self.calib_dataloader, self.num_batches, self.engine = calib_dataloader, num_batches, engine
        self.input_fn, self.float_scopes, self.submodule = input_fn, tuple(float_scopes), submodule
        self.pytorch_via, self.fit_suffix = pytorch_via, str(fit_suffix)
        if export is not None and self.method == PYTORCH:
            raise ValueError("export= writes hqbench's QDQ file; the pytorch baseline is torch.ao's own model")
        self.export, self.export_overwrite, self._example = export, bool(export_overwrite), None
        self.calib_seconds = 0.0
        self.measure_agreement = bool(agreement)
        self.engine_record: dict | None = None  # what a non-fake engine records of itself
        self._agreement: Agreement | None = None
        self._given_statistics, self._given_ranges, self._given_ranking = statistics, ranges, ranking
        self.ranking: list[str] | None = ranking  # mixed precision: the points by sensitivity, most first
        self.ranges_taken = False  # whether the last calibration took its first pass from ``ranges``
        self.statistics: dict | None = statistics
        self.summary: dict | None = None  # what the last activation quantized, kept after restore
        self.bits_record: dict = {}  # below 8 bits: which points the last activation ran at 8 bits, kept after restore
        self.qmodel: QuantizedModel | None = None
        self._saved_state: dict | None = None
        self._from_checkpoint = False  # ranges came from load_state_dict: use them once before recalibrating
        self._undo: list[Callable[[], None]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, engine=self.engine, bits=self.recipe.bits)

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
            method, act_grid = ("histogram", torch_act_grid(self.recipe.act_bits)) if hooks_baseline else (self.method, None)
            needs_data = self._saved_state is None or (self.recalibrate and not self._from_checkpoint)
            shared = needs_data and self._given_statistics is not None
            ranks = needs_data and self.recipe.promotes and self._given_ranking is None
            # A restored state, or shared statistics with nothing to fit or rank, needs one batch: to record the graph.
            full = needs_data and (not shared or self.recipe.fits_weights or ranks)
            batches = self._batches_on(trainer, pl_module.device, limit=None if full else 1)
            example = self.input_fn(batches[0])
            self._example = example
            recipe = self.recipe
            if not needs_data and recipe.promotes:  # the points a mixed-precision state promoted
                recipe = recipe.replace(point_bits=[tuple(p) for p in self._saved_state.get("point_bits", [])])
            qmodel = prepare(self._quantized(pl_module), example, method, recipe, inplace=True, float_scopes=self.float_scopes,
                             act_grid=act_grid)
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
            if needs_data and self.recipe.promotes:  # on every batch, on every rank: the same points everywhere
                with _progress(f"ranking points {self.letter}", None) as update:
                    promotion = promote(qmodel, first_samples(batches, self.recipe.mixed_samples, self.input_fn),
                                        self.input_fn, self.recipe.mixed_budget,
                                        ranking=self._given_ranking, search=self.recipe.mixed_search,
                                        criterion=self.recipe.mixed_criterion,
                                        on_point=None if update is _quiet else update)
                self.ranking = promotion.ranking
            if needs_data:
                # AdaRound and bias correction run on every batch, on every rank: the same result everywhere.
                if self.recipe.fits_weights:  # no bar flashes for a recipe with nothing to fit
                    with _progress(f"fitting weights {self.letter}", None) as update:
                        fit_weights(qmodel, batches, input_fn=self.input_fn,
                                    on_progress=None if update is _quiet else update)
                self._saved_state = qmodel.quant_state_dict()
            else:
                qmodel.load_quant_state_dict(self._saved_state)
            self._from_checkpoint = False
            if engine_entry(self.engine).factory is not None:  # fake-quant is the torch model itself
                self._attach_engine(pl_module, qmodel, example)
            self.qmodel = qmodel
            self.summary = qmodel.summary()
            self.bits_record = {} if hooks_baseline else self._bits_record(qmodel)
        self.calib_seconds = time.perf_counter() - start
        if trainer.state.fn == "fit" and self.fit_suffix:
            self._rename_logged(pl_module)
        self._log_calibration(trainer)

    def _bits_record(self, qmodel: QuantizedModel) -> dict:
        """Below 8-bit activations, the row fields of who runs at 8 bits: how many of all the points
        (``keep_8bit``'s, ``point_bits``' and mixed precision's), and the points mixed precision
        promoted, most sensitive first (from the state when it was loaded)."""
        if self.recipe.act_bits >= 8:
            return {}
        grids = [q.grid.bits for q in qmodel.quantizers.values()]
        record = {"points_8bit": f"{sum(b >= 8 for b in grids)}/{len(grids)}"}
        if self.recipe.promotes:
            own = dict(self.recipe.point_bits)
            order = {n: i for i, n in enumerate(self.ranking or [])}
            record["promoted"] = ",".join(sorted((n for n, _ in qmodel.recipe.point_bits if n not in own),
                                                 key=lambda n: order.get(n, len(order))))
        return record

    @property
    def agreement(self) -> dict | None:
        """The engine against fake-quant over the batches run since it was attached (None: fake, or off)."""
        return None if self._agreement is None else self._agreement.summary()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.export is not None and self.qmodel is not None and trainer.is_global_zero:
            from ..quant.export import export_onnx

            export_onnx(self.qmodel, self.export, self._example, overwrite=self.export_overwrite)
        super().on_test_end(trainer, pl_module)

    def _rename_logged(self, pl_module: L.LightningModule) -> None:
        """Inside ``fit``, what the module logs while quantized carries ``fit_suffix`` (``log_dict``
        calls ``log``, so both are covered); the undo list puts ``log`` back."""
        log, suffix = pl_module.log, self.fit_suffix

        def renamed(name: str, value: Any, *args, **kwargs):
            return log(name + suffix, value, *args, **kwargs)

        pl_module.log = renamed
        self._undo.append(lambda: pl_module.__dict__.pop("log", None))

    def _log_calibration(self, trainer: L.Trainer) -> None:
        """Calibration seconds and the chosen ranges, to every logger the trainer has (rank 0 only)."""
        if not trainer.loggers or not trainer.is_global_zero:
            return
        metrics = {"quant/calib_seconds": self.calib_seconds}
        for name, point in (self.summary or {}).get("points", {}).items():
            metrics[f"quant/{name}/lo"], metrics[f"quant/{name}/hi"] = point["clip"]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _quantized(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """The module quantizers hook onto: the LightningModule itself, so any ``forward`` works."""
        return pl_module

    def _attach_engine(self, pl_module: L.LightningModule, qmodel: QuantizedModel, example: tuple) -> None:
        """Route the quantized module's forward through the engine *instead of* torch.

        The engine replaces ``forward`` on the instance (a forward hook would run the torch network
        first and then discard its output, paying for both); the undo list puts it back.
        """
        pl_module = self._quantized(pl_module)
        engine = create_engine(self.engine, qmodel, example)
        self.engine_record = engine.record() if callable(getattr(engine, "record", None)) else None
        own = pl_module.__dict__.get("forward")  # an instance-level forward someone set before us
        fake_forward = own or type(pl_module).forward.__get__(pl_module)  # the quantizers' hooks make it fake-quant
        self._agreement = Agreement(output_steps(qmodel, example)) if self.measure_agreement else None

        def forward(*args, **kwargs):
            if kwargs:  # the replayed graph was recorded without them: refuse rather than ignore them
                raise NotImplementedError(
                    f"engine={self.engine} replays the graph recorded at calibration, which cannot take forward's "
                    f"keyword arguments {sorted(kwargs)}; use engine=fake, or call forward with positional tensors only")
            out = engine(*args)
            if self._agreement is not None:
                self._agreement.update(fake_forward(*args), out)
            return out

        def restore() -> None:
            if own is None:
                del pl_module.forward
            else:
                pl_module.forward = own
            getattr(engine, "close", lambda: None)()

        pl_module.forward = forward
        self._undo.append(restore)

    def _activate_baseline(self, trainer, pl_module) -> None:
        network = getattr(pl_module, self.submodule, None)
        if network is None:
            raise ValueError(f"the pytorch baseline needs the network at pl_module.{self.submodule}; pass submodule=")
        batches = self._batches_on(trainer, pl_module.device)
        quantized = torch_ao_ptq(network, batches, self.input_fn(batches[0]), self.input_fn,
                                 weight_bits=self.recipe.weight_bits, act_bits=self.recipe.act_bits)
        setattr(pl_module, self.submodule, quantized)
        self._undo.append(lambda: setattr(pl_module, self.submodule, network))

    def _restore(self) -> None:
        # Folding ran inside Lightning's inference mode, so the folded tensors are inference tensors;
        # restoring them from on_exception/teardown (outside it) must happen in inference mode too.
        with torch.inference_mode():
            while self._undo:
                self._undo.pop()()
        self.qmodel = None
