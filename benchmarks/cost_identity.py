"""Bit-identity check for speed work: dump qparams, histograms and logits of methods A-D, then compare.

    HQBENCH_DATA=../shared/data python benchmarks/cost_identity.py dump before.pt
    ... change the code ...
    HQBENCH_DATA=../shared/data python benchmarks/cost_identity.py dump after.pt
    python benchmarks/cost_identity.py compare before.pt after.pt

Each dump calibrates mobilenet_v2_tflite and efficientnet_lite0 (real ImageNet, 64 calibration images
drawn with seed 0) with A, B, C and D at w8a8 and D at w8a4, and stores every quantizer's full state
(qparams, clip, calibrator buffers such as D's histogram), the fake-quant logits of 32 validation
images and the integer executor's logits of 4 of them. ``compare`` demands the same
bits of every tensor and exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from hqbench.quant.integer import IntegerExecutor
from hqbench.quant import Recipe

CASES = [("A", 8), ("B", 8), ("C", 8), ("D", 8), ("D", 4)]


def dump(path: str, models: list[str], calib: int) -> None:
    from hqbench.data.imagenet import ImageNetDataModule
    from hqbench.models import create_model
    from hqbench.quant import quantize

    torch.set_num_threads(1)  # identical reductions regardless of the machine's load
    data = Path(os.environ["HQBENCH_DATA"])
    out = {}
    for name in models:
        weights = str(data / "weights" / "tf2_mobilenet_v2_1.0_224_ptq.tflite") if name == "mobilenet_v2_tflite" else None
        model, card = create_model(name, weights=weights)
        dm = ImageNetDataModule(data / "imagenet", card, batch_size=32, eval_limit=32, calib_size=calib, seed=0)
        dm.setup()
        batches = [x for x, _ in dm.calibration_dataloader()]
        x_eval = next(iter(dm.test_dataloader()))[0]
        for method, bits in CASES:
            qm = quantize(model, batches, method=method, recipe=Recipe(act_bits=bits))
            with torch.no_grad():
                logits = qm(x_eval)
            integer = IntegerExecutor(qm)(x_eval[:4])
            out[f"{name}/{method}/a{bits}"] = {"state": qm.quant_state_dict(), "logits": logits, "integer": integer}
            print(f"{name} {method} a{bits}: top logit {float(logits.max()):.6f}", flush=True)
    torch.save(out, path)


def _flatten(prefix: str, obj, into: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}/{k}", v, into)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(f"{prefix}/{i}", v, into)
    else:
        into[prefix] = obj


def _bits_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same dtype, shape and bits (so -0.0 differs from 0.0 and NaN equals the same NaN)."""
    if not isinstance(y, torch.Tensor) or x.dtype != y.dtype or x.shape != y.shape:
        return False
    if x.is_floating_point():
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
        return torch.equal(x.contiguous().view(view), y.contiguous().view(view))
    return torch.equal(x, y)


def compare(a_path: str, b_path: str) -> int:
    a, b = {}, {}
    _flatten("", torch.load(a_path, weights_only=True), a)
    _flatten("", torch.load(b_path, weights_only=True), b)
    bad = sorted(set(a) ^ set(b))
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        same = _bits_equal(x, y) if isinstance(x, torch.Tensor) else x == y
        if not same:
            bad.append(k)
    print(f"{len(a)} entries compared; {len(bad)} differ")
    for k in bad[:20]:
        print("  differs:", k)
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("path")
    d.add_argument("--models", default="mobilenet_v2_tflite,efficientnet_lite0")
    d.add_argument("--calib", type=int, default=64)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    if args.cmd == "dump":
        dump(args.path, args.models.split(","), args.calib)
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
