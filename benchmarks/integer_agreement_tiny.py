"""Integer-only executor vs fake-quant on the tests' small trained network (seconds, no data).

    OMP_NUM_THREADS=1 python benchmarks/integer_agreement_tiny.py

Trains tests/quant/conftest.py's ResidualNet as its fixture does, calibrates each method on 256
images and compares both paths on 512 test images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.quant.conftest import ResidualNet, make_dataset  # noqa: E402

from hqbench.quant import quantize  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    net = ResidualNet()
    x, y = make_dataset(2048, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(4):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    net.eval()
    xt, yt = make_dataset(512, seed=2)
    calib = list(make_dataset(256, seed=3)[0].split(64))
    with torch.no_grad():
        print(f"FP32 Top-1 {100 * (net(xt).argmax(1) == yt).float().mean():.2f} on {len(yt)} images")
    print("| method | Top-1 fake | Top-1 integer | same argmax | logits within 1 LSB |\n|---|---|---|---|---|")
    for method in "ABCD":
        q = quantize(net, calib, method=method)
        with torch.no_grad():
            fake = q(xt)
        integer = q.integer_executor()(xt)
        scale = q.quantizer("head").scale
        within = ((torch.round(fake / scale) - torch.round(integer / scale)).abs() <= 1).float().mean()
        print(f"| {method} | {100 * (fake.argmax(1) == yt).float().mean():.2f} | "
              f"{100 * (integer.argmax(1) == yt).float().mean():.2f} | "
              f"{100 * (fake.argmax(1) == integer.argmax(1)).float().mean():.2f} % | {100 * within:.2f} % |")


if __name__ == "__main__":
    main()
