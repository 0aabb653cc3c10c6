"""AdaRound: learn, per weight, whether to round up or down, layer by layer on calibration data.

Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML 2020): rounding
each weight to nearest minimises each weight's own error, not the layer's output error. AdaRound
writes the quantized weight as ``s * clamp(floor(W/s) + h(V), -qmax, qmax)`` with the rectified
sigmoid ``h``, minimises ``||W x - W~ x~||^2`` (``x~``: the layer's input in the quantized model,
with the layers before it already rounded, the paper's asymmetric reconstruction) plus
``reg * sum(1 - |2h - 1|^beta)``, which pushes each ``h`` to 0 or 1 as ``beta`` anneals from 20 to 2
after a 20 % warm-up without it, and finally rounds ``h >= 0.5`` up. The error is taken after the
activation that follows the layer (ReLU6 and the like), as the paper does: what that activation clips
away does not reach the next layer. Defaults follow Qualcomm AIMET's ``AdaroundParameters`` (Adam,
reg 0.01, beta 20 -> 2, warm start 0.2) except the iterations and the learning rate: AIMET's 10 000
steps at lr 1e-3 suit a GPU; the CPU default here is 1000 steps at lr 1e-2. Adam moves ``V`` about
``lr`` a step and a rounding flips only when ``V`` crosses 0, so the tenfold rate lets 1000 steps
reach the flips 10 000 reach. Measured on MobileNetV2-TFLite W4A8 + D (1300 images,
docs/RESULTS.md): lr 1e-3 gave 72.77 % Top-1, lr 1e-2 75.54 %, and with the error after the
activation (these defaults) 75.38 %, the same (McNemar p = 0.93).

Two deliberate differences from AIMET's ``AdaroundLoss``, both measured: the reconstruction term is
the plain mean squared error (AIMET sums over output channels, a ``C_out`` times heavier term against
``reg``) and ``beta`` anneals linearly (AIMET: cosine). With AIMET's two at 1000 steps (lr 1e-3),
the same model fell from 72.77 % to 65.08 %.

What keeps it affordable on a CPU: each capture pass stops at the layer it captures (a forward
runs only the layers before it), and a convolution's loss is taken on a random 16x16 window of its
output per step rather than the whole map (the windows are exact: same padding, stride and groups).
A module called more than once per forward is fitted on its first call.

The scale and clip are the model's own weight scale (minmax or MSE), so only the rounding direction
changes: a weight MSE clips is rounded to the clip whichever way ``h`` points.

``granularity="block"`` is BRECQ's block reconstruction (Li et al., ICLR 2021) on the same
machinery: the layers of a block (:mod:`hqbench.quant.blocks`) share one loss, the squared error
of the block's output, with the block's input taken from the quantized model as above. Two
simplifications, stated: the error is the plain mean squared error (BRECQ weights it by the squared
gradient of the task loss, its Fisher approximation), and the activations inside a block stay float
while its weights are learnt, as in BRECQ's weight reconstruction.

``learn_scale`` and ``learn_bias`` learn more than the rounding against the same loss, as AdaQuant
(Hubara et al., ICML 2021) learns each layer's biases and quantization step with its weights: a
per-output-channel factor on the weight scale (the integers stay on the symmetric grid, so integer
kernels, the export and the state change nothing but that channel's scale) and the float bias
(still stored as an int32 at ``s_in * s_w``). The bias takes up the mean error that the quantized
inputs carry in, which bias correction removes by its mean alone; the scale gives back the
per-channel gain that rounding a few weights (a depthwise kernel's nine) leaves wrong.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import Block, BlockReplay, Params, Reach, block_reach, find_blocks, run_layer
from .fake import QUANT
from .model import QuantizedModel, default_input_fn, forward_until
from .scheme import SIGNED_ACTIVATIONS, UNSIGNED_ACTIVATIONS

GRANULARITIES = ("layer", "block")
ZETA, GAMMA = 1.1, -0.1  # rectified-sigmoid stretch (Louizos et al. 2018), as in the paper


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _init_v(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V)`` equal to the fractional part of ``W/s``: starts at the float weight."""
    rest = (w / scale - torch.floor(w / scale)).clamp(1e-4, 1 - 1e-4)
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)


def _soft_weight(w, scale, v, qmax, hard: bool = False) -> torch.Tensor:
    up = (v >= 0).to(w.dtype) if hard else _h(v)
    return torch.clamp(torch.floor(w / scale) + up, -qmax, qmax) * scale


def _beta(t: int, iters: int, beta: tuple[float, float], warm: float) -> float | None:
    """Annealed ``beta`` at step ``t``; None during the warm-up (no rounding regulariser)."""
    start = warm * iters
    if t < start:
        return None
    rel = (t - start) / max(iters - start, 1)
    return beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - rel)


@torch.no_grad()
def _capture(qmodel: QuantizedModel, data: list, input_fn: Callable, name: str, mode: str) -> torch.Tensor:
    """Inputs (quant mode) or raw outputs (float mode) of module ``name`` (its first call) over ``data``;
    each forward stops at the module."""
    module = dict(qmodel.model.named_modules())[name]
    seen: list[torch.Tensor] = []
    if mode == QUANT:
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out.detach()), prepend=True)
    try:
        forward_until(qmodel.model, data, input_fn, module)
    finally:
        handle.remove()
    if len(seen) != len(data):
        raise RuntimeError(f"AdaRound: layer {name!r} did not run once on every calibration batch")
    return torch.cat(seen)


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
        oy, ox = (int(torch.randint(0, n - w + 1, (1,), generator=g)) for n, w in zip(self.y.shape[2:], self.size))
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
        oy, ox = (int(torch.randint(0, n - w + 1, (1,), generator=g)) for n, w in zip(self.y.shape[2:], self.size))
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


def _activation(qmodel: QuantizedModel, name: str, modules: dict[str, nn.Module]) -> Callable | None:
    """The elementwise activation module that follows layer ``name`` in its chain, as a hook-free
    out-of-place function; None when there is none (or it is fused into a BN module)."""
    act = modules.get(qmodel.plan.chains.get(name, (None, None))[1] or "")
    if not isinstance(act, UNSIGNED_ACTIVATIONS + SIGNED_ACTIVATIONS):
        return None
    # .forward skips the module's hooks (its quantizer); an in-place activation gets a copy
    return (lambda t: act.forward(t.clone())) if getattr(act, "inplace", False) else act.forward


class Layer(NamedTuple):
    """A layer as AdaRound fits it: its float weight and bias, and its weight grid (scale, qmax)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: torch.Tensor
    qmax: int


@dataclass
class Rounding:
    """What AdaRound chose, per layer: the fake-quantized weights, and (with ``learn_scale`` /
    ``learn_bias``) the weight scales and biases learnt with them, the bias as the shift
    ``float bias - learnt bias`` that :class:`~hqbench.quant.model.QuantizedModel` subtracts."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    bias_shift: dict[str, torch.Tensor] = field(default_factory=dict)


#: Adam's rate for the learnt scale (its log) and bias: a change of about 1 (a factor e, one unit of
#: output) over the default 1000 steps; the rounding variables keep ``lr``.
SIDE_LR = 1e-3


def _optimise(samples, layers: Mapping[str, Layer], iters: int, reg: float, beta: tuple[float, float],
              batch_size: int, lr: float, warm: float, generator: torch.Generator, learn_scale: bool = False,
              learn_bias: bool = False) -> dict[str, Layer]:
    """Learn ``V`` for ``layers`` together against the output of ``samples`` (one layer's, or a
    block's), with each layer's weight scale (a per-channel factor on it) and bias too where asked;
    returns each layer with its hard-rounded fake-quantized weight and the scale and bias that go with it.

    Runs with autograd even inside Lightning's test loop (inference mode): every tensor the loss
    sees is made inside this ``inference_mode(False)`` (each step's samples are indexed copies of the
    cached tensors, the layers' tensors are cloned), since inference tensors cannot be saved for backward.
    """
    with torch.inference_mode(False), torch.enable_grad():
        layers = {n: Layer(*(None if t is None else t.clone() for t in layer[:3]), layer.qmax)
                  for n, layer in layers.items()}
        v = {n: _init_v(layer.weight, layer.scale).requires_grad_(True) for n, layer in layers.items()}
        log_gain = {n: torch.zeros_like(layer.scale, requires_grad=True) for n, layer in layers.items()
                    if learn_scale}
        bias = {n: layer.bias.clone().requires_grad_(True) for n, layer in layers.items()
                if learn_bias and layer.bias is not None}
        groups = [{"params": list(v.values()), "lr": lr}]
        if log_gain or bias:
            groups.append({"params": [*log_gain.values(), *bias.values()], "lr": SIDE_LR})
        opt = torch.optim.Adam(groups)

        def params(hard: bool = False) -> dict[str, Params]:
            out = {}
            for n, layer in layers.items():
                w = _soft_weight(layer.weight, layer.scale, v[n], layer.qmax, hard)
                out[n] = (w * log_gain[n].exp() if n in log_gain else w, bias.get(n, layer.bias))
            return out

        for t in range(iters):
            idx = torch.randint(0, len(samples.x), (min(batch_size, len(samples.x)),), generator=generator)
            xb, yb = samples.sample(idx, generator)
            loss = ((samples.forward(xb, params()) - yb) ** 2).mean()
            b = _beta(t, iters, beta, warm)
            if b is not None:
                loss = loss + reg * sum((1 - (2 * _h(vn) - 1).abs().pow(b)).sum() for vn in v.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return {n: Layer(w.detach(), None if b is None else b.detach().clone(),
                             layers[n].scale * log_gain[n].exp() if n in log_gain else layers[n].scale, layers[n].qmax)
                    for n, (w, b) in params(hard=True).items()}


@torch.no_grad()
def _capture_points(qmodel: QuantizedModel, data: list, input_fn: Callable, names: Sequence[str],
                    stop: str) -> dict[str, list[torch.Tensor]]:
    """The tensors of points ``names`` (their quantizers' outputs: fake-quantized in quant mode, the
    float tensor otherwise) over ``data``; each forward stops at point ``stop``."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [qmodel.quantizer(n).register_forward_hook(lambda m, args, out, n=n: seen[n].append(out.detach().clone()))
               for n in names]
    try:
        forward_until(qmodel.model, data, input_fn, qmodel.quantizer(stop))
    finally:
        for h in handles:
            h.remove()
    for n, tensors in seen.items():
        if len(tensors) != len(data):
            raise RuntimeError(f"AdaRound: point {n!r} was not reached once on every calibration batch")
    return seen


def _units(qmodel: QuantizedModel, granularity: str) -> list[Block | str]:
    """What is reconstructed, in execution order: blocks (with ``granularity="block"``), and single
    layers for every layer no block holds."""
    blocks = find_blocks(qmodel.graph, qmodel.plan) if granularity == "block" else []
    first = {b.layers[0]: b for b in blocks}
    inside = {n for b in blocks for n in b.layers}
    return [first[n] if n in first else n for n in qmodel.plan.compute if n in first or n not in inside]


def _quant_mode_with(qmodel: QuantizedModel, fitted: Rounding) -> None:
    """Quant mode, with the layers fitted so far holding what AdaRound chose for them; the model's
    own records are left as they were (the caller installs the result once it is whole)."""
    saved = qmodel.rounded_weights, qmodel.learned_scales, qmodel.bias_shift
    qmodel.rounded_weights, qmodel.learned_scales = fitted.weights, fitted.scales
    qmodel.bias_shift = {**qmodel.bias_shift, **fitted.bias_shift}
    try:
        qmodel.set_mode(QUANT)
    finally:
        qmodel.rounded_weights, qmodel.learned_scales, qmodel.bias_shift = saved


def _single_layer_samples(qmodel: QuantizedModel, name: str, batches: list, input_fn: Callable,
                          fitted: Rounding, window: int | None, activation_loss: bool):
    """Layer ``name``'s samples: its input in the quantized model, its float output as the target."""
    qmodel.set_mode("float")
    y = _capture(qmodel, batches, input_fn, name, "float")
    _quant_mode_with(qmodel, fitted)
    x = _capture(qmodel, batches, input_fn, name, QUANT)
    qmodel.set_mode("float")  # float weights and biases restored
    modules = dict(qmodel.model.named_modules())
    act = _activation(qmodel, name, modules) if activation_loss else None
    return _layer_samples(name, modules[name], x, y, window, act)


def _block_samples(qmodel: QuantizedModel, block: Block, batches: list, input_fn: Callable,
                   fitted: Rounding, float_params: Mapping[str, Params], window: int | None) -> _BlockSamples | None:
    """A block's samples (its input in the quantized model, its float output as the target); None
    when its replay does not give the model's own output."""
    qmodel.set_mode("float")
    y = _capture_points(qmodel, batches, input_fn, [block.end], block.end)[block.end]
    x0 = _capture_points(qmodel, [next(iter(batches))], input_fn, [block.start], block.start)[block.start][0]
    _quant_mode_with(qmodel, fitted)
    x = torch.cat(_capture_points(qmodel, batches, input_fn, [block.start], block.start)[block.start])
    qmodel.set_mode("float")
    modules = dict(qmodel.model.named_modules())
    replay = BlockReplay(block, modules)
    params = {n: float_params[n] for n in block.layers}
    if not _replays(replay, x0, y[0], params):
        return None
    samples = _BlockSamples(replay, x, torch.cat(y), window, block_reach(block, modules))
    if samples.reach is not None and not _crops_match(samples, x0, y[0], params):
        samples.reach = None  # whole maps: slower, never wrong
    return samples


def adaround_weights(qmodel: QuantizedModel, batches: Iterable, input_fn: Callable[[Any], tuple] = default_input_fn,
                     iters: int = 1000, reg: float = 0.01, beta: tuple[float, float] = (20.0, 2.0),
                     batch_size: int = 32, lr: float = 1e-2, warm_start: float = 0.2, window: int | None = 16,
                     seed: int = 0, activation_loss: bool = True, granularity: str = "layer",
                     learn_scale: bool = False, learn_bias: bool = False) -> Rounding:
    """AdaRound every compute layer of a calibrated ``qmodel``, in execution order.

    Args:
        qmodel: a calibrated :class:`~hqbench.quant.model.QuantizedModel`.
        batches: a re-iterable of calibration batches; every layer's inputs over all of them are
            cached (one layer at a time), so keep it to a calibration-sized set.
        input_fn: turns a batch into the model's positional inputs.
        iters, reg, beta, lr, warm_start: the optimisation (Adam steps, rounding regulariser weight,
            its annealed exponent (start, end), learning rate, fraction of steps without it).
        batch_size: samples (images, or rows for a Linear) per step.
        window: a Conv2d's (or block's) loss is taken on one random ``window x window`` patch of its
            output per step (the same patch for the step's images) instead of the whole map; None
            for whole maps.
        activation_loss: take the error after the activation module that follows the layer in its
            chain (ReLU, ReLU6, LeakyReLU ...), as the AdaRound paper does; False: on the raw output.
        granularity: ``"layer"`` (AdaRound), or ``"block"`` (BRECQ's block reconstruction, see
            :mod:`hqbench.quant.blocks`): the layers of a block are rounded together against the
            block's output, ``iters`` steps a block; ``window`` applies to a block's output where
            its ops are local (whole maps otherwise), ``activation_loss`` to the layers no block holds.
        learn_scale: learn each layer's per-channel weight scale with its rounding (a factor on the
            scale the weight range gave; the integer grid stays symmetric), at :data:`SIDE_LR`.
        learn_bias: learn each layer's float bias with it too (layers without a bias keep none);
            it stays a 32-bit integer at ``s_in * s_w`` as before.

    Returns:
        A :class:`Rounding`: per layer, the fake-quantized weight (on the symmetric grid of its scale,
        each weight rounded up or down from ``W/s``), and the scale and bias shift learnt.

    Raises:
        ValueError: ``batches`` is a one-shot iterator.
    """
    if iter(batches) is batches:
        raise ValueError("AdaRound sweeps the batches once per layer; pass a list or DataLoader, not an iterator")
    modules = dict(qmodel.model.named_modules())
    was_quant = any(q.mode == QUANT for q in qmodel.quantizers.values())
    g = torch.Generator().manual_seed(seed)
    qmodel.set_mode("float")
    float_params = {n: (modules[n].weight.detach().clone(), None if modules[n].bias is None else
                        modules[n].bias.detach().clone()) for n in qmodel.plan.compute}
    fitted = Rounding()
    units = _units(qmodel, granularity)
    try:
        while units:
            unit = units.pop(0)
            if isinstance(unit, Block):
                samples = _block_samples(qmodel, unit, batches, input_fn, fitted, float_params, window)
                if samples is None:
                    warnings.warn(f"AdaRound: block {unit.start!r} -> {unit.end!r} does not replay as the model "
                                  f"runs it; its layers are rounded one at a time")
                    units[:0] = unit.layers
                    continue
                layers = unit.layers
            else:
                samples = _single_layer_samples(qmodel, unit, batches, input_fn, fitted, window, activation_loss)
                layers = [unit]
            grids = {n: Layer(*float_params[n], qmodel.weight_scale(n), 2 ** (qmodel.layer_weight_bits(n) - 1) - 1)
                     for n in layers}
            for n, layer in _optimise(samples, grids, iters, reg, beta, batch_size, lr, warm_start, g,
                                      learn_scale, learn_bias).items():
                fitted.weights[n] = layer.weight
                if learn_scale:
                    fitted.scales[n] = layer.scale
                if learn_bias and layer.bias is not None:
                    fitted.bias_shift[n] = float_params[n][1] - layer.bias
    finally:
        qmodel.set_mode(QUANT if was_quant else "float")
    return fitted


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


#: The optimisation settings :func:`adaround_weights` takes, with their defaults (the CLI's
#: ``adaround.KEY=VALUE`` keys); its signature is the one place they are written.
ADAROUND_DEFAULTS: dict[str, Any] = {
    p.name: p.default for p in inspect.signature(adaround_weights).parameters.values()
    if p.default is not inspect.Parameter.empty and p.name != "input_fn"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_pair(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(_is_number(b) and b > 0 for b in v)


# Each setting: what a valid value is, how it reads in an error, and its normal form.
_SETTINGS: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    "iters": (lambda v: _is_int(v) and v >= 1, "a positive integer", int),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer", int),
    "seed": (lambda v: _is_int(v) and v >= 0, "a non-negative integer", int),
    "window": (lambda v: v is None or _is_int(v) and v >= 1, "a positive integer or null", lambda v: v),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number", float),
    "reg": (lambda v: _is_number(v) and v >= 0, "a number >= 0", float),
    "warm_start": (lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1)", float),
    "activation_loss": (lambda v: isinstance(v, bool), "true or false", bool),
    "beta": (_is_pair, "two positive numbers [start, end]", lambda v: (float(v[0]), float(v[1]))),
    "granularity": (lambda v: v in GRANULARITIES, " or ".join(GRANULARITIES), str),
    "learn_scale": (lambda v: isinstance(v, bool), "true or false", bool),
    "learn_bias": (lambda v: isinstance(v, bool), "true or false", bool),
}


def _setting(key: str, value: Any) -> Any:
    valid, what, normal = _SETTINGS[key]
    if not valid(value):
        raise ValueError(f"adaround.{key} must be {what}, got {value!r}")
    return normal(value)


def check_adaround_options(options: Mapping[str, Any] | None, weight_rounding: str = "adaround") -> dict[str, Any]:
    """The settings in ``options`` that differ from :func:`adaround_weights`' defaults, checked.

    Raises:
        ValueError: one line naming an unknown key (the valid ones listed) or a bad value, or
            settings that differ from the defaults with a ``weight_rounding`` other than adaround.
    """
    unknown = sorted(set(options or {}) - set(ADAROUND_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown AdaRound setting {unknown[0]!r}; valid: {', '.join(ADAROUND_DEFAULTS)}")
    checked = {k: _setting(k, v) for k, v in (options or {}).items()}
    changed = {k: v for k, v in checked.items() if v != _setting(k, ADAROUND_DEFAULTS[k])}
    if changed and weight_rounding != "adaround":
        raise ValueError(f"AdaRound settings ({format_adaround_options(changed)}) apply to weight_rounding=adaround, "
                         f"not {weight_rounding}")
    return changed


def format_adaround_options(options: Mapping[str, Any]) -> str:
    """``{"lr": 0.001, "iters": 2000}`` -> ``"iters=2000,lr=0.001"``: the form a result row records."""
    def text(v: Any) -> str:
        if v is None or isinstance(v, bool):
            return "null" if v is None else str(v).lower()
        return "/".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return ",".join(f"{k}={text(v)}" for k, v in sorted(options.items()))


__all__ = ["ADAROUND_DEFAULTS", "Rounding", "adaround_weights", "check_adaround_options", "format_adaround_options"]
