"""Per-layer error of a calibrated :class:`~hqbench.quant.model.QuantizedModel`: where the error is
made, and where it grows.

For every activation point, over the same batches:

* ``local_db``: the SQNR of the point's own fake-quantization of the *float* activation with its
  frozen qparams (only it quantized): the error its range alone makes;
* ``propagated_db``, ``mse``, ``cosine``: the point's activation in the fully quantized model
  against the float model's: the error that reaches it through every layer before it, its own included;
* ``clipped_share``: the share of float values outside its range (widened to contain 0, as
  :func:`~hqbench.quant.grid.range_to_qparams` widens it);

and for every quantized weight layer the SQNR of its quantized weights against the float ones.

One float and one quantized forward per batch, both observed by forward hooks on the quantizer
modules themselves (the points the recorded graph placed). Statistics are running sums; what is
held is one batch's float activations at every point, for the quantized pass to compare with
(MobileNetV2 at 224x224: 28 MB an image).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .fake import OFF, QUANT

# Sums kept per point, in this order (float64, on the model's device until the end).
_SIGNAL, _LOCAL, _CLIPPED, _NOISE, _QUANT_SQ = range(5)


@dataclass
class LayerReport:
    """What :func:`layer_report` measured; ``points`` in execution order, ``layers`` in graph order."""

    method: str
    weight_bits: int
    act_bits: int
    batches: int
    points: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    output: dict = field(default_factory=dict)

    def worst(self, n: int = 10) -> list[dict]:
        """The ``n`` points with the lowest propagated SQNR (never-run points last)."""
        ranked = sorted(self.points, key=lambda p: math.inf if p["propagated_db"] is None else p["propagated_db"])
        return ranked[:n]

    def to_dict(self) -> dict:
        return asdict(self)


def _db(signal: float, noise: float) -> float | None:
    """SQNR in dB; ``inf`` where nothing differs, None where there is no signal to compare."""
    if signal <= 0.0:
        return None
    return math.inf if noise <= 0.0 else 10.0 * math.log10(signal / noise)


def _sq(a: torch.Tensor) -> torch.Tensor:
    """``sum(a * a)`` in float64, for the small tensors (weights, outputs) summed whole."""
    return a.detach().double().square().sum()


def _cosine(dot: float, a_sq: float, b_sq: float) -> float | None:
    return dot / math.sqrt(a_sq * b_sq) if a_sq > 0.0 and b_sq > 0.0 else None


def _leaves(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model's output (a tensor, or tuples, lists and dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return [t for item in items for t in _leaves(item)]


class _Probe:
    """Forward hooks on every ActQuantizer. In the float pass (quantizers off) a hook measures the
    point's local error and keeps a copy of the float activation; in the quantized pass it compares
    the quantizer's output with that copy. Calls are paired by their index within one forward: a
    pass-through averaging op re-applies its source's quantizer after the source's own call, in the
    quantized pass only, and those extra calls have no float partner (and are skipped).

    The copies and one scratch tensor are reused from batch to batch: on a CPU a fresh
    activation-sized tensor costs more than the arithmetic on it. Squares are summed by ``sum``
    (torch's cascade summation: 1e-9 relative over 10M values, where a float32 dot is off by 1e-5)."""

    def __init__(self, quantizers: list, device: torch.device):
        self.sums = {q.name: torch.zeros(5, dtype=torch.float64, device=device) for q in quantizers}
        self.numel = dict.fromkeys(self.sums, 0)
        self.observed = dict.fromkeys(self.sums, 0)  # calls seen per pass: the two passes must agree
        self.compared = dict.fromkeys(self.sums, 0)
        self.depth: dict[str, int] = {}  # first-call order in the float pass
        # read once, not in every hook
        self.grid = {q.name: (q.scale, int(q.zero_point), q.grid.qmin, q.grid.qmax) for q in quantizers}
        self.bounds = {q.name: (min(float(q.clip[0]), 0.0), max(float(q.clip[1]), 0.0)) for q in quantizers}
        self.floats: dict[str, list[torch.Tensor]] = {}  # per point, per call: this batch's, flat
        self.filled: dict[str, int] = {}  # how many of them this batch's float pass wrote
        self._scratch: dict[tuple, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.quantized = False
        self.handles = [q.register_forward_hook(self._hook) for q in quantizers]

    def start(self, quantized: bool) -> None:
        self.quantized = quantized
        self.calls.clear()
        if not quantized:
            self.filled.clear()

    def scratch(self, flat: torch.Tensor) -> torch.Tensor:
        """A temporary as long as ``flat``: the front of one buffer per dtype and device."""
        key = (flat.dtype, flat.device)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < flat.numel():
            buf = self._scratch[key] = torch.empty_like(flat)
        return buf[:flat.numel()]

    def _hook(self, q: nn.Module, args, out) -> None:
        if not (isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel()):
            return
        k = self.calls.get(q.name, 0)
        self.calls[q.name] = k + 1
        (self._compare if self.quantized else self._observe)(q.name, k, out.detach().reshape(-1))

    def _keep(self, name: str, k: int, x: torch.Tensor) -> None:
        """Copy call ``k``'s float activation: a later in-place op (a residual ``+=``) may overwrite it."""
        kept = self.floats.setdefault(name, [])
        if k < len(kept) and (kept[k].numel(), kept[k].dtype) == (x.numel(), x.dtype):
            kept[k].copy_(x)
        else:
            kept[k:k + 1] = [x.clone()]
        self.filled[name] = k + 1

    def _observe(self, name: str, k: int, x: torch.Tensor) -> None:
        self.depth.setdefault(name, len(self.depth))
        scale, z, qmin, qmax = self.grid[name]
        lo, hi = self.bounds[name]
        t = self.scratch(x)
        signal = torch.mul(x, x, out=t).sum()
        # the quantizer's own arithmetic (ActQuantizer.forward's quant mode), minus x
        local = torch.div(x, scale, out=t).round_().clamp_(qmin - z, qmax - z).mul_(scale).sub_(x).square_().sum()
        # Counted only on a side the extremes cross. x > hi exactly where x - hi > 0 (two floats differ
        # by 0 only if equal); float passes beat a bool tensor's count, and are exact up to 2^24 values.
        low, high = torch.aminmax(x)
        clipped = torch.zeros((), dtype=x.dtype, device=x.device)
        if high > hi:
            clipped += torch.sub(x, hi, out=t).clamp_(min=0).sign_().sum()
        if low < lo:
            clipped -= torch.sub(x, lo, out=t).clamp_(max=0).sign_().sum()
        self.sums[name][_SIGNAL:_CLIPPED + 1] += torch.stack([signal, local, clipped]).double()
        self.numel[name] += x.numel()
        self.observed[name] += 1
        self._keep(name, k, x)

    def _compare(self, name: str, k: int, out: torch.Tensor) -> None:
        if k >= self.filled.get(name, 0):
            return
        f = self.floats[name][k]
        if f.numel() != out.numel():
            raise RuntimeError(f"layer report: point {name!r} has {f.numel()} values in the float forward but "
                               f"{out.numel()} in the quantized one")
        t = self.scratch(out)
        noise = torch.sub(out, f, out=t).square_().sum()
        self.sums[name][_NOISE:_QUANT_SQ + 1] += torch.stack([noise, torch.mul(out, out, out=t).sum()]).double()
        self.compared[name] += 1

    def release(self) -> None:
        for h in self.handles:
            h.remove()
        self.floats.clear()
        self._scratch.clear()


class _Swap:
    """The float and the quantized weights of every compute layer, so a batch switches between the two
    passes by copying weights, not by quantizing them again (``set_mode`` runs once per mode, not per batch)."""

    def __init__(self, qmodel):
        modules = dict(qmodel.model.named_modules())
        self.params = [p for n in qmodel.plan.compute for p in (modules[n].weight, modules[n].bias) if p is not None]
        qmodel.set_mode("float")
        self.float = [p.detach().clone() for p in self.params]
        qmodel.set_mode(QUANT)  # raises here if the model was never calibrated
        self.quant = [p.detach().clone() for p in self.params]
        self.quantizers = list(qmodel.quantizers.values())

    def use(self, quantized: bool) -> None:
        for p, v in zip(self.params, self.quant if quantized else self.float):
            p.copy_(v)
        for q in self.quantizers:
            q.mode = QUANT if quantized else OFF


def _point_rows(qmodel, probe: _Probe) -> list[dict]:
    rows = []
    sums = {name: s.tolist() for name, s in probe.sums.items()}  # one sync per point, at the end
    depth = probe.depth
    for q in sorted(qmodel.quantizers.values(), key=lambda q: depth.get(q.name, len(depth))):
        s, n = sums[q.name], probe.numel[q.name]
        noise = s[_NOISE] if n else 0.0
        dot = (s[_SIGNAL] + s[_QUANT_SQ] - noise) / 2  # sum(q * f) from the three squared norms
        rows.append({
            "name": q.name, "depth": depth.get(q.name), "producer": qmodel.plan.points[q.name].producer,
            "bits": q.grid.bits, "signed": q.grid.signed, "qmin": q.grid.qmin, "qmax": q.grid.qmax,
            "grid": q.grid.describe(), "clip_lo": float(q.clip[0]), "clip_hi": float(q.clip[1]),
            "scale": float(q.scale), "zero_point": int(q.zero_point),
            "local_db": _db(s[_SIGNAL], s[_LOCAL]) if n else None,
            "propagated_db": _db(s[_SIGNAL], noise) if n else None,
            "mse": noise / n if n else None, "cosine": _cosine(dot, s[_SIGNAL], s[_QUANT_SQ]) if n else None,
            "clipped_share": s[_CLIPPED] / n if n else None, "values": n})
    return rows


def _layer_rows(qmodel, swap: _Swap) -> list[dict]:
    """Weight SQNR of each quantized layer (BN folded in, as both passes ran it)."""
    rows, by_param = [], {id(p): i for i, p in enumerate(swap.params)}
    modules = dict(qmodel.model.named_modules())
    for depth, name in enumerate(qmodel.plan.compute):
        i = by_param[id(modules[name].weight)]
        w, wq = swap.float[i], swap.quant[i]
        scale = qmodel.weight_scale(name)
        rows.append({"name": name, "depth": depth, "kind": type(modules[name]).__name__,
                     "bits": qmodel.layer_weight_bits(name),
                     "weight_db": _db(float(_sq(w)), float(_sq(wq.double() - w.double()))),
                     "scale_min": float(scale.min()), "scale_max": float(scale.max()),
                     "input_point": qmodel.plan.compute_inputs.get(name)})
    return rows


def _run(qmodel, probe: _Probe, swap: _Swap, batches: Iterable, input_fn: Callable,
         on_batch: Callable | None) -> tuple[int, int, list[float]]:
    """Both passes over every batch; returns the batch count, the output's size and its sums."""
    out_sums = torch.zeros(3, dtype=torch.float64, device=next(iter(probe.sums.values())).device)
    seen = numel = 0
    for batch in batches:
        inputs = input_fn(batch)
        probe.start(quantized=False)
        swap.use(quantized=False)
        ref = qmodel.model(*inputs)
        probe.start(quantized=True)
        swap.use(quantized=True)
        out = qmodel.model(*inputs)
        for r, o in zip(_leaves(ref), _leaves(out)):
            out_sums += torch.stack([_sq(r), _sq(o.double() - r.double()), _sq(o)])
            numel += r.numel()
        if on_batch is not None:
            on_batch(batch, ref, out)
        seen += 1
    if seen == 0:
        raise ValueError("layer report: no batch was seen")
    odd = [n for n in probe.observed if probe.observed[n] != probe.compared[n]]
    if odd:
        raise RuntimeError(f"layer report: point {odd[0]!r} ran {probe.observed[odd[0]]} times in the float "
                           f"forwards but {probe.compared[odd[0]]} in the quantized ones")
    return seen, numel, out_sums.tolist()


@torch.no_grad()
def layer_report(qmodel, batches: Iterable, input_fn: Callable[[Any], tuple],
                 on_batch: Callable[[Any, Any, Any], None] | None = None) -> LayerReport:
    """Per-point and per-layer error of calibrated ``qmodel`` over ``batches``: one float and one
    quantized forward each. ``on_batch(batch, float_output, quantized_output)`` sees every batch's
    outputs (for a task's metric). The model's mode, each quantizer's mode and train/eval are as
    before afterwards, also on error.

    Raises:
        RuntimeError: ``qmodel`` was never calibrated, or a point ran in one pass but not the other.
        ValueError: ``batches`` is empty.
    """
    mode, training = qmodel._mode, qmodel.model.training
    modes = {q: q.mode for q in qmodel.quantizers.values()}
    probe = swap = None
    try:
        qmodel.model.eval()
        swap = _Swap(qmodel)
        probe = _Probe(list(modes), next(iter(modes)).scale.device)
        seen, numel, (signal, noise, quant_sq) = _run(qmodel, probe, swap, batches, input_fn, on_batch)
        points, layers = _point_rows(qmodel, probe), _layer_rows(qmodel, swap)
    finally:
        if probe is not None:
            probe.release()
        if swap is not None and mode == QUANT:
            swap.use(quantized=True)  # the weights set_mode made, without quantizing them again
        else:
            qmodel.set_mode(mode)
        for q, m in modes.items():
            q.mode = m
        qmodel.model.train(training)
    output = {"sqnr_db": _db(signal, noise), "mse": noise / numel if numel else None,
              "cosine": _cosine((signal + quant_sq - noise) / 2, signal, quant_sq)}
    return LayerReport(qmodel.method, qmodel.weight_bits, qmodel.act_bits, seen, points, layers, output)
