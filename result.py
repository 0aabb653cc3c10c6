#!/usr/bin/env python
"""Reproduce the paper's table: python result.py [-A] [-B] [-C] [-D] [key=value ...]

No flag means all four methods. FP32 and the PyTorch baseline always run. Rows come from
tasks/paper.yaml; overrides (data.root=..., data.eval_limit=..., out=...) apply to every row.
"""

from __future__ import annotations

import argparse
import os
import sys

from omegaconf import OmegaConf
from rich.console import Console

from hqbench.config import TASKS_DIR, compose
from hqbench.quant import TITLES
from hqbench.reporting import print_tables, write_all
from hqbench.runner import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for letter, title in TITLES.items():
        parser.add_argument(f"-{letter}", action="store_true", help=title)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every row")
    args = parser.parse_args(argv)
    letters = [m for m in TITLES if getattr(args, m)] or list(TITLES)
    out = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("out=")), "results/paper.json")
    overrides = [o for o in args.overrides if not o.startswith("out=")]
    console = Console()
    grid = OmegaConf.load(TASKS_DIR / "paper.yaml")
    configured = bool(os.environ.get("HQBENCH_DATA")) or any(o.startswith("data.root=") for o in overrides)
    entries = grid.real if configured else grid.embedded
    title = "hqbench: the paper's comparison" + ("" if configured else " (embedded demo data)")
    if not configured:
        console.print("No data configured (data.root=... or HQBENCH_DATA): running the embedded demo "
                      "(Fashion-MNIST subset shipped with hqbench, synthetic SAR scenes). "
                      "See README for your own ImageNet and HRSID.")
    rows, skipped = [], []
    for entry in entries:
        try:
            cfg = compose(entry.get("task", "classification"), [f"model={entry.model}", f"data={entry.data}",
                                             f"method=[fp32,pytorch,{','.join(letters)}]", *overrides])
            rows += run(cfg, console)
        except FileNotFoundError as err:  # weights or data not on this machine: say so, keep going
            skipped.append(f"{entry.model}: {err}")
            console.print(f"[yellow]skipped {entry.model}:[/] {err}")
    if not rows:
        console.print("[red]no row could run[/]")
        return 1
    paths = write_all(rows, out, title=title)
    print_tables(rows, title=title, console=console)
    for line in skipped:
        console.print(f"[yellow]not run[/] {line}")
    console.print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
