"""Record a model's dataflow with module hooks and a TorchFunctionMode, without torch.fx.

torch.fx cannot trace models with data-dependent Python (ultralytics' DetectionModel), but module
hooks and ``__torch_function__`` see every eager model. One example forward records:

* a node per *leaf* module call (Conv2d, BatchNorm2d, ReLU, ...), and
* a node per tensor-returning torch function called outside leaf modules (``x + y``, ``torch.cat``,
  ``F.relu`` inside a composite block, ``torch.flatten``),

with edges found by tensor identity. Function calls are keyed by ``<scope>:<op><k>``, where scope is
the innermost enclosing module and ``k`` counts that op within one call of the scope; the same
``OpTracker`` recomputes the keys at run time, so quantizers can be attached to functional ops of
any static graph.
"""

from __future__ import annotations

import weakref

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

# Functional ops that are the same operation under different spellings.
_OP_ALIASES = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add", "add_": "add",
    "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul", "mul_": "mul",
    "__sub__": "sub", "__rsub__": "sub", "__isub__": "sub", "sub_": "sub",
    "concat": "cat", "concatenate": "cat", "relu_": "relu", "hardtanh_": "hardtanh",
    "__getitem__": "getitem",
}


def op_name(func: Callable) -> str:
    """Normalised name of a torch function or Tensor method (``Tensor.__iadd__`` -> ``add``)."""
    name = getattr(func, "__name__", str(func))
    return _OP_ALIASES.get(name, name)


def is_leaf(module: nn.Module) -> bool:
    """Recorded as one node: modules without children, and BatchNorm subclasses that carry their
    activation as a child (timm's ``BatchNormAct2d``), so the BN can still be folded."""
    return next(iter(module.children()), None) is None or isinstance(module, nn.modules.batchnorm._BatchNorm)


@dataclass(eq=False)
class Node:
    """One recorded call. ``args``/``kwargs`` hold ``Node``s where the call received tensors."""

    index: int
    name: str
    kind: str  # "input" | "module" | "function"
    op: str  # module class name or normalised function name
    target: Any  # the nn.Module, or the torch callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    scope: str = ""
    users: list["Node"] = field(default_factory=list)
    multi_output: bool = False  # returned a tuple/list of tensors (chunk, split, meshgrid)
    # For each tensor leaf of (args, kwargs) in tree_flatten order: the element of a multi-output
    # producer it was (``x, y = meshgrid(...)``), else None. A replay picks that element.
    picks: tuple = ()

    @property
    def inputs(self) -> list["Node"]:
        return [a for a in tree_flatten((self.args, self.kwargs))[0] if isinstance(a, Node)]

    def __repr__(self) -> str:  # short, for error messages
        return f"Node({self.name})"


class OpTracker:
    """Scope stack, leaf depth and per-scope op counters, maintained by module hooks.

    Shared by recording and by the run-time function quantizer so both compute the same keys.
    """

    def __init__(self, model: nn.Module):
        self.depth = 0  # >0 while inside a leaf module's forward
        self.suspended = 0  # >0 while hqbench's own quantizer code runs
        self._scopes: list[tuple[str, dict[str, int]]] = []
        self._handles = []
        names = {m: n for n, m in model.named_modules()}
        for module, name in names.items():
            leaf = is_leaf(module)
            self._handles.append(module.register_forward_pre_hook(self._enter(name, leaf)))
            self._handles.append(module.register_forward_hook(self._exit(leaf), always_call=True))

    def _enter(self, name: str, leaf: bool):
        def hook(module, args):
            if leaf:
                self.depth += 1
            else:
                self._scopes.append((name, {}))
        return hook

    def _exit(self, leaf: bool):
        def hook(module, args, output):
            if leaf:
                self.depth -= 1
            elif self._scopes:
                self._scopes.pop()
        return hook

    def next_key(self, op: str) -> str:
        scope, counters = self._scopes[-1] if self._scopes else ("", {})
        k = counters.get(op, 0)
        counters[op] = k + 1
        return f"{scope}:{op}{k}"

    @property
    def scope(self) -> str:
        return self._scopes[-1][0] if self._scopes else ""

    @contextlib.contextmanager
    def suspend(self):
        self.suspended += 1
        try:
            yield
        finally:
            self.suspended -= 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class FunctionHookMode(TorchFunctionMode):
    """Calls ``on_call(key, func, args, kwargs, out) -> out`` for top-level functional ops."""

    def __init__(self, tracker: OpTracker, on_call: Callable):
        super().__init__()
        self.tracker = tracker
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        t = self.tracker
        if t.depth > 0 or t.suspended or not _returns_tensor(out):
            return out
        key = t.next_key(op_name(func))
        return self.on_call(key, func, args, kwargs, out)


def _returns_tensor(out) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, (tuple, list)) and len(out) > 0 and all(isinstance(o, torch.Tensor) for o in out)


class Graph:
    """The recorded dataflow of one example forward: nodes in execution order."""

    def __init__(self, nodes: list[Node], modules: dict[str, nn.Module], outputs: Any,
                 input_specs: tuple = ()):
        self.nodes = nodes
        self.modules = modules
        self.outputs = outputs  # output structure with Nodes in place of tensors
        self.by_name = {n.name: n for n in nodes}
        self.input_specs = input_specs  # (shape, dtype, device) of each example input tensor


def record(model: nn.Module, example_inputs: tuple) -> Graph:
    """Run ``model(*example_inputs)`` once under no_grad and return its dataflow ``Graph``."""
    names = {m: n for n, m in model.named_modules()}
    nodes: list[Node] = []
    producer: dict[int, Node] = {}  # id(tensor) -> node that produced it last
    element: dict[int, int] = {}  # id(tensor) -> its index in a multi-output node's result
    # An id is unique only while its tensor lives: forget it when the tensor is freed (before the id
    # can be reused) instead of keeping every activation alive, which made recording peak at the
    # whole forward's activations (1.85x FP32's memory for MobileNetV2 at batch 32).

    def _forget(key: int) -> None:
        producer.pop(key, None)
        element.pop(key, None)

    def to_node(x):
        return producer.get(id(x), x) if isinstance(x, torch.Tensor) else x

    def add_node(name, kind, op, target, args, kwargs, out, scope):
        with tracker.suspend():  # our own tensor ops (detach) are not the model's
            return _add_node(name, kind, op, target, args, kwargs, out, scope)

    def _add_node(name, kind, op, target, args, kwargs, out, scope):
        node = Node(len(nodes), name, kind, op, target, tree_map(to_node, args), tree_map(to_node, kwargs), scope)
        for inp in node.inputs:
            inp.users.append(node)
        leaves = tree_flatten((args, kwargs))[0]
        node.picks = tuple(element.get(id(a)) if isinstance(a, torch.Tensor) else None for a in leaves)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        node.multi_output = isinstance(out, (tuple, list))
        for i, o in enumerate(outs):
            if id(o) not in producer:
                weakref.finalize(o, _forget, id(o))
            producer[id(o)] = node
            if node.multi_output:
                element[id(o)] = i
            else:
                element.pop(id(o), None)
        nodes.append(node)
        return node

    tracker = OpTracker(model)
    handles = []
    calls: dict[str, int] = {}  # a module called twice (ResNet's shared ReLU) gives name, name#1

    def call_name(name: str) -> str:
        k = calls.get(name, 0)
        calls[name] = k + 1
        return name if k == 0 else f"{name}#{k}"

    for module, name in names.items():
        if module is not model and is_leaf(module):
            def hook(mod, args, kwargs, out, _name=name):
                # The tracker's own exit hook ran first, so depth is back to that of the caller.
                if tracker.depth == 0:
                    add_node(call_name(_name), "module", type(mod).__name__, mod, args, kwargs, out, tracker.scope)
            handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def on_call(key, func, args, kwargs, out):
        if any(isinstance(a, torch.Tensor) and id(a) in producer for a in tree_flatten((args, kwargs))[0]):
            add_node(key, "function", op_name(func), func, args, kwargs, out, tracker.scope)
        return out

    for i, x in enumerate(tree_flatten(example_inputs)[0]):
        if isinstance(x, torch.Tensor):
            add_node(f"input{i}", "input", "input", None, (), {}, x, "")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FunctionHookMode(tracker, on_call):
            out = model(*example_inputs)
    finally:
        tracker.remove()
        for h in handles:
            h.remove()
        model.train(was_training)
    specs = tuple((tuple(x.shape), x.dtype, x.device) for x in tree_flatten(example_inputs)[0] if isinstance(x, torch.Tensor))
    return Graph(nodes, {n: m for m, n in names.items()}, tree_map(to_node, out), specs)
