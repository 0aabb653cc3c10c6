"""Model registry: one name per (architecture, weights source), each with its ModelCard.

Factories are registered with :func:`register_model` and looked up by :func:`create_model`, so a
config, the CLI and result tables all name a model the same way and a bad name fails early with the
list of valid ones.

The registry is open: a *source* registered with :func:`register_source` turns ``"<prefix>:<spec>"``
into a model, e.g. ``create_model("tflite:/data/mobilenet_v1_0.5_160_quant.tflite")`` builds any
supported TFLite classifier, its card read from the file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import replace

from torch import nn

from hqbench.models._weights import load_fitting_state, read_state_dict, trained_over
from hqbench.models.card import ModelCard

ModelFactory = Callable[[str | None], tuple[nn.Module, ModelCard]]

SourceFactory = Callable[[str, str | None], tuple[nn.Module, ModelCard]]

_MODELS: dict[str, ModelFactory] = {}
_SOURCES: dict[str, SourceFactory] = {}


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


def register_source(prefix: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register ``fn(spec, weights) -> (model, card)`` for names ``"<prefix>:<spec>"``.

    Args:
        prefix: e.g. ``"tflite"``; letters, digits and ``_`` only, and not already taken.

    Raises:
        ValueError: a bad prefix, or one already registered by a different factory.
    """
    if not prefix.replace("_", "").isalnum():
        raise ValueError(f"source prefix {prefix!r}: use letters, digits and '_' only")

    def decorator(fn: SourceFactory) -> SourceFactory:
        old = _SOURCES.get(prefix)
        if old is not None and _qualname(old) != _qualname(fn):
            raise ValueError(f"model source {prefix!r} is already registered by {_qualname(old)}")
        _SOURCES[prefix] = fn
        return fn

    return decorator


def list_sources() -> list[str]:
    """Registered source prefixes, each as ``"<prefix>:"``, sorted."""
    return sorted(f"{p}:" for p in _SOURCES)


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
        name: a name from :func:`list_models`, or ``"<prefix>:<spec>"`` for a registered source
            (:func:`list_sources`), e.g. ``"tflite:/data/model.tflite"``.
        weights: a weights file, ``None`` for the model's default local source, or ``"random"``
            where the model supports random initialisation (tests). Nothing is ever downloaded.

    Returns:
        ``(model, card)``; the card's ``weights`` field says what was loaded.

    Raises:
        ValueError: if ``name`` is neither registered nor ``"<source>:<spec>"`` (the message lists
            valid names and sources).
        FileNotFoundError: if the weights file is missing (the message names the path).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"no model named (got {name!r}); pass model=NAME ({', '.join(list_models())}) "
                         f"or model=PREFIX:SPEC ({', '.join(s + '...' for s in list_sources())})")
    fine_tuned = trained_over(weights)
    if fine_tuned is not None:  # QAT weights over the model its training started from
        path, base = fine_tuned
        model, card = create_model(name, base)
        load_fitting_state(model, read_state_dict(path), name, path)
        return model.eval(), replace(card, weights=str(path))
    prefix, colon, spec = name.partition(":")
    if name in _MODELS:
        model, card = _MODELS[name](weights)
    elif colon and prefix in _SOURCES:
        model, card = _SOURCES[prefix](spec, weights)
    else:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}; "
                         f"or a source: {', '.join(s + 'PATH' for s in list_sources()) or 'none'}")
    return model.eval(), card
