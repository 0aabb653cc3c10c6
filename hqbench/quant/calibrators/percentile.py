"""Percentile calibration: clip at the p-th percentile of the observed values.

The range is ``[q_(100-p), q_p]``, as torch.ao's ``HistogramObserver`` predecessors, NVIDIA's
pytorch-quantization / ModelOpt ``HistogramCalibrator(method="percentile")`` and McKinstry et al.
(2018) use it: a fixed fraction of outliers is clipped whatever it costs in error, which makes it a
cheap, predictable baseline against the error-minimising searches. Two passes, like D: the first
finds the range, the second fills a histogram with fixed bins over it, so histograms from several
processes merge by a sum. Percentiles are read off the histogram with linear interpolation inside
a bin, so they are within one bin width of the exact ones.
"""

from __future__ import annotations

import torch

from ..grid import QuantGrid
from .registry import register_calibrator
from .base import RangeThenHistogram, histogram_counts, histogram_quantile


class Percentile(RangeThenHistogram):
    """Clip range ``[the (100-p)th percentile, the p-th percentile]``; a one-sided end stays at 0.

    Args:
        percentile: ``p`` in (50, 100]; 100 is the min/max range.
        bins: histogram bins over ``[min, max]`` (fixed, so histograms merge by a sum).

    Raises:
        ValueError: ``percentile`` outside (50, 100] or ``bins`` < 1.
    """

    merge_rule = RangeThenHistogram.merge_rule  # range, then a histogram on fixed bins

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}; e.g. 99.9 or 99.99")
        super().__init__(bins)
        self.percentile = float(percentile)

    def observe_histogram(self, x: torch.Tensor) -> None:
        if self.max_val > self.min_val:
            x = x.float().reshape(-1)
            self.histogram += histogram_counts(x, self.bins, float(self.min_val), float(self.max_val))

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = float(self.min_val), float(self.max_val)
        if hi <= lo or self.histogram.sum() == 0 or self.percentile == 100.0:  # nothing to clip
            return self.min_val.clone(), self.max_val.clone()
        p = self.percentile / 100.0
        new_lo = lo if lo >= 0 else min(histogram_quantile(self.histogram, lo, hi, 1.0 - p), 0.0)
        new_hi = hi if hi <= 0 else max(histogram_quantile(self.histogram, lo, hi, p), 0.0)
        return torch.tensor(new_lo), torch.tensor(new_hi)


register_calibrator("percentile", Percentile, title="Percentile", option="percentile")
