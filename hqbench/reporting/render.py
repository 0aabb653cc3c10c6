"""One table, two renderings: a rich ``Table`` for the terminal and GitHub Markdown for docs, from the
same header and rows of text cells (the engine-agreement, 8-bit-points and QAT tables)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

ALPHA = 0.05  # the significance level the tables mark with *


def paired_cell(vs: dict | None) -> str:
    """A :func:`~hqbench.reporting.stats.paired_comparison` as a cell, ``"+1.23 [+0.20, +2.31] p=0.021 *"``;
    ``"-"`` when there is none."""
    if vs is None:
        return "-"
    return f"{vs['diff']:+.2f} [{vs['ci'][0]:+.2f}, {vs['ci'][1]:+.2f}] p={vs['p']:.3g}" + (" *" if vs["p"] < ALPHA else "")


@dataclass(frozen=True)
class TableSpec:
    """A table's fixed parts. The first ``n_text`` columns are left-aligned labels, the rest
    right-aligned numbers; both renderings carry the caption."""

    title: str
    headers: tuple[str, ...]
    caption: str
    n_text: int

    def rich(self, body: list[list[str]]) -> Table | None:
        """The terminal table, or None when there are no rows."""
        if not body:
            return None
        table = Table(title=self.title, caption=self.caption)
        for i, header in enumerate(self.headers):
            table.add_column(header, justify="left" if i < self.n_text else "right")
        for cells in body:
            table.add_row(*cells)
        return table

    def markdown(self, body: list[list[str]]) -> str:
        """The header, its rule, one line per row and the caption; "" when there are no rows."""
        if not body:
            return ""
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + "\n\n" + self.caption + "\n"
