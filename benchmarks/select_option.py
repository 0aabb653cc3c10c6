"""Choose D's error exponent p on held-out *training* images, never on the reported val set.

    HQBENCH_DATA=../shared/data python benchmarks/select_redistribution_norm.py

For each model: calibrate D once on 256 seeded train/ images, then for each p re-solve every clip
range from the same histograms and measure Top-1 on held-out train/ images (disjoint from the
calibration images and from val/). B (MinMax) on the same images is printed for scale.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from hqbench.data.imagenet import ImageListDataset, ImageNetDataModule
from hqbench.data.transforms import build_transform
from hqbench.models import create_model
from hqbench.quant import quantize
from torch.utils.data import DataLoader

NORMS = (2.0, 2.5, 3.0, 4.0)


def top1(model, batches) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def main(models=("mobilenet_v2_tflite", "efficientnet_lite0"), held_out: int = 500) -> None:
    data = Path(os.environ["HQBENCH_DATA"])
    print("| model | held-out images | FP32 | B MinMax | " + " | ".join(f"D p={p:g}" for p in NORMS) + " |")
    print("|---|---|---|---|" + "---|" * len(NORMS))
    for name in models:
        weights = str(data / "weights" / "tf2_mobilenet_v2_1.0_224_ptq.tflite") if name == "mobilenet_v2_tflite" else None
        model, card = create_model(name, weights=weights)
        dm = ImageNetDataModule(data / "imagenet", card, batch_size=50, calib_size=256, seed=0)
        dm.setup()
        calib = set(dm.calibration_files)
        pool = [s for s in dm._scan("train") if s[0] not in calib]
        g = torch.Generator().manual_seed(1)
        rest = [pool[i] for i in torch.randperm(len(pool), generator=g)[:held_out].tolist()]
        evaluation = list(DataLoader(ImageListDataset(rest, build_transform(card)), batch_size=50))
        calibration = list(dm.calibration_dataloader())
        cells = [top1(model, evaluation), top1(quantize(model, calibration, method="B"), evaluation)]
        qmodel = quantize(model, calibration, method="D")
        for p in NORMS:
            for q in qmodel.quantizers.values():
                q.calibrator.p = p
                q.freeze()
            qmodel.set_mode("float")
            qmodel.set_mode("quant")
            cells.append(top1(qmodel, evaluation))
        print(f"| {name} | {len(rest)} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ("mobilenet_v2_tflite", "efficientnet_lite0"))
