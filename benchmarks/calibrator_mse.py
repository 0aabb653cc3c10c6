"""Expected activation MSE of each calibrator's range on synthetic distributions.

    python benchmarks/calibrator_mse.py

Prints a Markdown table: MSE x 1e4 of fake-quantizing 400k samples with the range each method
chooses, on the grid the hybrid scheme would use for such a tensor.
"""

from __future__ import annotations

import torch

from hqbench.quant import QuantGrid, create_calibrator, range_to_qparams
from hqbench.quant.grid import fake_quantize

DISTRIBUTIONS = {
    "Gaussian": (lambda: torch.randn(400_000), True),
    "skewed (Gamma(1.5) - 0.5)": (lambda: torch.distributions.Gamma(1.5, 1.0).sample((400_000,)) - 0.5, True),
    "heavy tail (Student-t, 3 dof)": (lambda: torch.distributions.StudentT(3.0).sample((400_000,)), True),
    "ReLU(Laplace)": (lambda: torch.relu(torch.distributions.Laplace(0.2, 1.0).sample((400_000,))), False),
    "LeakyReLU(0.1) of N(0, 2)": (lambda: torch.nn.functional.leaky_relu(torch.randn(400_000) * 2, 0.1), True),
}


def main() -> None:
    torch.manual_seed(0)
    print("| distribution | grid | A Moving MinMax | B MinMax | C Histogram | D Redistribution |")
    print("|---|---|---|---|---|---|")
    for name, (sample, signed) in DISTRIBUTIONS.items():
        x, grid = sample(), QuantGrid(signed=signed)
        cells = []
        for method in "ABCD":
            cal = create_calibrator(method)
            for p in range(cal.num_passes):
                cal.begin_pass(p)
                for batch in x.split(40_000):
                    cal.observe(batch)
            s, z = range_to_qparams(*cal.compute_range(grid), grid)
            cells.append(((fake_quantize(x, s, z, grid.qmin, grid.qmax) - x) ** 2).mean().item() * 1e4)
        best = min(cells)
        print(f"| {name} | {grid.describe()} | " + " | ".join(
            f"**{c:.3f}**" if c == best else f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
