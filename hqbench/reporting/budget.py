"""Mixed precision as a result: the metric against how many activation points run at 8 bits.

Every row of hqbench's methods below 8-bit activations records ``points_8bit`` ("6/64"); a row of
``mixed.budget=...`` also names the points it promoted. Rows that differ only in the 8-bit rule
(none, ``keep_8bit=first,last``, a budget) form one curve per method, and each budget's row is
tested against ``keep_8bit=first,last`` of the same method on the same images: the fixed rule the
literature uses, at its own count of 8-bit points.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from rich.table import Table

from ..methods import FP32, method_title
from ..paths import atomic_write
from .lines import bits_label, evidence_of, interval_of, options_label
from .render import TableSpec, paired_cell
from .results import ResultRow
from .stats import paired_comparison

_LINESTYLES = ("-", "--", ":", "-.")  # one per way of ranking the points, on one method's colour
# options that say which points run at 8 bits; the rest of a row's options pick its curve
RULE_OPTIONS = ("keep_8bit", "mixed_budget", "mixed_samples", "mixed_search", "mixed_criterion")


def _ranking(row: ResultRow) -> str | None:
    """How a mixed-precision row chose its points ("mixed": one SQNR ranking, "greedy kl" ...); None
    for a row of a fixed rule."""
    if "mixed_budget" not in row.options:
        return None
    how = [row.options.get("mixed_search"), row.options.get("mixed_criterion")]
    return " ".join(h for h in how if h) or "mixed"


def _rule(row: ResultRow) -> str:
    keep = row.options.get("keep_8bit", "")
    parts = ["first/last" if keep == "first+last" else keep]
    if _ranking(row) is not None:
        parts.append(f"{_ranking(row)} {row.options['mixed_budget']}")
    return " + ".join(p for p in parts if p) or "none"


def _count(row: ResultRow) -> tuple[int, int] | None:
    text = row.extra.get("points_8bit")
    if not isinstance(text, str) or "/" not in text:
        return None
    done, total = text.split("/")
    return int(done), int(total)


def budget_rows(rows: Iterable[ResultRow]) -> list[dict[str, Any]]:
    """One dict per row that records ``points_8bit``, grouped into curves (model, data, widths, other
    options, engine, method) and sorted by the count of 8-bit points, with its interval and, where the
    same curve has a ``keep_8bit=first,last`` row, the paired test against it."""
    rows = list(rows)
    fp32 = {(r.task, r.model, r.dataset): r for r in rows if r.method == FP32}
    curves: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        if _count(r) is None:
            continue
        rest = tuple(sorted((k, v) for k, v in r.options.items() if k not in RULE_OPTIONS))
        curves.setdefault((r.task, r.model, r.dataset, r.weight_bits, r.act_bits, rest, r.engine, r.seed, r.method),
                          []).append(r)
    out = []
    for key, members in curves.items():
        fixed = next((r for r in members if _rule(r) == "first/last"), None)
        for r in sorted(members, key=lambda r: (_count(r)[0], _rule(r))):
            done, total = _count(r)
            mine = evidence_of(r)
            item = {"model": r.model, "method": r.method, "bits": bits_label(r.weight_bits, r.act_bits),
                    "options": options_label(dict(key[5])), "engine": r.engine, "seed": r.seed, "metric": r.metric,
                    "rule": _rule(r), "ranking": _ranking(r), "points_8bit": done, "points": total, "value": r.value,
                    "ci": interval_of(r), "promoted": r.extra.get("promoted"),
                    "fp32": None, "vs_fixed": None}
            ref = fp32.get((r.task, r.model, r.dataset))
            if ref is not None:
                item["fp32"] = r.value - ref.value
            vs = paired_comparison(mine, None if fixed is None or fixed is r else evidence_of(fixed))
            if vs is not None:
                item["vs_fixed"] = {**vs, "fixed_points": _count(fixed)[0]}
            out.append(item)
    return out


def _cells(item: dict) -> list[str]:
    ci = "" if item["ci"] is None else f" [{item['ci'][0]:.1f}, {item['ci'][1]:.1f}]"
    name = (item["model"] + (f" {item['options']}" if item["options"] else "")
            + (f" [{item['engine']}]" if item["engine"] != "fake" else ""))
    return [name, f"{method_title(item['method'])} {item['bits']}", item["rule"],
            f"{item['points_8bit']}/{item['points']}", f"{item['value']:.2f}{ci}",
            "-" if item["fp32"] is None else f"{item['fp32']:+.2f}", paired_cell(item["vs_fixed"])]


TABLE = TableSpec(
    "8-bit activation points: the fixed rule and mixed precision",
    ("Model", "Method", "8-bit rule", "8-bit points", "metric [95 % CI]", "vs FP32", "vs first/last [95 % CI]"),
    ("vs first/last: paired difference to keep_8bit=first,last of the same method on the same images, McNemar "
            "(Top-1) or paired bootstrap (mAP) p, * p<0.05"),
    n_text=3)


def _shown(rows: Iterable[ResultRow]) -> list[dict]:
    """:func:`budget_rows`, or none when no row has more than the plain rule."""
    items = budget_rows(rows)
    return items if any(i["rule"] != "none" for i in items) else []


def budget_table(rows: Iterable[ResultRow]) -> Table | None:
    """The rich table of :func:`budget_rows`, or None when no row has more than the plain rule."""
    return TABLE.rich([_cells(i) for i in _shown(rows)])


def budget_markdown(rows: Iterable[ResultRow]) -> str:
    """The same table in Markdown ("" when there is none)."""
    return TABLE.markdown([_cells(i) for i in _shown(rows)])


def plot_budget(rows: Iterable[ResultRow], path: str | os.PathLike[str]) -> Path:
    """The metric against the number of 8-bit activation points, one line per method and way of ranking
    (mixed precision's budgets from the plain rule on; ``mixed`` solid, ``greedy``, ``kl`` ... in other
    line styles), ``keep_8bit=first,last`` as an open marker at its count, FP32 as a grey line; one
    panel per (model, widths, other options, engine), stacked in one PNG."""
    from matplotlib.figure import Figure

    from .plots import _method_style

    rows = list(rows)
    items = budget_rows(rows)
    if not items:
        raise ValueError("no row records its 8-bit activation points (rows of hqbench's methods below 8-bit "
                         "activations do)")
    fp32 = {r.model: r.value for r in rows if r.method == FP32}
    panels: dict[tuple, list[dict]] = {}
    for item in items:
        panels.setdefault((item["model"], item["bits"], item["options"], item["engine"]), []).append(item)
    fig = Figure(figsize=(10.5, 3.8 * len(panels)), layout="constrained")
    for ax, ((model, bits, options, engine), members) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0],
                                                            panels.items()):
        for method in dict.fromkeys(i["method"] for i in members):
            style = _method_style(method)
            mine = [i for i in members if i["method"] == method]
            plain = [i for i in mine if i["rule"] == "none"]
            kinds = list(dict.fromkeys(i["ranking"] for i in mine if i["ranking"] is not None)) or ["mixed"]
            curves = [(plain + [i for i in mine if i["ranking"] == kind and "first/last" not in i["rule"]],
                       {"label": method_title(method) + ("" if kind == "mixed" else f" ({kind})"),
                        "linestyle": _LINESTYLES[n % len(_LINESTYLES)]})
                      for n, kind in enumerate(sorted(kinds, key=lambda k: (k != "mixed", k)))]
            fixed = [i for i in mine if i["rule"] == "first/last"]
            for series, extra in (*curves,
                                  (fixed, {"fillstyle": "none", "linestyle": "none", "markersize": 9,
                                           "label": f"{method_title(method)}, keep_8bit=first,last"})):
                if not series:
                    continue
                errs = [(0.0, 0.0) if i["ci"] is None else (i["value"] - i["ci"][0], i["ci"][1] - i["value"])
                        for i in series]
                ax.errorbar([i["points_8bit"] for i in series], [i["value"] for i in series],
                            yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3, **{**style, **extra})
        if model in fp32:
            ax.axhline(fp32[model], color="grey", linestyle="--", linewidth=1, label="FP32")
        ax.set_title(f"{model} {bits}" + (f" {options}" if options else "") + (f" [{engine}]" if engine != "fake" else ""))
        ax.set_xlabel(f"activation points at 8 bits (of {members[0]['points']})")
        ax.set_ylabel(f"{members[0]['metric']} (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside: it hides no curve
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)


__all__ = ["budget_markdown", "budget_rows", "budget_table", "plot_budget"]
