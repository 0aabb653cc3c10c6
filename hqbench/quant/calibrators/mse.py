"""Symmetric MSE calibration: the ``[-T, T]`` with the least expected squared error.

This is the MSE calibration of NVIDIA's TensorRT / pytorch-quantization / ModelOpt
(``HistogramCalibrator(method="mse")``, ``MseCalibrator``): one ``amax`` searched for a symmetric
range, because those tools only have symmetric activation grids. It differs from D
(:class:`~.redistribution.ActivationRedistribution`) only for two-sided tensors: D searches both
ends ``[beta, alpha]`` jointly, since the hybrid scheme's shifted grid can put its zero point
anywhere; this class constrains the range to ``[-T, T]``. For one-sided tensors (ReLU outputs) both
search the single free end and give the same range, so this is D's answer there. Kept as its own
method to measure what the asymmetric search buys over the symmetric baseline those tools use.

Same statistics as D (two passes, fixed-bin histogram, exact zeros apart) and the same exact
clip+round error of :func:`hqbench.quant.search.expected_error`, evaluated on the real grid, so the
two differ in nothing but the symmetric constraint. ModelOpt evaluates bin centres (histogram
method) or 10 ``amax`` multipliers on the raw batches (``MseCalibrator``); here every candidate's
error is integrated exactly over each bin.
"""

from __future__ import annotations

import torch

from ..grid import QuantGrid
from .registry import register_calibrator
from ..search import expected_error
from .redistribution import ActivationRedistribution


class SymmetricMSE(ActivationRedistribution):
    """``[-T, T]`` minimising ``E|x - Q(x)|**p`` for two-sided tensors; D's 1-D search otherwise.

    Args:
        bins: histogram bins (fixed, so histograms merge by a sum).
        steps: candidate thresholds ``T``, evenly spaced in ``(0, max|x|]``.
        p: exponent of the error (2: the mean squared error).
    """

    merge_rule = ActivationRedistribution.merge_rule  # the same buffers as D

    def __init__(self, bins: int = 2048, steps: int = 1024, p: float = 2.0) -> None:
        super().__init__(bins=bins, steps=steps, p=p)

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = float(self.min_val), float(self.max_val)
        if not lo < 0 < hi or self.histogram.sum() == 0:
            return super().compute_range(grid)  # one-sided or constant: the same 1-D search as D
        edges = torch.linspace(lo, hi, self.bins + 1, dtype=torch.float64)
        amax = max(-lo, hi)
        t = torch.linspace(amax / self.steps, amax, self.steps, dtype=torch.float64)
        errs = torch.cat([expected_error(self.histogram, edges, -t[s:s + 512], t[s:s + 512], grid, self.p)
                          for s in range(0, len(t), 512)])
        best = float(t[int(torch.argmin(errs))])
        return torch.tensor(-best), torch.tensor(best)


register_calibrator("mse", SymmetricMSE, title="Symmetric MSE")
