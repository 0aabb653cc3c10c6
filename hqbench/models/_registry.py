"""Model registry: one name per (architecture, weights source), each with its ModelCard.

Factories are registered with :func:`register_model` and looked up by :func:`create_model`, so a
config, the CLI and result tables all name a model the same way and a bad name fails early with the
list of valid ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from hqbench.models.card import ModelCard

ModelFactory = Callable[[str | None], tuple[nn.Module, ModelCard]]

_MODELS: dict[str, ModelFactory] = {}


def _qualname(fn: ModelFactory) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``fn(weights) -> (model, card)`` under ``name``.

    Args:
        name: registry name, e.g. ``"mobilenet_v2"``; must be unique.

    Returns:
        A decorator that records the factory and returns it unchanged.

    Raises:
        ValueError: if ``name`` is already taken by a different factory.
    """

    def decorator(fn: ModelFactory) -> ModelFactory:
        old = _MODELS.get(name)
        # Re-registering the same function (module reload) is harmless; a different one is a clash.
        if old is not None and _qualname(old) != _qualname(fn):
            raise ValueError(
                f"model name {name!r} is already registered by {_qualname(old)}"
            )
        _MODELS[name] = fn
        return fn

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, sorted.

    Args:
        pattern: ``fnmatch`` glob, e.g. ``"*mobilenet*"``.

    Returns:
        The sorted matching names.
    """
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """Build a registered model in eval mode together with its ModelCard.

    Args:
        name: a name from :func:`list_models`.
        weights: a weights file, ``None`` for the model's default local source, or ``"random"``
            where the model supports random initialisation (tests). Nothing is ever downloaded.

    Returns:
        ``(model, card)``; the card's ``weights`` field says what was loaded.

    Raises:
        ValueError: if ``name`` is not registered (the message lists valid names).
        FileNotFoundError: if the weights file is missing (the message names the path).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    model, card = _MODELS[name](weights)
    return model.eval(), card
