"""Figures of bit-width sweeps: metric against width label, one series per method.

Tables show one setting per line; a sweep (w8a8 down to w4a4) reads better as a curve. The
figures use the same grouping and cell summaries as the tables (:mod:`hqbench.reporting.lines`),
so a point and its error bar are exactly the table cell and its interval.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from hqbench.methods import method_title
from hqbench.paths import atomic_write
from hqbench.reporting.lines import FP32, Cell, bits_label, bits_sort_key, build_lines, line_cells, options_label

if TYPE_CHECKING:
    from hqbench.reporting.results import ResultRow

_PANEL_INCHES = (8.0, 3.6)
_LEGEND_COLUMN_CHARS = 48  # series names this long still fit two legend columns across the panel
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINES = ("-", "--", ":", "-.")
_LEGEND_ROW_INCHES = 0.22


def _panels(rows: list[ResultRow]) -> dict[tuple[str, str, str, str], dict]:
    """Per (task, model, dataset, metric): width labels, series -> {width: cell}, FP32 cell.

    A series is keyed by ``(method, (options label, engine))``: one method under one setting.
    """
    panels: dict[tuple[str, str, str, str], dict] = {}
    for line in build_lines(rows):
        panel = panels.setdefault(line.group, {"widths": set(), "series": {}, "fp32": None})
        cells, _ = line_cells(line)
        width = bits_label(*line.bits)
        for method, cell in cells.items():
            if method == FP32:
                panel["fp32"] = cell
                continue
            panel["widths"].add(width)
            panel["series"].setdefault((method, (options_label(line.options), line.engine)), {})[width] = cell
    return {k: v for k, v in panels.items() if v["series"]}


def _yerr(cell: Cell) -> tuple[float, float]:
    if cell.ci is not None:
        return (max(cell.value - cell.ci[0], 0.0), max(cell.ci[1] - cell.value, 0.0))
    return (cell.std or 0.0, cell.std or 0.0)


def _series_name(method: str, setting: tuple[str, str]) -> str:
    opts, engine = setting
    return method_title(method) + (f" {opts}" if opts else "") + (f" [{engine}]" if engine != "fake" else "")


def _draw(ax, key: tuple[str, str, str, str], panel: dict) -> None:
    task, model, dataset, metric = key
    widths = sorted(panel["widths"], key=bits_sort_key)
    x = {w: i for i, w in enumerate(widths)}
    n_series = len(panel["series"])
    # a method keeps its colour across settings; a setting (options, engine) keeps its marker and line
    methods = list(dict.fromkeys(m for m, _ in panel["series"]))
    settings = list(dict.fromkeys(s for _, s in panel["series"]))
    for k, ((method, setting), points) in enumerate(panel["series"].items()):
        i, j = methods.index(method), settings.index(setting)
        style = {"color": f"C{i % 10}", "marker": _MARKERS[j % len(_MARKERS)], "linestyle": _LINES[j % len(_LINES)]}
        ws = [w for w in widths if w in points]
        errs = [_yerr(points[w]) for w in ws]
        dodge = (k - (n_series - 1) / 2) * 0.06  # keep overlapping error bars apart
        ax.errorbar(
            [x[w] + dodge for w in ws], [points[w].value for w in ws],
            yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3, label=_series_name(method, setting), **style,
        )
    if panel["fp32"] is not None:
        ax.axhline(panel["fp32"].value, color="grey", linestyle="--", linewidth=1, label="FP32")
    ax.set_xticks(range(len(widths)), widths)
    ax.set_title(f"{model} ({dataset}, {task})")
    ax.set_xlabel("bit widths (weights, activations)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(True, alpha=0.3)
    # under the axes, never over a point; beside them, a dozen long series names squeeze the axes away
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=_legend_columns(panel))


def _legend_columns(panel: dict) -> int:
    """Two columns, or one when a series name is too long for two to fit the panel's width
    (a legend wider than the figure makes the layout shrink the axes to a sliver)."""
    longest = max(len(_series_name(m, s)) for m, s in panel["series"])
    return 2 if longest <= _LEGEND_COLUMN_CHARS else 1


def plot_sweep(rows: Iterable[ResultRow], path: str | os.PathLike[str]) -> Path:
    """Plot metric vs bit-width label per method, one panel per (task, model, dataset, metric).

    All panels go into the one PNG at ``path``, stacked, so a sweep over several models is one
    file for docs/RESULTS.md.

    Widths are ordered widest first (w8a8, w8a6, w8a5, w8a4, w6a6, w4a8, w4a4, ...); error
    bars are each cell's 95 % bootstrap interval (or the std over calibration draws); FP32 is
    a dashed reference line. The PNG is written to a temp file and moved into place, so a
    failed plot never leaves a half-written figure.

    Args:
        rows: Result rows (several bit widths of the same models, typically).
        path: The ``.png`` to write; parent folders are created.

    Returns:
        The path written.

    Raises:
        ValueError: If no quantised row is present to plot.
    """
    # A bare Figure renders with the Agg canvas and touches no pyplot state or global backend.
    from matplotlib.figure import Figure

    panels = _panels(list(rows))
    if not panels:
        raise ValueError(f"{path}: no quantised result rows to plot")
    heights = [_PANEL_INCHES[1] + _LEGEND_ROW_INCHES * -(-(len(p["series"]) + 1) // _legend_columns(p))
               for p in panels.values()]
    fig = Figure(figsize=(_PANEL_INCHES[0], sum(heights)), layout="constrained")  # makes room for the legends
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)
    for ax, (key, panel) in zip(axes[:, 0], panels.items()):
        _draw(ax, key, panel)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"), binary=True)
