"""Result tables in the paper's layout: rich for the terminal, GitHub Markdown for files.

One line per setting (model, bit widths, run options, engine; see :mod:`hqbench.reporting.lines`),
one column per method in the registry's column order, values in percent with two decimals. With
per-image outcomes a cell also shows its 95 % bootstrap interval, and the best cell is marked only
when it beats the others on the same images (exact McNemar for Top-1, paired bootstrap for mAP,
p < 0.05); cells it does not beat
are marked ``~``. Without outcomes the maximum is marked and the notes say significance is unknown.
A line with a single quantised method has no mark: there is nothing to be best among (FP32 never competes).
Marks are characters, not only colour (``*``/``~`` in rich, ``**bold**``/``~`` in Markdown).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

from hqbench.methods import method_title
from hqbench.reporting.lines import (
    FP32,
    Cell,
    build_lines,
    fp32_gaps,
    line_cells,
    methods_of,
    options_legend,
    has_evidence,
    pvalue_pairs,
)

if TYPE_CHECKING:
    from hqbench.reporting.results import ResultRow

#: The paper's six methods and their headers (kept for callers of the old API; any registered
#: method may appear in rows now, titled by :func:`hqbench.methods.method_title`).
METHOD_COLUMNS: dict[str, str] = {m: method_title(m) for m in ("fp32", "pytorch", "A", "B", "C", "D")}
#: The paper's methods that compete for the best mark (everything but the float reference).
INT8_METHODS: tuple[str, ...] = tuple(m for m in METHOD_COLUMNS if m != FP32)

_MISSING = "—"
_UNBOUNDED = 10_000
_SUFFIX = {"best": "*", "tie": "~", "": ""}
_SIGNIFICANT = (
    "best marked only when significant (paired: McNemar exact for Top-1, bootstrap for mAP; p<0.05); "
    "~ = not significantly different from the best"
)
_UNTESTED = "best INT8 per row marked, significance unknown (no per-image evidence)"
_UNTESTED_SOME = "lines without per-image evidence: best marked, significance unknown"
_SINGLE = "one quantised method per line: nothing to compare, no mark"


def _number(cell: Cell) -> str:
    text = f"{cell.value:.2f}"
    return f"{text} ± {cell.std:.2f}" if cell.std is not None else text


def _rich_cell(cell: Cell | None, compact: bool) -> Text:
    if cell is None:
        return Text(_MISSING)
    text = Text(_number(cell) + _SUFFIX[cell.mark], style="bold" if cell.mark == "best" else "")
    if cell.ci is not None and not compact:
        text.append(f"\n[{cell.ci[0]:.1f}, {cell.ci[1]:.1f}]", style="dim")
    return text


def _md_cell(cell: Cell | None) -> str:
    if cell is None:
        return _MISSING
    text = _number(cell)
    text = f"**{text}**" if cell.mark == "best" else text + _SUFFIX[cell.mark]
    return text + (f" [{cell.ci[0]:.1f}, {cell.ci[1]:.1f}]" if cell.ci is not None else "")


def _grid(rows: Sequence[ResultRow], intervals: bool = True) -> tuple[list[str], list[tuple[Any, dict[str, Cell]]]]:
    methods = methods_of(rows)
    return methods, [(line, line_cells(line, intervals)[0]) for line in build_lines(rows)]


def paper_table(rows: Iterable[ResultRow], title: str | None = None, compact: bool = False) -> Table:
    """Accuracy table in the paper's layout.

    Args:
        rows: Result rows, any order; lines appear in first-seen order.
        title: Optional table title.
        compact: Leave out the bootstrap intervals (one text line per table line), for narrow
            terminals; the marks still rest on the significance tests.

    Returns:
        A rich ``Table``: Model | Metric | one column per method with data. The best cell is
        bold with ``*``, cells tied with it end in ``~``, missing cells show ``—``.
    """
    rows = list(rows)
    methods, grid = _grid(rows, intervals=not compact)
    body = [
        [Text(line.label), Text(line.metric), *(_rich_cell(cells.get(m), compact) for m in methods)]
        for line, cells in grid
    ]
    headers = ["Model", "Metric", *(method_title(m) for m in methods)]
    caption = "values in %; * best, ~ tied with the best" if _has_evidence(rows) else "values in %; * best INT8 per row"
    return _table(headers, body, n_text=2, keep_cells=True, title=title, caption=caption)


def timing_table(rows: Iterable[ResultRow]) -> Table:
    """Wall-clock cost per line x method, as ``calibration / evaluation`` seconds (mean over draws).

    Args:
        rows: Result rows, as for :func:`paper_table`.
    """
    rows = list(rows)
    methods = methods_of(rows)
    body = []
    for line in build_lines(rows):
        cells = [Text(line.label)]
        for m in methods:
            draws = line.cells.get(m)
            if not draws:
                cells.append(Text(_MISSING))
                continue
            calib = sum(d.calib_seconds for d in draws) / len(draws)
            cells.append(Text(f"{calib:.1f} / {sum(d.eval_seconds for d in draws) / len(draws):.1f}"))
        body.append(cells)
    headers = ["Model", *(method_title(m) for m in methods)]
    return _table(headers, body, n_text=1, keep_cells=False, title="Time (s): calibration / evaluation")


def _table(headers: list[str], body: list[list[Text]], n_text: int, keep_cells: bool, **kwargs: str | None) -> Table:
    """Build a table whose first ``n_text`` columns are labels and the rest numbers.

    With ``keep_cells`` number columns are as wide as their widest cell line, so a narrow
    terminal folds labels and headers instead of eliding accuracies to "71…".
    """
    table = Table(**kwargs)
    for j, header in enumerate(headers):
        numeric = j >= n_text
        width = None
        if numeric and keep_cells:
            width = max((len(part) for cells in body for part in cells[j].plain.split("\n")), default=0)
        table.add_column(header, justify="right" if numeric else "left", min_width=width, overflow="fold")
    for cells in body:
        table.add_row(*cells)
    return table


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(rows: Iterable[ResultRow]) -> str:
    """The :func:`paper_table` layout as a GitHub Markdown table.

    Cells read ``78.69 [76.4, 80.9]`` with outcomes, ``78.69 ± 0.12`` over several draws;
    the best is ``**bold**`` and cells tied with it end in ``~``.

    Returns:
        Markdown text without a trailing newline.
    """
    rows = list(rows)
    methods, grid = _grid(rows)
    out = [
        "| " + " | ".join(["Model", "Metric", *(method_title(m) for m in methods)]) + " |",
        "|" + "|".join(["---", "---", *(["---:"] * len(methods))]) + "|",
    ]
    for line, cells in grid:
        parts = [_md_escape(line.label), _md_escape(line.metric), *(_md_cell(cells.get(m)) for m in methods)]
        out.append("| " + " | ".join(parts) + " |")
    return "\n".join(out)


def pairwise_table(rows: Iterable[ResultRow]) -> list[dict[str, Any]]:
    """For each line, every pair of quantised methods: values, ``diff`` (a - b) and paired ``p``.

    Each dict has ``line``, ``metric``, ``a``, ``b``, ``a_value``, ``b_value``, ``diff``, ``p``,
    ``n`` (images), ``seed`` (the draw compared) and ``test`` (McNemar or paired bootstrap); the
    last four are None without evidence.
    """
    return [pair for line in build_lines(list(rows)) for pair in pvalue_pairs(line)]


def pairwise_markdown(rows: Iterable[ResultRow]) -> str:
    """:func:`pairwise_table` as a Markdown table for docs/RESULTS.md (``—`` where untestable)."""
    out = ["| Model | Metric | A | B | A − B | paired p | test | images |", "|---|---|---|---|---:|---:|---|---:|"]
    for p in pairwise_table(rows):
        pv = _MISSING if p["p"] is None else f"{p['p']:.3g}"
        n = _MISSING if p["n"] is None else str(p["n"])
        out.append(
            f"| {_md_escape(p['line'])} | {_md_escape(p['metric'])} | {method_title(p['a'])} | "
            f"{method_title(p['b'])} | {p['diff']:+.2f} | {pv} | {p['test'] or _MISSING} | {n} |"
        )
    return "\n".join(out)


def gap_markdown(rows: Iterable[ResultRow]) -> str:
    """Every quantised cell's gap to FP32 on the same images, with its paired interval, as Markdown.

    The interval, not the gap alone, says whether a target such as "within 0.5 of FP32" is met.
    """
    out = ["| Model | Metric | Method | gap to FP32 (mean of draws) | one draw: gap [95 % paired interval] | paired p | seed |",
           "|---|---|---|---:|---|---:|---:|"]
    for line in build_lines(list(rows)):
        for g in fp32_gaps(line):
            interval = _MISSING if g["lo"] is None else f"{g['seed_gap']:+.2f} [{g['lo']:+.2f}, {g['hi']:+.2f}]"
            pv = _MISSING if g["p"] is None else f"{g['p']:.3g}"
            seed = _MISSING if g["seed"] is None else str(g["seed"])
            out.append(f"| {_md_escape(g['line'])} | {_md_escape(g['metric'])} | {method_title(g['method'])} | "
                       f"{g['gap']:+.2f} | {interval} | {pv} | {seed} |")
    return "\n".join(out)


def cost_markdown(rows: Iterable[ResultRow]) -> str:
    """The calibration and evaluation time the rows record, summed, as Markdown: the rows with
    AdaRound apart from the rest (one such cell calibrates for longer than a whole width of the
    others), then all of them. Process start-up and model loading are not in the rows."""
    rows = list(rows)
    groups: dict[str, list[ResultRow]] = {"without AdaRound": [], "with AdaRound": []}
    for r in rows:
        groups["with AdaRound" if r.options.get("weight_rounding") == "adaround" else "without AdaRound"].append(r)
    groups["all"] = rows
    out = ["| Rows | cells | calibration | evaluation | total |", "|---|---:|---:|---:|---:|"]
    for name, group in groups.items():
        calib, evaluation = sum(r.calib_seconds for r in group), sum(r.eval_seconds for r in group)
        out.append(f"| {name} | {len(group)} | {calib / 3600:.2f} h | {evaluation / 3600:.2f} h | "
                   f"{(calib + evaluation) / 3600:.2f} h |")
    return "\n".join(out)


def _distinct(values: Iterable[object]) -> str:
    return "/".join(dict.fromkeys(str(v) for v in values))


def _has_evidence(rows: Iterable[ResultRow]) -> bool:
    return any(has_evidence(r) for r in rows)


def _marking(rows: Sequence[ResultRow]) -> list[str]:
    """How the marks were decided, per :func:`hqbench.reporting.lines.line_cells`."""
    hows = {line_cells(line, intervals=False)[1] for line in build_lines(rows)}
    if "tested" in hows:
        return [_SIGNIFICANT, *([_UNTESTED_SOME] if "untested" in hows else [])]
    return [_UNTESTED] if "untested" in hows else [_SINGLE]  # every line is "single"


def notes_line(rows: Iterable[ResultRow]) -> str:
    """One line stating what the numbers mean: marks, sizes, draws, seeds, engines, ranges.

    Returns:
        A single line of plain text (no markup).

    >>> notes_line([])
    'Notes: no results.'
    """
    rows = list(rows)
    if not rows:
        return "Notes: no results."
    lines = build_lines(rows)
    quantised = [r for r in rows if r.method != FP32]
    parts = ["values in %", *_marking(rows)]
    if _has_evidence(rows):
        parts.append("[lo, hi] = 95 % bootstrap interval over images")
    draws = sorted({len(ds) for ln in lines for m, ds in ln.cells.items() if len(ds) > 1})
    if draws:
        parts.append(f"a ± s = mean ± sample std over n={_distinct(draws)} calibration draws")
    parts.append(f"n_eval {_distinct(r.n_eval for r in rows)}")
    if quantised:
        parts.append(f"n_calib {_distinct(r.n_calib for r in quantised)}")
    parts += [f"seed {_distinct(sorted({r.seed for r in rows}))}", f"engine {_distinct(r.engine for r in rows)}"]
    if any(ln.bits != (8, 8) for ln in lines):
        parts.append("lines without wXaY are w8a8")
    if any(ln.show_counts for ln in lines):
        parts.append("nN/cM = N evaluation and M calibration images")
    legend = options_legend(rows)
    if legend:
        parts.append(f"options: {legend}")
    ranges = "; ".join(
        f"{method_title(m)} {_distinct(r.act_range for r in rows if r.method == m)}" for m in methods_of(rows)
    )
    return f"Notes: {'; '.join(parts)}. Activation ranges: {ranges}."


def print_tables(
    rows: Iterable[ResultRow], title: str | None = None, console: Console | None = None, compact: bool = False
) -> None:
    """Print the accuracy table, the timing table and the notes line.

    Args:
        rows: Result rows.
        title: Title of the accuracy table.
        console: Where to print; defaults to a new ``Console()``, which emits no ANSI escape
            codes when stdout is not a terminal.
        compact: Leave the bootstrap intervals out of the accuracy table.
    """
    rows = list(rows)
    console = console if console is not None else Console()
    _print(console, paper_table(rows, title, compact=compact))
    _print(console, timing_table(rows))
    from .agreement import agreement_table

    if (agreement := agreement_table(rows)) is not None:  # engine=fake,onnxruntime,...: each engine against fake
        _print(console, agreement)
    from .budget import budget_table

    if (budget := budget_table(rows)) is not None:  # keep_8bit and mixed.budget: the 8-bit points and what they buy
        _print(console, budget)
    from .qat import qat_table

    if (qat := qat_table(rows)) is not None:  # rows of QAT weights against post-training
        _print(console, qat)
    from .profiles import profile_table

    if (profiles := profile_table(rows)) is not None:  # profile=...: each target's cost against the paper's scheme
        _print(console, profiles)
    console.print(Text(notes_line(rows)), soft_wrap=not console.is_terminal)


def _print(console: Console, renderable: RenderableType) -> None:
    if console.is_terminal:
        console.print(renderable)
        return
    # Logs and pipes have no real width (rich assumes 80), so render at the table's natural
    # width rather than truncating model names and headers to "googlen…".
    width = max(console.width, Measurement.get(console, console.options.update_width(_UNBOUNDED), renderable).maximum)
    console.print(Segments(console.render(renderable, console.options.update_width(width))), crop=False)
