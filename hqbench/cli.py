"""``hqbench test|train task=<name> key=value ...``"""

from __future__ import annotations

import os
import shlex
import sys

from rich.console import Console
from rich.markup import escape

USAGE = """usage: hqbench test|train task=classification|detection [key=value ...]

  model=NAME|tflite:PATH model.weights=PATH engine=fake|int|onnxruntime
  method=fp32,pytorch,A,B,C,D,percentile[:P],entropy,mse,ort-minmax,pt2e-x86,nncf,nni,...
  bits=w8a8,w8a6,w4a8,... keep_8bit=first,last weight_range=minmax|mse
  bias_correction=true weight_rounding=nearest|adaround draws=K
  data=imagenet|fashion_mnist data.root=PATH data.eval_limit=N data.calib_size=N
  seed=N out=results.json redo=true  trainer.KEY=VALUE (passed to lightning.Trainer)
  train.epochs=N train.lr=X train.checkpoint=PATH train.overwrite=true
  task=detection: model=yolov3_tiny_sar|yolov3_tiny_synth data=sar|synthetic_sar
    train.init=darknet|random|PATH train.hours=H
No data.root, HQBENCH_DATA, model= or data=: `test` runs the embedded demo.
Configs live in hqbench/configs/ (HQBENCH_TASKS=DIR for another folder); any key
there can be overridden. hqbench --version prints the version."""

# What `hqbench test task=...` runs when nothing names data or a model: the embedded demo, which
# needs no download (the Fashion-MNIST subset ships in the package; SAR scenes are generated).
DEMO = {"classification": ["model=mobilenet_v2_fmnist", "data=fashion_mnist"],
        "detection": ["model=yolov3_tiny_synth", "data=synthetic_sar"]}
# Optional dependencies by top-level module: which pyproject extra installs each.
EXTRAS = {"tflite": "tflite", "ultralytics": "detection", "faster_coco_eval": "detection", "onnx": "onnx",
          "onnxruntime": "onnx", "timm": "efficientnet"}


def demo_overrides(task: str, overrides: list[str]) -> list[str]:
    """The demo's ``model=``/``data=`` overrides when ``task`` has a demo, ``$HQBENCH_DATA`` is unset
    and no override names the model, the data or ``data.root``; otherwise ``[]``."""
    if task not in DEMO or os.environ.get("HQBENCH_DATA", "").strip():
        return []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if any(k in ("model", "data", "data.root") or k.startswith("model.") for k in keys):
        return []
    return DEMO[task]


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
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("test", "train"):
        console.print(USAGE, markup=False)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if any(a in ("-h", "--help") for a in rest):
        console.print(USAGE, markup=False)
        return 0
    task = next((a.split("=", 1)[1] for a in rest if a.startswith("task=")), "classification")
    overrides = [a for a in rest if not a.startswith("task=")]
    demo = demo_overrides(task, overrides) if command == "test" else []
    if demo:
        console.print(f"No data configured (data.root=PATH or HQBENCH_DATA): running the embedded {task} demo, "
                      f"{' '.join(demo)}. See the README to run on your own data.", markup=False, soft_wrap=True)
        overrides = demo + overrides
    from .config import compose
    from .reporting import print_tables
    from .runner import run, train

    line = shlex.join(["hqbench", *argv])
    show_config = "--cfg" in overrides  # `--cfg job`: print the composed config, run nothing (Hydra's convention)
    if show_config:
        at = overrides.index("--cfg")
        overrides = overrides[:at] + overrides[at + 2 if at + 1 < len(overrides) and overrides[at + 1] == "job" else at + 1:]
    try:
        cfg = compose(task, overrides)
        if show_config:
            from omegaconf import OmegaConf

            console.print(OmegaConf.to_yaml(cfg), markup=False, highlight=False, end="")
            return 0
        if command == "train":
            train(cfg, console, command=line)
            return 0
        rows = run(cfg, console, command=line)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, NotImplementedError, TimeoutError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return 1
    except ModuleNotFoundError as err:
        if missing_extra(err) is None:
            raise
        console.print(f"[red]error:[/] {escape(missing_extra(err))}", highlight=False, soft_wrap=True)
        return 1
    print_tables(rows, title=f"hqbench {task}", console=console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
