"""run(cfg) -> result rows: one Trainer.test per method, the same path for the CLI and result.py."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig
from rich.console import Console

from .callbacks import QuantizationCallback
from .models import create_model
from .quant.baseline import ACT_RANGE as PYTORCH_ACT_RANGE
from .reporting import ResultRow, append_row
from .tasks.classification import ClassificationTask

# Where each datamodule looks under $HQBENCH_DATA; a datamodule in EMBEDDED falls back to its
# package copy when neither a root nor that folder exists.
DATA_SUBDIR = {"ImageNetDataModule": "imagenet", "FashionMNISTDataModule": "fashion-mnist"}
EMBEDDED = {"FashionMNISTDataModule"}
METHODS = ("fp32", "pytorch", "A", "B", "C", "D")


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


def run(cfg: DictConfig, console: Console | None = None) -> list[ResultRow]:
    """Evaluate ``cfg.model`` under every method in ``cfg.method``; rows are appended to ``cfg.out``."""
    console = console or Console()
    bad = [m for m in cfg.method if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {', '.join(METHODS)}")
    if cfg.task != "classification":
        raise ValueError(f"task {cfg.task!r} is not available yet; valid: classification")
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)
    dm, source = build_data(cfg, card)
    console.print(f"[bold]{cfg.model.name}[/]: weights {card.weights}; data {source} "
                  f"({len(dm.eval_files)} eval, {len(dm.calibration_files)} calibration images, seed {cfg.seed})")
    task = ClassificationTask(model, card)
    rows = []
    for method in cfg.method:
        engine = "float" if method == "fp32" else ("fake" if method == "pytorch" else cfg.engine)
        callbacks = [] if method == "fp32" else [QuantizationCallback(method, engine=engine)]
        start = time.perf_counter()
        metrics = _trainer(cfg, callbacks).test(task, datamodule=dm, verbose=False)[0]
        total = time.perf_counter() - start
        calib = callbacks[0].calib_seconds if callbacks else 0.0
        summary = callbacks[0].summary if callbacks else None
        row = ResultRow(
            task=cfg.task, model=cfg.model.name, dataset=source, method=method, metric="top1",
            value=100.0 * float(metrics["test/top1"]), n_eval=len(dm.eval_files),
            n_calib=0 if method == "fp32" else len(dm.calibration_files), seed=cfg.seed,
            calib_seconds=round(calib, 2), eval_seconds=round(total - calib, 2),
            act_range={"fp32": "float", "pytorch": PYTORCH_ACT_RANGE}.get(method) or summary["act_range"],
            engine=engine,
            extra={"top5": round(100.0 * float(metrics["test/top5"]), 2), "weights": str(card.weights),
                   "float_ops": ",".join(summary["float_ops"]) if summary else ""},
        )
        console.print(f"  {method:>7}: top1 {row.value:6.2f}  top5 {row.extra['top5']:6.2f}  "
                      f"calib {row.calib_seconds:6.1f}s  eval {row.eval_seconds:6.1f}s  act {row.act_range}")
        rows.append(row)
        if cfg.out:
            append_row(row, cfg.out, siblings=True)
    return rows


def train(cfg: DictConfig, console: Console | None = None, command: str = "") -> Path:
    """Train ``cfg.model`` (from random init unless model.weights is set) on the data's training
    split; write half-precision weights and a Markdown card beside them; return the weights path."""
    console = console or Console()
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
    out = Path(cfg.train.checkpoint or Path(__file__).resolve().parents[1] / "checkpoints" / f"{cfg.model.name}.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in task.model.state_dict().items()}, tmp)
    os.replace(tmp, out)  # never leave a half-written checkpoint under the final name
    n_train = len(dm.train_dataloader().dataset)
    out.with_suffix(".md").write_text(
        f"# {cfg.model.name}\n\n"
        f"- data: {source}, {n_train} training images (seed {cfg.seed}); evaluated on {len(dm.eval_files)} test images\n"
        f"- input: {card.input_size}x{card.input_size}, mean {card.mean[0]}, std {card.std[0]}\n"
        f"- training: {cfg.train.epochs} epochs, {cfg.train.optimizer} with a one-cycle schedule, max lr {cfg.train.lr}, "
        f"weight decay {cfg.train.weight_decay}, batch {cfg.data.batch_size}, {seconds / 60:.1f} min on this machine\n"
        f"- FP32 Top-1: {top1:.2f} %\n- weights: float16 state dict\n"
        f"- command: `{command or 'hqbench train task=classification model=' + cfg.model.name}`\n")
    console.print(f"{cfg.model.name}: trained {seconds / 60:.1f} min, FP32 top1 {top1:.2f} -> {out}")
    return out
