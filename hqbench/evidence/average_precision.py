"""mAP50 over resampled images: the evidence behind detection intervals and paired tests.

mAP does not split into per-image outcomes the way Top-1 does, so the paired McNemar test of the
classification tables has no direct counterpart. Instead each image's detections are matched to
its ground truth once (COCO's rule at IoU 0.5, as pycocotools and faster-coco-eval do), and mAP50
is then recomputed for many bootstrap resamples of the images from those matches alone. Every
detection row stores the mAP50 of the same resamples (the image draws depend only on the seed and
the number of images), so two rows on the same images give a paired bootstrap test of their
difference without keeping any detections (:func:`hqbench.reporting.stats.paired_replicates_pvalue`).

On the full image set :func:`map50` equals torchmetrics' ``MeanAveragePrecision(...)["map_50"]``
(tests/test_stats.py checks it); a resample counts an image drawn twice as two images, except that
detections of equal score from different images keep one order (COCO's order would depend on the
resample's image order; it moves a precision point only on exact score ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IOU = 0.5
MAX_DETS = 100  # COCO's largest maxDets, the one map_50 uses
# torchmetrics builds its 101 recall thresholds in float32 (torch.linspace): 0.14 is then 0.1400000006,
# so a recall of exactly 7/50 falls below it. Matching that keeps map50() equal to the row's metric.
# (numpy's float32 linspace rounds 20 of them differently, so take torch's own).
RECALL_POINTS = torch.linspace(0.0, 1.00, 101).double().numpy()


@dataclass
class ImageMatches:
    """One image's detections matched at IoU 0.5: per detection its class, score and outcome.

    ``tp``: matched to a non-crowd ground truth; ``ignored``: matched to a crowd box (neither
    true nor false positive). ``gt_per_class``: non-crowd ground-truth boxes per class.
    """

    labels: np.ndarray
    scores: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    gt_per_class: dict[int, int]


def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCO box IoU (xyxy); against a crowd box the union is the detection's own area."""
    lt = np.maximum(dt[:, None, :2], gt[None, :, :2])
    rb = np.minimum(dt[:, None, 2:], gt[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_d = np.prod(dt[:, 2:] - dt[:, :2], axis=1)[:, None]
    area_g = np.prod(gt[:, 2:] - gt[:, :2], axis=1)[None, :]
    union = np.where(crowd[None, :], area_d, area_d + area_g - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_image(boxes, scores, labels, gt_boxes, gt_labels, gt_crowd=None) -> ImageMatches:
    """Match one image's detections (xyxy) to its ground truth, class by class, as COCO does.

    Per class the top ``MAX_DETS`` detections by score take, in score order, the unmatched
    ground truth of highest IoU >= 0.5, preferring non-crowd boxes; crowd boxes may be matched
    again. Inputs are arrays or tensors; ``gt_crowd`` defaults to no crowd boxes.
    """
    boxes, scores, labels = (np.asarray(a, dtype=np.float64) for a in (boxes, scores, labels))
    gt_boxes, gt_labels = np.asarray(gt_boxes, dtype=np.float64), np.asarray(gt_labels)
    gt_crowd = np.zeros(len(gt_labels), bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
    out_labels, out_scores, out_tp, out_ignored = [], [], [], []
    gt_per_class: dict[int, int] = {}
    for c in np.union1d(labels.astype(int), gt_labels.astype(int)):
        d = np.flatnonzero(labels == c)
        d = d[np.argsort(-scores[d], kind="mergesort")][:MAX_DETS]
        g = np.flatnonzero(gt_labels == c)
        g = g[np.argsort(gt_crowd[g], kind="mergesort")]  # non-crowd first, as COCO sorts them
        crowd = gt_crowd[g]
        gt_per_class[int(c)] = int(np.count_nonzero(~crowd))
        ious = _iou(boxes[d].reshape(-1, 4), gt_boxes[g].reshape(-1, 4), crowd)
        taken = np.zeros(len(g), bool)
        tp, ignored = np.zeros(len(d), bool), np.zeros(len(d), bool)
        for i in range(len(d)):
            best, m = min(IOU, 1 - 1e-10), -1
            for j in range(len(g)):
                if taken[j] and not crowd[j]:
                    continue
                if m > -1 and not crowd[m] and crowd[j]:
                    break  # a non-crowd match beats every crowd box
                if ious[i, j] < best:
                    continue
                best, m = ious[i, j], j
            if m > -1:
                taken[m] = True
                ignored[i], tp[i] = crowd[m], not crowd[m]
        out_labels.append(np.full(len(d), c))
        out_scores.append(scores[d])
        out_tp.append(tp)
        out_ignored.append(ignored)
    cat = (lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t))
    return ImageMatches(cat(out_labels, np.int64), cat(out_scores, np.float64), cat(out_tp, bool),
                        cat(out_ignored, bool), gt_per_class)


def _class_ap(order_img: np.ndarray, tp: np.ndarray, fp: np.ndarray, npig: float, weights: np.ndarray) -> float:
    """COCO's 101-point interpolated AP of one class; detections in score order, images weighted."""
    rep = weights[order_img]
    keep = rep > 0
    tp_sum = np.cumsum(np.repeat(tp[keep], rep[keep]))
    fp_sum = np.cumsum(np.repeat(fp[keep], rep[keep]))
    if tp_sum.size == 0:
        return 0.0
    recall = tp_sum / npig
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope, right to left
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.where(idx < precision.size, precision[np.minimum(idx, precision.size - 1)], 0.0).mean())


class MatchSet:
    """The matches of every evaluation image, arranged to recompute mAP50 for any image weights."""

    def __init__(self, images: list[ImageMatches]):
        self.n = len(images)
        self._classes = {}
        classes = sorted({c for im in images for c in im.gt_per_class} | {int(c) for im in images for c in im.labels})
        for c in classes:
            img, scores, tp, ign = [], [], [], []
            for i, im in enumerate(images):
                sel = im.labels == c
                img.append(np.full(int(sel.sum()), i))
                scores.append(im.scores[sel])
                tp.append(im.tp[sel])
                ign.append(im.ignored[sel])
            img, scores, tp, ign = (np.concatenate(x) for x in (img, scores, tp, ign))
            order = np.argsort(-scores, kind="mergesort")  # COCO: stable, images in evaluation order
            gt = np.array([im.gt_per_class.get(c, 0) for im in images], dtype=np.int64)
            counted = ~ign[order]  # detections matched to crowd boxes count neither way
            self._classes[c] = (img[order][counted], tp[order][counted], ~tp[order][counted], gt)

    def map50(self, weights: np.ndarray | None = None) -> float:
        """mAP50 (a fraction) of the images, each counted ``weights[i]`` times (default once).

        Classes without ground truth in the weighted set are left out, as COCO leaves them out.
        """
        w = np.ones(self.n, np.int64) if weights is None else np.asarray(weights, np.int64)
        aps = []
        for img, tp, fp, gt in self._classes.values():
            npig = float(gt @ w)
            if npig > 0:
                aps.append(_class_ap(img, tp, fp, npig, w))
        return float(np.mean(aps)) if aps else float("nan")

    def bootstrap(self, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
        """mAP50 of :func:`resample_weights` ``(n, n_resamples, seed)``: the same draws for every model."""
        return np.array([self.map50(w) for w in resample_weights(self.n, n_resamples, seed)])


def resample_weights(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_resamples, n]`` image counts of bootstrap resamples; a function of (n, n_resamples, seed) only."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    return np.stack([np.bincount(d, minlength=n) for d in draws])


__all__ = ["ImageMatches", "MatchSet", "match_image", "resample_weights"]
