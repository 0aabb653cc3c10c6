"""mAP50 from per-image matches equals torchmetrics', and its bootstrap replicates give paired tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from hqbench.evidence.average_precision import MatchSet, match_image, resample_weights
from hqbench.evidence import Replicates
from hqbench.reporting.stats import paired_replicates_pvalue, rank_cells


def scenes(seed: int, n: int = 40, crowd_rate: float = 0.0, noise: float = 4.0, decimals: int = 6):
    """Random ground truth in 3 classes and noisy detections of it (some mislabelled, some crowd)."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        ng = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (ng, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 30, (ng, 2))], 1)
        gl = rng.integers(0, 3, ng)
        nd = int(rng.integers(0, 30))
        pick = rng.integers(0, max(ng, 1), nd)
        boxes = (gt[pick] if ng else np.tile([0.0, 0.0, 10.0, 10.0], (nd, 1))) + rng.normal(0, noise, (nd, 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        labels = np.where(rng.random(nd) < 0.8, gl[pick] if ng else 0, rng.integers(0, 3, nd))
        preds.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                      "scores": torch.tensor(rng.random(nd).round(decimals), dtype=torch.float32),
                      "labels": torch.tensor(labels)})
        targets.append({"boxes": torch.tensor(gt, dtype=torch.float32), "labels": torch.tensor(gl),
                        "iscrowd": torch.tensor((rng.random(ng) < crowd_rate).astype(int))})
    return preds, targets


def matches(preds, targets) -> MatchSet:
    return MatchSet([match_image(p["boxes"], p["scores"], p["labels"], t["boxes"], t["labels"], t["iscrowd"])
                     for p, t in zip(preds, targets)])


@pytest.mark.parametrize("seed,crowd,decimals", [(0, 0.0, 6), (1, 0.15, 6), (3, 0.0, 2), (4, 0.15, 2)])
def test_map50_equals_torchmetrics(seed, crowd, decimals):
    preds, targets = scenes(seed, crowd_rate=crowd, decimals=decimals)
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    metric.update(preds, targets)
    assert matches(preds, targets).map50() == pytest.approx(float(metric.compute()["map_50"]), abs=1e-6)


def test_resamples_depend_only_on_count_and_seed_and_weight_images():
    w = resample_weights(7, 50, seed=3)
    assert w.shape == (50, 7) and (w.sum(axis=1) == 7).all()
    assert np.array_equal(w, resample_weights(7, 50, seed=3)) and not np.array_equal(w, resample_weights(7, 50, 4))
    preds, targets = scenes(0, n=10)
    doubled = matches(preds + preds, targets + targets).map50()
    assert matches(preds, targets).map50(np.full(10, 2)) == pytest.approx(doubled, abs=1e-9)


def test_paired_bootstrap_separates_a_better_detector_and_not_itself():
    preds, targets = scenes(5, n=60, noise=2.0)
    worse, _ = scenes(5, n=60, noise=6.0)  # same scenes and scores, sloppier boxes
    a, b = matches(preds, targets), matches(worse, targets)
    ra = Replicates(100 * a.map50(), 100 * a.bootstrap(300), a.n, 0)
    rb = Replicates(100 * b.map50(), 100 * b.bootstrap(300), b.n, 0)
    assert ra.observed > rb.observed + 5
    assert paired_replicates_pvalue(ra, rb) < 0.01 and paired_replicates_pvalue(ra, ra) == 1.0
    lo, hi = ra.ci()
    assert lo < ra.observed < hi
    assert rank_cells({"B": rb, "D": ra})["tied"] == ["D"]
    back = Replicates.decode(ra.encode())
    assert np.allclose(back.values, ra.values, atol=1e-4) and (back.n, back.seed) == (60, 0)
    with pytest.raises(ValueError, match="not paired"):
        paired_replicates_pvalue(ra, Replicates(ra.observed, ra.values, 61, 0))
    with pytest.raises(ValueError, match="malformed bootstrap replicates"):
        Replicates.decode({"observed": 1.0, "n": 3})
