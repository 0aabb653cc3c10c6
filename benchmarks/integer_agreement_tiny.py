"""Integer-only executor vs fake-quant on the tests' small trained network (seconds, no data).

    OMP_NUM_THREADS=1 python benchmarks/integer_agreement_tiny.py

Trains tests/quant/conftest.py's ResidualNet as the test fixture does, calibrates each method on 256
images and compares both paths on 512 test images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.quant.conftest import make_dataset, train_residual_net  # noqa: E402

from hqbench.quant import quantize  # noqa: E402
from hqbench.quant.integer import IntegerExecutor


def main() -> None:
    net, accuracy = train_residual_net()
    xt, yt = make_dataset(512, seed=2)
    calib = list(make_dataset(256, seed=3)[0].split(64))
    print(f"FP32 Top-1 {100 * accuracy:.2f} on {len(yt)} images")
    print("| method | Top-1 fake | Top-1 integer | same argmax | logits within 1 LSB |\n|---|---|---|---|---|")
    for method in "ABCD":
        q = quantize(net, calib, method=method)
        with torch.no_grad():
            fake = q(xt)
        integer = IntegerExecutor(q)(xt)
        scale = q.quantizer("head").scale
        within = ((torch.round(fake / scale) - torch.round(integer / scale)).abs() <= 1).float().mean()
        print(f"| {method} | {100 * (fake.argmax(1) == yt).float().mean():.2f} | "
              f"{100 * (integer.argmax(1) == yt).float().mean():.2f} | "
              f"{100 * (fake.argmax(1) == integer.argmax(1)).float().mean():.2f} % | {100 * within:.2f} % |")


if __name__ == "__main__":
    main()
