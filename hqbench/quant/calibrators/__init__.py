"""Calibrator registry. The paper's letters A-D exist here once, as aliases of the real names."""

from __future__ import annotations

from typing import Callable

from .base import Calibrator
from .histogram import Histogram
from .minmax import MinMax, MovingMinMax
from .redistribution import ActivationRedistribution

_REGISTRY: dict[str, Callable[[], Calibrator]] = {
    "moving_minmax": MovingMinMax,
    "minmax": MinMax,
    "histogram": Histogram,
    "redistribution": ActivationRedistribution,
}
# The paper's method letters, read by the CLI, result.py and table headers.
ALIASES = {"A": "moving_minmax", "B": "minmax", "C": "histogram", "D": "redistribution"}
TITLES = {"A": "Moving MinMax", "B": "MinMax", "C": "Histogram", "D": "Activation Redistribution"}


def canonical_name(method: str) -> str:
    """``"D"`` or ``"redistribution"`` -> ``"redistribution"``; unknown names raise."""
    name = ALIASES.get(method, method)
    if name not in _REGISTRY:
        valid = ", ".join(list(ALIASES) + list(_REGISTRY))
        raise ValueError(f"unknown calibration method {method!r}; valid: {valid}")
    return name


def create_calibrator(method: str) -> Calibrator:
    return _REGISTRY[canonical_name(method)]()


def register_calibrator(name: str, factory: Callable[[], Calibrator]) -> None:
    if name in _REGISTRY or name in ALIASES:
        raise ValueError(f"calibrator {name!r} is already registered")
    _REGISTRY[name] = factory


def list_calibrators() -> list[str]:
    return sorted(_REGISTRY)


__all__ = [
    "ALIASES", "TITLES", "ActivationRedistribution", "Calibrator", "Histogram", "MinMax", "MovingMinMax",
    "canonical_name", "create_calibrator", "list_calibrators", "register_calibrator",
]
