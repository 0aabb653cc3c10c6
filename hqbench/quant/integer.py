"""Integer-only reference executor: int8 tensors, int32 accumulation, fixed-point requantization.

It replays the recorded graph of a calibrated :class:`~hqbench.quant.model.QuantizedModel`:

* A stored tensor is kept as its *centred* integers ``d = q - z``: the redistribution shift ``z``
  only matters at the clamp bounds, so every kernel is symmetric (zero padding pads ``d`` with 0,
  which is the stored value ``z``). Equivalently the shift is folded into the consumer's int32
  bias as ``-W @ z``.
* Conv/Linear: ``acc = W_q * d_in + b_q`` with int8 weights (symmetric, per channel) and an int32
  bias at scale ``s_in * s_w``; then ``d_out = clamp(round(acc * M0 / 2**n))`` with a normalised
  31-bit multiplier ``M0`` and shift ``n`` per output channel (to nearest, ties to even), the activation applied
  as a clamp (ReLU, ReLU6) or a second multiplier for the negative side (LeakyReLU).
* add/concat requantize each input to the output scale with a fixed-point multiply on a common
  shift of 31 (their scale ratios are near 1, so no digits are lost).
* Pooling, flatten and padding run on the integers; average pooling rounds to nearest.

Integers are held in float64 tensors so torch's convolution computes the int32 sums exactly
(every partial sum is far below 2**53); requantization runs in int64. Ops the scheme has no
integer kernel for run in float between a dequantize and a quantize, and are listed in
``QuantizedModel.plan.float_ops``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .graph import Node
from .scheme import (AVERAGING, CLIP_OPS, COMPUTE_MODULES, INTEGER_ACTIVATIONS, JOIN_OPS, LEAKY_OPS, RELU_OPS,
                     _is_passthrough, fused_activation)

_SHIFT = 31


@dataclass
class IntTensor:
    d: torch.Tensor  # centred integers q - z, float64
    scale: torch.Tensor
    zero_point: int
    qmin: int
    qmax: int

    def dequantize(self) -> torch.Tensor:
        return (self.d * self.scale.double()).float()


def _multiplier(m: torch.Tensor) -> torch.Tensor:
    """Real multiplier(s) ``m`` -> int64 ``M0`` with ``m ~= M0 / 2**_SHIFT`` (a join's scale ratios, near 1)."""
    return torch.round(m.double() * 2**_SHIFT).to(torch.int64)


def _round_shift(x: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """``round(x / 2**n)`` for int64 ``x`` and shifts ``n >= 1``, ties to even: the rounding of
    ``torch.round`` (fake-quant) and of ONNX Runtime's requantization, so an exact tie lands on the
    same integer in all three. Adding ``2**(n-1) - 1`` plus the truncated quotient's parity rounds
    up exactly when the remainder passes half, or equals it and the quotient is odd."""
    n = torch.as_tensor(n, dtype=torch.int64, device=x.device)
    return (x + (torch.ones_like(n) << (n - 1)) - 1 + ((x >> n) & 1)) >> n


def _fixed_point(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``m ~= M0 * 2**-n`` with a normalised 31-bit ``M0`` in ``[2**30, 2**31]``, as TFLite's
    QuantizeMultiplier: the relative error stays below 2**-31 whatever the size of ``m`` (a fixed
    shift of 31 loses digits when ``s_in * s_w / s_out`` is small). ``acc * M0`` fits int64 for
    any int32 ``acc``; ``n`` is capped at 62, where every such product rounds to 0 anyway (and is at
    least 1 for any multiplier below 2**30)."""
    mantissa, exponent = torch.frexp(m.double())  # m = mantissa * 2**exponent, mantissa in [0.5, 1)
    m0 = torch.round(mantissa * 2**31).to(torch.int64)
    n = (31 - exponent).to(torch.int64)
    excess = torch.clamp(n - 62, min=0)
    return m0 >> excess, n - excess


def requantize(acc: torch.Tensor, m: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``clamp(round(acc * m), lo, hi)`` in fixed point, ties to even; ``acc`` holds integers,
    ``m`` broadcasts against it."""
    m0, n = _fixed_point(m)
    return torch.clamp(_round_shift(acc.to(torch.int64) * m0, n), lo, hi).double()


def _call(node: Node, *args, **kwargs):
    """Run a recorded op; a module through ``forward``, so none of its hooks fire."""
    target = node.target.forward if node.kind == "module" else node.target
    return target(*args, **kwargs)


def _arguments(node: Node, env: dict) -> tuple[tuple, dict]:
    """A node's recorded arguments with each producer's value in place; a tensor that was one
    element of a multi-output producer (``x, y = meshgrid(...)``) is that element (``node.picks``)."""
    leaves, spec = tree_flatten((node.args, node.kwargs))
    picks = node.picks or (None,) * len(leaves)
    values = []
    for leaf, pick in zip(leaves, picks):
        value = env[leaf] if isinstance(leaf, Node) else leaf
        values.append(value if pick is None else tree_flatten(value)[0][pick])
    return tree_unflatten(values, spec)


def _recorded_batch(qmodel) -> int | None:
    """The recorded batch size if the graph's constants depend on it, else None. Found by recording
    the float model once more at another batch size and comparing every non-tensor argument."""
    from .graph import record

    specs = qmodel.graph.input_specs
    if not specs or not specs[0][0]:
        return None
    batch = specs[0][0][0]
    weight = next(qmodel.model.parameters(), None)  # a model cast since (.double()) takes inputs of its dtype

    def like(dtype):
        return weight.dtype if weight is not None and dtype.is_floating_point else dtype
    probe = tuple(torch.zeros((batch + 1, *shape[1:]), dtype=like(dtype), device=device) for shape, dtype, device in specs)
    mode = qmodel.mode
    qmodel.set_mode("float")
    try:
        other = record(qmodel.model, probe)
    finally:
        qmodel.set_mode(mode)
    if [n.name for n in other.nodes] != [n.name for n in qmodel.graph.nodes]:
        return batch  # another batch size takes another path: replay only the recorded one

    def constants(node):
        return [leaf for leaf in tree_flatten((node.args, node.kwargs))[0]
                if not isinstance(leaf, (Node, torch.Tensor))]
    return batch if any(constants(a) != constants(b) for a, b in zip(qmodel.graph.nodes, other.nodes)) else None


class IntegerExecutor:
    """Runs a calibrated QuantizedModel with integer arithmetic; call it like the model."""

    @classmethod
    def from_model(cls, qmodel, example_inputs: tuple = ()) -> "IntegerExecutor":
        """The engine registry's factory (:mod:`hqbench.quant.engines`): the graph is already recorded."""
        return cls(qmodel)

    def __init__(self, qmodel):
        if not all(bool(q.calibrated) for q in qmodel.quantizers.values()):
            raise RuntimeError("the integer executor needs a calibrated model: run calibrate() first")
        self.q = qmodel
        self.graph, self.plan = qmodel.graph, qmodel.plan
        # BN and activation nodes fused into a compute layer run inside it.
        self.fused = {bn for _, bn in self.plan.folds} | {a for _, a in self.plan.chains.values() if a}
        self.batch = _recorded_batch(qmodel)  # None: the graph replays at any batch size

    def record(self) -> dict:
        """What the row records (as the exported engines' ``record``): every compute layer runs on integers."""
        from .. import __version__
        from .onnx_engine import int8_share

        layers = len(dict.fromkeys(self.plan.compute))
        return {"engine_version": f"hqbench {__version__}",
                "engine_settings": {"accumulator": "int32 (exact in float64)", "requantization": "31-bit fixed point"},
                **int8_share(layers, layers, [])}  # other float ops: the row's float_ops

    def _to_int(self, x: torch.Tensor, name: str) -> IntTensor:
        aq = self.q.quantizer(name)
        g = aq.grid
        z = int(aq.zero_point)
        # The float -> int boundary is the same op as fake-quant's, in the input's precision
        # (float32 unless the model runs in float64): inputs such as (pixel/127.5 - 1) sit exactly
        # on rounding ties, which float32 and float64 round differently.
        x = x if x.dtype == torch.float64 else x.float()
        d = torch.clamp(torch.round(x / aq.scale) + z, g.qmin, g.qmax).double() - z
        return IntTensor(d, aq.scale, z, g.qmin, g.qmax)

    def _out_params(self, name: str):
        aq = self.q.quantizer(name)
        z = int(aq.zero_point)
        return aq.scale, z, aq.grid.qmin - z, aq.grid.qmax - z

    def __call__(self, *inputs: torch.Tensor):
        if self.batch is None or inputs[0].shape[0] == self.batch:
            return self._replay(inputs)
        return self._in_recorded_batches(inputs)

    def _in_recorded_batches(self, inputs: tuple):
        """Run a graph whose constants hold the recorded batch size (``view(8, 4, 16, -1)`` in a
        detector's decoding) on another batch: in chunks of that size, the last one padded with its
        own last sample, and the outputs joined and cut back. Samples never mix, so no value changes."""
        shapes = [(tuple(x.shape[1:]), shape[1:]) for x, (shape, _, _) in zip(inputs, self.graph.input_specs)]
        if any(got != want for got, want in shapes):
            raise ValueError(f"the integer executor replays this model's graph at the recorded input shape "
                             f"{[want for _, want in shapes]} (its constants depend on it), got {[got for got, _ in shapes]}")
        n, parts = inputs[0].shape[0], []
        for start in range(0, n, self.batch):
            chunk = [x[start:start + self.batch] for x in inputs]
            short = self.batch - chunk[0].shape[0]
            chunk = [torch.cat([c, c[-1:].expand(short, *c.shape[1:])]) if short else c for c in chunk]
            parts.append(self._replay(chunk))
        leaves = [tree_flatten(part)[0] for part in parts]
        joined = [torch.cat([leaf[i] for leaf in leaves])[:n] if isinstance(leaves[0][i], torch.Tensor) else leaves[0][i]
                  for i in range(len(leaves[0]))]
        return tree_unflatten(joined, tree_flatten(parts[0])[1])

    def _replay(self, inputs):
        # The replay must not meet the model's own quantization hooks: it may run where they are
        # live (in place of the root's forward), where a module hook would fake-quantize the
        # integers a pooling module returns and the function mode would match the executor's own
        # ops against recorded keys. So modules run through ``forward`` (no hooks) and no
        # ``__torch_function__`` mode sees the replay.
        with torch.no_grad(), torch._C.DisableTorchFunction():
            return self._replay_graph(inputs)

    def _replay_graph(self, inputs):
        env: dict = {}
        inputs = list(inputs)
        for node in self.graph.nodes:
            if node.kind == "input":
                x = inputs[int(node.name.removeprefix("input"))]
                env[node] = self._to_int(x, node.name) if node.name in self.plan.points else x
                continue
            if node.name in self.fused:
                continue
            args, kwargs = _arguments(node, env)
            env[self._result_node(node)] = self._run(node, args, kwargs)
        return tree_map(lambda a: self._as_float(env[a]) if isinstance(a, Node) else a, self.graph.outputs)

    def _result_node(self, node):
        """A compute node's result is stored under its chain end (after BN and activation)."""
        if node.name in self.plan.chains:
            return self.graph.by_name[self.plan.chains[node.name][0]]
        return node

    @staticmethod
    def _as_float(v):
        return v.dequantize() if isinstance(v, IntTensor) else v

    def _run(self, node, args, kwargs):
        ints = [a for a in args if isinstance(a, IntTensor)]
        if node.kind == "module" and isinstance(node.target, COMPUTE_MODULES) and ints and len(args) == 1:
            return self._compute(node, args[0])
        if node.name in self.plan.points and node.op in JOIN_OPS and ints:
            return self._join(node, args, kwargs)
        if node.name in self.plan.points and ints and len(ints) == 1 and node.op in RELU_OPS | CLIP_OPS:
            return self._relu_requant(node, ints[0])
        # on the grid of its data (the first argument): x.to(other) casts x, not other
        if _is_passthrough(node) and len(ints) == 1 and args[0] is ints[0] and node.name not in self.plan.points:
            return self._passthrough(node, args, kwargs)
        # No integer kernel: dequantize, run in float, and quantize if the scheme stores the result.
        out = _call(node, *tree_map(self._as_float, args), **tree_map(self._as_float, kwargs))
        return self._to_int(out, node.name) if node.name in self.plan.points else out

    def _compute(self, node, x: IntTensor) -> IntTensor:
        module = node.target
        end, act = self.plan.chains[node.name]
        w = module.weight.detach()
        s_w = self.q.weight_scale(node.name)  # the scale fake-quant used (minmax or MSE clip)
        qmax_w = 2 ** (self.q.layer_weight_bits(node.name) - 1) - 1
        w_q = torch.clamp(torch.round(w / s_w), -qmax_w, qmax_w).double()
        s_acc = (x.scale.double() * s_w.double().reshape(-1))  # per output channel
        b_q = self.q.bias_integers(node.name)  # exactly the integers fake-quant and the ONNX export use
        b_q = torch.zeros_like(s_acc) if b_q is None else b_q.to(s_acc.device)
        if isinstance(module, nn.Linear):
            acc = F.linear(x.d, w_q, b_q)
            shape = (1, -1)
        else:
            conv = F.conv2d if isinstance(module, nn.Conv2d) else F.conv1d
            pad = module.padding if module.padding_mode == "zeros" else None
            if pad is None:
                raise NotImplementedError(f"{node.name}: padding_mode {module.padding_mode!r} has no integer kernel")
            acc = conv(x.d, w_q, b_q, module.stride, pad, module.dilation, module.groups)
            shape = (1, -1) + (1,) * (acc.dim() - 2)
        s_out, z, lo, hi = self._out_params(end)
        m = (s_acc / s_out.double()).reshape(shape)
        act_node = self.graph.by_name[act] if act else None
        fused = fused_activation(act_node) if act_node is not None else None  # BN+act in one module
        act_module = fused if fused is not None else (
            act_node.target if act_node is not None and act_node.kind == "module" else None)
        act_op = type(fused).__name__ if fused is not None else (act_node.op if act_node is not None else None)
        if act_op in LEAKY_OPS:
            slope = act_module.negative_slope if act_module is not None else (  # F.leaky_relu(x, slope)
                act_node.args[1] if len(act_node.args) > 1 else act_node.kwargs.get("negative_slope", 0.01))
            m = torch.where(acc < 0, m * slope, m)
            d = requantize(acc, m, lo, hi)
        else:
            d = requantize(acc, m, lo, hi)
            d = self._clamp_activation(d, act_module, act_op, act, s_out, lo)
        if act and act_op not in INTEGER_ACTIVATIONS:
            raise NotImplementedError(f"{act}: activation {act_op} has no integer kernel")
        return IntTensor(d, s_out, z, lo + z, hi + z)

    def _clamp_activation(self, d, act_module, act_op, act_name, s_out, lo):
        if act_op in RELU_OPS:
            return torch.clamp(d, min=0)
        if act_op in CLIP_OPS:
            upper = 6.0 if act_module is not None else float(self.graph.by_name[act_name].args[2])
            return torch.clamp(d, 0, torch.round(torch.tensor(upper) / s_out.double()))
        return d

    def _relu_requant(self, node, x: IntTensor) -> IntTensor:
        s_out, z, lo, hi = self._out_params(node.name)
        d = requantize(x.d, x.scale / s_out, lo, hi)
        return IntTensor(self._clamp_activation(d, node.target if node.kind == "module" else None, node.op,
                                                node.name, s_out, lo), s_out, z, lo + z, hi + z)

    def _join(self, node, args, kwargs) -> IntTensor:
        s_out, z, lo, hi = self._out_params(node.name)

        def rescale(v):
            return _multiplier(v.scale / s_out) * v.d.to(torch.int64)

        if node.op == "add":
            a, b = args[0], args[1]
            total = rescale(a) + rescale(b)
            d = torch.clamp(_round_shift(total, _SHIFT), lo, hi).double()
        else:
            parts = args[0] if isinstance(args[0], (list, tuple)) else args
            dim = kwargs.get("dim", args[1] if len(args) > 1 and isinstance(args[1], int) else 1)
            if node.kind == "module":
                dim = getattr(node.target, "d", 1)
            d = torch.cat([torch.clamp(_round_shift(rescale(p), _SHIFT), lo, hi).double() for p in parts], dim=dim)
        return IntTensor(d, s_out, z, lo + z, hi + z)

    def _passthrough(self, node, args, kwargs) -> IntTensor:
        x = next(a for a in args if isinstance(a, IntTensor))
        swap = lambda a: a.d if isinstance(a, IntTensor) else a  # noqa: E731
        d = _call(node, *tree_map(swap, args), **tree_map(swap, kwargs))
        if node.op in AVERAGING:
            d = torch.round(d)  # averages round to nearest (ties to even, as the fake-quant path) on the same scale
        if isinstance(d, (tuple, list)):  # chunk, split: every piece on the input's grid
            return tuple(IntTensor(piece, x.scale, x.zero_point, x.qmin, x.qmax) for piece in d)
        return IntTensor(d, x.scale, x.zero_point, x.qmin, x.qmax)
