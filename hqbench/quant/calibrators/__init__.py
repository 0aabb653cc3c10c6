"""Calibrator registry: the one list of activation calibrators, with their titles and letters.

The paper's letters A-D exist here once, as each entry's ``letter``; the CLI, ``result.py``,
result rows and table headers all read this registry (through :mod:`hqbench.methods`). Adding a
calibrator is one file: a :class:`Calibrator` subclass plus one :func:`register_calibrator` call.

A method string is a name or letter, optionally with a value for the entry's ``option``:
``"D"``, ``"redistribution"``, ``"percentile"`` or ``"percentile:99.999"``.

Every module in this folder is imported when the registry loads, and each registers its own
calibrators at its bottom; other packages register theirs through the ``hqbench.calibrators``
entry-point group (an entry point naming a module to import, or a callable to call). A plugin that
fails to load costs one warning line on stderr, not the import of hqbench; asking for its method
(the entry point's name) is then an error that says why.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from importlib.metadata import entry_points

from .base import Calibrator
from .registry import (CalibratorEntry, PluginError, calibrator_entry, canonical_name, create_calibrator,
                       list_calibrators, record_broken_plugin, register_calibrator, valid_methods)


def _discover() -> None:
    # The paper's four first, so A-D lead every list and table; then the rest of the folder, sorted.
    first = ("minmax", "histogram", "redistribution")
    rest = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in first + ("base", "registry"))
    for name in (*first, *rest):
        importlib.import_module(f"{__name__}.{name}")
    for ep in entry_points(group="hqbench.calibrators"):
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as err:  # one broken plugin must not break every command, nor hide why it broke
            first = (str(err).strip().splitlines() or [""])[0]
            why = f"hqbench.calibrators entry point {ep.name!r} ({ep.value}) failed to load: {type(err).__name__}" + (
                f": {first}" if first else "")
            record_broken_plugin(ep.name, why)
            print(f"warning: {why} (method={ep.name} is unavailable)", file=sys.stderr)


_discover()

from .histogram import Histogram  # noqa: E402  (registered above; re-exported for users)
from .minmax import MinMax, MovingMinMax  # noqa: E402
from .redistribution import ActivationRedistribution  # noqa: E402

__all__ = [
    "ActivationRedistribution", "Calibrator", "CalibratorEntry", "Histogram", "MinMax", "MovingMinMax", "PluginError",
    "calibrator_entry", "canonical_name", "create_calibrator", "list_calibrators", "register_calibrator",
    "valid_methods",
]
