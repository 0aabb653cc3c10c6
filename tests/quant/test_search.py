"""D's expected error is exact on histograms and never worse than B's or C's ranges."""

import pytest
import torch

from hqbench.quant import QuantGrid, create_calibrator, range_to_qparams
from hqbench.quant.grid import fake_quantize
from hqbench.quant.search import expected_error


def _mse(x, lo, hi, grid):
    s, z = range_to_qparams(lo, hi, grid)
    return ((fake_quantize(x, s, z, grid.qmin, grid.qmax) - x) ** 2).mean().item()


DISTRIBUTIONS = {
    # name: (sampler, grid the hybrid scheme would use)
    "skewed": (lambda g: torch.distributions.Gamma(1.5, 1.0).sample((200_000,)) - 0.5, QuantGrid(signed=True)),
    "signed_heavy_tail": (lambda g: torch.distributions.StudentT(3.0).sample((200_000,)), QuantGrid(signed=True)),
    "relu_like": (lambda g: torch.relu(torch.distributions.Laplace(0.2, 1.0).sample((200_000,))), QuantGrid(signed=False)),
    "leaky_relu": (lambda g: torch.nn.functional.leaky_relu(torch.randn(200_000) * 2, 0.1), QuantGrid(signed=True)),
}


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_redistribution_beats_minmax_and_histogram(name):
    torch.manual_seed(0)
    sampler, grid = DISTRIBUTIONS[name]
    x = sampler(None)
    batches = x.split(20_000)
    mse = {}
    for method in "BCD":
        cal = create_calibrator(method)
        for p in range(cal.num_passes):
            cal.begin_pass(p)
            for b in batches:
                cal.observe(b)
        mse[method] = _mse(x, *cal.compute_range(grid), grid)
    assert mse["D"] <= mse["B"] * 1.0001, mse
    assert mse["D"] <= mse["C"] * 1.0001, mse


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_expected_error_matches_empirical_error(p):
    torch.manual_seed(0)
    x = torch.randn(400_000) * 1.3 + 0.4
    counts = torch.histc(x, 2048, float(x.min()), float(x.max())).double()
    edges = torch.linspace(float(x.min()), float(x.max()), 2049, dtype=torch.float64)
    grid = QuantGrid(signed=True)
    for lo, hi in [(-2.0, 2.5), (-4.0, 4.0), (float(x.min()), float(x.max()))]:
        predicted = expected_error(counts, edges, torch.tensor([lo]), torch.tensor([hi]), grid, p).item() / x.numel()
        s, z = range_to_qparams(torch.tensor(lo), torch.tensor(hi), grid)
        measured = ((fake_quantize(x, s, z, grid.qmin, grid.qmax) - x).abs() ** p).mean().item()
        assert predicted == pytest.approx(measured, rel=0.02)


def test_the_error_exponent_is_an_option_of_d_and_a_larger_one_clips_less():
    """``D:4`` minimises E|x - Q(x)|^4: rare large values weigh more, so the range keeps more of the tail."""
    assert create_calibrator("D:4").p == 4.0 and create_calibrator("D").p == 2.0
    torch.manual_seed(0)
    # a detector's class logits: almost all background far below zero, a few objects above it
    x = torch.cat([torch.randn(200_000) * 2 - 10, torch.rand(300) * 6 - 1])
    grid = QuantGrid(6, signed=True)
    hi = {}
    for method in ("D", "D:4"):
        cal = create_calibrator(method)
        for p in range(cal.num_passes):
            cal.begin_pass(p)
            cal.observe(x)
        hi[method] = float(cal.compute_range(grid)[1])
    assert hi["D:4"] > hi["D"], hi
