"""Result tables in the paper's layout: rich for the terminal, GitHub Markdown for files.

One line per (task, model), one column per method in :data:`METHOD_COLUMNS` order, values in
percent with two decimals; the best INT8 cell of each line is marked so the winner is visible
without colour (bold plus ``*`` in rich, ``**bold**`` in Markdown).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from ..quant.calibrators import TITLES

if TYPE_CHECKING:
    from hqbench.reporting.results import ResultRow

#: The single method vocabulary: result-file name -> column header, in the paper's column order.
# The A-D titles live once, in the calibrator registry.
METHOD_COLUMNS: dict[str, str] = {"fp32": "FP32", "pytorch": "PyTorch", **TITLES}
#: Methods that compete for the "best INT8" mark (everything but the float reference).
INT8_METHODS: tuple[str, ...] = tuple(m for m in METHOD_COLUMNS if m != "fp32")

_MISSING = "—"
_UNBOUNDED = 10_000


@dataclass
class _Line:
    label: str
    metric: str
    cells: dict[str, ResultRow] = field(default_factory=dict)


def _lines(rows: Sequence[ResultRow]) -> list[_Line]:
    """Group rows into table lines in first-seen order.

    A line is one (task, model, dataset, metric). A method seen again under another engine
    (say D both fake-quantised and integer-only) opens a follow-up line labelled ``[engine]``
    rather than overwriting the first, so no result in the file is hidden by the table.
    """
    datasets: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        datasets.setdefault((r.task, r.model), set()).add(r.dataset)
    groups: dict[tuple[str, str, str, str], list[_Line]] = {}
    order: list[_Line] = []
    for r in rows:
        lines = groups.setdefault((r.task, r.model, r.dataset, r.metric), [])
        line = next((ln for ln in lines if r.method not in ln.cells), None)
        if line is None:
            label = r.model
            if len(datasets[(r.task, r.model)]) > 1:
                label += f" ({r.dataset})"
            if lines:
                label += f" [{r.engine}]"
            line = _Line(label, r.metric)
            lines.append(line)
            order.append(line)
        line.cells[r.method] = r
    # Follow-up lines keep the FP32 reference of their group so each line reads on its own.
    for lines in groups.values():
        if "fp32" in lines[0].cells:
            for ln in lines[1:]:
                ln.cells.setdefault("fp32", lines[0].cells["fp32"])
    return order


def _methods(rows: Iterable[ResultRow]) -> list[str]:
    present = {r.method for r in rows}
    return [m for m in METHOD_COLUMNS if m in present]


def _best(line: _Line) -> set[str]:
    """INT8 methods holding the line's maximum (all of them on a tie); NaN never wins."""
    vals = {m: r.value for m, r in line.cells.items() if m in INT8_METHODS and not math.isnan(r.value)}
    if not vals:
        return set()
    top = max(vals.values())
    return {m for m, v in vals.items() if v == top}


def _distinct(values: Iterable[object]) -> str:
    return "/".join(dict.fromkeys(str(v) for v in values))


def paper_table(rows: Iterable[ResultRow], title: str | None = None) -> Table:
    """Accuracy table in the paper's layout.

    Args:
        rows: Result rows, any order; lines appear in first-seen (task, model) order.
        title: Optional table title.

    Returns:
        A rich ``Table`` with columns Model | Metric | one per method that has data; the best
        INT8 cell of each line (max over PyTorch and A-D) is bold with a ``*`` suffix, missing
        cells show ``—``.
    """
    rows = list(rows)
    methods = _methods(rows)
    body = []
    for line in _lines(rows):
        best = _best(line)
        cells = [Text(line.label), Text(line.metric)]
        for m in methods:
            r = line.cells.get(m)
            if r is None:
                cells.append(Text(_MISSING))
            elif m in best:
                cells.append(Text(f"{r.value:.2f}*", style="bold"))
            else:
                cells.append(Text(f"{r.value:.2f}"))
        body.append(cells)
    headers = ["Model", "Metric", *(METHOD_COLUMNS[m] for m in methods)]
    return _table(headers, body, n_text=2, keep_cells=True, title=title, caption="values in %; * best INT8 per row")


def timing_table(rows: Iterable[ResultRow]) -> Table:
    """Wall-clock cost per model x method, as ``calibration / evaluation`` seconds.

    Args:
        rows: Result rows, as for :func:`paper_table`.

    Returns:
        A rich ``Table`` with one line per (task, model) and one column per method present.
    """
    rows = list(rows)
    methods = _methods(rows)
    body = [
        [Text(line.label)]
        + [
            Text(f"{r.calib_seconds:.1f} / {r.eval_seconds:.1f}") if (r := line.cells.get(m)) else Text(_MISSING)
            for m in methods
        ]
        for line in _lines(rows)
    ]
    headers = ["Model", *(METHOD_COLUMNS[m] for m in methods)]
    return _table(headers, body, n_text=1, keep_cells=False, title="Time (s): calibration / evaluation")


def _table(headers: list[str], body: list[list[Text]], n_text: int, keep_cells: bool, **kwargs: str | None) -> Table:
    """Build a table whose first ``n_text`` columns are labels and the rest numbers.

    With ``keep_cells`` number columns are as wide as their widest cell, so a narrow terminal
    folds labels and headers instead of eliding accuracies to "71…".
    """
    table = Table(**kwargs)
    for j, header in enumerate(headers):
        numeric = j >= n_text
        width = max((cells[j].cell_len for cells in body), default=0) if numeric and keep_cells else None
        table.add_column(header, justify="right" if numeric else "left", min_width=width, overflow="fold")
    for cells in body:
        table.add_row(*cells)
    return table


def markdown_table(rows: Iterable[ResultRow]) -> str:
    """The :func:`paper_table` layout as a GitHub Markdown table, best INT8 cell in bold.

    Args:
        rows: Result rows.

    Returns:
        Markdown text without a trailing newline.
    """
    rows = list(rows)
    methods = _methods(rows)
    out = [
        "| " + " | ".join(["Model", "Metric", *(METHOD_COLUMNS[m] for m in methods)]) + " |",
        "|" + "|".join(["---", "---", *(["---:"] * len(methods))]) + "|",
    ]
    for line in _lines(rows):
        best = _best(line)
        cells = [line.label.replace("|", "\\|"), line.metric.replace("|", "\\|")]
        for m in methods:
            r = line.cells.get(m)
            if r is None:
                cells.append(_MISSING)
            else:
                cells.append(f"**{r.value:.2f}**" if m in best else f"{r.value:.2f}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def notes_line(rows: Iterable[ResultRow]) -> str:
    """One line stating what the numbers mean: sizes, seed, engine and activation ranges.

    Args:
        rows: Result rows.

    Returns:
        A single line of plain text (no markup).

    >>> notes_line([])
    'Notes: no results.'
    """
    rows = list(rows)
    if not rows:
        return "Notes: no results."
    quantised = [r for r in rows if r.method != "fp32"]
    parts = [
        "values in %",
        "best INT8 per row marked",
        f"n_eval {_distinct(r.n_eval for r in rows)}",
    ]
    if quantised:
        parts.append(f"n_calib {_distinct(r.n_calib for r in quantised)}")
    parts += [f"seed {_distinct(r.seed for r in rows)}", f"engine {_distinct(r.engine for r in rows)}"]
    ranges = "; ".join(
        f"{METHOD_COLUMNS[m]} {_distinct(r.act_range for r in rows if r.method == m)}" for m in _methods(rows)
    )
    return f"Notes: {', '.join(parts)}. Activation ranges: {ranges}."


def print_tables(rows: Iterable[ResultRow], title: str | None = None, console: Console | None = None) -> None:
    """Print the accuracy table, the timing table and the notes line.

    Args:
        rows: Result rows.
        title: Title of the accuracy table.
        console: Where to print; defaults to a new ``Console()``, which emits no ANSI escape
            codes when stdout is not a terminal.
    """
    rows = list(rows)
    console = console if console is not None else Console()
    _print(console, paper_table(rows, title))
    _print(console, timing_table(rows))
    console.print(Text(notes_line(rows)), soft_wrap=not console.is_terminal)


def _print(console: Console, renderable: RenderableType) -> None:
    if console.is_terminal:
        console.print(renderable)
        return
    # Logs and pipes have no real width (rich assumes 80), so render at the table's natural
    # width rather than truncating model names and headers to "googlen…".
    width = max(console.width, Measurement.get(console, console.options.update_width(_UNBOUNDED), renderable).maximum)
    console.print(Segments(console.render(renderable, console.options.update_width(width))), crop=False)
