"""Integer grids and the one function that maps a float range onto them.

Every calibrator only chooses a range ``[lo, hi]``; turning it into scale and zero point happens
here, once, so methods A-D differ in nothing but the range they choose. The mapping mirrors
``torch.ao.quantization.observer.UniformQuantizationObserverBase._calculate_qparams`` for affine
per-tensor qschemes, so identical ranges give identical qparams to torch.ao's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bits import check_bits

_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class QuantGrid:
    """An integer grid ``qmin..qmax`` used to store one tensor.

    ``signed=False`` is the hybrid scheme's unsigned grid for non-negative producers (0..255,
    zero point 0); ``signed=True`` the shifted-asymmetric grid (-128..127 with a zero point).
    Deployment profiles (:mod:`hqbench.quant.profiles`) constrain it further: ``symmetric`` fixes a
    signed grid's zero point at 0, ``pow2`` rounds the scale up to a power of two.
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = False
    pow2: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits, "grid bits")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    def describe(self) -> str:
        """Integer range as written in result tables, e.g. ``"0..255"``, ``"-128..127 sym pow2"``."""
        marks = (" sym" if self.symmetric and self.signed else "") + (" pow2" if self.pow2 else "")
        return f"{self.qmin}..{self.qmax}{marks}"


# torch.ao's default x86 activations: quint8 with reduce_range=True, i.e. affine 0..127 everywhere.
TORCH_X86_ACT_GRID = QuantGrid(bits=7, signed=False)


def range_to_qparams(lo: torch.Tensor, hi: torch.Tensor, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that map ``[lo, hi]`` (widened to contain 0) onto ``grid``.

    Zero is always exactly representable, so zero padding and ReLU zeros cost no error; for the
    unsigned grid of a non-negative tensor the zero point is 0.

    >>> s, z = range_to_qparams(torch.tensor(0.0), torch.tensor(2.55), QuantGrid(signed=False))
    >>> round(s.item(), 4), z.item()
    (0.01, 0)
    """
    lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0.0)
    symmetric = grid.symmetric and grid.signed  # torch.ao's symmetric qint8: zero point 0, half the levels each side
    scale = (torch.maximum(-lo, hi) / (float(grid.qmax - grid.qmin) / 2) if symmetric
             else (hi - lo) / float(grid.qmax - grid.qmin))
    scale = torch.clamp(scale, min=_EPS)
    if grid.pow2:
        scale = pow2_ceil(scale)
    if symmetric:
        return scale, torch.zeros_like(scale, dtype=torch.int64)
    zero_point = grid.qmin - torch.round(lo / scale).to(torch.int64)
    zero_point = torch.clamp(zero_point, grid.qmin, grid.qmax)
    return scale, zero_point


def pow2_ceil(scale: torch.Tensor) -> torch.Tensor:
    """The smallest power of two >= ``scale``: a shift instead of a multiplier on integer-only hardware,
    never a narrower range than asked for."""
    return torch.exp2(torch.ceil(torch.log2(scale.double()))).to(scale.dtype)


def _exporting() -> bool:
    """True while torch.jit.trace / torch.onnx.export (TorchScript) or torch.export records the model."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def _channel_axis(scale: torch.Tensor) -> int | None:
    """The one axis along which a broadcastable ``scale`` varies (None: per-tensor)."""
    if scale.numel() == 1:
        return None
    axes = [i for i, n in enumerate(scale.shape) if n > 1]
    if len(axes) != 1:
        raise ValueError(f"a quantization scale must vary along one axis at most, got shape {tuple(scale.shape)}")
    return axes[0]


def fake_quantize_op(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                     qmax: int) -> torch.Tensor:
    """:func:`fake_quantize` as torch's fake-quant ops, which exporters turn into Quantize/DequantizeLinear.

    Not bit-identical to :func:`fake_quantize`: torch's kernels compute ``round(x * (1/scale))``,
    which rounds the other way on some exact ties ``x = (k + 0.5) * scale`` (16k of 2.2M values in a
    tie-heavy test; 139 of 2e8 random values). ONNX QuantizeLinear divides, as :func:`fake_quantize`
    does, so only the traced graph uses these ops and eager results stay those of the exported model.
    """
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    axis = _channel_axis(scale)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero_point.reshape(()).to(torch.int32),
                                                     qmin, qmax)
    zp = torch.broadcast_to(zero_point, scale.shape).reshape(-1).to(torch.int32)
    return torch.fake_quantize_per_channel_affine(x, scale.reshape(-1), zp, axis, qmin, qmax)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize ``x``; ``scale``/``zero_point`` broadcast against ``x``.

    Eager mode computes ONNX QuantizeLinear's formula ``clamp(round(x / scale) + z)`` (ties to
    even) bit for bit; under tracing/export the same step is recorded as torch's fake-quant op so
    the exported graph holds Q/DQ pairs (see :func:`fake_quantize_op`).
    """
    if _exporting():
        return fake_quantize_op(x, scale, zero_point, qmin, qmax)
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def weight_qparams(weight: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """Symmetric weight scale, per output channel by default, on the grid ``[-(2^(b-1)-1), 2^(b-1)-1]``.

    Returns a scale shaped to broadcast against ``weight`` (``[C_out, 1, ...]`` or scalar).
    """
    qmax = 2 ** (bits - 1) - 1
    if per_channel:
        amax = weight.detach().abs().flatten(1).amax(dim=1).view(-1, *([1] * (weight.dim() - 1)))
    else:
        amax = weight.detach().abs().amax()
    return torch.clamp(amax / qmax, min=_EPS)


def fake_quantize_weight(weight: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """Symmetric fake-quant of a weight: zero point 0 on ``[-(2^(b-1)-1), 2^(b-1)-1]``."""
    qmax = 2 ** (bits - 1) - 1
    scale = weight_qparams(weight, bits, per_channel)
    return fake_quantize(weight, scale, torch.zeros((), dtype=torch.int64, device=weight.device), -qmax, qmax)
