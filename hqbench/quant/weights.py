"""Weight ranges: the symmetric scale of a weight tensor, from its max or from the least squared error.

Weights are stored symmetric on ``[-(2^(b-1)-1), 2^(b-1)-1]`` (per output channel by default), so
only the clip ``c`` (scale ``c / qmax``) is free. ``"minmax"`` takes ``c = max|w|``, as torch.ao's
``PerChannelMinMaxObserver`` and :func:`hqbench.quant.grid.weight_qparams` do. ``"mse"`` picks, per
channel, the clip with the least squared quantization error of that channel's own weights, found by
a sweep over fractions of ``max|w|`` (NVIDIA ModelOpt's ``MseCalibrator`` and Banner et al.,
"Post training 4-bit quantization", NeurIPS 2019, do the same sweep). At 8 bits the two barely
differ; at 4 bits a few outlier weights make ``max|w|`` waste most levels, and clipping them pays.

The error is computed directly on the weights rather than with :mod:`hqbench.quant.search`'s
histogram formula: weights are small, a histogram per channel is not, and the direct sum is exact.
"""

from __future__ import annotations

import torch

from .bits import check_bits
from .grid import _EPS, weight_qparams

WEIGHT_METHODS = ("minmax", "mse")


def check_weight_range(method: object) -> str:
    """``method`` if it names a weight range, else a one-line ValueError listing the valid ones."""
    if method not in WEIGHT_METHODS:
        raise ValueError(f"unknown weight_range {method!r}; valid: {', '.join(WEIGHT_METHODS)}")
    return method


def _check(bits: int, method: str) -> int:
    check_weight_range(method)
    return check_bits(bits, "weight bits")


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Fake-quantize ``weight`` with a symmetric ``scale`` (broadcastable) on ``bits`` bits."""
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale


def weight_error(weight: torch.Tensor, scale: torch.Tensor, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """Summed squared quantization error, per output channel (``[C_out]``) or of the whole tensor (scalar)."""
    err = (quantize_weight(weight, scale, bits) - weight) ** 2
    return err.flatten(1).sum(dim=1) if per_channel else err.sum()


def _mse_scale(weight: torch.Tensor, bits: int, per_channel: bool, candidates: int, start: float) -> torch.Tensor:
    """Least-squared-error scale among ``candidates`` clips in ``[start, 1] * max|w|``; never worse than minmax."""
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    flat = w.flatten(1) if per_channel else w.reshape(1, -1)  # [C, N]: channels searched at once
    best = weight_qparams(w, bits, per_channel).reshape(-1, 1).clone()
    best_err = ((quantize_weight(flat, best, bits) - flat) ** 2).sum(dim=1)
    amax = flat.abs().amax(dim=1, keepdim=True)
    for f in torch.linspace(start, 1.0, candidates, dtype=torch.float64, device="cpu").tolist():  # host floats
        scale = torch.clamp(amax * f / qmax, min=_EPS)
        err = ((quantize_weight(flat, scale, bits) - flat) ** 2).sum(dim=1)
        better = err < best_err  # strict: ties keep the minmax scale
        best = torch.where(better[:, None], scale, best)
        best_err = torch.where(better, err, best_err)
    if per_channel:
        return best.view(-1, *([1] * (weight.dim() - 1))).to(weight.dtype)
    return best.reshape(()).to(weight.dtype)


# The int32 bias of a layer is ``round(b / (s_in * s_w))``. A channel whose weights are (nearly) all
# zero gets a tiny ``s_w``, and its bias then passes 2^31 (MobileNetV2-TFLite's first conv, three of
# EfficientNet-Lite0's stem channels). Such a channel's scale is widened until its bias is at most
# 2^29 accumulator units, leaving 4x headroom for the sum of products; TFLite's converter does the
# same (AdjustWeightsForBiasScale). Its weights are then a few LSB or zero, which they nearly were.
BIAS_HEADROOM = 2.0**29


def fit_bias(scale: torch.Tensor, bias: torch.Tensor | None, input_scale: torch.Tensor | None) -> tuple[torch.Tensor, list[int]]:
    """``scale`` widened where ``|bias| / (input_scale * scale)`` would exceed 2^29; and the widened channels.

    ``scale`` is a weight scale from :func:`weight_scale` (per channel ``[C, 1, ...]`` or a scalar);
    a per-tensor scale is widened as a whole. Returned unchanged when no channel needs it.
    """
    if bias is None:
        return scale, []
    floor = bias.detach().abs().double() / (input_scale.detach().double() * BIAS_HEADROOM)
    flat = scale.reshape(-1).double()
    if scale.numel() == 1:
        floor = floor.max().reshape(1)
    wide = floor > flat
    if not wide.any():
        return scale, []
    fitted = torch.where(wide, floor, flat).to(scale.dtype).reshape(scale.shape)
    channels = torch.nonzero(wide).flatten().tolist() if scale.numel() > 1 else list(range(bias.numel()))
    return fitted, channels


def weight_scale(weight: torch.Tensor, bits: int = 8, per_channel: bool = True, method: str = "minmax",
                 candidates: int = 100, start: float = 0.2) -> torch.Tensor:
    """Symmetric scale of ``weight`` for the grid ``[-(2^(b-1)-1), 2^(b-1)-1]``.

    Args:
        weight: a Conv/Linear weight, output channels first.
        bits: weight bits, 2..16.
        per_channel: one scale per output channel (shape ``[C_out, 1, ...]``) or one scalar.
        method: ``"minmax"`` (clip at ``max|w|``, = :func:`~hqbench.quant.grid.weight_qparams`) or
            ``"mse"`` (per channel, the clip in ``[start, 1] * max|w|`` with the least squared error;
            it keeps the minmax scale unless a candidate is strictly better).
        candidates, start: the ``"mse"`` sweep: ``candidates`` evenly spaced fractions from ``start`` to 1.

    Raises:
        ValueError: unknown ``method`` (listing the valid ones) or ``bits`` outside 2..16.
    """
    bits = _check(bits, method)
    if method == "minmax":
        return weight_qparams(weight, bits, per_channel)
    return _mse_scale(weight, bits, per_channel, candidates, start)


__all__ = ["WEIGHT_METHODS", "fit_bias", "quantize_weight", "weight_error", "weight_scale"]
