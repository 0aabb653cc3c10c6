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
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.func import functional_call

from .fake import QUANT
from .model import QuantizedModel, default_input_fn, forward_until
from .scheme import SIGNED_ACTIVATIONS, UNSIGNED_ACTIVATIONS

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

    def __init__(self, module: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, size: int):
        self.module = module
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode  # the module's own padding
        self.x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)  # a new tensor: no clone needed
        self.y = y.clone()
        self.size = (min(size, y.shape[2]), min(size, y.shape[3]))
        self.reach = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in
                      zip(self.size, module.stride, module.dilation, module.kernel_size)]

    def sample(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        oy, ox = (int(torch.randint(0, n - w + 1, (1,), generator=g)) for n, w in zip(self.y.shape[2:], self.size))
        (sy, sx), (ry, rx) = self.module.stride, self.reach
        x = self.x[idx, :, oy * sy: oy * sy + ry, ox * sx: ox * sx + rx]
        return x, self.y[idx, :, oy: oy + self.size[0], ox: ox + self.size[1]]

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        m = self.module
        return F.conv2d(x, weight, bias, m.stride, 0, m.dilation, m.groups)


class _Whole:
    """Any other layer: whole samples (images, or rows of a Linear)."""

    def __init__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor):
        self.module, self.x, self.y = module, x.clone(), y.clone()

    def sample(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        return functional_call(self.module, params, (x,))


def _samples(module: nn.Module, x: torch.Tensor, y: torch.Tensor, window: int | None):
    if window and isinstance(module, nn.Conv2d) and y.dim() == 4:
        return _Windows(module, x, y, window)
    return _Whole(module, x, y)


def _activation(qmodel: QuantizedModel, name: str, modules: dict[str, nn.Module]) -> Callable | None:
    """The elementwise activation module that follows layer ``name`` in its chain, as a hook-free
    out-of-place function; None when there is none (or it is fused into a BN module)."""
    act = modules.get(qmodel.plan.chains.get(name, (None, None))[1] or "")
    if not isinstance(act, UNSIGNED_ACTIVATIONS + SIGNED_ACTIVATIONS):
        return None
    # .forward skips the module's hooks (its quantizer); an in-place activation gets a copy
    return (lambda t: act.forward(t.clone())) if getattr(act, "inplace", False) else act.forward


def _optimise(module: nn.Module, w: torch.Tensor, scale: torch.Tensor, qmax: int, x: torch.Tensor, y: torch.Tensor,
              iters: int, reg: float, beta: tuple[float, float], batch_size: int, lr: float, warm: float,
              window: int | None, generator: torch.Generator, act: Callable | None = None) -> torch.Tensor:
    """Learn ``V`` for one layer; returns the hard-rounded fake-quantized weight.

    Runs with autograd even inside Lightning's test loop (inference mode): every tensor the loss
    sees is copied out of inference mode first (cloned, or padded by ``_Windows`` into a new tensor),
    since inference tensors cannot be saved for backward.
    """
    with torch.inference_mode(False), torch.enable_grad():
        w, scale = w.clone(), scale.clone()
        bias = None if module.bias is None else module.bias.detach().clone()
        if act is not None:  # the target after the activation, once: it is elementwise, so it commutes with windows
            with torch.no_grad():
                y = act(y)
        data = _samples(module, x, y, window)
        v = _init_v(w, scale).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=lr)
        for t in range(iters):
            idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
            xb, yb = data.sample(idx, generator)
            out = data.forward(xb, _soft_weight(w, scale, v, qmax), bias)
            if act is not None:  # the error that survives the activation (ReLU6 clips part of it away)
                out = act(out)
            loss = ((out - yb) ** 2).mean()
            b = _beta(t, iters, beta, warm)
            if b is not None:
                loss = loss + reg * (1 - (2 * _h(v) - 1).abs().pow(b)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _soft_weight(w, scale, v.detach(), qmax, hard=True)


def adaround_weights(qmodel: QuantizedModel, batches: Iterable, input_fn: Callable[[Any], tuple] = default_input_fn,
                     iters: int = 1000, reg: float = 0.01, beta: tuple[float, float] = (20.0, 2.0),
                     batch_size: int = 32, lr: float = 1e-2, warm_start: float = 0.2, window: int | None = 16,
                     seed: int = 0, activation_loss: bool = True) -> dict[str, torch.Tensor]:
    """AdaRound every compute layer of a calibrated ``qmodel``, in execution order.

    Args:
        qmodel: a calibrated :class:`~hqbench.quant.model.QuantizedModel`.
        batches: a re-iterable of calibration batches; every layer's inputs over all of them are
            cached (one layer at a time), so keep it to a calibration-sized set.
        input_fn: turns a batch into the model's positional inputs.
        iters, reg, beta, lr, warm_start: the optimisation (Adam steps, rounding regulariser weight,
            its annealed exponent (start, end), learning rate, fraction of steps without it).
        batch_size: samples (images, or rows for a Linear) per step.
        window: a Conv2d's loss is taken on one random ``window x window`` patch of its output per
            step (the same patch for the step's images) instead of the whole map; None for whole maps.
        activation_loss: take the error after the activation module that follows the layer in its
            chain (ReLU, ReLU6, LeakyReLU ...), as the AdaRound paper does; False: on the raw output.

    Returns:
        ``{layer name: fake-quantized weight}``: on the layer's symmetric grid with the model's own
        scale, each weight rounded up or down from ``W/s``.

    Raises:
        ValueError: ``batches`` is a one-shot iterator.
    """
    if iter(batches) is batches:
        raise ValueError("AdaRound sweeps the batches once per layer; pass a list or DataLoader, not an iterator")
    modules = dict(qmodel.model.named_modules())
    was_quant = any(q.mode == QUANT for q in qmodel.quantizers.values())
    g = torch.Generator().manual_seed(seed)
    qmodel.set_mode("float")
    float_w = {n: modules[n].weight.detach().clone() for n in qmodel.plan.compute}
    rounded: dict[str, torch.Tensor] = {}
    try:
        for name in qmodel.plan.compute:
            module = modules[name]
            bits = qmodel.layer_weight_bits(name)
            qmax = 2 ** (bits - 1) - 1
            w = float_w[name]
            scale = qmodel.weight_scale(name)  # the scale fake-quant uses: AdaRound only picks the rounding
            qmodel.set_mode("float")
            y = _capture(qmodel, batches, input_fn, name, "float")
            qmodel.set_mode(QUANT)
            with torch.no_grad():  # layers already rounded feed this one their AdaRound weights
                for done, wq in rounded.items():
                    modules[done].weight.copy_(wq)
            x = _capture(qmodel, batches, input_fn, name, QUANT)
            qmodel.set_mode("float")  # optimise against the float bias, weights restored
            act = _activation(qmodel, name, modules) if activation_loss else None
            rounded[name] = _optimise(module, w, scale, qmax, x, y, iters, reg, beta, batch_size, lr, warm_start,
                                      window, g, act)
    finally:
        qmodel.set_mode(QUANT if was_quant else "float")
    return rounded


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


__all__ = ["ADAROUND_DEFAULTS", "adaround_weights", "check_adaround_options", "format_adaround_options"]
