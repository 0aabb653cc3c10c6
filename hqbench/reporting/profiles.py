"""What each deployment profile costs each calibrator: every ``profile=`` row against the same cell
under the paper's scheme (the row without a profile), on the same images, with McNemar (Top-1) or
a paired bootstrap (mAP)."""

from __future__ import annotations

from typing import Any, Iterable

from rich.table import Table

from ..methods import method_title
from .lines import bits_label, evidence_of, interval_of, options_label
from .render import TableSpec, paired_cell
from .results import ResultRow
from .stats import paired_comparison


def _cell(row: ResultRow) -> tuple:
    """Everything that picks a row but its profile."""
    rest = tuple(sorted((k, v) for k, v in row.options.items() if k != "profile"))
    return (row.task, row.model, row.weights_digest, row.dataset, row.method, row.weight_bits, row.act_bits, rest,
            row.engine, row.seed, row.metric)


def profile_rows(rows: Iterable[ResultRow]) -> list[dict[str, Any]]:
    """One dict per row with a profile: its metric and interval, and the paired test against the same
    cell without a profile (the paper's scheme) where the results hold it."""
    rows = list(rows)
    paper = {_cell(r): r for r in rows if "profile" not in r.options}
    out = []
    for r in rows:
        if "profile" not in r.options:
            continue
        mine, ref = evidence_of(r), paper.get(_cell(r))
        out.append({"model": r.model, "method": r.method, "bits": bits_label(r.weight_bits, r.act_bits),
                    "options": options_label(dict(_cell(r)[7])), "profile": r.options["profile"], "value": r.value,
                    "ci": interval_of(r), "paper": None if ref is None else ref.value,
                    "vs_paper": paired_comparison(mine, None if ref is None else evidence_of(ref))})
    return out


def _cells(item: dict) -> list[str]:
    ci = "" if item["ci"] is None else f" [{item['ci'][0]:.1f}, {item['ci'][1]:.1f}]"
    return [item["model"] + (f" {item['options']}" if item["options"] else ""),
            f"{method_title(item['method'])} {item['bits']}", item["profile"], f"{item['value']:.2f}{ci}",
            "-" if item["paper"] is None else f"{item['paper']:.2f}", paired_cell(item["vs_paper"])]


TABLE = TableSpec(
    "Deployment profiles against the paper's scheme",
    ("Model", "Method", "Profile", "metric [95 % CI]", "paper", "vs paper [95 % CI]"),
    "vs paper: paired difference to the same cell under the paper's hybrid scheme on the same images, McNemar "
    "(Top-1) or paired bootstrap (mAP) p, * p<0.05",
    n_text=3)


def profile_table(rows: Iterable[ResultRow]) -> Table | None:
    """The rich table of :func:`profile_rows`, or None when no row has a profile."""
    return TABLE.rich([_cells(i) for i in profile_rows(rows)])


def profile_markdown(rows: Iterable[ResultRow]) -> str:
    """The same table in Markdown ("" when no row has a profile)."""
    return TABLE.markdown([_cells(i) for i in profile_rows(rows)])
