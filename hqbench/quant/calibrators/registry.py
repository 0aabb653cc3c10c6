"""The calibrator registry itself: entries with their titles, letters and options, and the lookups.

Calibrator files register here (``from .registry import register_calibrator``);
:mod:`hqbench.quant.calibrators` imports every file of the folder so each registers itself.
"""

from __future__ import annotations

from dataclasses import dataclass
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
# Entry points of the hqbench.calibrators group that failed to load: name -> why, in one line.
_BROKEN: dict[str, str] = {}


class PluginError(ImportError):
    """A method names a calibrator plugin that failed to load; the message says which and why.

    Not a ``ValueError``: callers that turn those into "unknown method" keep this reason instead.
    """


def record_broken_plugin(name: str, why: str) -> None:
    """Remember that entry point ``name`` failed to load (``why``: one line), so asking for it says so."""
    _BROKEN[name] = why


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
    if entry is None and key in _BROKEN:
        raise PluginError(f"calibration method {key!r} is unavailable: {_BROKEN[key]}")
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
