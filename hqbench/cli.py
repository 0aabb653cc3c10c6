"""``hqbench test|train task=<name> key=value ...``"""

from __future__ import annotations

import os
import re
import shlex
import sys

from rich.console import Console
from rich.markup import escape

USAGE = """usage: hqbench test|train task={tasks} [key=value ...] [-m] [--cfg job] [--help]
       hqbench analyze [key=value ...]   per-layer SQNR of each method into out=DIR (layers.json/.csv/.png)
       hqbench report RESULTS.json ... [--out MERGED.json] [--plot PNG] [--budget-plot PNG] [--markdown]

  model={models}
        or a source: {sources}   model.weights=PATH
  method={methods}
  engine={engines}[,...] agreement=true|false   bits=w8a8,w8a6,w4a8,...   keep_8bit=first,last
  mixed.budget=N|SHARE[,...] mixed.samples=N mixed.search=single|greedy mixed.criterion=sqnr|kl
  (analyze) sensitivity=reverse,one_at_a_time
  weight_range=minmax|mse  bias_correction=true  weight_rounding=nearest|adaround  draws=K
  data={data} data.root=PATH data.eval_limit=N data.calib_size=N
  seed=N out=results.json redo=true  trainer.KEY=VALUE (passed to lightning.Trainer)
  train.epochs=N train.lr=X train.checkpoint=PATH train.overwrite=true
A model picks its data unless data= is given. No data.root, HQBENCH_DATA, model= or data=:
`test` runs the embedded demo. -m sweeps comma lists of other keys (model=a,b seed=0,1: one run
each; method=, bits= and engine= lists run inside one). --cfg job prints the composed config;
task=NAME --help prints the task's keys. Configs live in tasks/ (a wheel: hqbench/configs/;
HQBENCH_TASKS=DIR for another folder). hqbench --version prints the version."""
LIST_HINT = "\nhqbench --list prints this with the registered model sources, methods and engines filled in."


def usage(registries: bool = True) -> str:
    """The usage text: tasks and data from the config folder; models, sources, methods and engines from
    their registries (``hqbench --list``). ``registries=False`` (``--help``) takes the models from the
    config folder and names the rest: the registries import torch and every calibrator, seconds of CPU
    and most of a GB for a usage text."""
    from .config import TASKS_DIR, list_tasks

    lists = dict(tasks="|".join(list_tasks()), data="|".join(sorted(p.stem for p in (TASKS_DIR / "data").glob("*.yaml"))))
    if not registries:
        models = sorted(p.stem for p in (TASKS_DIR / "model").glob("*.yaml") if not p.stem.startswith("source"))
        return USAGE.format(**lists, models="|".join(models), sources="PREFIX:SPEC", engines="ENGINE",
                            methods="fp32,pytorch,CALIBRATOR[:VALUE],PEER,...") + LIST_HINT
    from .methods import list_methods
    from .models import list_models, list_sources
    from .quant.engines import list_engines

    return USAGE.format(**lists, models="|".join(list_models()), sources=" ".join(s + "PATH" for s in list_sources()),
                        methods=",".join(list_methods()), engines="|".join(e.name for e in list_engines()))


# Optional dependencies by top-level module: which pyproject extra installs each.
EXTRAS = {"tflite": "tflite", "ultralytics": "detection", "faster_coco_eval": "detection", "onnx": "onnx",
          "onnxruntime": "onnx", "timm": "efficientnet", "openvino": "openvino"}


def demo_overrides(task: str, overrides: list[str]) -> list[str]:
    """``["model=<the task's demo_model>"]`` when the task config names a demo model, ``$HQBENCH_DATA``
    is unset and no override names the model, the data, ``data.root`` or a COCO file pair
    (``data.train``/``data.test``); otherwise ``[]``.

    The demo needs no download: its model file picks data that ships in the package (the
    Fashion-MNIST subset) or is generated (SAR scenes).
    """
    from omegaconf import OmegaConf

    from .config import TASKS_DIR

    path = TASKS_DIR / f"{task}.yaml"
    demo = OmegaConf.load(path).get("demo_model") if path.is_file() else None
    if not demo or os.environ.get("HQBENCH_DATA", "").strip():
        return []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if any(k in ("model", "data", "data.root", "data.train", "data.test") or k.startswith("model.") for k in keys):
        return []
    return [f"model={demo}"]


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """One line naming the extra that installs the missing module, or None when it is not optional."""
    module = (err.name or "").split(".")[0]
    if module not in EXTRAS:
        return None
    return f"{module} is not installed; it comes with hqbench's {EXTRAS[module]!r} extra: pip install 'hqbench[{EXTRAS[module]}]'"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=False)
    if argv and argv[0] == "--version":
        from . import __version__

        console.print(f"hqbench {__version__}", markup=False)
        return 0
    if argv and argv[0] == "report":
        return _report(argv[1:], console)
    if argv and argv[0] == "--list":
        console.print(usage(), markup=False, soft_wrap=True)
        return 0
    if not argv or argv[0] not in ("test", "train", "analyze"):
        console.print(usage(registries=False), markup=False, soft_wrap=True)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    task = next((a.split("=", 1)[1] for a in rest if a.startswith("task=")), "classification")
    overrides = [a for a in rest if not a.startswith("task=")]
    if any(a in ("-h", "--help") for a in rest):
        return _help(task, console)
    multirun = any(a in ("-m", "--multirun") for a in overrides)
    overrides = [a for a in overrides if a not in ("-m", "--multirun")]
    show_config = "--cfg" in overrides  # `--cfg job`: print the composed config, run nothing (Hydra's convention)
    if show_config:
        at = overrides.index("--cfg")
        overrides = overrides[:at] + overrides[at + 2 if at + 1 < len(overrides) and overrides[at + 1] == "job" else at + 1:]
    line = shlex.join(["hqbench", *argv])
    from .stopping import Stopped, stop_on_signals

    try:
        with stop_on_signals():  # a scheduler's SIGTERM (or Ctrl-C) stops the run within seconds
            rows = _dispatch(command, task, overrides, console, line, show_config, multirun)
    except Stopped as stop:
        console.print(f"stopped: {stop}; every row finished before it is in its results file, nothing is "
                      "half-written (rerun the command to resume)", markup=False, soft_wrap=True)
        return stop.exit_code
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, NotImplementedError, TimeoutError) as err:
        return _error(console, error_line(err))
    except ModuleNotFoundError as err:
        if missing_extra(err) is None:
            raise
        return _error(console, missing_extra(err))
    except ImportError as err:
        if not _plugin_error(err):
            raise
        return _error(console, str(err))
    except Exception as err:  # noqa: BLE001 - only Hydra's instantiation errors, which are the config's fault
        if type(err).__name__ != "InstantiationException":
            raise
        # "Error in call to target 'X':\nTypeError(...unexpected keyword 'extras')\nfull_key: data": one line
        return _error(console, " ".join(str(err).split()))
    from .runner import rank

    if rows and rank() == 0:  # under DDP every rank runs this command; rank 0 alone prints
        from .reporting import print_tables

        print_tables(rows, title=f"hqbench {task}", console=console)
    return 0


def _error(console: Console, text: str) -> int:
    console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    return 1


def error_line(err: BaseException) -> str:
    """What follows ``error:``. torch re-raises a DataLoader worker's exception with the worker's whole
    traceback as its message ("Caught ValueError in DataLoader worker process 0. Original Traceback
    ..."); of that, only the original exception's last line, without its type, is the error."""
    text = str(err)
    if "in DataLoader worker process" in text and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        match = re.fullmatch(r"[\w.]+: (.*)", last)
        text = match.group(1) if match else last
    return text


def _plugin_error(err: ImportError) -> bool:
    """A method named a calibrator plugin that failed to load (the registry says why, in one line)."""
    registry = sys.modules.get("hqbench.quant.calibrators.registry")  # loaded, if it raised this
    return registry is not None and isinstance(err, registry.PluginError)


def _dispatch(command: str, task: str, overrides: list[str], console: Console, line: str, show_config: bool,
              multirun: bool) -> list:
    """A sweep through Hydra's multirun (-m), a config printed (--cfg job), a training, or one run; its rows."""
    from .config import compose
    from .multirun import run_multirun, sweep
    from .reporting.files import check_out
    from .runner import run, train

    demo = demo_overrides(task, overrides) if command in ("test", "analyze") else []
    if demo:
        console.print(f"No data configured (data.root=PATH or HQBENCH_DATA): running the embedded {task} demo, "
                      f"{' '.join(demo)} with its embedded data. See the README to run on your own data.",
                      markup=False, soft_wrap=True)
    overrides = demo + overrides
    if show_config:
        from omegaconf import OmegaConf

        for job in sweep(overrides) if multirun else [overrides]:
            console.print(OmegaConf.to_yaml(compose(task, job)), markup=False, highlight=False, end="")
        return []
    if command == "analyze":
        from .reporting.analyze import analyze

        if multirun:
            raise ValueError("hqbench analyze runs once; -m sweeps are for hqbench test")
        if not any(o.partition("=")[0].lstrip("+") == "out" for o in overrides):
            overrides = [*overrides, f"out={os.path.dirname(default_out())}"]
        analyze(compose(task, overrides), console, command=line)
        return []
    if multirun:
        if command == "train":
            raise ValueError("hqbench train runs one training; -m sweeps are for hqbench test")
        _check_sweep(task, overrides)
        return run_multirun(task, overrides, console, line)
    if command == "test" and not any(o.partition("=")[0].lstrip("+") == "out" for o in overrides):
        overrides = [*overrides, f"out={default_out()}"]  # a long run never leaves only terminal output
    cfg = compose(task, overrides)
    if command == "train":
        train(cfg, console, command=line)
        return []
    if cfg.get("out"):
        check_out(cfg.out)  # now, not after the first row is computed
    rows = run(cfg, console, command=line)
    if cfg.get("out") and rows:
        console.print(f"rows in {cfg.out} (with .csv and .md beside it)", markup=False, soft_wrap=True)
    return rows


def default_out() -> str:
    """``outputs/<date>/<time>/results.json`` under the working folder, Hydra's run-folder convention;
    ``out=PATH`` names another file, ``out=null`` writes none."""
    from datetime import datetime

    return f"outputs/{datetime.now():%Y-%m-%d/%H-%M-%S}/results.json"


def _check_sweep(task: str, overrides: list[str]) -> None:
    """Before any job starts: every job's ``out=`` (one with ``${hydra:...}`` exists only inside its job)
    and the ``_target_`` entries of the ``hydra`` node (launcher, sweeper, callbacks) Hydra instantiates."""
    from .config import check_hydra_targets
    from .multirun import hydra_overrides, sweep
    from .reporting.files import check_out

    jobs = sweep(overrides)
    for out in dict.fromkeys(o.partition("=")[2] for job in jobs for o in job if o.partition("=")[0].lstrip("+") == "out"):
        if out and "${" not in out and out != "null":
            check_out(out)
    check_hydra_targets(task, hydra_overrides(jobs[0]))


def _report(args: list[str], console: Console) -> int:
    """``hqbench report FILES...``: merge the rows of many runs or jobs and print their tables."""
    import argparse

    from .reporting.report import report

    parser = argparse.ArgumentParser(prog="hqbench report", description="Merge results files and print their tables.")
    parser.add_argument("results", nargs="+", help="results JSON files (a sweep's jobs' files, say)")
    parser.add_argument("--out", help="write the merged rows here (JSON, with CSV and Markdown beside it)")
    parser.add_argument("--plot", help="also draw the metric against bit width here (PNG)")
    parser.add_argument("--budget-plot", help="also draw the metric against the activation points at 8 bits "
                                              "(keep_8bit, mixed.budget) here (PNG)")
    parser.add_argument("--markdown", action="store_true", help="the Markdown report docs/RESULTS.md quotes")
    parsed = parser.parse_args(args)
    try:
        report(parsed.results, out=parsed.out, plot=parsed.plot, markdown=parsed.markdown, console=console,
               budget_plot=parsed.budget_plot)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 1
    return 0


def _help(task: str, console: Console) -> int:
    """``--help``: the usage, then the task's config file and the shared groups it composes, with their
    comments (every key can be overridden)."""
    console.print(usage(registries=False), markup=False, soft_wrap=True)
    from .config import SHARED_GROUPS, TASKS_DIR, list_tasks

    if task not in list_tasks():
        console.print(f"[red]error:[/] unknown task {escape(task)!r}; valid: {', '.join(list_tasks())}", highlight=False)
        return 1
    for label, path in [(f"task={task}", TASKS_DIR / f"{task}.yaml"),
                        *((g, TASKS_DIR / g / "default.yaml") for g in SHARED_GROUPS)]:
        console.print(f"\n{label}: {path}\n", markup=False, soft_wrap=True)
        console.print(path.read_text(), markup=False, highlight=False, end="", soft_wrap=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
