"""Table lines: how result rows group into one line per setting, and which cells win.

A line is one (task, model, dataset, metric, weight bits, activation bits, options, engine);
its cells are the methods run in that setting, each cell holding every calibration draw (rows
that differ only in ``seed``). The FP32 row of the same (task, model, dataset, metric) is the
reference repeated in each of its lines, so every line reads on its own. The renderers in
:mod:`hqbench.reporting.tables` and :mod:`hqbench.reporting.plots` only format what this module
decides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from hqbench.methods import column_order, is_peer
from hqbench.evidence import Replicates, decode_outcomes
from hqbench.reporting.render import ALPHA
from hqbench.reporting.stats import (bootstrap_ci, draw_summary, evidence_value, paired_difference_ci, pairing_key,
                                     paired_pvalue, rank_cells)

if TYPE_CHECKING:
    from hqbench.reporting.results import ResultRow

FP32 = "fp32"
#: How known run options appear in line labels; other keys show as ``key=value``.
_OPTION_ABBREV: dict[str, str] = {"weight_range": "{v}", "bias_correction": "bc", "keep_8bit": "8bit:{v}",
                                  "precision": "{v}", "adaround": "ada({v})",
                                  "mixed_budget": "mixed:{v}"}


@dataclass
class Line:
    """One table line: a label, its setting and, per method, the draws sorted by seed."""

    label: str
    metric: str
    bits: tuple[int, int]
    options: tuple[tuple[str, str], ...]
    engine: str
    group: tuple[str, str, str, str]
    counts: tuple[int, int]  # (n_eval, n_calib) of the quantised rows
    cells: dict[str, list[ResultRow]] = field(default_factory=dict)
    show_counts: bool = False  # the label names the counts: its group ran on several


@dataclass(frozen=True)
class Cell:
    """What a table shows for one (line, method): value, spread and mark.

    ``mark`` is ``"best"`` (the significant or, without outcomes, untested winner), ``"tie"``
    (not significantly different from the best) or ``""``.
    """

    value: float
    std: float | None = None
    n_draws: int = 1
    ci: tuple[float, float] | None = None
    mark: str = ""


def bits_label(weight_bits: int, act_bits: int) -> str:
    """``"w4a8"``; the FP32 reference is ``"float"``."""
    return "float" if (weight_bits, act_bits) == (32, 32) else f"w{weight_bits}a{act_bits}"


def bits_sort_key(label: str) -> tuple[int, int]:
    """Sweep order: widest first, weights before activations (w8a8, w8a6, w6a6, w4a8, w4a4)."""
    if label == "float":
        return (-32, -32)
    w, _, a = label[1:].partition("a")
    return (-int(w), -int(a))


def _option_part(key: str, value: str) -> str | None:
    fmt = _OPTION_ABBREV.get(key)
    if value == "":
        return None
    if fmt is None:
        return key if value == "true" else f"{key}={value}"
    if "{v}" in fmt:
        return fmt.format(v=value)
    return fmt if value == "true" else f"no-{fmt}" if value == "false" else f"{fmt}={value}"


def options_label(options: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Brief form of run options for a label: ``{"weight_range": "mse", "bias_correction": "true"}`` -> ``"mse+bc"``."""
    items = dict(options)
    known = [k for k in _OPTION_ABBREV if k in items]
    parts = (_option_part(k, str(items[k])) for k in [*known, *sorted(set(items) - set(known))])
    return "+".join(p for p in parts if p)


def options_legend(rows: Iterable[ResultRow]) -> str:
    """What the abbreviations in labels stand for, for the notes line (empty when none are used)."""
    seen: dict[str, str] = {}
    for r in rows:
        for k, v in _options(r):
            part = _option_part(k, v)
            if part and part != f"{k}={v}":
                seen.setdefault(part, f"{k}={v}")
    return ", ".join(f"{abbr} = {full}" for abbr, full in seen.items())


def _options(row: ResultRow) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (getattr(row, "options", None) or {}).items()))


def _bits(row: ResultRow) -> tuple[int, int]:
    return (row.weight_bits, row.act_bits)


def build_lines(rows: Sequence[ResultRow]) -> list[Line]:
    """Group rows into lines in first-seen order, each cell's draws sorted by seed.

    Runs on different image counts (``n_eval``/``n_calib``) are different lines too, labelled
    with the counts, so no result in a file is hidden. The FP32 reference of a line is the one
    evaluated on as many images when there is one. A (task, model, dataset, metric) with only
    an FP32 row still gets a line. A row repeating a (line, method, seed) replaces the earlier.
    Rows of one model name measured with different weights (``weights_digest``) are different
    models, labelled ``name@digest`` (``name@?`` for rows written before digests were recorded). A
    row written before digests that names the same weights file as rows of one digest is one of
    them, as the runner would migrate it (:func:`hqbench.runner._resumable`).
    """
    digest = _digests(rows)
    multi_weights = _multi(rows, lambda r: (r.task, r.model), digest)

    def _group(row: ResultRow) -> tuple[str, str, str, str]:
        model = row.model + (f"@{digest(row)[:8] or '?'}" if (row.task, row.model) in multi_weights else "")
        return (row.task, model, row.dataset, row.metric)

    multi_dataset = _multi(rows, lambda r: _group(r)[:2], lambda r: r.dataset)
    multi_counts = _multi(_quantised(rows), _group, lambda r: (r.n_eval, r.n_calib))
    engines: dict[tuple, list[str]] = {}
    # A peer runs on its own tool's engine: it joins the line of hqbench's first engine in its group,
    # so it is compared with the methods it competes with rather than sitting alone on a line.
    for r in _quantised(rows):
        if not is_peer(r.method) and r.engine not in engines.setdefault(_group(r), []):
            engines[_group(r)].append(r.engine)
    lines: dict[tuple, Line] = {}
    for r in _quantised(rows):
        own = engines.setdefault(_group(r), [])
        engine = own[0] if is_peer(r.method) and own else r.engine
        if engine not in own:
            own.append(engine)
        key = (*_group(r), *_bits(r), _options(r), engine, r.n_eval, r.n_calib)
        if key not in lines:
            lines[key] = Line("", r.metric, _bits(r), _options(r), engine, _group(r), (r.n_eval, r.n_calib))
        _add(lines[key].cells.setdefault(r.method, []), r)
    refs: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        if r.method == FP32:
            refs.setdefault(_group(r), []).append(r)
    for group, ref in refs.items():
        if group not in engines:
            lines[(*group, "fp32-only")] = Line("", ref[0].metric, (8, 8), (), ref[0].engine, group, (0, 0))
    for line in lines.values():
        ref = refs.get(line.group, [])
        for r in [r for r in ref if r.n_eval == line.counts[0]] or ref:
            _add(line.cells.setdefault(FP32, []), r)
        line.show_counts = line.group in multi_counts
        line.label = _label(line, multi_dataset, engines.get(line.group, []))
    return list(lines.values())


def _quantised(rows: Sequence[ResultRow]) -> list[ResultRow]:
    return [r for r in rows if r.method != FP32]


def _add(draws: list[ResultRow], row: ResultRow) -> None:
    draws[:] = sorted([d for d in draws if d.seed != row.seed] + [row], key=lambda d: d.seed)


def _digests(rows: Sequence[ResultRow]) -> Any:
    """``row -> weights digest``, a pre-digest row taking the one digest recorded for its weights file."""
    known = {}
    for r in rows:
        if r.weights_digest:
            known.setdefault((r.task, r.model, r.extra.get("weights")), set()).add(r.weights_digest)

    def digest(r: ResultRow) -> str:
        if r.weights_digest:
            return r.weights_digest
        same = known.get((r.task, r.model, r.extra.get("weights")), set())
        return next(iter(same)) if len(same) == 1 else ""
    return digest


def _multi(rows: Sequence[ResultRow], by: Any, what: Any) -> set:
    found: dict[Any, set] = {}
    for r in rows:
        found.setdefault(by(r), set()).add(what(r))
    return {k for k, v in found.items() if len(v) > 1}


def _label(line: Line, multi_dataset: set, engines: list[str]) -> str:
    task, model, dataset, _ = line.group
    label = model + (f" ({dataset})" if (task, model) in multi_dataset else "")
    if line.bits != (8, 8):
        label += f" {bits_label(*line.bits)}"
    opts = options_label(line.options)
    if opts:
        label += f" {opts}" if line.bits != (8, 8) else f" w8a8 {opts}"
    if line.show_counts:
        label += f" n{line.counts[0]}/c{line.counts[1]}"
    if engines and line.engine != engines[0]:
        label += f" [{line.engine}]"
    return label


def methods_of(rows: Iterable[ResultRow]) -> list[str]:
    """Methods present, in the registry's column order."""
    return column_order(r.method for r in rows)


@lru_cache(maxsize=4096)
def _ci(outcomes: str) -> tuple[float, float]:
    return bootstrap_ci(decode_outcomes(outcomes))


def outcomes_of(row: ResultRow) -> str | None:
    """The row's encoded per-image outcomes, or None for rows written without them."""
    value = row.extra.get("outcomes")
    return value if isinstance(value, str) and value else None


@lru_cache(maxsize=4096)
def _decode_replicates(observed: float, n: int, seed: int, values: str) -> Replicates:
    return Replicates.decode({"observed": observed, "n": n, "seed": seed, "values": values})


def evidence_of(row: ResultRow) -> np.ndarray | Replicates | None:
    """What paired tests and intervals use: per-image outcomes (Top-1) or bootstrap replicates
    (mAP, see :mod:`hqbench.evidence.average_precision`); None for rows written without either."""
    enc = outcomes_of(row)
    if enc:
        return decode_outcomes(enc)
    reps = row.extra.get("bootstrap")
    if isinstance(reps, dict):
        return _decode_replicates(reps.get("observed"), reps.get("n"), reps.get("seed"), reps.get("values"))
    return None


def interval_of(row: ResultRow) -> tuple[float, float] | None:
    """The 95 % interval of a row's metric: BCa over its per-image outcomes (cached by the encoded
    string) or the percentile interval of its mAP bootstrap replicates; None for a row with neither."""
    enc = outcomes_of(row)
    if enc:
        return _ci(enc)
    evidence = evidence_of(row)
    return None if evidence is None else evidence.ci()


def has_evidence(row: ResultRow) -> bool:
    return bool(outcomes_of(row)) or isinstance(row.extra.get("bootstrap"), dict)


def _seeds_with_evidence(draws: list[ResultRow]) -> set[int]:
    return {d.seed for d in draws if has_evidence(d)}


def _evidence(draws: list[ResultRow], seed: int) -> np.ndarray | Replicates:
    return evidence_of(next(d for d in draws if d.seed == seed))


def _mean(draws: list[ResultRow]) -> float:
    return draw_summary([d.value for d in draws])[0]


def _winners(line: Line) -> tuple[dict[str, str], str]:
    """Marks for the quantised cells and how they were decided: "tested", "untested" or "single".

    Tested when every competing cell has evidence (outcomes or replicates) for a seed they all
    share (the lowest such seed is used): the best is marked alone only if the paired test
    (McNemar, or the paired bootstrap for mAP) separates it from every other cell,
    otherwise the cells tied with it are marked ``"tie"``. Untested lines mark the maximum.
    A line with one quantised cell (or none) is "single" and has no mark: best means best among
    the quantised methods, and a lone one is compared with nothing (FP32 never competes).
    """
    values = {m: _mean(ds) for m, ds in line.cells.items() if m != FP32}
    values = {m: v for m, v in values.items() if not math.isnan(v)}
    if len(values) < 2:
        return {}, "single"
    common = set.intersection(*(_seeds_with_evidence(line.cells[m]) for m in values))
    vectors = {m: _evidence(line.cells[m], min(common)) for m in values} if common else {}
    if not vectors or len({pairing_key(v) for v in vectors.values()}) != 1:
        top = max(values.values())
        return {m: "best" for m, v in values.items() if v == top}, "untested"
    rank = rank_cells({m: vectors[m] for m in column_order(values)}, ALPHA, scores=values)
    if rank["tied"] == [rank["best"]]:
        return {rank["best"]: "best"}, "tested"
    return {m: "tie" for m in rank["tied"]}, "tested"


def line_cells(line: Line, intervals: bool = True) -> tuple[dict[str, Cell], str]:
    """Every cell of a line, marked, and how the marks were decided (see :func:`_winners`).

    Args:
        line: A line from :func:`build_lines`.
        intervals: Compute bootstrap intervals of single-draw cells that carry outcomes.
    """
    marks, how = _winners(line)
    cells = {}
    for m, draws in line.cells.items():
        mean, std = draw_summary([d.value for d in draws])
        ci = interval_of(draws[0]) if intervals and len(draws) == 1 else None
        cells[m] = Cell(mean, std, len(draws), ci, marks.get(m, ""))
    return cells, how


def _pair(line: Line, a: str, b: str) -> dict[str, Any]:
    va, vb = _mean(line.cells[a]), _mean(line.cells[b])
    seeds = _seeds_with_evidence(line.cells[a]) & _seeds_with_evidence(line.cells[b])
    p = n = seed = test = None
    if seeds:
        xa, xb = _evidence(line.cells[a], min(seeds)), _evidence(line.cells[b], min(seeds))
        if pairing_key(xa) == pairing_key(xb):
            kind, n = pairing_key(xa)[:2]
            p, seed = paired_pvalue(xa, xb), min(seeds)
            test = "paired bootstrap" if kind == "replicates" else "McNemar"
    return {"line": line.label, "metric": line.metric, "a": a, "b": b, "a_value": va, "b_value": vb,
            "diff": va - vb, "p": p, "n": n, "seed": seed, "test": test}


def pvalue_pairs(line: Line) -> list[dict[str, Any]]:
    """Every pair of quantised methods of a line: values, difference and paired p-value.

    ``test`` names it: exact McNemar on Top-1 outcomes, the paired bootstrap on mAP replicates.
    The p-value uses the lowest seed both cells have evidence for; ``p``, ``n``, ``seed`` and
    ``test`` are None when there is no such draw or the draws are not on the same images.
    """
    methods = [m for m in column_order(line.cells) if m != FP32]
    return [_pair(line, a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]


def fp32_gaps(line: Line) -> list[dict[str, Any]]:
    """Each quantised method's gap to the line's FP32 reference, with its paired interval.

    ``gap`` is the mean over the draws minus FP32; ``seed_gap`` (that draw's gap), ``lo``/``hi``
    (its 95 % paired bootstrap interval) and ``p`` (the paired test) are for the lowest seed with
    evidence, as :func:`pvalue_pairs` uses, and None without evidence on FP32's images.
    """
    ref = line.cells.get(FP32, [])
    if not ref:
        return []
    fp32 = _mean(ref)
    ref_evidence = next((evidence_of(r) for r in ref if has_evidence(r)), None)
    gaps = []
    for m in [m for m in column_order(line.cells) if m != FP32]:
        gap = {"line": line.label, "metric": line.metric, "method": m, "gap": _mean(line.cells[m]) - fp32,
               "seed_gap": None, "lo": None, "hi": None, "p": None, "seed": None}
        seeds = _seeds_with_evidence(line.cells[m])
        if ref_evidence is not None and seeds:
            x = _evidence(line.cells[m], min(seeds))
            if pairing_key(x) == pairing_key(ref_evidence):
                gap["seed_gap"] = evidence_value(x) - evidence_value(ref_evidence)
                gap["lo"], gap["hi"] = paired_difference_ci(x, ref_evidence)
                gap["p"], gap["seed"] = paired_pvalue(x, ref_evidence), min(seeds)
        gaps.append(gap)
    return gaps
