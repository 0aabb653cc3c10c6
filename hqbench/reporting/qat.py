"""Quantization-aware training as a result: each QAT row against what post-training gives.

A row of weights ``hqbench train ... train.qat=true`` wrote carries ``qat=...`` in its options. Each
is tested on the same images against two post-training rows of the same model, data, widths and
engine: the cell it started from (same method and options, the original weights) and the best
post-training cell at that width (any hqbench method or option). Among QAT rows that differ only in
the calibrator that initialised them, each is tested against the best of them: whether the
starting calibrator still matters after training.
"""

from __future__ import annotations

from typing import Any, Iterable

from rich.table import Table

from ..methods import FP32, method_title
from .lines import bits_label, evidence_of, interval_of, options_label
from .render import TableSpec, paired_cell
from .results import ResultRow
from .stats import paired_comparison


def _versus(mine: ResultRow, other: ResultRow | None) -> dict | None:
    vs = paired_comparison(evidence_of(mine), None if other is None or other is mine else evidence_of(other))
    if vs is None:
        return None
    return {**vs, "method": other.method, "options": options_label({k: v for k, v in other.options.items() if k != "qat"}),
            "value": other.value}


def qat_rows(rows: Iterable[ResultRow]) -> list[dict[str, Any]]:
    """One dict per QAT row: its value and interval, and the paired tests against its post-training
    start, the best post-training cell at its width, and the best QAT row of its group."""
    rows = list(rows)
    trained = [r for r in rows if "qat" in r.options]
    ptq = [r for r in rows if "qat" not in r.options and r.method != FP32]

    def where(r: ResultRow) -> tuple:
        return r.task, r.model, r.dataset, r.weight_bits, r.act_bits, r.engine, r.n_eval

    out = []
    for r in trained:
        same = [p for p in ptq if where(p) == where(r)]
        rest = {k: v for k, v in r.options.items() if k != "qat"}
        start = next((p for p in same if p.method == r.method and p.options == rest), None)
        best = max(same, key=lambda p: p.value, default=None)
        group = [q for q in trained if where(q) == where(r) and q.options == r.options]
        best_qat = max(group, key=lambda q: q.value)
        out.append({"model": r.model, "method": r.method, "bits": bits_label(r.weight_bits, r.act_bits),
                    "options": options_label(rest), "qat": r.options["qat"], "engine": r.engine, "value": r.value,
                    "ci": interval_of(r), "vs_start": _versus(r, start),
                    "vs_best_ptq": _versus(r, best), "vs_best_qat": _versus(r, best_qat)})
    return out


def _test(vs: dict | None, named: bool = False) -> str:
    if vs is None:
        return "-"
    who = f"{method_title(vs['method'])}{' ' + vs['options'] if vs['options'] else ''} {vs['value']:.2f}: " if named else ""
    return who + paired_cell(vs)


def _cells(item: dict) -> list[str]:
    ci = "" if item["ci"] is None else f" [{item['ci'][0]:.1f}, {item['ci'][1]:.1f}]"
    name = item["model"] + (f" {item['options']}" if item["options"] else "") + (
        f" [{item['engine']}]" if item["engine"] != "fake" else "")
    return [name, f"{method_title(item['method'])} {item['bits']}", item["qat"], f"{item['value']:.2f}{ci}",
            _test(item["vs_start"]), _test(item["vs_best_ptq"], named=True), _test(item["vs_best_qat"], named=True)]


TABLE = TableSpec(
    "Quantization-aware training against post-training",
    ("Model", "Start", "QAT", "metric [95 % CI]", "vs its start", "vs best post-training", "vs best QAT start"),
    ("paired differences on the same images with 95 % intervals and McNemar (Top-1) or paired bootstrap (mAP) "
            "p, * p<0.05; its start: the post-training cell QAT began from; best QAT start: the best row trained alike "
            "from another calibrator"),
    n_text=3)


def qat_table(rows: Iterable[ResultRow]) -> Table | None:
    """The rich table of :func:`qat_rows`, or None when there is no QAT row."""
    return TABLE.rich([_cells(i) for i in qat_rows(rows)])


def qat_markdown(rows: Iterable[ResultRow]) -> str:
    """The same table in Markdown ("" when there is no QAT row)."""
    return TABLE.markdown([_cells(i) for i in qat_rows(rows)])


__all__ = ["qat_markdown", "qat_rows", "qat_table"]
