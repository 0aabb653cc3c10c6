"""Reconstruction blocks: stretches of the recorded graph that one stored tensor feeds and one ends.

BRECQ (Li et al., ICLR 2021) reconstructs the weights of a residual block together against the
block's output, instead of one layer at a time: the rounding of an expand conv can then make up for
that of the project conv after it. hqbench finds blocks in any recorded graph (no per-architecture
list): a *cut* is a quantization point whose tensor is, right after it is made, the only tensor the
rest of the forward needs; a block runs from one cut to a later one, so its only input is the first
cut's tensor. Consecutive cuts are merged until the stretch ends at a join (a residual add or a
concat), at a layer without activation (a linear bottleneck's project conv, a classifier), or holds
:data:`MAX_LAYERS` layers; so MobileNetV2's and EfficientNet's blocks are their inverted residual
blocks (expand, depthwise, project) and ResNet's its basic or bottleneck blocks.

A block is replayed from the recorded nodes on cached inputs, its layers called with the weights
being learned, and the replay is checked against the model itself before it is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._pytree import tree_flatten, tree_map

from .graph import Node
from .scheme import (JOIN_OPS, SIGNED_ACTIVATIONS, SIGNED_FUNCTIONS, UNSIGNED_ACTIVATIONS, UNSIGNED_FUNCTIONS,
                     Plan)

Params = tuple[torch.Tensor, "torch.Tensor | None"]  # a layer's (weight, bias), as replays and samples take them

logger = logging.getLogger(__name__)

#: A stretch is closed at the first cut once it holds this many compute layers (VGG-like chains,
#: where no join or linear layer would end it); ResNet-50's bottleneck block has four.
MAX_LAYERS = 4


@dataclass
class Block:
    """Compute ``layers`` between cut ``start`` (the point the block reads) and cut ``end``."""

    start: str
    end: str
    layers: list[str]
    nodes: list[Node]  # what runs from start to end, in execution order (start itself excluded)


def _cuts(nodes: list[Node], outputs: set[Node], points: Mapping) -> list[Node]:
    """Point nodes whose tensor is the only one still needed right after they are made."""
    last_use = {n: max([u.index for u in n.users] + [len(nodes) if n in outputs else n.index]) for n in nodes}
    live: set[Node] = set()
    cuts = []
    for n in nodes:
        live = {m for m in live if last_use[m] > n.index}
        if last_use[n] > n.index:
            live.add(n)
        if live == {n} and n.name in points:
            cuts.append(n)
    return cuts


def _stretch(start: Node, end: Node) -> list[Node]:
    """The nodes after ``start`` that ``end`` depends on, in execution order; ``start`` is a cut, so
    every path into the stretch passes through it."""
    seen: dict[Node, None] = {}
    todo = [end]
    while todo:
        n = todo.pop()
        if n is start or n in seen:
            continue
        if n.index < start.index:
            raise ValueError(f"{n.name!r} feeds {end.name!r} around cut {start.name!r}")
        seen[n] = None
        todo.extend(n.inputs)
    return sorted(seen, key=lambda n: n.index)


def find_blocks(graph, plan: Plan, max_layers: int = MAX_LAYERS) -> list[Block]:
    """The reconstruction blocks of a recorded graph, in execution order.

    Compute layers that fall in no block (before the first cut, after the last) are left out;
    the caller reconstructs them one at a time.
    """
    compute = set(plan.compute)
    linear_ends = {end for end, act in plan.chains.values() if act is None}
    outputs = {o for o in tree_flatten(graph.outputs)[0] if isinstance(o, Node)}
    blocks, start = [], None
    for cut in _cuts(graph.nodes, outputs, plan.points):
        if start is None:
            start = cut
            continue
        nodes = _stretch(start, cut)
        layers = [n.name for n in nodes if n.name in compute]
        joined = cut.op in JOIN_OPS
        if layers and (joined or cut.name in linear_ends or len(layers) >= max_layers):
            blocks.append(Block(start.name, cut.name, layers, nodes))
            start = cut
    if logger.isEnabledFor(logging.DEBUG):
        held = sum(len(b.layers) for b in blocks)
        logger.debug("%d blocks hold %d of %d compute layers: %s", len(blocks), held, len(compute),
                     "; ".join(f"{b.start!r} -> {b.end!r} [{', '.join(b.layers)}]" for b in blocks))
    return blocks


def _module_name(node: Node) -> str:
    return node.name.partition("#")[0]  # a module's second call is recorded as name#1


def run_layer(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``module`` (Conv1d/Conv2d/Linear) on ``x`` with the given weight and bias, without its hooks."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)  # the module's own padding mode, stride, groups


@dataclass(frozen=True)
class Reach:
    """Where a tensor's pixel ``j`` looks in the block's input, per spatial axis (H, W): the input
    pixels ``start + j * stride`` up to ``size`` further (a negative start: padding)."""

    stride: tuple[int, int]
    start: tuple[int, int]
    size: tuple[int, int]

    def then(self, kernel, stride, dilation=(1, 1), before=(0, 0)) -> "Reach":
        """Through a window op: ``kernel`` with ``dilation``, ``stride``, ``before`` padded first."""
        return Reach(tuple(s * t for s, t in zip(self.stride, stride)),
                     tuple(a - p * s for a, p, s in zip(self.start, before, self.stride)),
                     tuple(n + d * (k - 1) * s for n, k, d, s in zip(self.size, kernel, dilation, self.stride)))


_ELEMENTWISE_MODULES = (UNSIGNED_ACTIVATIONS + SIGNED_ACTIVATIONS + (nn.Identity, nn.Dropout, nn.Hardtanh))
_ELEMENTWISE_FUNCTIONS = UNSIGNED_FUNCTIONS | SIGNED_FUNCTIONS | {"hardtanh", "add", "mul", "sub", "cat", "clone",
                                                                  "contiguous", "dropout"}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _module_reach(module: nn.Module, r: Reach) -> Reach | None:
    if isinstance(module, nn.Sequential):  # what a folded BN left (dropout, activation)
        for m in module:
            r = _module_reach(m, r)
            if r is None:
                return None
        return r
    if isinstance(module, _ELEMENTWISE_MODULES):
        return r
    if isinstance(module, nn.Conv2d):
        k, d = module.kernel_size, module.dilation
        if isinstance(module.padding, str):  # "valid", or "same" (stride 1: the smaller half before)
            before = (0, 0) if module.padding == "valid" else tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        else:
            before = module.padding
        return r.then(k, module.stride, d, before)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return r.then(_pair(module.kernel_size), _pair(module.stride or module.kernel_size),
                      _pair(getattr(module, "dilation", 1)), _pair(module.padding))
    if isinstance(module, nn.modules.padding._ConstantPadNd) and len(module.padding) == 4:
        left, _, top, _ = module.padding
        return r.then((1, 1), (1, 1), before=(top, left))
    return None


def _cat_dim(node: Node) -> int:
    return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)


def block_reach(block: Block, modules: Mapping[str, nn.Module]) -> Reach | None:
    """The :class:`Reach` of a block's output in its input; None unless every op of the block is
    local (an output pixel depends on a bounded window of input pixels) on 4-D maps."""
    reach: dict[str, Reach] = {block.start: Reach((1, 1), (0, 0), (1, 1))}
    for node in block.nodes:
        inputs = [reach.get(n.name) for n in node.inputs]
        if not inputs or None in inputs or len({r.stride for r in inputs}) != 1:
            return None
        if node.kind == "module":
            r = _module_reach(modules[_module_name(node)], inputs[0])
        elif node.op in _ELEMENTWISE_FUNCTIONS and (node.op != "cat" or _cat_dim(node) in (1, -3)):
            starts = [min(r.start[i] for r in inputs) for i in range(2)]
            ends = [max(r.start[i] + r.size[i] for r in inputs) for i in range(2)]
            r = Reach(inputs[0].stride, tuple(starts), tuple(e - a for a, e in zip(starts, ends)))
        else:
            r = None
        if r is None:
            return None
        reach[node.name] = r
    return reach[block.end]


class BlockReplay:
    """Runs a block's nodes on a tensor of its start point, hook-free, its layers with given weights and biases.

    Folded BatchNorms are run as what replaced them (``nn.Identity``); an in-place module gets a
    copy of its input, so autograd can run through the replay.
    """

    def __init__(self, block: Block, modules: Mapping[str, nn.Module]):
        self.block = block
        self.modules = {n.name: modules[_module_name(n)] for n in block.nodes if n.kind == "module"}
        self.layers = {name: modules[name] for name in block.layers}

    def __call__(self, x: torch.Tensor, params: Mapping[str, Params]) -> torch.Tensor:
        """The block's end tensor for start tensor ``x``, each layer run with ``params[layer]`` =
        ``(weight, bias)``."""
        values: dict[str, object] = {self.block.start: x}

        def value(a):
            return values[a.name] if isinstance(a, Node) else a

        for node in self.block.nodes:
            args, kwargs = tree_map(value, node.args), tree_map(value, node.kwargs)
            if node.name in self.layers:
                out = run_layer(self.layers[node.name], args[0], *params[node.name])
            elif node.kind == "module":
                module = self.modules[node.name]
                if getattr(module, "inplace", False) and isinstance(args[0], torch.Tensor):
                    args = (args[0].clone(), *args[1:])
                out = module.forward(*args, **kwargs)
            else:
                out = node.target(*args, **kwargs)
            values[node.name] = out
        return values[self.block.end]


__all__ = ["Block", "BlockReplay", "MAX_LAYERS", "Params", "Reach", "block_reach", "find_blocks", "run_layer"]
