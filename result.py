#!/usr/bin/env python
"""Reproduce the paper's table: python result.py [-A] [-B] [-C] [-D] [--method NAME ...] [key=value ...]

No method flag means all four of the paper's methods. FP32 and the PyTorch baseline always run.
Rows come from tasks/paper.yaml; overrides (data.root=..., data.eval_limit=..., bits=w8a8,w8a4,
out=...) apply to every row. Each finished row is merged into the results file at once, so an
interrupted run loses nothing, runs with other methods add to the same file, and a rerun skips rows
the file already holds for the same configuration (redo=true reruns them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape

from hqbench.cli import error_line, missing_extra
from hqbench.config import TASKS_DIR, compose
from hqbench.quant.calibrators import list_calibrators
from hqbench.quant.calibrators.registry import PluginError
from hqbench.reporting import print_tables, read_results, write_all
from hqbench.reporting.files import check_out
from hqbench.runner import run
from hqbench.stopping import Stopped, stop_on_signals


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    letters = [e for e in list_calibrators() if e.letter]
    for entry in letters:
        parser.add_argument(f"-{entry.letter}", action="store_true", help=entry.title)
    parser.add_argument("--method", action="append", default=[], metavar="NAME",
                        help="another registered method (percentile, entropy, percentile:99.999, ...); repeatable")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every row")
    args = parser.parse_args(argv)
    methods = [e.letter for e in letters if getattr(args, e.letter)] + args.method
    methods = methods or [e.letter for e in letters]
    out = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("out=")), "results/paper.json")
    out = str(Path(out).with_suffix(".json"))
    overrides = [o for o in args.overrides if not o.startswith("out=")]
    console = Console()
    try:
        check_out(out)  # before any row is computed
        with stop_on_signals():
            return _run_rows(methods, out, overrides, argv, console)
    except (ValueError, KeyError, NotImplementedError, PluginError) as err:  # a bad key or value: one line
        console.print(f"[red]error:[/] {escape(error_line(err))}", highlight=False, soft_wrap=True)
        return 1
    except Stopped as stop:
        console.print(f"stopped: {stop}; every finished row is in {out} (rerun to resume)", markup=False)
        return stop.exit_code


def _run_rows(methods: list[str], out: str, overrides: list[str], argv: list[str], console: Console) -> int:
    grid = OmegaConf.load(TASKS_DIR / "paper.yaml")
    configured = bool(os.environ.get("HQBENCH_DATA")) or any(o.startswith("data.root=") for o in overrides)
    entries = grid.real if configured else grid.embedded
    title = "hqbench: the paper's comparison" + ("" if configured else " (embedded demo data)")
    if not configured:
        console.print("No data configured (data.root=... or HQBENCH_DATA): running the embedded demo "
                      "(Fashion-MNIST subset shipped with hqbench, synthetic SAR scenes). "
                      "See README for your own ImageNet and HRSID.")
    command = shlex.join(["result.py", *argv])
    rows, skipped = [], []
    for entry in entries:
        try:
            cfg = compose(entry.get("task", "classification"), [
                f"model={entry.model}", f"method=[fp32,pytorch,{','.join(methods)}]",
                f"out={out}", *overrides])
            rows += run(cfg, console, command=command)
        except (FileNotFoundError, ModuleNotFoundError) as err:  # weights, data or an extra missing: say so, keep going
            if isinstance(err, ModuleNotFoundError):
                if missing_extra(err) is None:
                    raise
                err = missing_extra(err)
            skipped.append(f"{entry.model}: {err}")
            console.print(f"[yellow]skipped {entry.model}:[/] {err}")
    if not rows:
        console.print("[red]no row could run[/]")
        return 1
    everything = read_results(out)  # this run's rows merged with what the file held before
    paths = write_all(everything, out, title=title)
    print_tables(rows, title=title, console=console)
    if len({r.bits for r in rows if r.method != "fp32"}) > 1:
        from hqbench.reporting.plots import plot_sweep

        paths["png"] = plot_sweep(everything, Path(out).with_suffix(".png"))
    for line in skipped:
        console.print(f"[yellow]not run[/] {line}")
    console.print("written (merged with earlier rows of the file): " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
