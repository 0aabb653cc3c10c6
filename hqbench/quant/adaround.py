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
reach the flips 10 000 reach. Two deliberate differences from AIMET's ``AdaroundLoss``: the
reconstruction term is the plain mean squared error (AIMET sums over output channels) and ``beta``
anneals linearly (AIMET: cosine). What these choices measured is in docs/RESULTS.md ("AdaRound").

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

A run reports as it goes: ``logging`` at INFO when each layer (block) starts and ends, with its
reconstruction error and seconds (DEBUG: the error every tenth of its steps), and an optional
``on_progress(done, total, what)`` per layer and every :data:`PROGRESS_EVERY` steps inside one.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from .blocks import Block, BlockReplay, Params, block_reach, find_blocks
from .fake import QUANT
from .forward import default_input_fn, forward_until
from .model import QuantizedModel
from .recipe import AdaRoundSettings
from .samples import _BlockSamples, _crops_match, _layer_samples, _replays
from .scheme import SIGNED_ACTIVATIONS, UNSIGNED_ACTIVATIONS

ZETA, GAMMA = 1.1, -0.1  # rectified-sigmoid stretch (Louizos et al. 2018), as in the paper
#: Steps between two ``on_progress`` calls inside a layer: a 30-second layer on a CPU moves about every 0.3 s.
PROGRESS_EVERY = 10

logger = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]  # on_progress(done, total, what)


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
              learn_bias: bool = False, watch: Callable[[int, torch.Tensor], None] | None = None) -> dict[str, Layer]:
    """Learn ``V`` for ``layers`` together against the output of ``samples`` (one layer's, or a
    block's), with each layer's weight scale (a per-channel factor on it) and bias too where asked;
    returns each layer with its hard-rounded fake-quantized weight and the scale and bias that go with it.
    ``watch(step, error)`` sees each step's reconstruction error (detached) after the step.

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
            idx = torch.randint(0, len(samples.x), (min(batch_size, len(samples.x)),), generator=generator,
                                device=generator.device)
            xb, yb = samples.sample(idx, generator)
            error = ((samples.forward(xb, params()) - yb) ** 2).mean()
            b = _beta(t, iters, beta, warm)
            loss = error if b is None else error + reg * sum((1 - (2 * _h(vn) - 1).abs().pow(b)).sum()
                                                             for vn in v.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if watch is not None:
                watch(t + 1, error.detach())
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


class _Watch:
    """What one unit's optimisation reports as it runs: ``report(step)`` every :data:`PROGRESS_EVERY`
    steps and at the last, the error at DEBUG every tenth of the steps, and the first and last
    errors for the unit's end record (read with ``.item()`` there only: one device sync each). The
    errors are of the soft rounding being learnt; the first step's is about the float weights'."""

    def __init__(self, label: str, iters: int, report: Callable[[int], None] | None):
        self.label, self.iters, self.report = label, iters, report
        self.first = self.last = float("nan")
        self.debug_every = max(1, iters // 10)

    def __call__(self, step: int, error: torch.Tensor) -> None:
        if step == 1:
            self.first = error.item()
        if step == self.iters:
            self.last = error.item()
        if step % self.debug_every == 0 and logger.isEnabledFor(logging.DEBUG):
            logger.debug("AdaRound %s: step %d/%d, reconstruction error %.4g", self.label, step, self.iters,
                         error.item())
        if self.report is not None and (step % PROGRESS_EVERY == 0 or step == self.iters):
            self.report(step)


def _labels(layers: Sequence[str], order: Mapping[str, int], block: Block | None) -> tuple[str, str]:
    """A unit's name for the log (every layer named) and a short one for a progress bar."""
    first, last, n = order[layers[0]] + 1, order[layers[-1]] + 1, len(order)
    if block is None:
        return f"layer {layers[0]!r} ({first}/{n})", f"AdaRound {layers[0]} ({first}/{n})"
    span, more = (f"layer {first}", "") if first == last else (f"layers {first}-{last}", f" +{len(layers) - 1}")
    names = ", ".join(map(repr, layers))
    return (f"block {block.start!r} -> {block.end!r} ({span}/{n}: {names})",
            f"AdaRound {layers[0]}{more} ({span.partition(' ')[2]}/{n})")


def _unit_samples(qmodel: QuantizedModel, unit: Block | str, batches: list, input_fn: Callable, fitted: Rounding,
                  float_params: Mapping[str, Params], s: AdaRoundSettings):
    """A block's samples (None: it does not replay) or a single layer's."""
    if isinstance(unit, Block):
        return _block_samples(qmodel, unit, batches, input_fn, fitted, float_params, s.window)
    return _single_layer_samples(qmodel, unit, batches, input_fn, fitted, s.window, s.activation_loss)


def adaround_weights(qmodel: QuantizedModel, batches: Iterable, input_fn: Callable[[Any], tuple] = default_input_fn,
                     settings: AdaRoundSettings | None = None, on_progress: Progress | None = None) -> Rounding:
    """AdaRound every compute layer of a calibrated ``qmodel``, in execution order.

    Args:
        qmodel: a calibrated :class:`~hqbench.quant.model.QuantizedModel`.
        batches: a re-iterable of calibration batches; every layer's inputs over all of them are
            cached (one layer at a time), so keep it to a calibration-sized set.
        input_fn: turns a batch into the model's positional inputs.
        settings: the optimisation (:class:`~hqbench.quant.recipe.AdaRoundSettings`; None: its
            defaults). ``window`` applies to a block's output where its ops are local (whole maps
            otherwise), ``activation_loss`` to the layers no block holds; ``learn_scale`` learns a
            factor on each layer's per-channel weight scale at :data:`SIDE_LR` (the integer grid
            stays symmetric), ``learn_bias`` its float bias (still a 32-bit integer at ``s_in * s_w``).
        on_progress: called as ``on_progress(done, total, what)`` when each layer (block) starts and
            every :data:`PROGRESS_EVERY` steps inside it; ``done`` counts steps, a block's step once
            per layer it holds, up to ``total = layers * iters``. It only observes.

    Returns:
        A :class:`Rounding`: per layer, the fake-quantized weight (on the symmetric grid of its scale,
        each weight rounded up or down from ``W/s``), and the scale and bias shift learnt.

    Raises:
        ValueError: ``batches`` is a one-shot iterator.
    """
    if iter(batches) is batches:
        raise ValueError("AdaRound sweeps the batches once per layer; pass a list or DataLoader, not an iterator")
    s = AdaRoundSettings() if settings is None else settings
    modules = dict(qmodel.model.named_modules())
    was_mode = qmodel.mode
    g = torch.Generator().manual_seed(s.seed)
    qmodel.set_mode("float")
    float_params = {n: (modules[n].weight.detach().clone(), None if modules[n].bias is None else
                        modules[n].bias.detach().clone()) for n in qmodel.plan.compute}
    fitted = Rounding()
    units = _units(qmodel, s.granularity)
    order = {n: i for i, n in enumerate(qmodel.plan.compute)}
    # counted per layer, so the total holds when a block falls back to its layers
    done, total, began = 0, len(order) * s.iters, time.perf_counter()
    logger.info("AdaRound: %d layers, granularity %s, %d steps each, on %d calibration batches",
                len(order), s.granularity, s.iters, len(batches))
    try:
        while units:
            unit = units.pop(0)
            block = unit if isinstance(unit, Block) else None
            layers = [unit] if block is None else unit.layers
            label, what = _labels(layers, order, block)
            if on_progress is not None:
                on_progress(done, total, what)
            start = time.perf_counter()
            samples = _unit_samples(qmodel, unit, batches, input_fn, fitted, float_params, s)
            if samples is None:
                warnings.warn(f"AdaRound: block {unit.start!r} -> {unit.end!r} does not replay as the model "
                              f"runs it; its layers are rounded one at a time")
                units[:0] = unit.layers
                continue
            logger.info("AdaRound %s starts: %d steps on %d samples (captured in %.1f s)", label, s.iters,
                        len(samples.x), time.perf_counter() - start)
            report = None if on_progress is None else (
                lambda t, base=done, k=len(layers), what=what: on_progress(base + k * t, total, what))
            watch = _Watch(label, s.iters, report)
            grids = {n: Layer(*float_params[n], qmodel.weight_scale(n), 2 ** (qmodel.layer_weight_bits(n) - 1) - 1)
                     for n in layers}
            for n, layer in _optimise(samples, grids, s.iters, s.reg, s.beta, s.batch_size, s.lr, s.warm_start, g,
                                      s.learn_scale, s.learn_bias, watch).items():
                fitted.weights[n] = layer.weight
                if s.learn_scale:
                    fitted.scales[n] = layer.scale
                if s.learn_bias and layer.bias is not None:
                    fitted.bias_shift[n] = float_params[n][1] - layer.bias
            done += len(layers) * s.iters
            logger.info("AdaRound %s done in %.1f s: reconstruction error %.4g at step 1, %.4g at step %d", label,
                        time.perf_counter() - start, watch.first, watch.last, s.iters)
    finally:
        qmodel.set_mode(was_mode)
    logger.info("AdaRound: %d layers done in %.1f s", len(order), time.perf_counter() - began)
    return fitted


__all__ = ["PROGRESS_EVERY", "Rounding", "adaround_weights"]
