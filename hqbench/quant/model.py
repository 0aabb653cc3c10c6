"""QuantizedModel: a float model with BN folded, quantizers attached by hooks, and explicit modes.

Nothing wraps ``forward``: quantizers hang on module hooks (and on a TorchFunctionMode for
functional adds/concats), so a LightningModule or any eager model keeps its own call signature, and
:meth:`QuantizedModel.remove` gives the float model back exactly.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .calibrators import canonical_name, create_calibrator
from .calibrators.base import RangeThenHistogram
from .fake import OBSERVE, OFF, QUANT, ActQuantizer
from .fold import fold_batchnorm, unfold_batchnorm
from .forward import default_input_fn, model_device
from .points import attach_points, guard_unrecorded
from .profiles import get_profile
from .graph import Graph, record
from .grid import QuantGrid, pow2_ceil
from .layer_report import LayerReport, layer_report
from .recipe import Recipe
from .scheme import Plan, analyse
from .state import STATE_VERSION, problems, upgrade
from .weights import fit_bias, quantize_weight, weight_scale



def _key(name: str) -> str:
    return name.replace(".", "/")  # ModuleDict keys may not contain "."


class QuantizedModel(nn.Module):
    """A model under the hybrid asymmetric INT8 scheme (see :mod:`hqbench.quant.scheme`), quantized
    as its :class:`~hqbench.quant.recipe.Recipe` says, with calibrator ``method`` on every point.

    Build with :func:`hqbench.quant.prepare` or :func:`hqbench.quant.quantize`.
    """

    # The recipe's settings, read where the scheme needs them (the recipe is the one copy).
    act_bits = property(lambda self: self.recipe.act_bits)
    weight_bits = property(lambda self: self.recipe.weight_bits)
    weight_per_channel = property(lambda self: self.recipe.weight_per_channel)
    weight_range = property(lambda self: self.recipe.weight_range)
    keep_8bit = property(lambda self: self.recipe.keep_8bit)

    def __init__(self, model: nn.Module, example_inputs: tuple, method: str, recipe: Recipe | None = None,
                 float_scopes: tuple[str, ...] = (), act_grid: QuantGrid | None = None):
        super().__init__()
        self.method = canonical_name(method)
        self.recipe = recipe = Recipe() if recipe is None else recipe
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a hqbench.quant.Recipe, got {type(recipe).__name__}")
        self.model = model
        self.graph: Graph = record(model, example_inputs)
        self.plan: Plan = analyse(self.graph, self.act_bits, float_scopes)
        kept_layers, kept_points = self._kept(self.keep_8bit)
        self._layer_bits = {n: max(8, self.weight_bits) if n in kept_layers else self.weight_bits
                            for n in self.plan.compute}
        self._kept_points, self._act_grid = kept_points, act_grid
        grids = self._grids(recipe)
        # Quantizers and their calibrators' buffers are made on the model's device (a CUDA model
        # gets CUDA statistics), whatever torch's default device is.
        with torch.device(model_device(model, example_inputs)):
            self.quantizers = nn.ModuleDict(
                {_key(name): ActQuantizer(name, create_calibrator(self.method), grid)
                 for name, grid in grids.items()}
            )
        # Per-channel output-mean shift subtracted from each layer's bias in quant mode (bias correction).
        self.bias_shift: dict[str, torch.Tensor] = {}
        # Fake-quantized weights chosen by AdaRound, used instead of round-to-nearest in quant mode,
        # and the weight scales it learnt with them (adaround learn_scale), used instead of the range's.
        self.rounded_weights: dict[str, torch.Tensor] = {}
        self.learned_scales: dict[str, torch.Tensor] = {}
        self._float_weights: dict[str, tuple] = {}
        self._weight_scales: dict[str, torch.Tensor] = {}
        self._bias_integers: dict[str, torch.Tensor] = {}  # int32 biases (as float64) in quant mode
        self.widened_channels: dict[str, list[int]] = {}  # weight scales widened to fit the int32 bias
        # The model changes only from here on, after every check: a bad recipe leaves it untouched.
        self._folds = fold_batchnorm(model, self.plan.folds)
        self._handles, self._tracker, self._mode = [], None, "float"
        try:
            self._handles, self._tracker = attach_points(model, self.graph, self.plan, self.quantizer)
            self._handles += guard_unrecorded(model, self.graph, lambda: self._mode != "float")
        except BaseException:
            unfold_batchnorm(self._folds)
            raise

    def _kept(self, keep: tuple[str, ...]) -> tuple[set[str], set[str]]:
        """Layers kept at 8 bits, and the activation points they read and write."""
        layers = {self.plan.compute[0] if k == "first" else self.plan.compute[-1] for k in keep}
        points = {self.plan.compute_inputs[n] for n in layers if n in self.plan.compute_inputs}
        points |= {self.plan.chains[n][0] for n in layers}
        return layers, points & set(self.plan.points)

    def _grids(self, recipe: Recipe) -> dict[str, QuantGrid]:
        """Each point's grid under ``recipe``: its ``point_bits`` entry, else 8 bits where ``keep_8bit``
        keeps it, else the plan's grid at ``act_bits``; each as the recipe's profile stores it."""
        if self._act_grid is not None:  # torch's baseline grid on every point (the pytorch column)
            return {name: self._act_grid for name in self.plan.points}
        point_bits = dict(recipe.point_bits)
        unknown = sorted(set(point_bits) - set(self.plan.points))
        if unknown:
            raise ValueError(f"point_bits: {unknown[0]!r} is not a quantization point of this model "
                             f"(points: {', '.join(list(self.plan.points)[:5])}, ...)")
        profile = get_profile(recipe.profile)
        return {p.name: profile.grid(QuantGrid(point_bits[p.name], p.grid.signed) if p.name in point_bits
                                     else QuantGrid(max(8, self.act_bits), p.grid.signed) if p.name in self._kept_points
                                     else p.grid)
                for p in self.plan.points.values()}

    def set_point_bits(self, point_bits: Mapping[str, int]) -> None:
        """Mixed precision after calibration: the recipe's ``point_bits`` become ``point_bits``, and
        every point whose grid changes is frozen again on its new grid from the statistics its
        calibrator kept (no pass over the data). In quant mode the weights are re-quantized too (a
        bias's int32 scale is its input point's scale times the weight's).

        Raises:
            ValueError: a name that is no point of this model.
            RuntimeError: a point to change holds no statistics (its state was loaded, not calibrated).
        """
        if self._act_grid is not None:
            raise ValueError("set_point_bits: this model runs one fixed grid on every point (act_grid)")
        recipe = self.recipe.replace(point_bits=dict(point_bits))
        grids = self._grids(recipe)
        changed = [q for q in self.quantizers.values() if grids[q.name] != q.grid]
        for q in changed:
            if not q.calibrator.has_data():
                raise RuntimeError(f"layer {q.name!r}: its calibrator holds no statistics (a loaded state); "
                                   "calibrate before changing its bits")
        self.recipe = recipe
        for q in changed:
            q.grid = grids[q.name]
            q.freeze()
        if self._mode == QUANT:
            self.set_mode(QUANT)

    # ----------------------------------------------------------------- hooks
    def quantizer(self, name: str) -> ActQuantizer:
        return self.quantizers[_key(name)]

    def remove(self) -> nn.Module:
        """Detach every hook, restore float weights and un-fold BN; returns the original model."""
        self.set_mode("float")
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._tracker is not None:
            self._tracker.remove()
        unfold_batchnorm(self._folds)
        self._folds = []
        return self.model

    # ----------------------------------------------------------------- modes
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def set_mode(self, mode: str) -> None:
        """``"float"`` (BN still folded, no rounding), ``"observe"`` or ``"quant"`` (fake INT8)."""
        if mode not in ("float", OBSERVE, QUANT):
            raise ValueError(f"unknown mode {mode!r}; valid: float, observe, quant")
        if mode == QUANT:  # checked once here, so forward has no data-dependent branch (export)
            missing = [q.name for q in self.quantizers.values() if not bool(q.calibrated)]
            if missing:
                raise RuntimeError(f"layer {missing[0]!r} was never calibrated; run calibration before quantizing")
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for name in self.plan.compute:
                module = modules[name]
                if mode == QUANT:
                    self._float_weights.setdefault(name, (module.weight.detach().clone(),
                                                          None if module.bias is None else module.bias.detach().clone()))
                    weight, bias = self._float_weights[name]
                    bits = self._layer_bits[name]
                    if bias is not None and name in self.bias_shift:
                        bias = bias - self.bias_shift[name].to(bias)
                    s_in = None if bias is None else self.quantizer(self.plan.compute_inputs[name]).scale
                    scale = self.learned_scales.get(name)
                    if scale is None:
                        scale = self.base_weight_scale(weight, bits)
                    scale, widened = fit_bias(scale.to(weight), bias, s_in)
                    if widened and self.pow2_scales:  # widened for the int32 bias: up to the next power of two
                        scale = pow2_ceil(scale)
                    self._weight_scales[name] = scale
                    if widened:
                        self.widened_channels[name] = widened
                    # AdaRound's weights are on this grid already, unless fit_bias widened a channel since
                    rounded = self.rounded_weights.get(name)
                    fake = quantize_weight(weight if rounded is None else rounded.to(weight), scale, bits)
                    exact = module.weight.dtype == torch.float64  # a model run in float64 sums exactly
                    if exact:  # the same integers times the scale, without float32's rounding of the product
                        fake = torch.round(fake / scale).double() * scale.double()
                    module.weight.copy_(fake)
                    if bias is not None:
                        # int32 bias at scale s_in * s_w (float32, as ONNX holds it), as the integer
                        # kernel adds it. In float64: integers up to 2^29 times a float32 scale are exact.
                        s_acc = (s_in * scale.reshape(-1)).double()
                        self._bias_integers[name] = torch.round(bias.double() / s_acc)
                        if exact:  # the integer executor's own s_in * s_w, unrounded
                            s_acc = s_in.double() * scale.reshape(-1).double()
                        module.bias.copy_(self._bias_integers[name] * s_acc)
                elif name in self._float_weights:
                    weight, bias = self._float_weights.pop(name)
                    module.weight.copy_(weight)
                    if bias is not None:
                        module.bias.copy_(bias)
        for q in self.quantizers.values():
            q.mode = OFF if mode == "float" else mode
        self._mode = mode

    @property
    def mode(self) -> str:
        """The mode :meth:`set_mode` (or calibration) last put the model in."""
        return self._mode

    @property
    def pow2_scales(self) -> bool:
        """Whether the recipe's profile stores power-of-two scales (weights too)."""
        return get_profile(self.recipe.profile).pow2

    def base_weight_scale(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        """The weight scale the recipe chooses before any int32-bias widening: its range method,
        per channel or per tensor, a power of two where the profile says so."""
        scale = weight_scale(weight, bits, self.weight_per_channel, self.weight_range)
        return pow2_ceil(scale) if self.pow2_scales else scale

    def layer_weight_bits(self, name: str) -> int:
        """Weight bits of compute layer ``name`` (8 where ``keep_8bit`` keeps it)."""
        return self._layer_bits[name]

    def bias_integers(self, name: str) -> torch.Tensor | None:
        """The int32 bias (float64 tensor) of ``name`` at scale ``s_in * s_w``; None if it has no bias."""
        self.weight_scale(name)  # raises the same error before quant mode
        return self._bias_integers.get(name)

    def weight_scale(self, name: str) -> torch.Tensor:
        """The weight scale fake-quant uses for ``name`` (set on entering quant mode)."""
        if name not in self._weight_scales:
            raise RuntimeError(f"layer {name!r}: weights are not quantized yet; calibrate or load a state first")
        return self._weight_scales[name]

    # ------------------------------------------------------------ calibration
    @property
    def num_passes(self) -> int:
        """Sweeps over the calibration data the method needs (D: 2, for range then histogram)."""
        return max(q.calibrator.num_passes for q in self.quantizers.values())

    @torch.no_grad()
    def calibrate(self, data: Iterable | Callable[[nn.Module], None], num_batches: int | None = None,
                  input_fn: Callable[[Any], tuple] = default_input_fn,
                  on_batch: Callable[[int, int], None] | None = None,
                  on_pass_end: Callable[[int], None] | None = None,
                  ranges: dict[str, dict[str, torch.Tensor]] | None = None) -> "QuantizedModel":
        """Observe activations over ``data``, then freeze qparams and switch to ``quant`` mode.

        Args:
            data: a re-iterable of batches (a DataLoader), or a ``forward_loop(model)`` callable
                that runs the model on calibration data itself.
            num_batches: use at most this many batches per pass.
            input_fn: turns a batch into the model's positional inputs.
            on_batch: called as ``on_batch(pass_index, passes)`` after each batch (progress bars).
            on_pass_end: called as ``on_pass_end(pass_index)`` after each pass's batches, before the
                next pass and the freeze (merging statistics across processes:
                :func:`hqbench.quant.distributed.sync_pass`).
            ranges: MinMax (B) :meth:`calibration_statistics` of the same model and data. A
                range-then-histogram method (D, percentile, entropy, mse) makes its first pass to
                find exactly those ranges, so it takes them and skips that pass (see
                :meth:`passes_left`); other methods ignore them.

        Raises:
            ValueError: empty calibration data, non-finite activations (naming the layer), or a
                one-shot iterator given to a method that needs several passes.
        """
        passes = self.num_passes
        given = self._take_ranges(ranges) if ranges is not None else 0  # passes already made
        is_loop = callable(data) and not hasattr(data, "__iter__")
        if passes > 1 and not is_loop and iter(data) is data:
            raise ValueError(f"method {self.method!r} makes {passes} passes; pass a DataLoader or list, not an iterator")
        was_training = self.model.training
        self.model.eval()
        self.set_mode("float")
        self._mode = OBSERVE  # the quantizers observe from the first pass on (guard_unrecorded reads it)
        try:
            for index in range(passes):
                for q in self.quantizers.values():
                    q.calibrator.begin_pass(index)
                    q.mode = OBSERVE
                if index < given:
                    seen = 1  # this pass's statistics were given
                elif is_loop:
                    data(self.model)
                    seen = 1
                else:
                    seen = 0
                    for batch in itertools.islice(data, num_batches):
                        self.model(*input_fn(batch))
                        seen += 1
                        if on_batch is not None:
                            on_batch(index, passes)
                if seen == 0:
                    raise ValueError("calibration data is empty: no batch was seen")
                if on_pass_end is not None:
                    on_pass_end(index)
            for q in self.quantizers.values():
                q.freeze()
        except BaseException:
            self.set_mode("float")  # nothing half-observed stays switched on
            raise
        finally:
            self.model.train(was_training)
        self.set_mode(QUANT)
        return self

    def passes_left(self, ranges: dict | None = None) -> int:
        """Passes over the data :meth:`calibrate` makes, given ``ranges`` (or not)."""
        return self.num_passes - (ranges is not None and self._first_pass_is_minmax())

    def _first_pass_is_minmax(self) -> bool:
        return all(isinstance(q.calibrator, RangeThenHistogram) for q in self.quantizers.values())

    def _take_ranges(self, ranges: dict[str, dict[str, torch.Tensor]]) -> int:
        """Load MinMax ranges as the first pass of range-then-histogram calibrators; passes given."""
        if not self._first_pass_is_minmax():
            return 0
        self._check_points(ranges, "ranges")
        with torch.no_grad():
            for q in self.quantizers.values():
                q.calibrator.widen(ranges[q.name]["min_val"].to(q.calibrator.min_val),
                                   ranges[q.name]["max_val"].to(q.calibrator.max_val))
        return 1

    def _check_points(self, per_point: dict, what: str) -> None:
        names = {q.name for q in self.quantizers.values()}
        if set(per_point) != names:
            odd = sorted(set(per_point) ^ names)
            raise ValueError(f"{what} do not match this model's points (first difference: {odd[0]!r})")

    def calibration_statistics(self) -> dict[str, dict[str, torch.Tensor]]:
        """A copy of every point's calibrator statistics (its buffers), keyed by point name.

        They are observed on the float model, so they do not depend on the widths, ``keep_8bit``
        or the weight options: :meth:`calibrate_from` freezes another width from them without a
        pass over the data (only the range choice, e.g. D's search, depends on the grid).
        """
        return {q.name: {k: v.detach().clone() for k, v in q.calibrator.state_dict().items()}
                for q in self.quantizers.values()}

    def calibrate_from(self, statistics: dict[str, dict[str, torch.Tensor]]) -> "QuantizedModel":
        """Freeze qparams from :meth:`calibration_statistics` of the same method and model, then
        switch to ``quant`` mode: :meth:`calibrate` without the passes.

        Raises:
            ValueError: the statistics name other points (another model or float scope).
        """
        self._check_points(statistics, "calibration statistics")
        with torch.no_grad():
            for q in self.quantizers.values():
                with torch.device(q.scale.device):  # torch.ao's observers make tensors while loading theirs
                    q.calibrator.load_state_dict(statistics[q.name])
                q.freeze()
        self.set_mode(QUANT)
        return self

    def use_weights(self, weights: Mapping[str, torch.Tensor] | None = None,
                    scales: Mapping[str, torch.Tensor] | None = None,
                    bias_shift: Mapping[str, torch.Tensor] | None = None) -> "QuantizedModel":
        """Install weight-side choices (AdaRound's rounded weights and learnt scales, a bias shift)
        in place of the ones held, and re-quantize from the kept float weights with them.

        Each argument left None keeps what is held; ``{}`` clears it.
        """
        if weights is not None:
            self.rounded_weights = dict(weights)
        if scales is not None:
            self.learned_scales = dict(scales)
        if bias_shift is not None:
            self.bias_shift = dict(bias_shift)
        self.set_mode(QUANT)
        return self

    # ------------------------------------------------------------------ state
    def quant_state_dict(self) -> dict:
        """Calibrated qparams keyed by layer name (CPU tensors), without the model's weights."""
        return {
            "version": STATE_VERSION, "method": self.method, "act_bits": self.act_bits,
            "weight_bits": self.weight_bits, "weight_per_channel": self.weight_per_channel,
            "keep_8bit": list(self.keep_8bit), "weight_range": self.weight_range,
            "point_bits": [list(p) for p in self.recipe.point_bits],
            "points": {q.name: {k: v.detach().cpu().clone() for k, v in q.state_dict().items()}
                       for q in self.quantizers.values()},
            "bias_shift": {k: v.detach().cpu().clone() for k, v in self.bias_shift.items()},
            "rounded_weights": {k: v.detach().cpu().clone() for k, v in self.rounded_weights.items()},
            "learned_scales": {k: v.detach().cpu().clone() for k, v in self.learned_scales.items()},
            "signature": self.signature(),
        }

    def signature(self) -> dict:
        """What a state is only valid for: each point's producer and grid, each quantized layer's kind
        and weight shape (names alone match across a ReLU and a LeakyReLU model)."""
        layers = {n: self.model.get_submodule(n) for n in self.plan.compute}
        return {"points": {q.name: [self.plan.points[q.name].producer, q.grid.describe()] for q in self.quantizers.values()},
                "layers": {n: [type(m).__name__, list(m.weight.shape)] for n, m in layers.items()}}

    def load_quant_state_dict(self, state: dict) -> None:
        """Restore qparams saved by :meth:`quant_state_dict` and switch to ``quant`` mode.

        Raises:
            ValueError: version, method, bits, layer names, the graph's signature (producers, grids,
                weight shapes) or per-layer shapes differ, or a scale is not finite and positive;
                saying exactly what differs (:mod:`hqbench.quant.state`).
        """
        mine = self.quant_state_dict()
        state = upgrade(state)
        found = problems(state, mine, {n: self.model.get_submodule(n).weight for n in self.plan.compute})
        if found:
            raise ValueError("calibrated state does not match this model: " + "; ".join(found))
        for q in self.quantizers.values():
            with torch.device(q.scale.device):  # torch.ao's observers make tensors while loading theirs
                q.load_state_dict(state["points"][q.name])
        self.bias_shift = {k: v.clone() for k, v in state.get("bias_shift", {}).items()}
        self.rounded_weights = {k: v.clone() for k, v in state.get("rounded_weights", {}).items()}
        self.learned_scales = {k: v.clone() for k, v in state.get("learned_scales", {}).items()}
        self.set_mode(QUANT)

    def layer_report(self, batches: Iterable, input_fn: Callable[[Any], tuple] = default_input_fn,
                     on_batch: Callable[[Any, Any, Any], None] | None = None) -> LayerReport:
        """Per-point SQNR (local and propagated), MSE, cosine and clipping, per-layer weight SQNR and the
        output's SQNR over ``batches``: :func:`hqbench.quant.layer_report.layer_report`."""
        return layer_report(self, batches, input_fn, on_batch)

    def summary(self) -> dict:
        """What was quantized how: points with grids and ranges, and layers kept in float."""
        grids = sorted({q.grid.describe() for q in self.quantizers.values()})
        return {
            "method": self.method,
            "act_range": " & ".join(grids) if len(grids) > 1 else grids[0],
            "points": {q.name: {"grid": q.grid.describe(), "producer": self.plan.points[q.name].producer,
                                "clip": [round(float(v), 6) for v in q.clip]} for q in self.quantizers.values()},
            "float_ops": dict(self.plan.float_ops),
            "weights": f"int{self.weight_bits} symmetric per-{'channel' if self.weight_per_channel else 'tensor'}"
                       + (", power-of-two scales" if self.pow2_scales else "")
                       + (f", {self.weight_range} range" if self.weight_range != "minmax" else "")
                       + (f", {'+'.join(self.keep_8bit)} kept at 8 bits" if self.keep_8bit else ""),
        }
