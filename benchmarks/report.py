#!/usr/bin/env python
"""Markdown for docs/RESULTS.md from result files: the table, every paired test, each cell's gap to
FP32 with its paired interval, the time the rows took, and the sweep plot.

    python benchmarks/report.py docs/results/sweep_mobilenet_v2_tflite.json [--plot PNG]

Rows come from files written by ``hqbench test ... out=FILE`` (the command is in each row); this
script only formats them, so every number it prints is one a committed command produced.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hqbench.reporting import read_results
from hqbench.reporting.plots import plot_sweep
from hqbench.reporting.tables import cost_markdown, gap_markdown, markdown_table, notes_line, pairwise_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results JSON files")
    parser.add_argument("--plot", help="also write the metric-vs-width plot here (PNG)")
    args = parser.parse_args()
    rows = [row for path in args.results for row in read_results(path)]
    print(markdown_table(rows), "\n")
    print(notes_line(rows), "\n")
    print("Paired tests on the same images (exact McNemar for Top-1, paired bootstrap for mAP):\n")
    print(pairwise_markdown(rows))
    print("\nGap to FP32 on the same images (95 % paired bootstrap interval; the test as above):\n")
    print(gap_markdown(rows))
    print("\nTime the rows record (calibration and evaluation, summed):\n")
    print(cost_markdown(rows))
    commands = sorted({r.extra.get("command", "") for r in rows} - {""})
    print("\nCommands:\n\n```bash\n" + "\n".join(commands) + "\n```")
    if args.plot:
        print(f"\nplot: {plot_sweep(rows, Path(args.plot))}")


if __name__ == "__main__":
    main()
