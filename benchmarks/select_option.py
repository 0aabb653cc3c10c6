"""Choose a calibrator's option on held-out *training* images, never on the reported val set.

    HQBENCH_DATA=../shared/data python benchmarks/select_option.py --method D --values 2,2.5,3,4 mobilenet_v2_tflite
    HQBENCH_DATA=../shared/data python benchmarks/select_option.py --method redistribution-guarded \
        --values 0.003,0.01,0.03,0.1 --bits w8a4 mobilenet_v2_tflite efficientnet_lite0

For each model: calibrate the method once on 256 seeded train/ images, then for each value of its
option (the registry entry's ``option``: D's error exponent ``p``, the guarded tail share ``tail``)
re-solve every clip range from the same statistics and measure Top-1 on held-out train/ images
(disjoint from the calibration images and from val/). FP32 and B (MinMax) on the same images are
printed for scale.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from hqbench.data.imagenet import ImageListDataset, ImageNetDataModule
from hqbench.data.transforms import build_transform
from hqbench.models import create_model
from hqbench.quant import Recipe, quantize
from hqbench.quant.bits import parse_bit_widths
from hqbench.quant.calibrators import calibrator_entry
from torch.utils.data import DataLoader


def top1(model, batches) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def held_out_batches(name: str, data: Path, held_out: int):
    """The model, its 256 calibration batches and ``held_out`` other train/ images, as batches."""
    weights = str(data / "weights" / "tf2_mobilenet_v2_1.0_224_ptq.tflite") if name == "mobilenet_v2_tflite" else None
    model, card = create_model(name, weights=weights)
    dm = ImageNetDataModule(data / "imagenet", card, batch_size=50, calib_size=256, seed=0)
    dm.setup()
    calib = set(dm.calibration_files)
    pool = [s for s in dm._scan("train") if s[0] not in calib]
    g = torch.Generator().manual_seed(1)
    rest = [pool[i] for i in torch.randperm(len(pool), generator=g)[:held_out].tolist()]
    return model, list(dm.calibration_dataloader()), list(DataLoader(ImageListDataset(rest, build_transform(card)), batch_size=50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["mobilenet_v2_tflite", "efficientnet_lite0"])
    parser.add_argument("--method", default="D")
    parser.add_argument("--values", default="2,2.5,3,4", help="comma-separated values of the method's option")
    parser.add_argument("--bits", default="w8a8")
    parser.add_argument("--held-out", type=int, default=500)
    args = parser.parse_args()
    option = calibrator_entry(args.method).option
    if option is None:
        parser.error(f"method {args.method!r} has no option to select")
    values = [float(v) for v in args.values.split(",")]
    weight_bits, act_bits = parse_bit_widths(args.bits)
    recipe = Recipe(weight_bits=weight_bits, act_bits=act_bits)
    data = Path(os.environ["HQBENCH_DATA"])
    print(f"| model ({args.bits}) | held-out images | FP32 | B MinMax | " + " | ".join(f"{args.method} {option}={v:g}" for v in values) + " |")
    print("|---|---|---|---|" + "---|" * len(values))
    for name in args.models:
        model, calibration, evaluation = held_out_batches(name, data, args.held_out)
        cells = [top1(model, evaluation), top1(quantize(model, calibration, "B", recipe), evaluation)]
        qmodel = quantize(model, calibration, args.method, recipe)
        for value in values:
            for q in qmodel.quantizers.values():
                setattr(q.calibrator, option, value)
                q.freeze()
            qmodel.set_mode("float")
            qmodel.set_mode("quant")
            cells.append(top1(qmodel, evaluation))
        print(f"| {name} | {sum(len(y) for _, y in evaluation)} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
