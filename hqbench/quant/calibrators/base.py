"""The calibrator contract: observe float activations, then choose one clipping range.

Calibrators only pick ``[lo, hi]``; :func:`hqbench.quant.grid.range_to_qparams` maps every range onto
its grid, so methods differ in nothing else. Statistics are buffers, so ``state_dict`` carries them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..grid import QuantGrid


class Calibrator(nn.Module):
    """Base class. Subclasses implement :meth:`observe` and :meth:`compute_range`.

    ``num_passes`` is how many sweeps over the calibration data the method needs; the driver calls
    :meth:`begin_pass` before each one.
    """

    num_passes: int = 1

    def __init__(self) -> None:
        super().__init__()
        self.current_pass = 0

    def begin_pass(self, index: int) -> None:
        self.current_pass = index

    def observe(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def has_data(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class _MinMaxState(Calibrator):
    """Shared buffers for calibrators that track a running min and max.

    Subclasses implement :meth:`observe_range`, which the quantizer calls directly with the
    ``torch.aminmax(x)`` it has already computed (its finiteness check), saving a reduction.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def has_data(self) -> bool:
        return bool(torch.isfinite(self.min_val) and torch.isfinite(self.max_val))

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach())
        self.observe_range(x, lo, hi)

    def observe_range(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def widen(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Grow ``[min_val, max_val]`` to hold ``[lo, hi]``."""
        self.min_val.copy_(torch.minimum(self.min_val, lo))
        self.max_val.copy_(torch.maximum(self.max_val, hi))

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val.clone(), self.max_val.clone()


class RangeThenHistogram(_MinMaxState):
    """Two passes: the tensor's range, then a histogram on fixed bins over it.

    Fixed bins are what lets histograms from several processes merge by a sum
    (:mod:`hqbench.quant.distributed`). Subclasses fill ``histogram`` in :meth:`observe_histogram`
    and choose the range in :meth:`compute_range`.
    """

    num_passes = 2

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        if int(bins) < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = int(bins)
        self.register_buffer("histogram", torch.zeros(self.bins, dtype=torch.float64))

    def observe_range(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.current_pass == 0:
            self.widen(lo, hi)
        else:
            self.observe_histogram(x.detach())

    def observe_histogram(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
