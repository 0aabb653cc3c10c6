"""How closely a real-INT8 engine reproduces fake-quant, measured on the same inputs.

Fake-quant is the reference every engine is checked against: the engine's outputs and the
fake-quant model's, batch by batch, in units of the output's grid step (1 LSB). Where an output
is an activation point's (a classifier's logits, a detector's raw head maps), one step is that
point's scale; an output computed in float after the last point (a detector's box decoding) is
compared in absolute terms only. The per-image Top-1 flips and McNemar's test come from the rows'
per-image outcomes (:mod:`hqbench.reporting.agreement`); this module measures the logits.

    meter = Agreement(output_steps(qmodel, example))
    meter.update(qmodel(x), engine(x))
    meter.summary()  # {"outputs": ..., "within_1_lsb": 99.8, "worst_lsb": 2.0, "top1_agree": 99.6, ...}
"""

from __future__ import annotations

import math

import torch
from torch.utils._pytree import tree_flatten

# float32 round-off in a dequantized value (k * s computed two ways) is far below this share of a step
_TOLERANCE = 1e-3


def output_steps(qmodel, example_inputs: tuple) -> list[float | None]:
    """One entry per output tensor (pytree order): the grid step of the activation point that
    produced it, or None where the output is computed after the last point."""
    # the tensors are held until the end, so no later tensor can take a freed one's address
    produced: dict[int, tuple[float, torch.Tensor]] = {}

    def hook(module, args, out):
        if isinstance(out, torch.Tensor):
            produced[out.data_ptr()] = (float(module.scale), out)

    handles = [q.register_forward_hook(hook) for q in qmodel.quantizers.values()]
    try:
        with torch.no_grad():
            leaves = tree_flatten(qmodel.model(*example_inputs))[0]
    finally:
        for h in handles:
            h.remove()
    steps = []
    for v in leaves:
        hit = produced.get(v.data_ptr()) if isinstance(v, torch.Tensor) else None
        steps.append(hit[0] if hit is not None and hit[1].numel() == v.numel() else None)
    return steps


class Agreement:
    """Accumulates an engine's distance from fake-quant over batches (see the module's docstring)."""

    def __init__(self, steps: list[float | None]):
        self.steps = steps
        self.values = self.within = 0  # output values on a grid, and those within one step
        self.worst_lsb = 0.0
        self.max_abs = 0.0  # over every output, on a grid or not
        self.rows = self.same_argmax = 0

    @torch.no_grad()
    def update(self, reference, engine_output) -> None:
        ref, out = tree_flatten(reference)[0], tree_flatten(engine_output)[0]
        if len(ref) != len(out) or len(ref) != len(self.steps):
            raise ValueError(f"the engine returned {len(out)} outputs, fake-quant {len(ref)}")
        for i, (a, b, step) in enumerate(zip(ref, out, self.steps)):
            diff = (a.detach().double() - b.detach().to(a.device).double()).abs()
            if diff.numel() == 0:
                continue
            self.max_abs = max(self.max_abs, float(diff.max()))
            if step:
                lsb = diff / step
                self.values += lsb.numel()
                self.within += int((lsb <= 1 + _TOLERANCE).sum())
                self.worst_lsb = max(self.worst_lsb, float(lsb.max()))
            if i == 0 and a.dim() == 2 and a.shape[1] > 1:  # a classifier's logits: does the top-1 class move?
                self.rows += a.shape[0]
                self.same_argmax += int((a.argmax(1) == b.to(a.device).argmax(1)).sum())

    def summary(self) -> dict:
        """Percentages and worst cases so far; None where nothing of that kind was seen."""
        def share(part: int, whole: int) -> float | None:
            return round(100.0 * part / whole, 3) if whole else None

        return {"outputs_on_grid": self.values, "within_1_lsb": share(self.within, self.values),
                "worst_lsb": round(self.worst_lsb, 2) if self.values else None,
                "max_abs_diff": None if math.isnan(self.max_abs) else round(self.max_abs, 6),
                "rows": self.rows, "top1_agree": share(self.same_argmax, self.rows)}


__all__ = ["Agreement", "output_steps"]
