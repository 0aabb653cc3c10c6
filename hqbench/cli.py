"""``hqbench test|train task=<name> key=value ...``"""

from __future__ import annotations

import sys

from rich.console import Console

USAGE = """usage: hqbench test|train task=classification|detection [key=value ...]

  model=NAME model.weights=PATH method=fp32,pytorch,A,B,C,D engine=fake|int
  data=imagenet|fashion_mnist data.root=PATH data.eval_limit=N data.calib_size=N
  seed=N out=results.json    train.epochs=N train.lr=X train.checkpoint=PATH
  task=detection: model=yolov3_tiny_sar|yolov3_tiny_synth data=sar|synthetic_sar
    train.init=darknet|random|PATH train.hours=H
Configs live in tasks/; any key there can be overridden."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("test", "train"):
        console.print(USAGE, markup=False)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    task = next((a.split("=", 1)[1] for a in rest if a.startswith("task=")), "classification")
    overrides = [a for a in rest if not a.startswith("task=")]
    from .config import compose
    from .reporting import print_tables
    from .runner import run, train

    try:
        cfg = compose(task, overrides)
        if command == "train":
            train(cfg, console, command="hqbench " + " ".join(argv))
            return 0
        rows = run(cfg, console)
    except (ValueError, FileNotFoundError, KeyError, NotImplementedError) as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    print_tables(rows, title=f"hqbench {task}", console=console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
