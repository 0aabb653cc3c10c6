"""QuantizedModel: a float model with BN folded, quantizers attached by hooks, and explicit modes.

Nothing wraps ``forward``: quantizers hang on module hooks (and on a TorchFunctionMode for
functional adds/concats), so a LightningModule or any eager model keeps its own call signature, and
:meth:`QuantizedModel.remove` gives the float model back exactly.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .calibrators import canonical_name, create_calibrator
from .fake import OBSERVE, OFF, QUANT, ActQuantizer
from .fold import fold_batchnorm, unfold_batchnorm
from .graph import FunctionHookMode, Graph, OpTracker, record
from .grid import fake_quantize_weight, weight_qparams
from .scheme import Plan, analyse

STATE_VERSION = 1  # v1: {"version", "method", "act_bits", "weight_per_channel", "points": {name: tensors}}


def _key(name: str) -> str:
    return name.replace(".", "/")  # ModuleDict keys may not contain "."


def default_input_fn(batch: Any) -> tuple:
    """Model inputs from a loader batch: a tensor, or the first element of ``(x, y, ...)``."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)
    raise TypeError(f"cannot find the model input in a batch of type {type(batch).__name__}; pass input_fn=")


class _Regrid:
    """Applies another point's frozen qparams, never observing (the average of grid values)."""

    def __init__(self, source: ActQuantizer):
        self.source = source

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.source(x) if self.source.mode == QUANT else x


class QuantizedModel(nn.Module):
    """A model under the hybrid asymmetric INT8 scheme (see :mod:`hqbench.quant.scheme`).

    Build with :func:`hqbench.quant.prepare` or :func:`hqbench.quant.quantize`.
    """

    def __init__(self, model: nn.Module, example_inputs: tuple, method: str, act_bits: int = 8,
                 weight_bits: int = 8, weight_per_channel: bool = True, float_scopes: tuple[str, ...] = ()):
        super().__init__()
        self.method = canonical_name(method)
        self.act_bits, self.weight_bits, self.weight_per_channel = act_bits, weight_bits, weight_per_channel
        self.model = model
        self.graph: Graph = record(model, example_inputs)
        self.plan: Plan = analyse(self.graph, act_bits, float_scopes)
        self._folds = fold_batchnorm(model, self.plan.folds)
        self.quantizers = nn.ModuleDict(
            {_key(p.name): ActQuantizer(p.name, create_calibrator(self.method), p.grid) for p in self.plan.points.values()}
        )
        self._float_weights: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._tracker: OpTracker | None = None
        self._attach()

    # ----------------------------------------------------------------- hooks
    def quantizer(self, name: str) -> ActQuantizer:
        return self.quantizers[_key(name)]

    def _attach(self) -> None:
        modules = dict(self.model.named_modules())
        kinds = {p.name: self.graph.by_name[p.name].kind for p in self.plan.points.values()}
        # Averaging ops are rounded back onto their input's grid, as the integer kernel does.
        regrid = {n: _Regrid(self.quantizer(src)) for n, src in self.plan.regrid.items()}
        kinds.update({n: self.graph.by_name[n].kind for n in regrid})
        function_points = {n: regrid.get(n) or self.quantizer(n) for n, k in kinds.items() if k == "function"}
        input_points = {int(n.removeprefix("input")): self.quantizer(n) for n, k in kinds.items() if k == "input"}
        # Functional adds/concats are found by key; the tracker recomputes keys as recorded. Our
        # own quantizer arithmetic runs suspended so it never shifts the model's op counters.
        tracker = self._tracker = OpTracker(self.model) if function_points else None

        def run(q, x: torch.Tensor) -> torch.Tensor:
            if tracker is None:
                return q(x)
            with tracker.suspend():
                return q(x)

        # Module points by module and call index within one forward (a module may be reused).
        per_module: dict[str, dict[int, ActQuantizer]] = {}
        for name, kind in kinds.items():
            if kind == "module":
                module_name, _, k = name.partition("#")
                per_module.setdefault(module_name, {})[int(k or 0)] = regrid.get(name) or self.quantizer(name)
        calls: dict[str, int] = {}

        def make_hook(module_name: str, by_call: dict[int, ActQuantizer]):
            def hook(module, args, out):
                k = calls.get(module_name, 0)
                calls[module_name] = k + 1
                return run(by_call[k], out) if k in by_call else None
            return hook

        self._handles.append(self.model.register_forward_pre_hook(lambda m, a: calls.clear()))
        for module_name, by_call in per_module.items():
            self._handles.append(modules[module_name].register_forward_hook(make_hook(module_name, by_call)))
        if input_points:
            def quantize_inputs(module, args):
                return tuple(run(input_points[i], a) if i in input_points else a for i, a in enumerate(args))
            self._handles.append(self.model.register_forward_pre_hook(quantize_inputs))
        if tracker is not None:
            def on_call(key, func, args, kwargs, out):
                q = function_points.get(key)
                return out if q is None else run(q, out)

            mode = FunctionHookMode(tracker, on_call)
            entered = []

            def enter(module, args):
                mode.__enter__()  # hooks must return None, not the mode
                entered.append(True)

            def leave(module, args, output):
                if entered:  # an earlier pre-hook may have raised before enter ran
                    entered.pop()
                    mode.__exit__(None, None, None)

            self._handles.append(self.model.register_forward_pre_hook(enter))
            self._handles.append(self.model.register_forward_hook(leave, always_call=True))

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
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for name in self.plan.compute:
                module = modules[name]
                if mode == QUANT:
                    self._float_weights.setdefault(name, (module.weight.detach().clone(),
                                                          None if module.bias is None else module.bias.detach().clone()))
                    weight, bias = self._float_weights[name]
                    module.weight.copy_(fake_quantize_weight(weight, self.weight_bits, self.weight_per_channel))
                    if bias is not None:
                        # int32 bias at scale s_in * s_w, as the integer kernel adds it.
                        s_in = self.quantizer(self.plan.compute_inputs[name]).scale
                        s_acc = s_in * weight_qparams(weight, self.weight_bits, self.weight_per_channel).reshape(-1)
                        module.bias.copy_(torch.round(bias / s_acc) * s_acc)
                elif name in self._float_weights:
                    weight, bias = self._float_weights.pop(name)
                    module.weight.copy_(weight)
                    if bias is not None:
                        module.bias.copy_(bias)
        for q in self.quantizers.values():
            q.mode = OFF if mode == "float" else mode

    # ------------------------------------------------------------ calibration
    @torch.no_grad()
    def calibrate(self, data: Iterable | Callable[[nn.Module], None], num_batches: int | None = None,
                  input_fn: Callable[[Any], tuple] = default_input_fn) -> "QuantizedModel":
        """Observe activations over ``data``, then freeze qparams and switch to ``quant`` mode.

        Args:
            data: a re-iterable of batches (a DataLoader), or a ``forward_loop(model)`` callable
                that runs the model on calibration data itself.
            num_batches: use at most this many batches per pass.
            input_fn: turns a batch into the model's positional inputs.

        Raises:
            ValueError: empty calibration data, non-finite activations (naming the layer), or a
                one-shot iterator given to a method that needs several passes.
        """
        passes = max(q.calibrator.num_passes for q in self.quantizers.values())
        is_loop = callable(data) and not hasattr(data, "__iter__")
        if passes > 1 and not is_loop and iter(data) is data:
            raise ValueError(f"method {self.method!r} makes {passes} passes; pass a DataLoader or list, not an iterator")
        was_training = self.model.training
        self.model.eval()
        self.set_mode("float")
        try:
            for index in range(passes):
                for q in self.quantizers.values():
                    q.calibrator.begin_pass(index)
                    q.mode = OBSERVE
                if is_loop:
                    data(self.model)
                    seen = 1
                else:
                    seen = 0
                    for batch in itertools.islice(data, num_batches):
                        self.model(*input_fn(batch))
                        seen += 1
                if seen == 0:
                    raise ValueError("calibration data is empty: no batch was seen")
            for q in self.quantizers.values():
                q.freeze()
        finally:
            self.model.train(was_training)
        self.set_mode(QUANT)
        return self

    def integer_executor(self):
        """An :class:`~hqbench.quant.integer.IntegerExecutor` over this calibrated model."""
        from .integer import IntegerExecutor

        return IntegerExecutor(self)

    # ------------------------------------------------------------------ state
    def quant_state_dict(self) -> dict:
        """Calibrated qparams keyed by layer name (CPU tensors), without the model's weights."""
        return {
            "version": STATE_VERSION, "method": self.method, "act_bits": self.act_bits,
            "weight_per_channel": self.weight_per_channel,
            "points": {q.name: {k: v.detach().cpu().clone() for k, v in q.state_dict().items()}
                       for q in self.quantizers.values()},
        }

    def load_quant_state_dict(self, state: dict) -> None:
        """Restore qparams saved by :meth:`quant_state_dict` and switch to ``quant`` mode.

        Raises:
            ValueError: version, method, bits or layer names differ, saying exactly what differs.
        """
        mine = self.quant_state_dict()
        problems = [f"{k}: saved {state.get(k)!r}, model {mine[k]!r}"
                    for k in ("version", "method", "act_bits", "weight_per_channel") if state.get(k) != mine[k]]
        saved, have = set(state.get("points", {})), set(mine["points"])
        if saved - have:
            problems.append(f"layers only in the saved state: {sorted(saved - have)[:10]}")
        if have - saved:
            problems.append(f"layers missing from the saved state: {sorted(have - saved)[:10]}")
        if problems:
            raise ValueError("calibrated state does not match this model: " + "; ".join(problems))
        for q in self.quantizers.values():
            q.load_state_dict(state["points"][q.name])
        self.set_mode(QUANT)

    def summary(self) -> dict:
        """What was quantized how: points with grids and ranges, and layers kept in float."""
        grids = sorted({q.grid.describe() for q in self.quantizers.values()})
        return {
            "method": self.method,
            "act_range": " & ".join(grids) if len(grids) > 1 else grids[0],
            "points": {q.name: {"grid": q.grid.describe(), "producer": self.plan.points[q.name].producer,
                                "clip": [round(float(v), 6) for v in q.clip]} for q in self.quantizers.values()},
            "float_ops": dict(self.plan.float_ops),
            "weights": f"int{self.weight_bits} symmetric per-{'channel' if self.weight_per_channel else 'tensor'}",
        }
