"""``hqbench test|train task=<name> key=value ...``"""

from __future__ import annotations

import shlex
import sys

from rich.console import Console
from rich.markup import escape

USAGE = """usage: hqbench test|train task=classification|detection [key=value ...]

  model=NAME model.weights=PATH method=fp32,pytorch,A,B,C,D,... engine=fake|int|onnxruntime
  bits=w8a8,w8a6,w4a8,... keep_8bit=first,last weight_range=minmax|mse bias_correction=true
  data=imagenet|fashion_mnist data.root=PATH data.eval_limit=N data.calib_size=N
  seed=N out=results.json redo=true  trainer.KEY=VALUE (passed to lightning.Trainer)
  train.epochs=N train.lr=X train.checkpoint=PATH train.overwrite=true
  task=detection: model=yolov3_tiny_sar|yolov3_tiny_synth data=sar|synthetic_sar
    train.init=darknet|random|PATH train.hours=H
Configs live in tasks/; any key there can be overridden. hqbench --version prints the version."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=False)
    if argv and argv[0] == "--version":
        from . import __version__

        console.print(f"hqbench {__version__}", markup=False)
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("test", "train"):
        console.print(USAGE, markup=False)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if any(a in ("-h", "--help") for a in rest):
        console.print(USAGE, markup=False)
        return 0
    task = next((a.split("=", 1)[1] for a in rest if a.startswith("task=")), "classification")
    overrides = [a for a in rest if not a.startswith("task=")]
    from .config import compose
    from .reporting import print_tables
    from .runner import run, train

    line = shlex.join(["hqbench", *argv])
    try:
        cfg = compose(task, overrides)
        if command == "train":
            train(cfg, console, command=line)
            return 0
        rows = run(cfg, console, command=line)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, NotImplementedError, TimeoutError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        return 1
    print_tables(rows, title=f"hqbench {task}", console=console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
