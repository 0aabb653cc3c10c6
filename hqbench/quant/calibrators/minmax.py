"""A and B: moving-average and global min/max, as torch.ao's observers compute them."""

from __future__ import annotations

import torch

from .registry import register_calibrator
from .base import RANGE, MergeRule, _MinMaxState


class MinMax(_MinMaxState):
    """B: the global minimum and maximum over all calibration batches."""

    merge_rule = MergeRule(reduce={0: RANGE})

    def observe_range(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.widen(lo, hi)


class MovingMinMax(_MinMaxState):
    """A: exponential moving average of per-batch min/max; the first batch sets the range.

    Same update as ``torch.ao.quantization.MovingAverageMinMaxObserver`` (averaging constant 0.01).
    Across processes the average is the one over the global batch order, replayed from every
    rank's per-batch ranges (equal, bit for bit, to one process).
    """

    merge_rule = MergeRule(replay=True)

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        self.averaging_constant = averaging_constant

    def observe_range(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if not self.has_data():
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            c = self.averaging_constant
            self.min_val.copy_(self.min_val + c * (lo - self.min_val))
            self.max_val.copy_(self.max_val + c * (hi - self.max_val))

register_calibrator("moving_minmax", MovingMinMax, title="Moving MinMax", letter="A")
register_calibrator("minmax", MinMax, title="MinMax", letter="B")
