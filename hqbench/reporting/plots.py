"""Figures of bit-width sweeps: metric against width label, one series per method.

Tables show one setting per line; a sweep (w8a8 down to w4a4) reads better side by side. Widths
are categories, not a continuum, so each is an x position with a point and an error bar per series
and no line joins one width to the next. A method has one colour and marker in every figure. The
figures use the same grouping and cell summaries as the tables (:mod:`hqbench.reporting.lines`),
so a point and its error bar are exactly the table cell and its interval.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from hqbench.methods import PYTORCH, method_title
from hqbench.paths import atomic_write
from hqbench.quant.calibrators import list_calibrators
from hqbench.reporting.lines import FP32, Cell, bits_label, bits_sort_key, build_lines, line_cells, options_label

if TYPE_CHECKING:
    from hqbench.reporting.results import ResultRow

_PANEL_INCHES = (8.0, 3.6)
_LEGEND_COLUMN_CHARS = 48  # series names this long still fit two legend columns across the panel
# tab10 without its grey (FP32's reference line), then tab20b's darks and black: every registered
# method its own colour; 15 colours and 8 markers are coprime, so 120 methods get distinct pairs
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
            "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# a method's settings other than the plain one (options, engine) differ by how its marker is filled
_FILLS = ("none", "left", "bottom", "right", "top")
_DODGE = 0.06  # between neighbouring series at one width, in category spacings
_MAX_SPREAD = 0.5  # all series of one width stay within half the spacing, so none reaches the next width
_LEGEND_ROW_INCHES = 0.22
# folders that name a split or a layout rather than the data set (…/imagenet/val is imagenet)
_GENERIC_FOLDERS = {"train", "val", "valid", "validation", "test", "images", "labels", "data"}


def _method_style(method: str) -> dict[str, str]:
    """Colour and marker of ``method`` in every figure: from its place in the method registry
    (column order), or from a hash of its name when it is not a registered name itself
    (``"percentile:99.9"``), never from which methods a figure happens to show."""
    from hqbench.peers import list_peers  # lazily, as hqbench.methods reads that registry

    names = [PYTORCH, *(e.letter or e.name for e in list_calibrators()), *(p.name for p in list_peers())]
    i = names.index(method) if method in names else len(names) + zlib.crc32(method.encode()) % 120
    return {"color": _COLOURS[i % len(_COLOURS)], "marker": _MARKERS[i % len(_MARKERS)]}


def _dataset_name(dataset: str) -> str:
    """What a title calls a row's ``dataset``: ``"$HQBENCH_DATA/imagenet"`` -> ``"imagenet"``.

    Rows store data as portable paths (``$HQBENCH_DATA/...``, ``~/...``, ``.../a/b``, relative, or
    ``name:/abs/path`` in old files): a title shows the last folder that names the data set, never
    a path or an environment variable. A description (words and spaces, no leading path) is kept.
    """
    text = dataset.strip().rstrip("/\\")
    is_path = re.match(r"^([$~.]|[\\/]|[\w.-]+:)", text) or (re.search(r"[\\/]", text) and not re.search(r"\s", text))
    if not is_path:
        return text
    parts = [p for p in re.split(r"[\\/:]+", text) if p and p[0] not in "$~" and p.strip(".")]
    named = [p for p in parts if p.lower() not in _GENERIC_FOLDERS] or parts
    return named[-1] if named else "data"


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


def _offsets(n_series: int) -> list[float]:
    """Side-by-side shifts that keep overlapping error bars apart, centred on the width's tick; the
    total spread is bounded, so with many series they pack closer instead of reaching the next width."""
    step = min(_DODGE, _MAX_SPREAD / (n_series - 1)) if n_series > 1 else 0.0
    return [(k - (n_series - 1) / 2) * step for k in range(n_series)]


def _draw(ax, key: tuple[str, str, str, str], panel: dict) -> None:
    task, model, dataset, metric = key
    widths = sorted(panel["widths"], key=bits_sort_key)
    x = {w: i for i, w in enumerate(widths)}
    # colour and marker say the method (the same in every figure); the fill says the setting
    settings = list(dict.fromkeys(s for _, s in panel["series"] if s != ("", "fake")))
    for dodge, ((method, setting), points) in zip(_offsets(len(panel["series"])), panel["series"].items()):
        fill = "full" if setting == ("", "fake") else _FILLS[settings.index(setting) % len(_FILLS)]
        ws = [w for w in widths if w in points]
        errs = [_yerr(points[w]) for w in ws]
        # widths are categories, not a continuum: points and error bars, no line from one width to the next
        ax.errorbar(
            [x[w] + dodge for w in ws], [points[w].value for w in ws],
            yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=3, linestyle="none", fillstyle=fill,
            label=_series_name(method, setting), **_method_style(method),
        )
    if panel["fp32"] is not None:
        ax.axhline(panel["fp32"].value, color="grey", linestyle="--", linewidth=1, label="FP32")
    ax.set_xticks(range(len(widths)), widths)
    ax.set_xlim(-0.5, len(widths) - 0.5)
    ax.set_title(f"{model} ({_dataset_name(dataset)}, {task})")
    ax.set_xlabel("bit widths (weights, activations)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(True, axis="y", alpha=0.3)
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

    Widths are ordered widest first (w8a8, w8a6, w8a5, w8a4, w6a6, w4a8, w4a4, ...), one x
    position each, the series side by side within it; error bars are each cell's 95 % bootstrap
    interval (or the std over calibration draws); FP32 is a dashed reference line. Titles name
    the data set (``imagenet``), not the path rows store. The PNG is written to a temp file and
    moved into place, so a failed plot never leaves a half-written figure.

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
