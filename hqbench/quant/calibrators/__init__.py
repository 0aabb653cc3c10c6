"""Calibrator registry: the one list of activation calibrators, with their titles and letters.

The paper's letters A-D exist here once, as each entry's ``letter``; the CLI, ``result.py``,
result rows and table headers all read this registry (through :mod:`hqbench.methods`). Adding a
calibrator is one file: a :class:`Calibrator` subclass plus one :func:`register_calibrator` call.

A method string is a name or letter, optionally with a value for the entry's ``option``:
``"D"``, ``"redistribution"``, ``"percentile"`` or ``"percentile:99.999"``.

Every module in this folder is imported when the registry loads, and each registers its own
calibrators at its bottom; other packages register theirs through the ``hqbench.calibrators``
entry-point group (an entry point naming a module to import, or a callable to call).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from .base import Calibrator


@dataclass(frozen=True)
class CalibratorEntry:
    """One registered calibrator.

    ``option`` names the constructor keyword that ``"name:value"`` sets (e.g. ``percentile``).
    """

    name: str
    factory: Callable[..., Calibrator]
    title: str
    letter: str | None = None
    option: str | None = None


_REGISTRY: dict[str, CalibratorEntry] = {}


def register_calibrator(name: str, factory: Callable[..., Calibrator], *, title: str, letter: str | None = None,
                        option: str | None = None) -> CalibratorEntry:
    """Register ``factory`` under ``name`` (and ``letter``); returns the entry.

    Raises:
        ValueError: the name or letter is taken, or contains ``:`` or ``,``.
    """
    taken = {n for e in _REGISTRY.values() for n in (e.name, e.letter) if n}
    for key in filter(None, (name, letter)):
        if key in taken or key in ("fp32", "pytorch"):
            raise ValueError(f"calibrator {key!r} is already registered")
        if ":" in key or "," in key:
            raise ValueError(f"calibrator name {key!r} may not contain ':' or ','")
    entry = CalibratorEntry(name, factory, title, letter, option)
    _REGISTRY[name] = entry
    return entry


def _split(method: str) -> tuple[CalibratorEntry, str | None]:
    if not isinstance(method, str):
        raise ValueError(f"calibration method must be a string, got {method!r}")
    key, _, value = method.partition(":")
    entry = _REGISTRY.get(key) or next((e for e in _REGISTRY.values() if e.letter == key), None)
    if entry is None:
        raise ValueError(f"unknown calibration method {method!r}; valid: {', '.join(valid_methods())}")
    if value and entry.option is None:
        raise ValueError(f"calibration method {entry.name!r} takes no option, got {method!r}")
    if value:
        try:
            value = repr(float(value))
        except ValueError:
            raise ValueError(f"{entry.name}: option {entry.option} must be a number, got {value!r}") from None
    return entry, value or None


def calibrator_entry(method: str) -> CalibratorEntry:
    """The registry entry of a method string (letter, name, or ``name:value``)."""
    return _split(method)[0]


def canonical_name(method: str) -> str:
    """``"D"`` or ``"redistribution"`` -> ``"redistribution"``; ``"percentile:99.9"`` kept with its value.

    Raises:
        ValueError: unknown name (valid ones listed) or a bad option value.
    """
    entry, value = _split(method)
    return entry.name if value is None else f"{entry.name}:{value}"


def create_calibrator(method: str) -> Calibrator:
    entry, value = _split(method)
    return entry.factory() if value is None else entry.factory(**{entry.option: float(value)})


def list_calibrators() -> list[CalibratorEntry]:
    """Entries in registration order (A-D first)."""
    return list(_REGISTRY.values())


def valid_methods() -> list[str]:
    """Every accepted spelling: letters, then names (``name:VALUE`` where an option exists)."""
    entries = list(_REGISTRY.values())
    return [e.letter for e in entries if e.letter] + [e.name + ("[:VALUE]" if e.option else "") for e in entries]


def _discover() -> None:
    # The paper's four first, so A-D lead every list and table; then the rest of the folder, sorted.
    first = ("minmax", "histogram", "redistribution")
    rest = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in first and m.name != "base")
    for name in (*first, *rest):
        importlib.import_module(f"{__name__}.{name}")
    for ep in entry_points(group="hqbench.calibrators"):
        try:
            loaded = ep.load()
        except Exception as err:  # a broken plugin must say which one, not break every command obscurely
            raise ImportError(f"hqbench.calibrators entry point {ep.name!r} ({ep.value}) failed to load: {err}") from err
        if callable(loaded) and not isinstance(loaded, type):
            loaded()


_discover()

from .histogram import Histogram  # noqa: E402  (registered above; re-exported for users)
from .minmax import MinMax, MovingMinMax  # noqa: E402
from .redistribution import ActivationRedistribution  # noqa: E402

__all__ = [
    "ActivationRedistribution", "Calibrator", "CalibratorEntry", "Histogram", "MinMax", "MovingMinMax",
    "calibrator_entry", "canonical_name", "create_calibrator", "list_calibrators", "register_calibrator",
    "valid_methods",
]
