"""run(cfg) -> result rows: one Trainer.test per method, the same path for the CLI and result.py."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig
from rich.console import Console

from .callbacks import QuantizationCallback
from .models import create_model
from .models._weights import CHECKPOINTS, write_half_state_dict
from .quant.baseline import ACT_RANGE as PYTORCH_ACT_RANGE
from .reporting import ResultRow, append_row
from .tasks.classification import ClassificationTask
from .tasks.detection import DetectionTask

# Where each datamodule looks under $HQBENCH_DATA; a datamodule in EMBEDDED falls back to its
# package copy (or, for synthetic SAR, generated scenes) when neither a root nor that folder exists.
DATA_SUBDIR = {"ImageNetDataModule": "imagenet", "FashionMNISTDataModule": "fashion-mnist",
               "SARShipDataModule": "sar-ships"}
EMBEDDED = {"FashionMNISTDataModule", "SyntheticSARDataModule"}
METHODS = ("fp32", "pytorch", "A", "B", "C", "D")


@dataclass(frozen=True)
class TaskSpec:
    """How a task is evaluated: its LightningModule, the headline metric and what else to record."""

    module: type
    metric: str  # the row's metric name
    key: str  # what the module logs for it (a fraction; rows hold percent)
    extra: dict  # row.extra name -> logged key
    pytorch_via: str  # QuantizationCallback's route for the "pytorch" column


TASKS = {
    "classification": TaskSpec(ClassificationTask, "top1", "test/top1", {"top5": "test/top5"}, "fx"),
    # torch.fx cannot trace ultralytics' DetectionModel: torch's default observers go through hooks.
    "detection": TaskSpec(DetectionTask, "mAP50", "test/mAP50", {"mAP50_95": "test/mAP50_95"}, "hooks"),
}


def resolve_data_root(data_cfg: DictConfig) -> str | None:
    """Configured ``data.root`` first, then ``$HQBENCH_DATA/<subdir>``, then the embedded copy (None).

    Raises:
        FileNotFoundError: nothing configured and the datamodule has no embedded data.
    """
    kind = data_cfg._target_.rsplit(".", 1)[-1]
    if data_cfg.root:
        return str(Path(data_cfg.root).expanduser())
    env = os.environ.get("HQBENCH_DATA")
    if env and kind in DATA_SUBDIR and (Path(env).expanduser() / DATA_SUBDIR[kind]).is_dir():
        return str(Path(env).expanduser() / DATA_SUBDIR[kind])
    if kind in EMBEDDED:
        return None
    raise FileNotFoundError(f"no data for {kind}: pass data.root=PATH or set HQBENCH_DATA to a folder "
                            f"holding {DATA_SUBDIR.get(kind, '?')}/")


def build_data(cfg: DictConfig, card):
    """The configured datamodule with its root resolved, set up; and a description of its source."""
    root = resolve_data_root(cfg.data)
    dm = instantiate(cfg.data, root=root, card=card, seed=cfg.seed)
    dm.setup("test")
    return dm, getattr(dm, "source", None) or str(root)


def quiet_lightning() -> None:
    """hqbench prints what it ran; Lightning's start-up banners and tips are noise here."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", ".*defined a `validation_step` but have no `val_dataloader`.*")
    # torch.ao's reference model (the PyTorch column) warns on every call that its API is deprecated.
    warnings.filterwarnings("ignore", ".*quantized tensor creation functions.*are deprecated.*")


def _trainer(cfg: DictConfig, callbacks: list) -> L.Trainer:
    on_terminal = sys.stdout.isatty()
    return L.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, logger=False,
                     enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=on_terminal,
                     callbacks=callbacks + ([RichProgressBar()] if on_terminal else []))


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name]


def run(cfg: DictConfig, console: Console | None = None) -> list[ResultRow]:
    """Evaluate ``cfg.model`` under every method in ``cfg.method``; rows are appended to ``cfg.out``."""
    console = console or Console()
    bad = [m for m in cfg.method if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {', '.join(METHODS)}")
    spec = task_spec(cfg.task)
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)
    dm, source = build_data(cfg, card)
    console.print(f"[bold]{cfg.model.name}[/]: weights {card.weights}; data {source} "
                  f"({len(dm.eval_files)} eval, {len(dm.calibration_files)} calibration images, seed {cfg.seed})")
    task = spec.module(model, card)
    float_scopes = getattr(task, "float_scopes", ())  # a detector's box decoding stays float
    rows = []
    for method in cfg.method:
        engine = "float" if method == "fp32" else ("fake" if method == "pytorch" else cfg.engine)
        callbacks = [] if method == "fp32" else [
            QuantizationCallback(method, engine=engine, float_scopes=float_scopes, pytorch_via=spec.pytorch_via)]
        start = time.perf_counter()
        metrics = _trainer(cfg, callbacks).test(task, datamodule=dm, verbose=False)[0]
        total = time.perf_counter() - start
        calib = callbacks[0].calib_seconds if callbacks else 0.0
        summary = callbacks[0].summary if callbacks else None
        if method == "fp32":
            act_range = "float"
        elif method == "pytorch" and spec.pytorch_via == "fx":
            act_range = PYTORCH_ACT_RANGE
        else:
            act_range = summary["act_range"]
        extra = {name: round(100.0 * float(metrics[key]), 2) for name, key in spec.extra.items()}
        row = ResultRow(
            task=cfg.task, model=cfg.model.name, dataset=source, method=method, metric=spec.metric,
            value=100.0 * float(metrics[spec.key]), n_eval=len(dm.eval_files),
            n_calib=0 if method == "fp32" else len(dm.calibration_files), seed=cfg.seed,
            calib_seconds=round(calib, 2), eval_seconds=round(total - calib, 2), act_range=act_range, engine=engine,
            extra={**extra, "weights": str(card.weights),
                   "float_ops": ",".join(summary["float_ops"]) if summary else ""},
        )
        shown = "  ".join(f"{k} {v:6.2f}" for k, v in extra.items())
        console.print(f"  {method:>7}: {spec.metric} {row.value:6.2f}  {shown}  "
                      f"calib {row.calib_seconds:6.1f}s  eval {row.eval_seconds:6.1f}s  act {row.act_range}")
        rows.append(row)
        if cfg.out:
            append_row(row, cfg.out, siblings=True)
    return rows


def train(cfg: DictConfig, console: Console | None = None, command: str = "") -> Path:
    """Train ``cfg.model`` (from random init unless model.weights is set) on the data's training
    split; write half-precision weights and a Markdown card beside them; return the weights path."""
    console = console or Console()
    if task_spec(cfg.task) is TASKS["detection"]:
        return _train_detector(cfg, console, command)
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    model, card = create_model(cfg.model.name, weights=cfg.model.weights or "random")
    dm, source = build_data(cfg, card)
    task = ClassificationTask(model, card, lr=cfg.train.lr, optimizer=cfg.train.optimizer,
                              weight_decay=cfg.train.weight_decay)
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, max_epochs=cfg.train.epochs,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=sys.stdout.isatty())
    task.train()  # create_model returns eval mode, and Lightning keeps module modes as it finds them
    start = time.perf_counter()
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    seconds = time.perf_counter() - start
    top1 = 100.0 * float(trainer.test(task, datamodule=dm, verbose=False)[0]["test/top1"])
    out = Path(cfg.train.checkpoint or CHECKPOINTS / f"{cfg.model.name}.pt")
    write_half_state_dict(task.model.state_dict(), out)
    n_train = len(dm.train_dataloader().dataset)
    out.with_suffix(".md").write_text(
        f"# {cfg.model.name}\n\n"
        f"- data: {source}, {n_train} training images (seed {cfg.seed}); evaluated on {len(dm.eval_files)} test images\n"
        f"- input: {card.input_size}x{card.input_size}, mean {card.mean[0]}, std {card.std[0]}\n"
        f"- start: {cfg.model.weights or 'random initialisation'}\n"
        f"- training: {cfg.train.epochs} epochs, {cfg.train.optimizer} with a one-cycle schedule, max lr {cfg.train.lr}, "
        f"weight decay {cfg.train.weight_decay}, batch {cfg.data.batch_size}, {seconds / 60:.1f} min on this machine\n"
        f"- FP32 Top-1: {top1:.2f} %\n- weights: float16 state dict\n"
        f"- command: `{command or 'hqbench train task=classification model=' + cfg.model.name}`\n")
    console.print(f"{cfg.model.name}: trained {seconds / 60:.1f} min, FP32 top1 {top1:.2f} -> {out}")
    return out


def _darknet_files() -> tuple[Path, Path]:
    env = os.environ.get("HQBENCH_DATA")
    folder = Path(env).expanduser() / "weights" if env else None
    files = (folder / "yolov3-tiny.cfg", folder / "yolov3-tiny.weights") if folder else None
    if files is None or not all(f.is_file() for f in files):
        raise FileNotFoundError("train.init=darknet needs yolov3-tiny.cfg and yolov3-tiny.weights under "
                                "$HQBENCH_DATA/weights; set HQBENCH_DATA, or pass train.init=random or a checkpoint")
    return files


def _train_detector(cfg: DictConfig, console: Console, command: str) -> Path:
    """Fine-tune YOLOv3-tiny with ultralytics' trainer; write fp16 weights and a card; return the weights path."""
    from .tasks.yolo_training import save_half_state_dict, train_yolo

    _, card = create_model(cfg.model.name, weights="random")  # the card fixes the input size
    dm, source = build_data(cfg, card)
    init = cfg.train.init
    start = dict(darknet=_darknet_files()) if init == "darknet" else ({} if init == "random" else dict(init=init))
    work_dir = Path(cfg.train.work_dir or Path(__file__).resolve().parents[1] / ".cache" / f"train-{cfg.model.name}")
    console.print(f"[bold]{cfg.model.name}[/]: training on {source} at {card.input_size}px from {init} "
                  f"({'%.2f h' % cfg.train.hours if cfg.train.hours else '%d epochs' % cfg.train.epochs})")
    result = train_yolo(dm.root, work_dir, imgsz=card.input_size, epochs=cfg.train.epochs, hours=cfg.train.hours,
                        batch=cfg.train.batch, seed=cfg.seed, workers=cfg.train.workers, **start)
    out = Path(cfg.train.checkpoint or CHECKPOINTS / f"{cfg.model.name}.pt")
    save_half_state_dict(result.weights, out)
    n_train = len(dm.train_files)
    out.with_suffix(".md").write_text(
        f"# {cfg.model.name}\n\n"
        f"- architecture: ultralytics yolov3-tiny.yaml with Darknet's LeakyReLU(0.1), one class (ship), "
        f"anchor-free Detect head\n"
        f"- data: {source}; trained on train2017 ({n_train} images), evaluated on test2017 "
        f"({len(dm.eval_files)} images)\n"
        f"- start: {init}\n"
        f"- training: ultralytics trainer, {result.epochs} epochs at {card.input_size}px, batch {cfg.train.batch}, "
        f"seed {cfg.seed}, {result.seconds / 60:.1f} min on this machine (CPU)\n"
        f"- FP32 mAP50 {100 * result.map50:.2f}, mAP50-95 {100 * result.map50_95:.2f} (ultralytics val on test2017; "
        f"`hqbench test task=detection model={cfg.model.name} method=fp32` gives the figure used in tables)\n"
        f"- weights: float16 state dict (EMA weights of the best epoch)\n"
        f"- command: `{command or 'hqbench train task=detection model=' + cfg.model.name}`\n")
    console.print(f"{cfg.model.name}: trained {result.epochs} epochs in {result.seconds / 60:.1f} min, "
                  f"mAP50 {100 * result.map50:.2f} -> {out}")
    return out
