"""Entropy calibration: TensorRT's KL-divergence threshold search.

Follows Migacz, "8-bit Inference with TensorRT" (GTC 2017) as NVIDIA's pytorch-quantization and
ModelOpt implement it (``HistogramCalibrator(method="entropy")``): on a histogram of ``|x|``, for
every candidate threshold bin ``i`` the reference distribution ``P`` is the first ``i`` bins with
the clipped tail folded into the last, ``Q`` is those ``i`` bins merged into the grid's number of
levels and spread back evenly over the bins that were non-empty; the threshold minimising
``KL(P || Q)`` wins (the largest one on a tie, as pytorch-quantization picks).

Differences from those tools, all so it works on any grid: the number of levels comes from the grid
given to :meth:`Entropy.compute_range` (``grid.levels // 2`` per side for a two-sided tensor,
``grid.levels`` for a one-sided one) instead of ``2**(bits-1)``; exact zeros are left out of the
histogram (zero is on every grid; pytorch-quantization's ``bins[0] = bins[1]`` patches the same
ReLU spike); the threshold is the right edge of the last kept bin. Two passes, like D: range, then
a fixed-bin histogram, so histograms from several processes merge by a sum.
"""

from __future__ import annotations

import torch

from ..grid import QuantGrid
from .registry import register_calibrator
from .base import RangeThenHistogram, histogram_counts


def kl_divergences(hist: torch.Tensor, levels: int, candidates: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q)`` of TensorRT's calibration for each candidate bin count ``i`` (vectorised).

    Args:
        hist: ``[B]`` counts of ``|x|``.
        levels: quantization levels the kept range ``[0, edge_i]`` is merged into.
        candidates: ``[K]`` integer bin counts ``i`` in ``levels..B``.

    Returns:
        ``[K]`` divergences (``inf`` where ``P`` has mass that ``Q`` cannot represent).
    """
    hist = hist.double()
    k = torch.arange(len(hist))[None, :]  # [1, B]
    i = candidates.long()[:, None]  # [K, 1]
    kept = k < i
    level = torch.where(kept, (k * levels) // i, torch.zeros_like(k))  # bin k of i -> level, exactly
    filled = kept & (hist[None, :] > 0)
    mass = torch.zeros(len(candidates), levels, dtype=torch.float64).scatter_add_(1, level, hist * filled)
    nonempty = torch.zeros_like(mass).scatter_add_(1, level, filled.double())
    q = torch.where(filled, torch.gather(mass / nonempty.clamp_min(1), 1, level), torch.zeros(()).double())
    tail = hist.flip(0).cumsum(0).flip(0)  # tail[j] = sum(hist[j:])
    p = torch.where(kept, hist[None, :], torch.zeros(()).double())
    outliers = torch.where(i < len(hist), tail[i.clamp(max=len(hist) - 1)], torch.zeros(()).double())
    p = p.scatter_add(1, i - 1, outliers)
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True).clamp_min(1e-300)
    ratio = torch.where(p > 0, p / q, torch.ones(()).double())  # p > 0, q == 0 -> inf
    return (p * torch.log(ratio)).sum(1)


def entropy_threshold(hist: torch.Tensor, levels: int, chunk: int = 256) -> int:
    """The bin count ``i`` whose threshold minimises ``KL(P || Q)``; all bins when levels >= bins."""
    bins = len(hist)
    if levels >= bins or hist.sum() == 0:
        return bins
    candidates = torch.arange(levels, bins + 1)
    kl = torch.cat([kl_divergences(hist, levels, candidates[s:s + chunk]) for s in range(0, len(candidates), chunk)])
    best = torch.nonzero(kl == kl.min()).flatten()[-1]  # last argmin: the widest of equal ranges
    return int(candidates[best])


class Entropy(RangeThenHistogram):
    """TensorRT's entropy (KL-divergence) threshold: ``[-T, T]``, or ``[0, T]`` for a one-sided tensor.

    Args:
        bins: histogram bins over ``[0, max|x|]`` (fixed, so histograms merge by a sum).
    """

    merge_rule = RangeThenHistogram.merge_rule  # range, then a histogram on fixed bins

    def observe_histogram(self, x: torch.Tensor) -> None:
        amax = self.amax()
        mag = x.float().reshape(-1).abs()
        mag = mag[mag != 0]
        if mag.numel() and amax > 0:
            self.histogram += histogram_counts(mag, self.bins, 0.0, amax)

    def amax(self) -> float:
        return max(abs(float(self.min_val)), abs(float(self.max_val)))

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = float(self.min_val), float(self.max_val)
        if hi <= lo or self.histogram.sum() == 0:  # constant or all-zero tensor
            return self.min_val.clone(), self.max_val.clone()
        two_sided = lo < 0 < hi
        levels = grid.levels // 2 if two_sided else grid.levels
        t = entropy_threshold(self.histogram, levels) * self.amax() / self.bins
        if two_sided:
            return torch.tensor(-t), torch.tensor(t)
        return (torch.tensor(0.0), torch.tensor(min(t, hi))) if hi > 0 else (torch.tensor(max(-t, lo)), torch.tensor(0.0))


register_calibrator("entropy", Entropy, title="Entropy (KL)")
