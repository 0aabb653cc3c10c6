"""Benchmark results: the row contract, atomic JSON/CSV/Markdown files, paper-layout tables,
their significance tests (:mod:`~hqbench.reporting.stats`) and sweep figures."""

from hqbench.reporting.results import ResultRow
from hqbench.reporting.files import append_row, find_row, locked, read_results, write_all, write_results
from hqbench.reporting.plots import plot_sweep
from hqbench.evidence import Replicates, decode_outcomes, encode_outcomes
from hqbench.reporting.stats import (
    bootstrap_ci,
    draw_summary,
    mcnemar_exact,
    paired_difference_ci,
    paired_pvalue,
    paired_replicates_pvalue,
    rank_cells,
)
from hqbench.reporting.tables import (
    INT8_METHODS,
    METHOD_COLUMNS,
    gap_markdown,
    markdown_table,
    notes_line,
    pairwise_markdown,
    pairwise_table,
    paper_table,
    print_tables,
    timing_table,
)

__all__ = [
    "INT8_METHODS",
    "METHOD_COLUMNS",
    "ResultRow",
    "append_row",
    "bootstrap_ci",
    "decode_outcomes",
    "draw_summary",
    "encode_outcomes",
    "find_row",
    "gap_markdown",
    "locked",
    "markdown_table",
    "mcnemar_exact",
    "notes_line",
    "Replicates",
    "paired_difference_ci",
    "paired_pvalue",
    "paired_replicates_pvalue",
    "pairwise_markdown",
    "pairwise_table",
    "paper_table",
    "plot_sweep",
    "print_tables",
    "rank_cells",
    "read_results",
    "timing_table",
    "write_all",
    "write_results",
]
