"""Quantization points attached to an eager model by hooks: no torch.fx, no wrapped ``forward``.

* module outputs: a forward hook on the module (per call index, since a module may be reused);
* network inputs: a forward pre-hook on the root module;
* functional ops (``x + y``, ``torch.cat``, ``F.relu`` in a composite block): a TorchFunctionMode
  entered for the duration of the root forward, matching ops by the keys recorded in the graph.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .fake import QUANT, ActQuantizer
from .graph import FunctionHookMode, Graph, OpTracker
from .scheme import Plan


_no_torch_function = torch._C.DisableTorchFunction


class _Regrid:
    """Applies another point's frozen qparams, never observing (the average of grid values)."""

    def __init__(self, source: ActQuantizer):
        self.source = source

    def __call__(self, x: torch.Tensor, owned: bool = False) -> torch.Tensor:
        return self.source(x, owned) if self.source.mode == QUANT else x


def _owned(out, args, module: nn.Module | None = None) -> bool:
    """Whether the quantizer may overwrite ``out`` in place (one pass less, and no fresh allocation,
    which on CPU costs more than the arithmetic): a new tensor the op made, or the output of an
    in-place activation (whose input was already overwritten); never a view, a parameter, an
    input the op passed through (``nn.Identity``, eval ``Dropout``) or anything autograd records."""
    if type(out) is not torch.Tensor or out._base is not None or (out.requires_grad and torch.is_grad_enabled()):
        return False
    if module is not None and getattr(module, "inplace", False) is True:
        return True
    return not any(out is a for a in args)


def attach_points(model: nn.Module, graph: Graph, plan: Plan,
                  quantizer: Callable[[str], ActQuantizer]) -> tuple[list, OpTracker | None]:
    """Hook ``quantizer(name)`` onto every point of ``plan``; returns (hook handles, tracker)."""
    handles: list = []
    modules = dict(model.named_modules())
    kinds = {p.name: graph.by_name[p.name].kind for p in plan.points.values()}
    # Averaging ops are rounded back onto their input's grid, as the integer kernel does.
    regrid = {n: _Regrid(quantizer(src)) for n, src in plan.regrid.items()}
    kinds.update({n: graph.by_name[n].kind for n in regrid})
    function_points = {n: regrid.get(n) or quantizer(n) for n, k in kinds.items() if k == "function"}
    input_points = {int(n.removeprefix("input")): quantizer(n) for n, k in kinds.items() if k == "input"}
    # Functional ops are found by key; the tracker recomputes keys as recorded. Our own quantizer
    # arithmetic runs outside the mode (or suspended) so it never shifts the model's op counters.
    tracker = OpTracker(model) if function_points else None

    if tracker is None:
        def run(q, x: torch.Tensor, owned: bool = False) -> torch.Tensor:
            return q(x, owned)
    else:
        def run(q, x: torch.Tensor, owned: bool = False) -> torch.Tensor:
            if type(x) is torch.Tensor:
                # With __torch_function__ off the mode never sees (nor counts) the quantizer's own
                # ops, which skip its Python dispatch: one C++ guard instead of a detour per op.
                with _no_torch_function():
                    return q(x, owned)
            with tracker.suspend():  # a tensor subclass keeps its own __torch_function__
                return q(x, owned)

    # Module points by module and call index within one forward (a module may be reused).
    per_module: dict[str, dict[int, ActQuantizer]] = {}
    for name, kind in kinds.items():
        if kind == "module":
            module_name, _, k = name.partition("#")
            per_module.setdefault(module_name, {})[int(k or 0)] = regrid.get(name) or quantizer(name)
    calls: dict[str, int] = {}

    def make_hook(module_name: str, by_call: dict[int, ActQuantizer]):
        def hook(module, args, out):
            k = calls.get(module_name, 0)
            calls[module_name] = k + 1
            return run(by_call[k], out, _owned(out, args, module)) if k in by_call else None
        return hook

    handles.append(model.register_forward_pre_hook(lambda m, a: calls.clear()))
    for module_name, by_call in per_module.items():
        handles.append(modules[module_name].register_forward_hook(make_hook(module_name, by_call)))
    if input_points:
        def quantize_inputs(module, args):
            return tuple(run(input_points[i], a) if i in input_points else a for i, a in enumerate(args))
        handles.append(model.register_forward_pre_hook(quantize_inputs))
    if tracker is not None:
        def on_call(key, func, args, kwargs, out):
            q = function_points.get(key)
            return out if q is None else run(q, out, _owned(out, (*args, *kwargs.values())))

        mode = FunctionHookMode(tracker, on_call)
        entered = []

        def enter(module, args):
            mode.__enter__()  # hooks must return None, not the mode
            entered.append(True)

        def leave(module, args, output):
            if entered:  # an earlier pre-hook may have raised before enter ran
                entered.pop()
                mode.__exit__(None, None, None)

        handles.append(model.register_forward_pre_hook(enter))
        handles.append(model.register_forward_hook(leave, always_call=True))
    return handles, tracker


def guard_unrecorded(model: nn.Module, graph: Graph, quantizing: Callable[[], bool]) -> list:
    """Hooks that refuse a conv or linear layer the recording forward never ran, while ``quantizing()``.

    Such a layer (a branch the example inputs did not take) has no points: observed or fake-quantized,
    it would silently run in float between clamped inputs. Returns the hook handles.
    """
    recorded = {id(n.target) for n in graph.nodes if n.kind == "module"}

    def refuse(module, args, _name=""):
        if quantizing():
            raise RuntimeError(
                f"layer {_name!r} ({type(module).__name__}) ran, but not in the forward that recorded the graph "
                "(a branch the example inputs did not take): it has no quantization points and would run in "
                "float. Record the graph with example inputs that take every branch")

    return [m.register_forward_pre_hook(lambda mod, args, _name=name: refuse(mod, args, _name))
            for name, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and id(m) not in recorded]
