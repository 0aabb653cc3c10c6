"""AdaRound: learn, per weight, whether to round up or down, layer by layer on calibration data.

Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML 2020): rounding
each weight to nearest minimises each weight's own error, not the layer's output error. AdaRound
writes the quantized weight as ``s * clamp(floor(W/s) + h(V), -qmax, qmax)`` with the rectified
sigmoid ``h``, minimises ``||W x - W~ x~||^2`` (``x~``: the layer's input in the quantized model,
with the layers before it already rounded, the paper's asymmetric reconstruction) plus
``reg * sum(1 - |2h - 1|^beta)``, which pushes each ``h`` to 0 or 1 as ``beta`` anneals from 20 to 2
after a 20 % warm-up without it, and finally rounds ``h >= 0.5`` up. Defaults follow Qualcomm
AIMET's ``AdaroundParameters`` (Adam, lr 1e-3, reg 0.01, beta 20 -> 2, warm start 0.2), except the
iterations: AIMET's 10 000 suit a GPU; the CPU default here is 1000.

The loss is on the layer's raw (pre-activation) output; the scale and clip are the model's own
weight scale (minmax or MSE), so only the rounding direction changes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call

from .fake import QUANT
from .model import QuantizedModel, default_input_fn

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
def _capture(qmodel: QuantizedModel, data: list, input_fn: Callable, name: str, mode: str) -> list[torch.Tensor]:
    """Inputs (quant mode) or raw outputs (float mode) of module ``name`` over ``data``."""
    module = dict(qmodel.model.named_modules())[name]
    seen: list[torch.Tensor] = []
    if mode == QUANT:
        handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    else:
        handle = module.register_forward_hook(lambda m, args, out: seen.append(out.detach()), prepend=True)
    try:
        for batch in data:
            qmodel.model(*input_fn(batch))
    finally:
        handle.remove()
    return seen


def _optimise(module: nn.Module, w: torch.Tensor, scale: torch.Tensor, qmax: int, x: torch.Tensor, y: torch.Tensor,
              iters: int, reg: float, beta: tuple[float, float], batch_size: int, lr: float, warm: float,
              generator: torch.Generator) -> torch.Tensor:
    """Learn ``V`` for one layer; returns the hard-rounded fake-quantized weight.

    Runs with autograd even inside Lightning's test loop (inference mode): every tensor the loss
    sees is cloned out of inference mode first, since inference tensors cannot be saved for backward.
    """
    with torch.inference_mode(False), torch.enable_grad():
        w, scale, x, y = w.clone(), scale.clone(), x.clone(), y.clone()
        bias = None if module.bias is None else module.bias.detach().clone()
        return _optimise_loop(module, w, scale, qmax, x, y, bias, iters, reg, beta, batch_size, lr, warm, generator)


def _optimise_loop(module, w, scale, qmax, x, y, bias, iters, reg, beta, batch_size, lr, warm, generator):
    v = _init_v(w, scale).requires_grad_(True)
    params = {} if bias is None else {"bias": bias}
    opt = torch.optim.Adam([v], lr=lr)
    for t in range(iters):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        with torch.enable_grad():
            out = functional_call(module, {**params, "weight": _soft_weight(w, scale, v, qmax)}, (x[idx],))
            loss = ((out - y[idx]) ** 2).mean()
            b = _beta(t, iters, beta, warm)
            if b is not None:
                loss = loss + reg * (1 - (2 * _h(v) - 1).abs().pow(b)).sum()
            opt.zero_grad()
            loss.backward()
        opt.step()
    return _soft_weight(w, scale, v.detach(), qmax, hard=True)


def adaround_weights(qmodel: QuantizedModel, batches: Iterable, input_fn: Callable[[Any], tuple] = default_input_fn,
                     iters: int = 1000, reg: float = 0.01, beta: tuple[float, float] = (20.0, 2.0),
                     batch_size: int = 32, lr: float = 1e-3, warm_start: float = 0.2,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """AdaRound every compute layer of a calibrated ``qmodel``, in execution order.

    Args:
        qmodel: a calibrated :class:`~hqbench.quant.model.QuantizedModel`.
        batches: a re-iterable of calibration batches; every layer's inputs over all of them are
            cached (one layer at a time), so keep it to a calibration-sized set.
        input_fn: turns a batch into the model's positional inputs.
        iters, reg, beta, lr, warm_start: the optimisation (Adam steps, rounding regulariser weight,
            its annealed exponent (start, end), learning rate, fraction of steps without it).
        batch_size: samples (images, or rows for a Linear) per step.

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
            y = torch.cat(_capture(qmodel, batches, input_fn, name, "float"))
            qmodel.set_mode(QUANT)
            with torch.no_grad():  # layers already rounded feed this one their AdaRound weights
                for done, wq in rounded.items():
                    modules[done].weight.copy_(wq)
            x = torch.cat(_capture(qmodel, batches, input_fn, name, QUANT))
            qmodel.set_mode("float")  # optimise against the float bias, weights restored
            rounded[name] = _optimise(module, w, scale, qmax, x, y, iters, reg, beta, batch_size, lr, warm_start, g)
    finally:
        qmodel.set_mode(QUANT if was_quant else "float")
    return rounded


__all__ = ["adaround_weights"]
