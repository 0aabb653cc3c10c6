"""Integer-only executor vs fake-quant on a real model: argmax and logit agreement.

    HQBENCH_DATA=../shared/data python benchmarks/integer_agreement.py \
        --model mobilenet_v2_tflite --method D --eval 300 --calib 256

Prints Top-1 of both paths, the share of images with the same argmax, and the share of logits
within 1 LSB of each other (on the logits' own int8 grid). ``--float64`` runs the fake-quant model
in float64, where its sums are exact, so it rounds the values the integer kernels round.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from hqbench.data.imagenet import ImageNetDataModule
from hqbench.models import create_model
from hqbench.quant import quantize
from hqbench.quant.integer import IntegerExecutor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mobilenet_v2_tflite")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--method", default="D")
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--float64", action="store_true", help="run fake-quant in float64 (exact sums)")
    args = parser.parse_args()
    data = Path(os.environ["HQBENCH_DATA"])
    weights = args.weights
    if weights is None and args.model == "mobilenet_v2_tflite":
        weights = str(data / "weights" / "tf2_mobilenet_v2_1.0_224_ptq.tflite")
    model, card = create_model(args.model, weights=weights)
    dm = ImageNetDataModule(data / "imagenet", card, batch_size=50, eval_limit=args.eval, calib_size=args.calib)
    dm.setup()
    qmodel = quantize(model, list(dm.calibration_dataloader()), method=args.method)
    dtype = torch.float64 if args.float64 else torch.float32
    if args.float64:
        qmodel.model.double()
        qmodel.set_mode("quant")  # re-derive the fake-quant weights and biases in float64
    logits = qmodel.quantizer(qmodel.plan.chains[qmodel.plan.compute[-1]][0])  # the classifier output point
    executor = IntegerExecutor(qmodel)
    same_argmax = within_1 = equal = elements = correct_fake = correct_int = images = 0
    start = time.perf_counter()
    for x, y in dm.test_dataloader():
        with torch.no_grad():
            fake = qmodel(x.to(dtype))
        integer = executor(x.to(dtype))
        q_fake, q_int = torch.round(fake / logits.scale), torch.round(integer / logits.scale)
        same_argmax += int((fake.argmax(1) == integer.argmax(1)).sum())
        within_1 += int(((q_fake - q_int).abs() <= 1).sum())
        equal += int((q_fake == q_int).sum())
        elements += q_fake.numel()
        correct_fake += int((fake.argmax(1) == y).sum())
        correct_int += int((integer.argmax(1) == y).sum())
        images += len(y)
    print(f"{args.model} method {args.method}, {images} images, {args.calib} calibration images, fake-quant in {dtype}, "
          f"{time.perf_counter() - start:.0f} s")
    print("| Top-1 fake-quant | Top-1 integer-only | same argmax | logits within 1 LSB | logits equal |")
    print("|---|---|---|---|---|")
    print(f"| {100 * correct_fake / images:.2f} | {100 * correct_int / images:.2f} | "
          f"{100 * same_argmax / images:.2f} % | {100 * within_1 / elements:.3f} % | {100 * equal / elements:.3f} % |")


if __name__ == "__main__":
    main()
