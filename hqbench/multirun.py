"""``hqbench test -m ...``: a sweep through Hydra's own multirun, so its launchers fan it out.

The same ``key=value`` syntax as a single run. A comma list on ``method``, ``bits``, ``engine``, ``keep_8bit`` or ``mixed.budget``
is one value (they sweep inside a job, which calibrates each method once per draw and freezes every
width from it); a comma list on any other key is a sweep axis, one job per combination (Hydra's
basic sweeper). ``hydra/launcher=joblib`` (``hydra-joblib-launcher``), ``submitit_local`` /
``submitit_slurm`` (``hydra-submitit-launcher``) or any other installed launcher runs the jobs.

Every job has Hydra's output directory (``hydra.sweep.dir``/N: ``.hydra/config.yaml`` holds its
resolved config, ``hqbench.log`` what it printed) and appends its rows to ``out`` under a lock, so
rows of concurrent jobs are never lost. ``out`` defaults to ``<sweep dir>/results.json``, one file
for the sweep, whose table is printed when the jobs are done; where the filesystem has no reliable
locks, ``out=${hydra:runtime.output_dir}/rows.json`` gives each job its own and ``hqbench report``
merges them.

Every job's config is composed and checked here first, so a bad key or value is one line before
any job starts, as for a single run.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from .config import model_sources, quote_list

# Keys whose comma lists are one value even under -m: method, bits and engine sweep inside one job
# already (engines share one calibration, so they compare on the same qparams), and
# keep_8bit=first,last names two layers; mixed.budget's budgets share one ranking of the points.
LIST_KEYS = ("method", "bits", "engine", "keep_8bit", "mixed.budget")
_COMMAND = "HQBENCH_COMMAND"  # the command line, for the rows of jobs run in other processes


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _is_axis(override: str) -> bool:
    key, eq, value = override.partition("=")
    return bool(eq) and "," in value and key.lstrip("+~") not in LIST_KEYS and not value.lstrip().startswith("[")


def sweep(overrides: list[str]) -> list[list[str]]:
    """The jobs a comma-list sweep makes, in Hydra's basic sweeper's order (the last axis varies
    fastest): ``model=a,b seed=0,1`` -> 4 jobs. Other sweep syntax (``range(...)``) is Hydra's alone."""
    jobs = [[]]
    for o in overrides:
        values = [f"{o.partition('=')[0]}={v.strip()}" for v in o.partition("=")[2].split(",")] if _is_axis(o) else [o]
        jobs = [job + [v] for job in jobs for v in values]
    return jobs


def hydra_overrides(overrides: list[str]) -> list[str]:
    """The overrides as Hydra's multirun reads them: list keys bracketed (one value, not an axis)."""
    for o in overrides:
        value = o.partition("=")[2]
        if _key(o) == "model" and ":" in value and "," in value:
            raise ValueError(f"model={value}: a sweep over model sources (tflite:, torchvision:, timm:) takes one "
                             "command per source")
    return model_sources([quote_list(o) if _key(o) in LIST_KEYS else o for o in overrides])


def run_multirun(task: str, overrides: list[str], console: Console, line: str) -> list:
    """Check every job's config, run the sweep through Hydra, and return the rows of the shared ``out``."""
    import hydra

    from .config import TASKS_DIR, compose
    from .reporting import read_results

    if not any(_key(o) == "hydra.sweep.dir" for o in overrides):
        overrides = [*overrides, f"hydra.sweep.dir=multirun/{datetime.now():%Y-%m-%d/%H-%M-%S}"]
    sweep_dir = next(o.partition("=")[2] for o in overrides if _key(o) == "hydra.sweep.dir")
    if not any(_key(o) == "out" for o in overrides):
        overrides = [*overrides, f"out={Path(sweep_dir) / 'results.json'}"]
    ours = [o for o in overrides if not _key(o).startswith("hydra") and not o.startswith("hydra/")]
    jobs = sweep(ours)
    for job in jobs:  # one-line errors for every job before any runs (${hydra:...} resolves only in a job)
        compose(task, [f"{o.partition('=')[0]}=hydra" if "${hydra:" in o else o for o in job])
    console.print(f"[bold]{len(jobs)} jobs[/] ({task}) -> {sweep_dir}", highlight=False, soft_wrap=True)
    app = hydra.main(version_base=None, config_path=str(TASKS_DIR), config_name=task)(job_main)
    saved_argv, os.environ[_COMMAND] = sys.argv, line
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # hydra/launcher=ray: Ray reports usage online otherwise
    sys.argv = ["hqbench", "--multirun", *hydra_overrides(overrides), "hydra.job.name=hqbench"]
    try:
        app()
    finally:
        sys.argv = saved_argv
    out = next(o.partition("=")[2] for o in overrides if _key(o) == "out")
    return read_results(out) if "${" not in out and Path(out).is_file() else []


def job_main(cfg: DictConfig) -> int:
    """One job of the sweep, in whatever process the launcher gives it: the single-run path."""
    from hydra.core.hydra_config import HydraConfig

    from .runner import run

    console = Console(record=True)
    try:
        rows = run(cfg, console, command=os.environ.get(_COMMAND, ""))
    finally:
        console.save_text(str(Path(HydraConfig.get().runtime.output_dir) / "hqbench.log"))
    return len(rows)


__all__ = ["LIST_KEYS", "hydra_overrides", "job_main", "run_multirun", "sweep"]
