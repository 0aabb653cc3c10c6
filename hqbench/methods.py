"""What a result row can name as its method, read by the CLI, the runner, rows and tables.

Methods are the float reference ``fp32``, ``pytorch`` (torch.ao's own default post-training
quantization) and every calibrator in :mod:`hqbench.quant.calibrators`' registry, so a calibrator
registered there is a method here with no other file to touch. A row records a calibrator by its
paper letter when it has one (``"D"``), otherwise by name, with its option value when given
(``"percentile:99.999"``). Peers (other tools' own PTQ recipes, :mod:`hqbench.peers`) are methods
too, recorded by their registered name (``"ort-minmax"``); that registry is imported lazily and
imports no peer tool itself. Engines have their own registry, :mod:`hqbench.quant.engines`.
"""

from __future__ import annotations

from collections.abc import Iterable

from .quant.calibrators import calibrator_entry, canonical_name, list_calibrators, valid_methods

FP32, PYTORCH = "fp32", "pytorch"
_REFERENCE_TITLES = {FP32: "FP32", PYTORCH: "PyTorch"}

def _peers():
    from . import peers

    return peers


def is_peer(method: str) -> bool:
    """``True`` for a registered peer name (``"ort-minmax"``), whose row runs another tool's PTQ."""
    return _peers().is_peer(method)


def row_method(spec: str) -> str:
    """The name a row records for ``spec``: ``"redistribution"`` -> ``"D"``; unknown names raise.

    >>> row_method("redistribution"), row_method("fp32")
    ('D', 'fp32')
    """
    if spec in _REFERENCE_TITLES or is_peer(spec):
        return spec
    try:
        name = canonical_name(spec)
    except ValueError:
        raise ValueError(f"unknown method {spec!r}; valid: {', '.join(list_methods())}") from None
    entry = calibrator_entry(name)
    return entry.letter if entry.letter and ":" not in name else name


def method_title(method: str) -> str:
    """Column header: ``"D"`` -> ``"Activation Redistribution"``, ``"percentile:99.999"`` -> ``"Percentile 99.999"``."""
    if method in _REFERENCE_TITLES:
        return _REFERENCE_TITLES[method]
    if is_peer(method):
        return _peers().peer_entry(method).title
    entry = calibrator_entry(method)
    _, _, value = method.partition(":")
    return f"{entry.title} {value}" if value else entry.title


def column_order(methods: Iterable[str]) -> list[str]:
    """fp32, pytorch, the registry's calibrators, then peers (both in registration order), then anything else.

    ``methods`` are row spellings (:func:`row_method`): a calibrator by its letter, or by its name
    with an optional ``:value``, which sorts with its calibrator.
    """
    present = list(dict.fromkeys(methods))
    names = [FP32, PYTORCH, *(e.letter or e.name for e in list_calibrators()), *(p.name for p in _peers().list_peers())]
    rank = {name: i for i, name in enumerate(names)}
    return sorted(present, key=lambda m: (rank.get(m.partition(":")[0], len(rank)), present.index(m)))


def list_methods() -> list[str]:
    """Every accepted method spelling, for help and error messages."""
    return [FP32, PYTORCH, *valid_methods(), *(p.name for p in _peers().list_peers())]
