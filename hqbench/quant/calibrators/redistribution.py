"""D: Activation Redistribution — the clip range that minimises expected quantization error.

The paper's full text is unavailable; this is the project's reconstruction from its abstract
("takes data distribution into consideration", "balance the trade-off between clipping range and
quantization resolution"). Two passes over the calibration data: the first finds each tensor's
range, the second fills a fixed-bin histogram over it (fixed bins so histograms from several
ranks merge by a sum). The range ``[beta, alpha]`` is then searched on that histogram for the grid
the hybrid scheme really uses: a 1-D search over alpha for non-negative tensors, a joint search
over both ends for signed ones (see :mod:`hqbench.quant.search`).
"""

from __future__ import annotations

import torch

from ..grid import QuantGrid
from ..search import search_range
from .registry import register_calibrator
from .base import RANGE, SUM, MergeRule, RangeThenHistogram, histogram_counts

class ActivationRedistribution(RangeThenHistogram):
    """D: two-pass histogram and error-minimising ``[beta, alpha]``.

    Args:
        bins: histogram bins (fixed, so histograms merge by a sum).
        steps: candidate resolution of the range search.
        p: exponent of the error minimised, ``E|x - Q(x)|**p``; 2 is the mean squared error.
            Larger ``p`` weighs clipping errors more. On held-out ImageNet *training* images
            (benchmarks/select_option.py, docs/RESULTS.md) p in 2..4 differed by no
            more than 5 of 500 images, so the default stays the MSE.
    """

    merge_rule = MergeRule(reduce={0: RANGE, 1: {"histogram": SUM, "zeros": SUM}})

    def __init__(self, bins: int = 2048, steps: int = 256, p: float = 2.0) -> None:
        super().__init__(bins)
        self.steps, self.p = steps, p
        self.register_buffer("zeros", torch.zeros((), dtype=torch.float64))
        self._fixed = None

    def begin_pass(self, index: int) -> None:
        super().begin_pass(index)
        self._fixed = None  # pass-0 range as floats and the bin of exact zeros, set on pass 1's first batch

    def observe_histogram(self, x: torch.Tensor) -> None:
        """Pass 1: count exact zeros apart, histogram the rest over the fixed pass-0 range.

        The same counts as histogramming ``x[x != 0]`` without building that copy: exact zeros are
        counted, the whole tensor is histogrammed, and the zeros are taken back out of the bin that
        holds 0.
        """
        x = x.float().reshape(-1)
        if self._fixed is None:  # once per pass: no host sync per batch
            lo, hi = float(self.min_val), float(self.max_val)
            zero_bin = histogram_counts(torch.zeros(1, device=x.device), self.bins, lo, hi) if hi > lo else None
            self._fixed = (lo, hi, zero_bin)
        lo, hi, zero_bin = self._fixed
        zeros = x.numel() - torch.count_nonzero(x)
        self.zeros += zeros
        if zero_bin is not None:
            self.histogram += histogram_counts(x, self.bins, lo, hi) - zeros * zero_bin

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = float(self.min_val), float(self.max_val)
        if hi <= lo or self.histogram.sum() == 0:  # constant tensor: nothing to trade off
            return self.min_val.clone(), self.max_val.clone()
        edges = torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64)
        best_lo, best_hi = search_range(self.histogram, edges, grid, self.steps, self.p)
        return torch.tensor(best_lo), torch.tensor(best_hi)

register_calibrator("redistribution", ActivationRedistribution, title="Activation Redistribution", letter="D", option="p")
