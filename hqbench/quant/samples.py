"""What a reconstruction step trains on: a layer's output windows, whole samples, a block's crops.

AdaRound and BRECQ (:mod:`hqbench.quant.adaround`) draw each step's loss from one of these. A
window or a crop is exact (the same values as the whole map's), checked on setup where it is not
true by construction (:func:`_crops_match`, :func:`_replays`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import BlockReplay, Params, Reach, run_layer


class _Windows:
    """Random ``size x size`` windows of a Conv2d's output, with the input patches that produce them.

    A step's loss needs a sample of the layer's output, not all of it: on a 112x112 map a 16x16
    window costs 1/49 of the full convolution. The input is stored padded once, so a window runs
    as an unpadded convolution and matches the full one exactly, border windows included.
    """

    def __init__(self, name: str, module: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, size: int,
                 act: Callable | None = None):
        self.name, self.module, self.act = name, module, act
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode  # the module's own padding
        self.x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)  # a new tensor: no clone needed
        self.y = _target(y, act)
        self.size = (min(size, y.shape[2]), min(size, y.shape[3]))
        self.reach = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in
                      zip(self.size, module.stride, module.dilation, module.kernel_size)]

    def sample(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        oy, ox = (int(torch.randint(0, n - w + 1, (1,), generator=g, device=g.device)) for n, w in zip(self.y.shape[2:], self.size))
        (sy, sx), (ry, rx) = self.module.stride, self.reach
        x = self.x[idx, :, oy * sy: oy * sy + ry, ox * sx: ox * sx + rx]
        return x, self.y[idx, :, oy: oy + self.size[0], ox: ox + self.size[1]]

    def forward(self, x: torch.Tensor, params: Mapping[str, Params]) -> torch.Tensor:
        m, (weight, bias) = self.module, params[self.name]
        out = F.conv2d(x, weight, bias, m.stride, 0, m.dilation, m.groups)
        return out if self.act is None else self.act(out)


class _Whole:
    """Any other layer: whole samples (images, or rows of a Linear)."""

    def __init__(self, name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor, act: Callable | None = None):
        self.name, self.module, self.act = name, module, act
        self.x, self.y = x.clone(), _target(y, act)

    def sample(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]

    def forward(self, x: torch.Tensor, params: Mapping[str, Params]) -> torch.Tensor:
        out = run_layer(self.module, x, *params[self.name])
        return out if self.act is None else self.act(out)


class _BlockSamples:
    """A block's samples: its start point's tensor in, its end point's tensor out.

    With ``window`` and a block of local ops (its :class:`~hqbench.quant.blocks.Reach` known), a
    step runs the block on the input crop that one random ``window x window`` patch of its output
    needs, cut at multiples of the block's stride, and compares that patch: the same values as the
    whole map's (checked on setup by :func:`_crops_match`), a fraction of the work on large maps.
    """

    def __init__(self, replay: BlockReplay, x: torch.Tensor, y: torch.Tensor, window: int | None,
                 reach: Reach | None):
        self.replay, self.x, self.y = replay, x.clone(), y.clone()
        self.reach = reach if window and reach is not None and x.dim() == y.dim() == 4 else None
        self.size = None if self.reach is None else (min(window, y.shape[2]), min(window, y.shape[3]))
        if self.size == tuple(y.shape[2:]):
            self.reach = None  # the window is the whole map

    def crop(self, x: torch.Tensor, offset: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """The input crop that output patch ``offset`` needs, and the patch's place in its replay."""
        r, (hin, win) = self.reach, x.shape[2:]
        cuts, keep = [], []
        for o, w, n, s, a, k in zip(offset, self.size, (hin, win), r.stride, r.start, r.size):
            lo = max(0, a + o * s) // s * s  # a multiple of the stride: the crop's pixels line up
            cuts.append(slice(lo, min(n, a + (o + w - 1) * s + k)))
            keep.append(o - lo // s)
        return x[:, :, cuts[0], cuts[1]], tuple(keep)

    def sample(self, idx: torch.Tensor, g: torch.Generator) -> tuple[tuple, torch.Tensor]:
        """``((input, where the patch lies in its replay, or None), target)``."""
        if self.reach is None:
            return (self.x[idx], None), self.y[idx]
        oy, ox = (int(torch.randint(0, n - w + 1, (1,), generator=g, device=g.device)) for n, w in zip(self.y.shape[2:], self.size))
        return self.crop(self.x[idx], (oy, ox)), self.y[idx, :, oy: oy + self.size[0], ox: ox + self.size[1]]

    def forward(self, x: tuple, params: Mapping[str, Params]) -> torch.Tensor:
        x, keep = x
        out = self.replay(x, params)
        if keep is None:
            return out
        (ky, kx), (h, w) = keep, self.size
        return out[:, :, ky: ky + h, kx: kx + w]


@torch.no_grad()
def _crops_match(samples: _BlockSamples, x: torch.Tensor, y: torch.Tensor, params: Mapping[str, Params]) -> bool:
    """Whether the crops of ``samples`` replay (float weights, float ``x``) to the patches of the
    model's own output ``y``, at the four corners and the middle."""
    (h, w), (ph, pw) = y.shape[2:], samples.size
    for oy, ox in {(0, 0), (0, w - pw), (h - ph, 0), (h - ph, w - pw), ((h - ph) // 2, (w - pw) // 2)}:
        crop, (ky, kx) = samples.crop(x, (oy, ox))
        out = samples.replay(crop, params)[:, :, ky: ky + ph, kx: kx + pw]
        if not _close(out, y[:, :, oy: oy + ph, ox: ox + pw], float(y.abs().max())):
            return False
    return True


def _close(out: torch.Tensor, want: torch.Tensor, magnitude: float) -> bool:
    """A replay's output equals the model's, up to float32 summation order at ``magnitude``."""
    return out.shape == want.shape and bool(torch.allclose(out, want, rtol=1e-4, atol=1e-5 * magnitude + 1e-6))


@torch.no_grad()
def _target(y: torch.Tensor, act: Callable | None) -> torch.Tensor:
    """The target after the activation, once: it is elementwise, so it commutes with windows."""
    return y.clone() if act is None else act(y.clone())


def _layer_samples(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor, window: int | None,
                   act: Callable | None):
    if window and isinstance(module, nn.Conv2d) and y.dim() == 4:
        return _Windows(name, module, x, y, window, act)
    return _Whole(name, module, x, y, act)


@torch.no_grad()
def _replays(replay: BlockReplay, x: torch.Tensor, y: torch.Tensor, params: Mapping[str, Params]) -> bool:
    """Whether the replay of a block with float weights on a batch's float input ``x`` (whole, and
    its first sample alone) gives the model's own output ``y``: a block whose ops depend on more
    than their recorded arguments (a reshape to the recording's batch size, say) is not replayed."""
    for n in sorted({1, len(x)}):
        try:
            out = replay(x[:n], params)
        except (RuntimeError, TypeError, ValueError, IndexError):
            return False
        if not _close(out, y[:n], float(y[:n].abs().max())):
            return False
    return True
