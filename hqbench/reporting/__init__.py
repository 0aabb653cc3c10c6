"""Benchmark results: the row contract, atomic JSON/CSV/Markdown files and paper-layout tables."""

from hqbench.reporting.results import (
    ENGINES,
    TASKS,
    ResultRow,
    append_row,
    read_results,
    write_all,
    write_results,
)
from hqbench.reporting.tables import (
    INT8_METHODS,
    METHOD_COLUMNS,
    markdown_table,
    notes_line,
    paper_table,
    print_tables,
    timing_table,
)

__all__ = [
    "ENGINES",
    "INT8_METHODS",
    "METHOD_COLUMNS",
    "TASKS",
    "ResultRow",
    "append_row",
    "markdown_table",
    "notes_line",
    "paper_table",
    "print_tables",
    "read_results",
    "timing_table",
    "write_all",
    "write_results",
]
