"""``hqbench report FILES...``: the results of many runs or jobs, merged and reported.

A sweep's jobs may each write their own file (where a shared filesystem has no reliable locks:
``out=${hydra:runtime.output_dir}/rows.json``); this merges them by row key, a later file's row
replacing an earlier one's with the same key, as appending does, and prints the tables. With
``--markdown`` it prints what docs/RESULTS.md quotes: the table, every paired test, each cell's gap to
FP32 with its paired interval, the time the rows took, and the commands that made them; every number
is one that a recorded command produced.
"""

from __future__ import annotations

import os
from pathlib import Path

from hqbench.reporting.agreement import agreement_markdown
from hqbench.reporting.budget import budget_markdown, plot_budget
from hqbench.reporting.files import read_results, write_all
from hqbench.reporting.plots import plot_sweep
from hqbench.reporting.profiles import profile_markdown
from hqbench.reporting.qat import qat_markdown
from hqbench.reporting.results import ResultRow
from hqbench.reporting.tables import cost_markdown, gap_markdown, markdown_table, notes_line, pairwise_markdown


def merge_results(paths: list[str | os.PathLike[str]]) -> list[ResultRow]:
    """Rows of every file, one per key, in first-seen order (a later file's row replaces an earlier one's).

    Raises:
        FileNotFoundError: a file is missing (named). ValueError: a file is not a results file (named).
    """
    merged: dict[tuple, ResultRow] = {}
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"results file not found: {path}")
        for row in read_results(path):
            merged[row.key] = row
    return list(merged.values())


def report_markdown(rows: list[ResultRow]) -> str:
    """The Markdown report of ``rows`` (see the module docstring)."""
    commands = sorted({r.extra.get("command", "") for r in rows} - {""})
    return "\n".join([
        markdown_table(rows), "", notes_line(rows), "",
        "Paired tests on the same images (exact McNemar for Top-1, paired bootstrap for mAP):", "",
        pairwise_markdown(rows), "", "Gap to FP32 on the same images (95 % paired bootstrap interval; the test as above):",
        "", gap_markdown(rows), "", "Time the rows record (calibration and evaluation, summed):", "", cost_markdown(rows),
        *(["", "Engines against fake-quant on the same images and calibration (p: the test as above; LSB: the "
           "output's grid step):", "", agreement] if (agreement := agreement_markdown(rows)) else []),
        *(["", "Activation points at 8 bits (keep_8bit, mixed.budget) and the metric they buy:", "", budget]
          if (budget := budget_markdown(rows)) else []),
        *(["", "Quantization-aware training against post-training on the same images:", "", qat]
          if (qat := qat_markdown(rows)) else []),
        *(["", "Deployment profiles against the paper's scheme on the same images:", "", profiles]
          if (profiles := profile_markdown(rows)) else []),
        "", "Commands:", "", "```bash", *commands, "```"])


def report(paths: list[str], *, out: str | None = None, plot: str | None = None, markdown: bool = False,
           console=None, budget_plot: str | None = None) -> list[ResultRow]:
    """Merge ``paths``; print the tables (or the Markdown report); write ``out`` (JSON, CSV, MD), ``plot``
    (the metric against bit width) and ``budget_plot`` (against the 8-bit activation points).

    Raises:
        FileExistsError: ``out`` exists and is not one of ``paths`` (a user's file is never replaced).
    """
    from hqbench.reporting.tables import print_tables

    rows = merge_results(paths)
    if out is not None and Path(out).exists() and Path(out).resolve() not in {Path(p).resolve() for p in paths}:
        raise FileExistsError(f"{out} exists; name a new file for the merged rows")
    if markdown:
        print(report_markdown(rows))  # plain text, unwrapped: it is pasted into docs
    else:
        print_tables(rows, title=f"{len(rows)} rows from {len(paths)} file{'s' * (len(paths) > 1)}", console=console)
    if out is not None:
        write_all(rows, out)
    if plot is not None:
        print(f"\nplot: {plot_sweep(rows, Path(plot))}")
    if budget_plot is not None:
        print(f"\nbudget plot: {plot_budget(rows, Path(budget_plot))}")
    return rows


__all__ = ["merge_results", "report", "report_markdown"]
