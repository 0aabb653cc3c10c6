"""Fine-tune YOLOv3-tiny on HRSID-layout data with ultralytics' trainer (its loss, augmentation, EMA).

Detection training is ultralytics' job; hqbench adds the offline guard, the Darknet start, the
conversion of the HRSID layout into ultralytics' (under a cache, never in the data folder) and
the half-precision checkpoint that :func:`hqbench.models.yolo.yolov3_tiny_sar` loads.

ultralytics' trainer unpickles its checkpoints with ``weights_only=False``. So it is only ever
given files written in this run: ``init.pt``, built here from a state dict read with
``weights_only=True`` (or from Darknet's raw floats), the dataset yaml, and its own ``best.pt``.
What leaves the run is a plain state dict, never a pickled model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hqbench.data.resolve import build_data
from hqbench.data.sar import write_yolo_dataset
from hqbench.models import create_model
from hqbench.models._weights import write_half_state_dict
from hqbench.paths import cache_dir
from hqbench.tasks.base import training_output
from hqbench.models.yolo import (build_yolov3_tiny, convert_darknet, load_yolov3_tiny, offline_ultralytics,
                                 read_detection_state, save_ultralytics_checkpoint)


@dataclass
class YoloTrainResult:
    weights: Path  # plain state dict of ultralytics' best.pt (EMA weights of the best validation epoch)
    epochs: int  # epochs actually run (ultralytics fits them to ``hours`` when that is set)
    seconds: float
    map50: float  # ultralytics' validation mAP50 of best.pt on the test split
    map50_95: float


def train_yolo(data_root: str | Path, work_dir: str | Path, *, init: str | Path | None = None,
               darknet: tuple[str | Path, str | Path] | None = None, imgsz: int = 512, epochs: int = 30,
               hours: float | None = None, batch: int = 16, seed: int = 0, workers: int = 0,
               close_mosaic: int = 3, warmup_epochs: float = 1.0) -> YoloTrainResult:
    """Fine-tune YOLOv3-tiny (LeakyReLU) on ``data_root`` (HRSID layout) and return ultralytics' best weights.

    Args:
        data_root: folder with ``JPEGImages/`` and ``annotations/{train2017,test2017}.json``.
        work_dir: cache for the converted dataset and ultralytics' run folder.
        init: weights to start from: an hqbench (fp16 state dict) or ultralytics checkpoint; else ``darknet``.
        darknet: ``(cfg, weights)`` of the official Darknet YOLOv3-tiny: backbone and neck start
            from it, the one-class head is fresh. Neither ``init`` nor ``darknet``: random start.
        imgsz: square training size. epochs / hours: ultralytics' ``epochs`` / ``time`` (hours
            override epochs and the learning-rate schedule is fitted to them).
        close_mosaic: last epochs trained without mosaic augmentation.
        warmup_epochs: learning-rate warm-up (ultralytics' default 3 is most of a short CPU run).
    """
    ul = offline_ultralytics()
    work_dir = Path(work_dir).expanduser().resolve()
    if init is None:
        model = convert_darknet(*darknet, nc=1) if darknet else build_yolov3_tiny(nc=1)
    else:  # read safely (state dicts only) before anything else, so a bad file fails first
        model = load_yolov3_tiny(Path(init), "train.init")
    data_yaml = write_yolo_dataset(data_root, work_dir / "dataset")
    init = save_ultralytics_checkpoint(model, work_dir / "init.pt")  # written here, so safe to unpickle
    run_name = f"train-{time.strftime('%Y%m%d-%H%M%S')}"
    extra = {"time": hours} if hours else {}
    start = time.perf_counter()
    yolo = ul.YOLO(str(init))
    yolo.train(data=str(data_yaml), imgsz=imgsz, epochs=epochs, batch=batch, seed=seed, deterministic=True,
               workers=workers, amp=False, device="cpu" if not torch.cuda.is_available() else None,
               close_mosaic=close_mosaic, warmup_epochs=warmup_epochs, project=str(work_dir / "runs"), name=run_name, plots=False,
               exist_ok=False, verbose=False, **extra)
    seconds = time.perf_counter() - start
    trainer = yolo.trainer
    best = Path(trainer.best if Path(trainer.best).is_file() else trainer.last)
    # yolo.model is now best.pt's EMA network (ultralytics reloads it after training): keep its tensors only.
    weights = best.with_name(f"{best.stem}_state.pt")
    torch.save(yolo.model.float().state_dict(), weights)
    metrics = yolo.val(data=str(data_yaml), imgsz=imgsz, batch=batch, split="val", plots=False,
                       project=str(work_dir / "runs"), name=run_name + "-val", verbose=False)
    return YoloTrainResult(weights=weights, epochs=int(trainer.epoch) + 1, seconds=seconds,
                           map50=float(metrics.box.map50), map50_95=float(metrics.box.map))


def save_half_state_dict(weights: str | Path, out: str | Path) -> Path:
    """Write the state dict ``weights`` (what :func:`train_yolo` returns) as float16, atomically."""
    return write_half_state_dict(read_detection_state(Path(weights)), Path(out))


def _darknet_files() -> tuple[Path, Path]:
    env = os.environ.get("HQBENCH_DATA")
    folder = Path(env).expanduser() / "weights" if env else None
    files = (folder / "yolov3-tiny.cfg", folder / "yolov3-tiny.weights") if folder else None
    if files is None or not all(f.is_file() for f in files):
        raise FileNotFoundError("train.init=darknet needs yolov3-tiny.cfg and yolov3-tiny.weights under "
                                "$HQBENCH_DATA/weights; set HQBENCH_DATA, or pass train.init=random or a checkpoint")
    return files


def fit_detector(cfg, console, command: str = "") -> Path:
    """Fine-tune YOLOv3-tiny with ultralytics' trainer; write fp16 weights and a card; return the weights path."""
    out = training_output(cfg)
    _, card = create_model(cfg.model.name, weights="random")  # the card fixes the input size
    dm, source = build_data(cfg, card)
    init = cfg.train.init
    start = dict(darknet=_darknet_files()) if init == "darknet" else ({} if init == "random" else dict(init=init))
    work_dir = Path(cfg.train.work_dir or cache_dir(f"train-{cfg.model.name}"))
    console.print(f"[bold]{cfg.model.name}[/]: training on {source} at {card.input_size}px from {init} "
                  f"({'%.2f h' % cfg.train.hours if cfg.train.hours else '%d epochs' % cfg.train.epochs})")
    result = train_yolo(dm.root, work_dir, imgsz=card.input_size, epochs=cfg.train.epochs, hours=cfg.train.hours,
                        batch=cfg.train.batch, seed=cfg.seed, workers=cfg.train.workers, **start)
    out.parent.mkdir(parents=True, exist_ok=True)
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
