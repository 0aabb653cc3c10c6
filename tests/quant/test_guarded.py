"""D with guarded tails: D's search under a clipping bound on signed grids, D itself untouched."""

import pytest
import torch

from hqbench.quant.calibrators import create_calibrator
from hqbench.quant.calibrators.guarded import GuardedRedistribution
from hqbench.quant.calibrators.redistribution import ActivationRedistribution
from hqbench.quant.grid import QuantGrid, fake_quantize, range_to_qparams
from hqbench.quant.search import expected_error, search_range

SIGNED4, UNSIGNED4 = QuantGrid(4, signed=True), QuantGrid(4, signed=False)


def _calibrate(cal, x):
    for p in range(cal.num_passes):
        cal.begin_pass(p)
        for b in x.split(25_000):
            cal.observe(b)
    return cal


def _clipped(x, lo, hi):
    return float((x < lo).float().mean()), float((x > hi).float().mean())


def _heavy_tailed(n=200_000, zeros=0):
    torch.manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((n,))
    return torch.cat([x, torch.zeros(zeros)])


@pytest.mark.parametrize("tail", [0.01, 0.1])
def test_signed_range_clips_at_most_the_tail_share_at_each_end_where_d_clips_more(tail):
    x = _heavy_tailed()
    d_lo, d_hi = _calibrate(ActivationRedistribution(), x).compute_range(SIGNED4)
    lo, hi = _calibrate(GuardedRedistribution(tail), x).compute_range(SIGNED4)
    width = float(x.max() - x.min()) / 2048  # quantiles are read off the histogram, within a bin
    below, above = _clipped(x, lo - width, hi + width)
    assert below <= tail / 100 and above <= tail / 100
    assert sum(_clipped(x, d_lo, d_hi)) > 2 * tail / 100  # D on its own clips more than the guard allows
    assert float(lo) <= float(d_lo) and float(hi) >= float(d_hi)


def test_exact_zeros_count_in_the_share_clipped():
    """A point that is mostly exact zeros (D histograms them apart) has the share taken of all values."""
    x = _heavy_tailed(100_000, zeros=100_000)
    lo, hi = _calibrate(GuardedRedistribution(0.01), x).compute_range(SIGNED4)
    width = float(x.max() - x.min()) / 2048
    below, above = _clipped(x, lo - width, hi + width)
    assert below <= 1e-4 and above <= 1e-4
    assert below + above > 0.5e-4  # and the bound is the share of all values, not of the non-zero half


def test_unsigned_points_keep_ds_range_exactly():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(100_000)) ** 2
    d = _calibrate(ActivationRedistribution(), x).compute_range(UNSIGNED4)
    guarded = _calibrate(GuardedRedistribution(0.01), x).compute_range(UNSIGNED4)
    assert all(torch.equal(a, b) for a, b in zip(d, guarded))


def test_within_the_bound_it_is_the_least_error_range():
    """Among ranges that cover the kept percentiles, none on a fine grid of candidates has less error."""
    x = _heavy_tailed()
    cal = _calibrate(GuardedRedistribution(0.1), x)
    lo, hi = cal.compute_range(SIGNED4)
    keep_lo, keep_hi = cal.kept_range()
    edges = torch.linspace(float(cal.min_val), float(cal.max_val), cal.bins + 1, dtype=torch.float64)
    cand_lo = torch.linspace(float(cal.min_val), keep_lo, 40, dtype=torch.float64)
    cand_hi = torch.linspace(keep_hi, float(cal.max_val), 40, dtype=torch.float64)
    gl, gh = torch.meshgrid(cand_lo, cand_hi, indexing="ij")
    errors = expected_error(cal.histogram, edges, gl.reshape(-1), gh.reshape(-1), SIGNED4)
    chosen = expected_error(cal.histogram, edges, lo.reshape(1), hi.reshape(1), SIGNED4)
    assert float(chosen) <= float(errors.min()) * 1.001
    s, z = range_to_qparams(lo, hi, SIGNED4)
    assert torch.isfinite(fake_quantize(x, s, z, SIGNED4.qmin, SIGNED4.qmax)).all()


def test_search_with_a_cover_of_the_whole_range_returns_the_whole_range():
    counts = torch.ones(256, dtype=torch.float64)
    edges = torch.linspace(-3.0, 5.0, 257, dtype=torch.float64)
    lo, hi = search_range(counts, edges, SIGNED4, cover=(-3.0, 5.0))
    assert (lo, hi) == pytest.approx((-3.0, 5.0))
    free = search_range(counts, edges, SIGNED4)
    assert free[0] > -3.0 or free[1] < 5.0  # without the cover the search does clip here


def test_registered_beside_d_with_its_option():
    cal = create_calibrator("redistribution-guarded:0.03")
    assert isinstance(cal, GuardedRedistribution) and cal.tail == 0.03
    assert type(create_calibrator("D")) is ActivationRedistribution


@pytest.mark.parametrize("tail", [0, 50, -1])
def test_tail_outside_0_50_is_refused(tail):
    with pytest.raises(ValueError, match=r"tail must be a share in percent in \(0, 50\)"):
        GuardedRedistribution(tail)
