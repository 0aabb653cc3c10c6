"""ActQuantizer: one stored tensor's calibrator and frozen qparams, with explicit modes."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .calibrators import Calibrator
from .grid import _EPS, QuantGrid, _exporting, fake_quantize, range_to_qparams

OBSERVE, QUANT, OFF = "observe", "quant", "off"


@functools.lru_cache(maxsize=None)
def _takes_range(cls: type) -> bool:
    """Whether ``cls.observe_range(x, lo, hi)`` may stand in for ``cls.observe(x)``: only where both are
    defined by the same class, so a subclass that overrides ``observe`` alone is still called."""
    for klass in cls.__mro__:
        if "observe" in vars(klass):
            return "observe_range" in vars(klass)
    return False


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
        self._training: str | None = None  # quantization-aware training: "fixed" or "learned" scale

    def start_training(self, learn_scale: bool) -> nn.Parameter | None:
        """Quantization-aware training from the frozen qparams: quant mode passes gradients straight
        through the rounding (zero outside the clip range). ``learn_scale``: the scale is trained
        (LSQ's gradient, Esser et al., ICLR 2020) as the parameter ``log_scale``, returned for the
        optimizer: in the log domain an optimizer's step changes every point's scale by the same
        share, whatever its size (Adam's steps do not depend on the gradient's). The zero point
        stays, so the hybrid scheme's grids (unsigned at zero after a ReLU, signed with the
        redistribution zero point elsewhere) are kept. The ``scale`` buffer follows the parameter
        at every forward, so the state always holds the scale in use."""
        self.check_calibrated()
        if self._training is not None:
            raise RuntimeError(f"layer {self.name!r} is training already")
        self._training = "learned" if learn_scale else "fixed"
        if not learn_scale:
            return None
        self.log_scale = nn.Parameter(self.scale.detach().clamp(min=_EPS).log())
        return self.log_scale

    def stop_training(self) -> None:
        """Back to post-training quant mode, keeping the trained scale (in the ``scale`` buffer)."""
        if self._training == "learned":
            with torch.no_grad():
                self.scale.copy_(self._parameters.pop("log_scale").exp().clamp(min=_EPS))
            self._forget_zero_point()
        self._training = None

    def sync_scale(self) -> torch.Tensor:
        """The trained scale (from ``log_scale``, with its gradient), copied into the ``scale`` buffer."""
        scale = self.log_scale.exp().clamp(min=_EPS)
        with torch.no_grad():
            self.scale.copy_(scale)
        return scale

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        zero_point = self._buffers["zero_point"]
        if self._training == "learned":
            scale = self.sync_scale()
            if not torch.is_grad_enabled():
                return fake_quantize(x, self.scale, zero_point, self.grid.qmin, self.grid.qmax)
            # LSQ's gradient scale 1/sqrt(features * qmax) (it matters to SGD; Adam normalises it away).
            factor = 1.0 / math.sqrt(max(1, x[0].numel()) * self.grid.qmax)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x.float(), scale.reshape(1), zero_point.reshape(1).float(), self.grid.qmin, self.grid.qmax,
                factor).to(x.dtype)
        return torch.fake_quantize_per_tensor_affine(x.float(), self.scale.float(), zero_point.to(torch.int32),
                                                     self.grid.qmin, self.grid.qmax).to(x.dtype)

    def forward(self, x: torch.Tensor, owned: bool = False) -> torch.Tensor:
        """``owned``: the caller vouches that nothing else reads ``x`` unquantized, so quant mode
        may overwrite it (see ``points._owned``); otherwise ``x`` is never modified."""
        mode = self._mode
        if mode == QUANT:
            if self._training is not None:
                return self._train_forward(x)
            scale, zero_point = self._buffers["scale"], self._buffers["zero_point"]
            if _exporting() or (x.requires_grad and torch.is_grad_enabled()):
                return fake_quantize(x, scale, zero_point, self.grid.qmin, self.grid.qmax)
            # fake_quantize's values with four in-place passes and at most one new tensor (on CPU a
            # fresh activation-sized tensor costs more than the arithmetic): clamping round(x/s) to
            # [qmin - z, qmax - z] equals clamping round(x/s) + z to [qmin, qmax] and subtracting z,
            # all exact integers in float32 (only the sign of a zero may differ).
            z = self._zero_point_int
            q = x.div_(scale) if owned else torch.div(x, scale)
            return q.round_().clamp_(self.grid.qmin - z, self.grid.qmax - z).mul_(scale)
        if mode == OBSERVE:
            if x.numel() == 0:
                return x
            if x.is_floating_point():
                # min and max are NaN if any value is NaN and infinite if any is: one reduction, no
                # full-size boolean tensor. A calibrator with ``observe_range`` reuses them.
                lo, hi = torch.aminmax(x.detach())
                if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
                    raise ValueError(f"non-finite activation (NaN or inf) at layer {self.name!r} during calibration")
                if _takes_range(type(self.calibrator)):
                    self.calibrator.observe_range(x, lo, hi)
                    return x
            self.calibrator.observe(x)
        return x

    @property
    def _zero_point_int(self) -> int:
        """The zero point as a Python int, so quant mode does not sync with the device on every
        forward. Re-read when the buffer's version counter moves (an inference tensor has none:
        then the value cached when quant mode was entered, qparams frozen or a state loaded)."""
        zp = self._buffers["zero_point"]
        key = (id(zp), None if zp.is_inference() else zp._version)
        if self.__dict__.get("_zp_key") != key:
            self.__dict__["_zp_int"], self.__dict__["_zp_key"] = int(zp), key
        return self.__dict__["_zp_int"]

    def _forget_zero_point(self) -> None:
        self.__dict__.pop("_zp_key", None)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._forget_zero_point()

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
            self._forget_zero_point()
        self._mode = mode

    def check_calibrated(self) -> None:
        """Raise if qparams were never frozen (or loaded): quantizing with scale 1 is silently wrong."""
        if not bool(self.calibrated):
            raise RuntimeError(f"layer {self.name!r} was never calibrated; run calibration before quantizing")

    def freeze(self) -> None:
        """Turn the calibrator's statistics into qparams."""
        if not self.calibrator.has_data():
            raise RuntimeError(f"layer {self.name!r} saw no data during calibration (is it ever executed?)")
        # The range search runs once, where the statistics are: the tensors a search makes without
        # naming a device (torch's HistogramObserver's among them) land there too, not on the CPU.
        with torch.device(self.scale.device):
            lo, hi = self.calibrator.compute_range(self.grid)
            scale, zp = range_to_qparams(lo, hi, self.grid)
            clip = torch.stack([torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)])
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)
        self._forget_zero_point()
        self.clip.copy_(clip)
        self.calibrated.fill_(True)

    def extra_repr(self) -> str:
        return f"{self.name}, grid={self.grid.describe()}, mode={self.mode}"
