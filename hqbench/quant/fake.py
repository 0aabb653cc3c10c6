"""ActQuantizer: one stored tensor's calibrator and frozen qparams, with explicit modes."""

from __future__ import annotations

import torch
from torch import nn

from .calibrators import Calibrator
from .grid import QuantGrid, fake_quantize, range_to_qparams

OBSERVE, QUANT, OFF = "observe", "quant", "off"


class ActQuantizer(nn.Module):
    """Observes a tensor during calibration, fake-quantizes it once frozen.

    Modes: ``observe`` (record statistics, return the input untouched), ``quant`` (fake-quantize
    with frozen qparams) and ``off`` (identity). Nothing is observed outside ``observe``.
    """

    def __init__(self, name: str, calibrator: Calibrator, grid: QuantGrid):
        super().__init__()
        self.name, self.calibrator, self.grid = name, calibrator, grid
        self._mode = OFF
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("clip", torch.zeros(2))  # the chosen [lo, hi], for reports
        self.register_buffer("calibrated", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == OBSERVE:
            if x.numel() == 0:
                return x
            if not torch.isfinite(x).all():
                raise ValueError(f"non-finite activation (NaN or inf) at layer {self.name!r} during calibration")
            self.calibrator.observe(x)
            return x
        if self.mode == QUANT:
            return fake_quantize(x, self.scale, self.zero_point, self.grid.qmin, self.grid.qmax)
        return x

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        """Checked here, once, so ``forward`` has no data-dependent branch for tracers to trip on."""
        if mode not in (OBSERVE, QUANT, OFF):
            raise ValueError(f"layer {self.name!r}: unknown mode {mode!r}; valid: {OBSERVE}, {QUANT}, {OFF}")
        if mode == QUANT:
            self.check_calibrated()
        self._mode = mode

    def check_calibrated(self) -> None:
        """Raise if qparams were never frozen (or loaded): quantizing with scale 1 is silently wrong."""
        if not bool(self.calibrated):
            raise RuntimeError(f"layer {self.name!r} was never calibrated; run calibration before quantizing")

    def freeze(self) -> None:
        """Turn the calibrator's statistics into qparams."""
        if not self.calibrator.has_data():
            raise RuntimeError(f"layer {self.name!r} saw no data during calibration (is it ever executed?)")
        lo, hi = self.calibrator.compute_range(self.grid)
        scale, zp = range_to_qparams(lo, hi, self.grid)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)
        self.clip.copy_(torch.stack([torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)]))
        self.calibrated.fill_(True)

    def extra_repr(self) -> str:
        return f"{self.name}, grid={self.grid.describe()}, mode={self.mode}"
