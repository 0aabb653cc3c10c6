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
from .points import attach_points
from .graph import Graph, record
from .grid import QuantGrid, fake_quantize_weight, weight_qparams
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


class QuantizedModel(nn.Module):
    """A model under the hybrid asymmetric INT8 scheme (see :mod:`hqbench.quant.scheme`).

    Build with :func:`hqbench.quant.prepare` or :func:`hqbench.quant.quantize`.
    """

    def __init__(self, model: nn.Module, example_inputs: tuple, method: str, act_bits: int = 8,
                 weight_bits: int = 8, weight_per_channel: bool = True, float_scopes: tuple[str, ...] = (),
                 act_grid: QuantGrid | None = None):
        super().__init__()
        self.method = canonical_name(method)
        self.act_bits, self.weight_bits, self.weight_per_channel = act_bits, weight_bits, weight_per_channel
        self.model = model
        self.graph: Graph = record(model, example_inputs)
        self.plan: Plan = analyse(self.graph, act_bits, float_scopes)
        self._folds = fold_batchnorm(model, self.plan.folds)
        self.quantizers = nn.ModuleDict(
            {_key(p.name): ActQuantizer(p.name, create_calibrator(self.method), act_grid or p.grid)
             for p in self.plan.points.values()}
        )
        self._float_weights: dict[str, torch.Tensor] = {}
        self._handles, self._tracker = attach_points(model, self.graph, self.plan, self.quantizer)

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
    @property
    def num_passes(self) -> int:
        """Sweeps over the calibration data the method needs (D: 2, for range then histogram)."""
        return max(q.calibrator.num_passes for q in self.quantizers.values())

    @torch.no_grad()
    def calibrate(self, data: Iterable | Callable[[nn.Module], None], num_batches: int | None = None,
                  input_fn: Callable[[Any], tuple] = default_input_fn,
                  on_batch: Callable[[int, int], None] | None = None) -> "QuantizedModel":
        """Observe activations over ``data``, then freeze qparams and switch to ``quant`` mode.

        Args:
            data: a re-iterable of batches (a DataLoader), or a ``forward_loop(model)`` callable
                that runs the model on calibration data itself.
            num_batches: use at most this many batches per pass.
            input_fn: turns a batch into the model's positional inputs.
            on_batch: called as ``on_batch(pass_index, passes)`` after each batch (progress bars).

        Raises:
            ValueError: empty calibration data, non-finite activations (naming the layer), or a
                one-shot iterator given to a method that needs several passes.
        """
        passes = self.num_passes
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
                        if on_batch is not None:
                            on_batch(index, passes)
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
