"""One table, two renderings: a rich ``Table`` for the terminal and GitHub Markdown for docs, from the
same header and rows of text cells (the engine-agreement and 8-bit-points tables)."""

from __future__ import annotations

from rich.table import Table


def rich_table(headers: list[str], body: list[list[str]], title: str, caption: str, n_text: int) -> Table:
    """The first ``n_text`` columns left-aligned labels, the rest right-aligned numbers."""
    table = Table(title=title, caption=caption)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i < n_text else "right")
    for cells in body:
        table.add_row(*cells)
    return table


def markdown_rows(headers: list[str], body: list[list[str]]) -> str:
    """The header, its rule and one line per row, each line ending in a newline."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"
