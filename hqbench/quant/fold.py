"""BatchNorm folding into the preceding Conv/Linear, undoable.

Folding happens before anything is measured, so weights are quantized as the accelerator stores
them (BN inside the conv) and activation ranges are those of the fused output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class _FoldRecord:
    parent: nn.Module
    attr: str
    bn: nn.Module
    conv: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    had_bias: bool


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, attr = name.split(".")
    parent = model
    for p in path:
        parent = getattr(parent, p)
    return parent, attr


def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]]) -> list[_FoldRecord]:
    """Fold each ``(conv, bn)`` pair in place and replace the BN by ``nn.Identity`` (or by its own
    dropout and activation, for BN modules that carry them).

    ``w' = w * g / sqrt(v + eps)`` per output channel and ``b' = (b - m) * g / sqrt(v + eps) + beta``.
    Returns records for :func:`unfold_batchnorm`.
    """
    modules = dict(model.named_modules())
    records = []
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError(f"cannot fold {bn_name}: it keeps no running statistics")
        parent, attr = _parent(model, bn_name)
        rec = _FoldRecord(parent, attr, bn, conv, conv.weight.detach().clone(),
                          None if conv.bias is None else conv.bias.detach().clone(), conv.bias is not None)
        with torch.no_grad():
            inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
            gamma = bn.weight.double() if bn.affine else torch.ones_like(inv_std)
            beta = bn.bias.double() if bn.affine else torch.zeros_like(inv_std)
            factor = gamma * inv_std
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            conv.weight.copy_((conv.weight.double() * factor.view(shape)).to(conv.weight.dtype))
            bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(factor)
            new_bias = ((bias - bn.running_mean.double()) * factor + beta).to(conv.weight.dtype)
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias)
            else:
                conv.bias.copy_(new_bias)
        # A BN that applies its own activation (timm's BatchNormAct2d) keeps the activation.
        act = getattr(bn, "act", None)
        setattr(parent, attr, nn.Sequential(getattr(bn, "drop", nn.Identity()), act) if isinstance(act, nn.Module) else nn.Identity())
        records.append(rec)
    return records


def unfold_batchnorm(records: list[_FoldRecord]) -> None:
    """Undo :func:`fold_batchnorm`: original conv weights/bias and BN modules come back."""
    for rec in reversed(records):
        with torch.no_grad():
            rec.conv.weight.copy_(rec.weight)
            if rec.had_bias:
                rec.conv.bias.copy_(rec.bias)
        if not rec.had_bias:
            rec.conv.bias = None
        setattr(rec.parent, rec.attr, rec.bn)
