"""Percentile, Entropy (TensorRT KL) and SymmetricMSE calibrators: exact against references, sane on data."""

import math

import pytest
import torch

from hqbench.quant.calibrators.entropy import Entropy, entropy_threshold, kl_divergences
from hqbench.quant.calibrators.mse import SymmetricMSE
from hqbench.quant.calibrators.percentile import Percentile
from hqbench.quant.calibrators.redistribution import ActivationRedistribution
from hqbench.quant.grid import QuantGrid, fake_quantize, range_to_qparams


def _calibrate(cal, x, batch=20_000):
    for p in range(cal.num_passes):
        cal.begin_pass(p)
        for b in x.split(batch):
            cal.observe(b)
    return cal


def _mse(x, lo, hi, grid):
    s, z = range_to_qparams(lo, hi, grid)
    return ((fake_quantize(x, s, z, grid.qmin, grid.qmax) - x) ** 2).mean().item()


# ------------------------------------------------------------------ percentile
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_matches_torch_quantile_within_a_bin(p):
    torch.manual_seed(0)
    x = torch.randn(100_000) * 1.5 + 0.3
    cal = _calibrate(Percentile(percentile=p), x)
    lo, hi = cal.compute_range(QuantGrid(signed=True))
    ref_lo, ref_hi = torch.quantile(x, torch.tensor([1 - p / 100, p / 100])).tolist()
    width = float(x.max() - x.min()) / cal.bins
    assert abs(float(lo) - ref_lo) <= width and abs(float(hi) - ref_hi) <= width


def test_percentile_of_non_negative_tensor_keeps_zero_and_100_is_minmax():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(50_000))
    lo, hi = _calibrate(Percentile(99.9), x).compute_range(QuantGrid(signed=False))
    assert float(lo) == 0.0
    assert abs(float(hi) - torch.quantile(x, 0.999).item()) <= float(x.max()) / 2048
    lo, hi = _calibrate(Percentile(100), x).compute_range(QuantGrid(signed=False))
    assert float(hi) == pytest.approx(float(x.max()), rel=1e-6)


@pytest.mark.parametrize("p", [50, 10, 100.5, -1])
def test_percentile_rejects_values_outside_50_100(p):
    with pytest.raises(ValueError, match=r"\(50, 100\]"):
        Percentile(percentile=p)


def test_percentile_histograms_from_two_processes_merge_by_a_sum():
    torch.manual_seed(0)
    x = torch.randn(40_000)
    whole = _calibrate(Percentile(99.9), x)
    a, b = Percentile(99.9), Percentile(99.9)
    for cal in (a, b):  # both ranks agree on the range (all-reduced in pass 0)
        cal.min_val.copy_(whole.min_val)
        cal.max_val.copy_(whole.max_val)
        cal.begin_pass(1)
    a.observe(x[:20_000])
    b.observe(x[20_000:])
    a.histogram += b.histogram
    assert torch.equal(a.compute_range(QuantGrid())[1], whole.compute_range(QuantGrid())[1])


# --------------------------------------------------------------------- entropy
def _reference_kl(hist, levels, i):
    """TensorRT's loop, as in pytorch-quantization's ``_compute_amax_entropy``: slow and literal."""
    hist = [float(h) for h in hist]
    p = hist[:i]
    p[i - 1] += sum(hist[i:])  # outliers folded into the last kept bin
    merged, members = [0.0] * levels, [0] * levels
    for k in range(i):  # merge the i kept bins into `levels` levels; empty bins stay empty
        j = k * levels // i
        if hist[k] > 0:
            merged[j] += hist[k]
            members[j] += 1
    q = [merged[k * levels // i] / members[k * levels // i] if hist[k] > 0 else 0.0 for k in range(i)]
    sp, sq = sum(p), sum(q)
    kl = 0.0
    for pk, qk in zip(p, q):
        if pk > 0:
            if qk == 0:
                return math.inf
            kl += pk / sp * math.log((pk / sp) / (qk / sq))
    return kl


def test_entropy_kl_matches_a_loop_reimplementation_of_tensorrt():
    g = torch.Generator().manual_seed(0)
    hist = torch.randint(0, 50, (48,), generator=g).double()
    hist[[3, 17, 30, 31, 40]] = 0  # empty bins, one right at a candidate's last bin
    levels = 8
    candidates = torch.arange(levels, len(hist) + 1)
    fast = kl_divergences(hist, levels, candidates)
    slow = torch.tensor([_reference_kl(hist, levels, int(i)) for i in candidates], dtype=torch.float64)
    assert torch.equal(torch.isinf(fast), torch.isinf(slow))
    finite = torch.isfinite(slow)
    assert torch.allclose(fast[finite], slow[finite], rtol=1e-9, atol=1e-12)
    best = max(i for i, v in zip(candidates.tolist(), slow.tolist()) if v == slow.min())  # last argmin
    assert entropy_threshold(hist, levels) == best


def test_entropy_clips_gaussian_outliers_at_8_bits():
    torch.manual_seed(0)
    x = torch.randn(200_000)
    lo, hi = _calibrate(Entropy(), x).compute_range(QuantGrid(bits=8, signed=True))
    amax = float(x.abs().max())
    assert float(lo) == -float(hi)
    assert 3.0 < float(hi) < 0.97 * amax


@pytest.mark.parametrize("dist, bits", [("laplace", 8), ("student_t5", 6)])
def test_entropy_beats_minmax_on_heavy_tails(dist, bits):
    # KL ignores how far the clipped values lie, so at 8 bits it over-clips a Student-t tail (MSE
    # 0.75-1.6x min/max's over seeds); with fewer levels clipping pays and it wins everywhere.
    torch.manual_seed(0)
    x = (torch.distributions.Laplace(0.0, 1.0) if dist == "laplace" else torch.distributions.StudentT(5.0)).sample((200_000,))
    grid = QuantGrid(bits=bits, signed=True)
    lo, hi = _calibrate(Entropy(), x).compute_range(grid)
    assert _mse(x, lo, hi, grid) < 0.95 * _mse(x, x.min(), x.max(), grid)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_entropy_one_sided_range_and_levels_from_the_grid(bits):
    torch.manual_seed(0)
    x = torch.relu(torch.distributions.Laplace(0.2, 1.0).sample((100_000,)))
    cal = _calibrate(Entropy(), x)
    lo, hi = cal.compute_range(QuantGrid(bits=bits, signed=False))
    assert float(lo) == 0.0 and 0 < float(hi) <= float(x.max())
    # The threshold is the one the histogram gives for this grid's levels (not a fixed 128).
    assert float(hi) == pytest.approx(entropy_threshold(cal.histogram, 2 ** bits) * float(x.max()) / cal.bins, rel=1e-6)


def test_entropy_more_levels_than_bins_keeps_the_full_range():
    torch.manual_seed(0)
    x = torch.randn(10_000)
    lo, hi = _calibrate(Entropy(bins=256), x).compute_range(QuantGrid(bits=12, signed=True))
    assert float(hi) == pytest.approx(float(x.abs().max()), rel=1e-6) and float(lo) == -float(hi)


# ------------------------------------------------------------------------- mse
def test_symmetric_mse_is_symmetric_and_between_d_and_minmax():
    torch.manual_seed(0)
    x = torch.distributions.Gamma(1.5, 1.0).sample((200_000,)) - 0.7  # skewed, two-sided
    grid = QuantGrid(bits=8, signed=True)
    lo, hi = _calibrate(SymmetricMSE(), x).compute_range(grid)
    assert float(lo) == -float(hi)
    d = _mse(x, *_calibrate(ActivationRedistribution(), x).compute_range(grid), grid)
    sym = _mse(x, lo, hi, grid)
    assert sym < _mse(x, -x.abs().max(), x.abs().max(), grid)  # best symmetric beats symmetric minmax
    assert d <= sym * 1.001  # the asymmetric search can only do better on a skewed tensor


@pytest.mark.parametrize("bits", [4, 8])
def test_symmetric_mse_equals_d_on_one_sided_tensors(bits):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(100_000))
    grid = QuantGrid(bits=bits, signed=False)
    assert _calibrate(SymmetricMSE(steps=256), x).compute_range(grid) == \
        _calibrate(ActivationRedistribution(steps=256), x).compute_range(grid)
