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

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from hqbench.data.sar import write_yolo_dataset
from hqbench.models._weights import write_half_state_dict
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
