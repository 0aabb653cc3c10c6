"""DetectionTask: COCO-style mAP evaluation of a YOLO detector through torchmetrics."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import batched_nms, box_convert

from hqbench.data.base import EvaluationShare, evaluation_order
from hqbench.tasks.base import BenchmarkTask
from hqbench.models.card import ModelCard
from hqbench.evidence.average_precision import ImageMatches, MatchSet, match_image
from hqbench.evidence import Replicates

BOOTSTRAP_RESAMPLES = 1000  # mAP50 replicates stored per row (4 kB); the paired tests' resolution is 1/1001


def _empty_like(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same keys with no boxes: an image that adds nothing to mAP."""
    return {k: v[:0] for k, v in d.items()}


def nms(preds: torch.Tensor, conf_thres: float = 0.001, iou_thres: float = 0.6,
        max_det: int = 300) -> list[dict[str, torch.Tensor]]:
    """Per-image class-aware NMS on YOLO output ``(N, 4 + nc, boxes)`` (xywh pixels, class scores).

    Each box keeps its best class (ultralytics' ``multi_label=False``).

    Returns:
        One torchmetrics prediction dict per image: ``boxes`` (xyxy), ``scores``, ``labels``.
    """
    out = []
    for p in preds.detach().float().transpose(1, 2):  # (boxes, 4 + nc)
        scores, labels = p[:, 4:].max(1)
        keep = scores > conf_thres
        boxes, scores, labels = box_convert(p[keep, :4], "cxcywh", "xyxy"), scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, iou_thres)[:max_det]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


def head_scope(model: nn.Module) -> str:
    """Name, inside ``model``, of the module whose box decoding should stay float.

    ultralytics' ``DetectionModel``: its last layer (``Detect``, e.g. ``"model.20"``);
    :class:`~hqbench.models.yolo.DarknetYolo`: ``"head"``.

    Raises:
        ValueError: neither layout.
    """
    if isinstance(getattr(model, "head", None), nn.Module):
        return "head"
    layers = getattr(model, "model", None)
    # Detect or a subclass of it (YOLOv10's v10Detect)
    if isinstance(layers, nn.Sequential) and "Detect" in (c.__name__ for c in type(layers[-1]).__mro__):
        return f"model.{len(layers) - 1}"
    raise ValueError(f"cannot find the detection head of {type(model).__name__}: expected an ultralytics "
                     "DetectionModel (model.model[-1] is Detect) or a module with a .head")


class DetectionTask(BenchmarkTask):
    """Wraps a YOLO detector; logs ``{stage}/mAP50`` and ``{stage}/mAP50_95`` (fractions in [0, 1]).

    ``forward`` returns the raw ``(N, 4 + nc, boxes)`` predictions (no NMS), so quantization hooks
    see only the network; :func:`nms` runs in the step. mAP is torchmetrics'
    ``MeanAveragePrecision`` on the faster-coco-eval backend, computed once per epoch over every
    image, in letterboxed pixel coordinates (the ratio-preserving letterbox leaves IoU unchanged).

    Args:
        model: an ultralytics ``DetectionModel`` (or any module returning YOLO-layout predictions,
            alone or as the first element of a tuple). Kept as ``self.model``.
        card: the model's ModelCard, kept for reports.
        conf_thres: score threshold before NMS (low, as for mAP).
        iou_thres: NMS IoU threshold.
        max_det: detections kept per image.
    """

    METRIC = "mAP50"
    EXTRA_METRICS = ("mAP50_95",)
    PYTORCH_VIA = "hooks"  # torch.fx cannot trace ultralytics' DetectionModel: torch's observers go through hooks
    # Every engine runs the detector, its float scope (box decoding) included.
    UNSUPPORTED: dict[str, str] = {"mixed.criterion=kl": "its raw heads are no softmax over classes to compare; "
                                   "rank the points by mixed.criterion=sqnr"}

    def __init__(self, model: nn.Module, card: ModelCard | None = None, conf_thres: float = 0.001,
                 iou_thres: float = 0.6, max_det: int = 300):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "card"])
        self.model, self.card = model, card
        # One metric per stage so validation during fit never mixes into a test result.
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
        self._share = EvaluationShare()

    @classmethod
    def fit(cls, cfg, console, command: str = "") -> Path:
        """``hqbench train``: fine-tune with ultralytics' trainer (its loss, augmentation, EMA)."""
        if cfg.train.get("qat", False):
            raise NotImplementedError("train.qat: the detector trains through ultralytics' own loop (its loss, "
                                      "augmentation and EMA), which QATCallback cannot join; quantization-aware "
                                      "training is for task=classification")
        from hqbench.tasks.yolo_training import fit_detector  # ultralytics, only when training

        return fit_detector(cfg, console, command)

    def setup(self, stage: str) -> None:
        """Before any calibration: the model's classes must be the data's (a mismatch scores the wrong
        outputs). Names are compared where the card has them, else the count.

        Raises:
            ValueError: one line naming the model and both class lists.
        """
        data = list(getattr(getattr(self._trainer, "datamodule", None), "classes", None) or [])
        card = self.card
        if not data or card is None:
            return
        if (list(card.classes) == data) if card.classes else (card.num_classes == len(data)):
            return
        mine = list(card.classes) or f"{card.num_classes} classes"
        theirs = data if len(data) <= 8 else f"{len(data)} classes ({', '.join(data[:3])}, ...)"
        raise ValueError(f"model {card.name!r} detects {mine} but the data's categories are {theirs}; "
                         "pick detection data with the same classes (data=sar, data.root=...)")

    @property
    def float_scopes(self) -> tuple[str, ...]:
        """Module names to pass as ``QuantizationCallback(float_scopes=...)``: the head's decoding."""
        return (f"model.{head_scope(self.model)}",)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw predictions ``(N, 4 + nc, boxes)``: xywh in input pixels, then class scores."""
        out = self.model(images)
        return out[0] if isinstance(out, (tuple, list)) else out

    def predict_step(self, batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Detections after NMS for a batch of ``(images, targets)`` or of images alone."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        h = self.hparams
        return nms(self(images), h.conf_thres, h.iou_thres, h.max_det)

    def _evaluate(self, batch, metric: MeanAveragePrecision, padding: torch.Tensor | None = None):
        """NMS and the metric update; returns this batch's real (not DDP-repeated) predictions and targets."""
        images, targets = batch
        preds = self.predict_step(images, 0)
        targets = [{k: t[k] for k in ("boxes", "labels", "iscrowd") if k in t} for t in targets]
        if padding is not None and padding.any():
            # A repeated sample stays in the metric as an empty image (no boxes, no ships: no effect on
            # mAP), because torchmetrics syncs its per-image lists only when every rank has as many.
            preds = [_empty_like(p) if pad else p for p, pad in zip(preds, padding.tolist())]
            targets = [_empty_like(t) if pad else t for t, pad in zip(targets, padding.tolist())]
        metric.update(preds, targets)
        keep = [i for i in range(len(preds)) if padding is None or not padding[i]]
        return [preds[i] for i in keep], [targets[i] for i in keep]

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        # MeanAveragePrecision returns a dict with non-scalar entries; log only the two numbers.
        result = metric.compute()
        self.log(f"{stage}/mAP50", result["map_50"].float())
        self.log(f"{stage}/mAP50_95", result["map"].float())
        metric.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_map)

    def on_test_epoch_start(self) -> None:
        self._test_matches: list[ImageMatches] = []
        self._share.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        preds, targets = self._evaluate(batch, self.test_map, self._share.padding(self._trainer, len(batch[1])))
        # Each image's detections matched once, so mAP50 can be recomputed on resampled images.
        for p, t in zip(preds, targets):
            self._test_matches.append(match_image(
                p["boxes"].cpu(), p["scores"].cpu(), p["labels"].cpu(), t["boxes"].cpu(), t["labels"].cpu(),
                t["iscrowd"].cpu() if "iscrowd" in t else None))

    def paired_evidence(self, n_eval: int | None = None, seed: int = 0) -> dict:
        """``{"bootstrap": ...}`` for the result row: mAP50 (%) of the last test run and of
        ``BOOTSTRAP_RESAMPLES`` resamples of its images, the same resamples for every model on
        these images, so two rows give a paired bootstrap test (see
        :mod:`hqbench.evidence.average_precision`).

        Under DDP every rank's matches are gathered and put back in evaluation order (rank r
        evaluated images r, r+W, ...; its sampler's repeats are left out, see
        :class:`~hqbench.data.base.EvaluationShare`).

        Raises:
            ValueError: if the run saw other than ``n_eval`` images.
        """
        matches = self._test_matches
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1 and torch.distributed.is_initialized():
            shards: list = [None] * world
            torch.distributed.all_gather_object(shards, matches)
            matches = evaluation_order(shards)
        if n_eval is not None and len(matches) != n_eval:
            raise ValueError(f"the test run evaluated {len(matches)} images, not {n_eval}")
        found = MatchSet(matches)
        reps = Replicates(100 * found.map50(), 100 * found.bootstrap(BOOTSTRAP_RESAMPLES, seed), found.n, seed)
        return {"bootstrap": reps.encode()}

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")
