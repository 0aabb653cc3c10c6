"""D with guarded tails: Activation Redistribution's search, never clipping more than a set share
of a signed point's values.

Why it exists (docs/RESULTS.md, "the per-layer report"): at 4-bit activations D's per-tensor
error criterion halves the range of the signed points (residual sums, projection outputs, the
logits) and clips about 1 % of their values, the largest-magnitude ones. Clipping the top logits
makes the largest ones equal and costs the arg-max: without 8-bit ends D falls 9-12 Top-1 points
behind Histogram on EfficientNet-Lite0 and MobileNetV1. With ``keep_8bit=first,last`` (the logits
at 8 bits) D's clipping elsewhere is a gain and D beats this calibrator.

A calibrator sees one point's values, not whether they are the network's output, so this one keeps
D's search and statistics and constrains every signed point (a signed grid, or negative values
seen): the range must contain the ``tail`` and ``100 - tail`` percentiles, so at most ``tail``
percent of the values are clipped at each end. Non-negative points (after a ReLU) keep D's range
exactly. D itself is unchanged.
"""

from __future__ import annotations

import torch

from ..grid import QuantGrid
from ..search import search_range
from .base import histogram_quantile
from .redistribution import ActivationRedistribution
from .registry import register_calibrator


class GuardedRedistribution(ActivationRedistribution):
    """D's error-minimising range, constrained on signed points to clip at most ``tail`` % per end.

    Args:
        tail: the largest share of a signed point's values, in percent, clipped at either end;
            in (0, 50). The default 0.03 was chosen at w8a4 on 500 held-out *training* images of
            MobileNetV2-TFLite and EfficientNet-Lite0 (benchmarks/select_option.py, docs/RESULTS.md):
            it ties with 0.1 on their mean Top-1, and the smaller share clips less.
        bins, steps, p: as for :class:`ActivationRedistribution`.

    Raises:
        ValueError: ``tail`` outside (0, 50).
    """

    merge_rule = ActivationRedistribution.merge_rule  # D's statistics, merged as D merges them

    def __init__(self, tail: float = 0.03, bins: int = 2048, steps: int = 256, p: float = 2.0) -> None:
        if not 0.0 < float(tail) < 50.0:
            raise ValueError(f"tail must be a share in percent in (0, 50), got {tail}; e.g. 0.03")
        super().__init__(bins, steps, p)
        self.tail = float(tail)

    def kept_range(self) -> tuple[float, float]:
        """The ``[tail, 100 - tail]`` percentiles of every observed value, exact zeros included."""
        lo, hi = float(self.min_val), float(self.max_val)
        nonzero = float(self.histogram.sum())
        share = self.tail / 100.0 * (nonzero + float(self.zeros)) / nonzero  # of the histogrammed values
        if share >= 0.5:  # nearly every value is an exact zero: there are no tails to keep
            return 0.0, 0.0
        return histogram_quantile(self.histogram, lo, hi, share), histogram_quantile(self.histogram, lo, hi, 1.0 - share)

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = float(self.min_val), float(self.max_val)
        # The points that can hold negative values: a signed grid, or (a profile storing every point
        # unsigned) negative values seen. Under the paper's scheme, the signed grids.
        if not (grid.signed or lo < 0) or hi <= lo or self.histogram.sum() == 0:
            return super().compute_range(grid)
        edges = torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64)
        best_lo, best_hi = search_range(self.histogram, edges, grid, self.steps, self.p, cover=self.kept_range())
        return torch.tensor(best_lo), torch.tensor(best_hi)


register_calibrator("redistribution-guarded", GuardedRedistribution, title="Redistribution, guarded tails",
                    option="tail")
