"""Which engine sits near which: the logits of fake-quant, the integer executor, ONNX Runtime and
OpenVINO, pairwise in grid steps, on the same images and one calibration (issue 29).

    HQBENCH_DATA=../shared/data python benchmarks/engine_pairs.py --out docs/results/engine_pairs_mobilenet_v2_tflite.json

``hqbench test ... engine=fake,onnxruntime,openvino,int`` measures each engine against fake-quant;
this script adds the pairs among the integer engines, to tell fake-quant's float32 arithmetic
(sums rounded to float32 before each requantization) apart from the fused kernels' own rounding:
the integer executor sums exactly, as int8 kernels do.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
from pathlib import Path

import torch

from hqbench.data.imagenet import ImageNetDataModule
from hqbench.models import create_model
from hqbench.paths import atomic_write, refuse_existing
from hqbench.quant import quantize
from hqbench.quant.agreement import Agreement, output_steps
from hqbench.quant.engines import create_engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("HQBENCH_DATA"), help="folder holding imagenet/ (default $HQBENCH_DATA)")
    p.add_argument("--model", default="mobilenet_v2_tflite")
    p.add_argument("--method", default="D")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--eval", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.out:
        refuse_existing(args.out, hint="name a new --out")  # before the measurement, not after it

    model, card = create_model(args.model)
    dm = ImageNetDataModule(Path(args.data) / "imagenet", card, batch_size=32, eval_limit=args.eval,
                            calib_size=args.calib, seed=args.seed)
    calib = [x for x, _ in dm.calibration_dataloader()]
    qmodel = quantize(copy.deepcopy(model), calib, method=args.method, seed=args.seed)
    example = (calib[0][:2],)
    runners = {"fake": qmodel, **{name: create_engine(name, qmodel, example) for name in ("int", "onnxruntime", "openvino")}}
    outputs = {name: [] for name in runners}
    with torch.no_grad():
        for x, _ in dm.test_dataloader():
            for name, run in runners.items():
                outputs[name].append(run(x))
    steps = output_steps(qmodel, example)
    pairs = {}
    for a, b in itertools.combinations(runners, 2):
        meter = Agreement(steps)
        for ya, yb in zip(outputs[a], outputs[b]):
            meter.update(ya, yb)
        pairs[f"{a} vs {b}"] = meter.summary()
    for run in runners.values():
        getattr(run, "close", lambda: None)()
    result = {"model": args.model, "method": args.method, "calib_images": args.calib, "eval_images": args.eval,
              "seed": args.seed, "pairs": pairs}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text + "\n"), replace=False)


if __name__ == "__main__":
    main()
