"""Running a model over loader batches: where its inputs are in a batch, which device it is on,
and a forward that stops after one module (for the layer-by-layer weight methods)."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable

import torch
from torch import nn


def default_input_fn(batch: Any) -> tuple:
    """Model inputs from a loader batch: a tensor, or the first element of ``(x, y, ...)``."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)
    raise TypeError(f"cannot find the model input in a batch of type {type(batch).__name__}; pass input_fn=")


def model_device(model: nn.Module, example_inputs: tuple = ()) -> torch.device:
    """Where ``model`` runs: its first parameter's (or buffer's) device, else its first input's, else the CPU."""
    for t in itertools.chain(model.parameters(), model.buffers(), example_inputs):
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


class _Reached(Exception):
    """Raised by :func:`forward_until`'s hook: the forward has run the module it waits for."""


def forward_until(model: nn.Module, batches: Iterable, input_fn: Callable[[Any], tuple],
                  module: nn.Module | None = None) -> int:
    """Run ``model`` over ``batches``; returns how many ran.

    With ``module``, each forward stops right after that module's first call, once its own hooks
    have run: the layers after it would cost time and change nothing for a layer-by-layer method.
    The stop is an exception raised by a forward hook of ``module`` itself, so torch still runs the
    always-call hooks of every module it unwinds through (the op tracker's depth and scope, the
    function-hook mode's exit): the next forward starts clean.
    """
    def stop(m, args, out):
        raise _Reached

    handle = None if module is None else module.register_forward_hook(stop)  # after the module's other hooks
    seen = 0
    try:
        for batch in batches:
            try:
                model(*input_fn(batch))
            except _Reached:
                pass
            seen += 1
    finally:
        if handle is not None:
            handle.remove()
    return seen
