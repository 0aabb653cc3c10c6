"""The hybrid asymmetric scheme: where activations are stored as integers, and on which grid.

An integer-only accelerator stores a tensor wherever a layer writes one: the network input (as
the first compute layer reads it), every Conv/Linear output after its folded BN and activation,
every elementwise add and every concat. Pooling, flatten, padding and upsampling pass the scale of
their input through. Concat outputs get their own range; integer kernels requantize each input to
it, which costs one multiply per element but keeps branches with very different ranges (a
detection head's box and class logits) from sharing a bad scale.

The grid is chosen from what produces the tensor (Brevitas' signedness table, written as data):
non-negative producers are stored unsigned 0..255 with zero point 0; everything else on the
shifted-asymmetric grid -128..127 whose zero point is the redistribution shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .graph import Graph, Node
from .grid import QuantGrid

COMPUTE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Activations whose output is never negative -> unsigned grid.
UNSIGNED_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid)
UNSIGNED_FUNCTIONS = {"relu", "relu6", "sigmoid", "hardsigmoid"}
SIGNED_ACTIVATIONS = (nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Tanh, nn.ELU, nn.Mish, nn.PReLU)
SIGNED_FUNCTIONS = {"leaky_relu", "silu", "hardswish", "gelu", "tanh", "elu", "mish"}
# Ops whose output values lie on their input's grid (or are requantized to it): no new range.
PASSTHROUGH_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Dropout, nn.Identity, nn.ZeroPad2d, nn.Upsample,
)
PASSTHROUGH_FUNCTIONS = {
    "flatten", "reshape", "view", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "getitem", "max_pool2d", "adaptive_avg_pool2d", "avg_pool2d", "mean", "dropout", "pad",
    "interpolate", "chunk", "split", "clone", "detach", "to", "float",
}
JOIN_FUNCTIONS = {"add", "cat"}
JOIN_OPS = JOIN_FUNCTIONS | {"Concat"}  # ultralytics' Concat module joins as torch.cat does
# Activations the integer executor runs as integer kernels, by the graph's normalised op names
# (a module node's class name; :func:`~hqbench.quant.graph.op_name` for functions, so ``relu_`` is ``relu``).
RELU_OPS = {"ReLU", "relu"}  # clamp at 0
CLIP_OPS = {"ReLU6", "hardtanh"}  # clamp at 0 and an upper bound (6, or hardtanh's max_val; F.relu6 is hardtanh)
LEAKY_OPS = {"LeakyReLU", "leaky_relu"}  # a second multiplier for the negative side
INTEGER_ACTIVATIONS = RELU_OPS | CLIP_OPS | LEAKY_OPS
AVERAGING = {"AvgPool2d", "AdaptiveAvgPool2d", "adaptive_avg_pool2d", "avg_pool2d", "mean", "interpolate", "Upsample"}


@dataclass
class Point:
    """A tensor the scheme stores as integers: the output of node ``name``."""

    name: str
    grid: QuantGrid
    producer: str  # what made it, for reports: "Conv2d+ReLU6", "add", "input"


@dataclass
class Plan:
    """What ``analyse`` decided: BN folds, activation points, and what stays float (with why)."""

    folds: list[tuple[str, str]] = field(default_factory=list)  # (conv name, bn name)
    points: dict[str, Point] = field(default_factory=dict)
    compute: list[str] = field(default_factory=list)  # Conv/Linear modules whose weights are quantized
    chains: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # compute -> (stored node, activation)
    compute_inputs: dict[str, str] = field(default_factory=dict)  # compute -> point whose scale its input has
    float_ops: dict[str, str] = field(default_factory=dict)  # node name -> reason
    # Averaging pass-through ops rounded back onto their input's grid: node -> point whose qparams apply.
    regrid: dict[str, str] = field(default_factory=dict)


def fused_activation(node: Node) -> nn.Module | None:
    """The activation a BN module applies itself (timm's ``BatchNormAct2d.act``), if any."""
    act = getattr(node.target, "act", None) if node.kind == "module" and isinstance(node.target, BATCHNORMS) else None
    return act if isinstance(act, UNSIGNED_ACTIVATIONS + SIGNED_ACTIVATIONS) else None


def _is_activation(node: Node) -> bool:
    if node.kind == "module":
        return isinstance(node.target, UNSIGNED_ACTIVATIONS + SIGNED_ACTIVATIONS)
    return node.kind == "function" and node.op in UNSIGNED_FUNCTIONS | SIGNED_FUNCTIONS | {"hardtanh"}


def _is_unsigned_activation(node: Node) -> bool:
    if node.kind == "module":
        return isinstance(node.target, UNSIGNED_ACTIVATIONS)
    if node.op == "hardtanh":  # F.relu6 is hardtanh(0, 6)
        return len(node.args) > 1 and node.args[1] >= 0
    return node.op in UNSIGNED_FUNCTIONS


def _is_passthrough(node: Node) -> bool:
    if node.kind == "module":
        return isinstance(node.target, PASSTHROUGH_MODULES)
    return node.kind == "function" and node.op in PASSTHROUGH_FUNCTIONS


def _sole_user(node: Node) -> Node | None:
    return node.users[0] if len(node.users) == 1 else None


def analyse(graph: Graph, bits: int = 8, float_scopes: tuple[str, ...] = ()) -> Plan:
    """Decide folds and quantization points for a recorded graph.

    Args:
        graph: from :func:`hqbench.quant.graph.record`.
        bits: activation bits.
        float_scopes: module names whose *functional* ops stay float (e.g. a detector's box
            decoding); Conv/Linear modules inside them are still quantized.

    Raises:
        ValueError: the model has no Conv/Linear module to quantize.
    """
    plan = Plan()
    on_grid: dict[Node, bool] = {}  # node -> unsigned?, for every node whose output is on a grid
    origin: dict[Node, str] = {}  # node on a grid -> the point whose qparams it carries
    chained: set[Node] = set()  # BN/activation nodes fused into a compute layer's output

    def store(node: Node, unsigned: bool, producer: str) -> None:
        on_grid[node] = unsigned
        origin[node] = node.name
        plan.points[node.name] = Point(node.name, QuantGrid(bits, signed=not unsigned), producer)

    def in_float_scope(node: Node) -> bool:
        return any(node.scope == s or node.scope.startswith(s + ".") for s in float_scopes)

    def is_join(node: Node) -> bool:
        named_join = node.op in JOIN_FUNCTIONS if node.kind == "function" else node.op == "Concat"
        return named_join and not in_float_scope(node)

    for node in graph.nodes:
        if node.kind == "input" or node in chained:
            continue
        if node.kind == "module" and isinstance(node.target, COMPUTE_MODULES):
            plan.compute.append(node.name)
            src = node.inputs[0] if node.inputs else None
            if src is not None and src not in on_grid:
                # The tensor this layer reads is on no grid yet (network input, a float op):
                # store it where it is produced, on the signed grid (its producer says nothing).
                store(src, False, src.op)
            if src is not None:
                plan.compute_inputs[node.name] = origin[src]
            # Follow the single-consumer chain conv -> [bn] -> [activation].
            end, unsigned, label, act = node, False, node.op, None
            nxt = _sole_user(end)
            if nxt is not None and nxt.kind == "module" and isinstance(nxt.target, BATCHNORMS):
                plan.folds.append((node.name, nxt.name))
                chained.add(nxt)
                end, nxt = nxt, _sole_user(nxt)
                fused = fused_activation(end)
                if fused is not None:  # BN+activation in one module: the chain ends here
                    unsigned = isinstance(fused, UNSIGNED_ACTIVATIONS)
                    label, act, nxt = f"{label}+{type(fused).__name__}", end.name, None
            if nxt is not None and _is_activation(nxt):
                unsigned = _is_unsigned_activation(nxt)
                chained.add(nxt)
                end, label, act = nxt, f"{label}+{nxt.op}", nxt.name
            plan.chains[node.name] = (end.name, act)
            store(end, unsigned, label)
            on_grid[node], origin[node] = unsigned, end.name
        elif _is_passthrough(node):
            src = node.inputs[0] if node.inputs else None
            if src in on_grid:
                on_grid[node] = on_grid[src]
                origin[node] = origin[src]
                if node.op in AVERAGING:
                    plan.regrid[node.name] = origin[src]
        elif is_join(node):
            unsigned = bool(node.inputs) and all(on_grid.get(i) is True for i in node.inputs)
            store(node, unsigned, node.op if node.kind == "function" else "cat")
        elif _is_activation(node) and node.inputs and node.inputs[0] in on_grid:
            # An activation after a join (ResNet's add -> relu) is requantized on its own grid.
            store(node, _is_unsigned_activation(node), node.op)
        else:
            plan.float_ops[node.name] = f"{node.op} has no integer implementation in the scheme"
    if not plan.compute:
        raise ValueError("nothing to quantize: the model ran no Conv1d/Conv2d/Linear module")
    return plan
