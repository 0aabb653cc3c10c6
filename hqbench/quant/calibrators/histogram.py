"""C: torch.ao's HistogramObserver (2048 bins, greedy L2 search), behind hqbench's interface.

The paper compares against PyTorch's observer itself, so this reuses it rather than copying its
search; only the final range -> qparams step goes through hqbench's grid.
"""

from __future__ import annotations

import torch
from torch.ao.quantization.observer import HistogramObserver

from ..grid import QuantGrid
from .registry import register_calibrator
from .base import Calibrator, MergeRule


class Histogram(Calibrator):
    """C: the range chosen by ``HistogramObserver._non_linear_param_search``.

    It re-bins as batches widen its range, so its histogram depends on the order it saw them in
    and shards cannot merge exactly: under DDP every rank observes every batch.
    """

    merge_rule = MergeRule(replicate=True)

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        self.observer = HistogramObserver(bins=bins)

    def observe(self, x: torch.Tensor) -> None:
        if x.is_cuda and torch.are_deterministic_algorithms_enabled():
            raise RuntimeError("method C (torch.ao's HistogramObserver) bins with torch.histc, which has no deterministic "
                               "CUDA kernel: run C with trainer.deterministic=false or on the CPU (D, percentile, "
                               "entropy and mse have a deterministic CUDA path)")
        self.observer(x.detach())

    def has_data(self) -> bool:
        return bool(torch.isfinite(self.observer.min_val) and torch.isfinite(self.observer.max_val))

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.observer._non_linear_param_search()
        return lo.detach().clone(), hi.detach().clone()

register_calibrator("histogram", Histogram, title="Histogram", letter="C")
