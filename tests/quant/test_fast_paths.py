"""The fast paths of calibration and fake-quant give the same bits as the plain expressions they replace."""

import pytest
import torch

from hqbench.quant import QuantGrid
from hqbench.quant.calibrators.redistribution import ActivationRedistribution
from hqbench.quant.fake import OBSERVE, QUANT, ActQuantizer
from hqbench.quant.grid import fake_quantize
from hqbench.quant.search import _block_error, expected_error


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("signed", [True, False])
def test_quantizer_fast_path_is_fake_quantize(signed):
    torch.manual_seed(0)
    x = torch.randn(4, 8, 33, 17) * 3
    x[0, 0, 0, :4] = torch.tensor([-0.0, 0.0, 1e30, -1e30])
    q = ActQuantizer("t", ActivationRedistribution(), QuantGrid(8, signed))
    q.scale.fill_(0.037)
    q.zero_point.fill_(-5 if signed else 0)
    q.calibrated.fill_(True)
    q.mode = QUANT
    with torch.no_grad():
        fast = q(x)
    slow = fake_quantize(x, q.scale, q.zero_point, q.grid.qmin, q.grid.qmax)
    assert torch.equal(_bits(fast), _bits(slow))
    y = x.clone().requires_grad_()  # with autograd the plain expression runs
    assert torch.equal(_bits(q(y).detach()), _bits(slow))


def test_redistribution_histogram_is_that_of_nonzero_values():
    torch.manual_seed(0)
    batches = [torch.relu(torch.randn(3, 50_000)), torch.randn(2, 70_000) * 2, torch.zeros(1000)]
    cal = ActivationRedistribution(bins=512)
    for index in range(2):
        cal.begin_pass(index)
        for b in batches:
            cal.observe(b)
    lo, hi = float(cal.min_val), float(cal.max_val)
    nonzero = [b.reshape(-1)[b.reshape(-1) != 0] for b in batches]
    expected = sum(torch.histc(v, 512, lo, hi).double() for v in nonzero)
    assert torch.equal(cal.histogram, expected)
    assert float(cal.zeros) == sum(b.numel() for b in batches) - sum(v.numel() for v in nonzero)


def test_quantizer_rejects_non_finite_values_with_the_layer_name():
    q = ActQuantizer("features.3", ActivationRedistribution(), QuantGrid())
    q.mode = OBSERVE
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(1000)
        x[500] = bad
        with pytest.raises(ValueError, match="features.3"):
            q(x)


@pytest.mark.parametrize("p", [2.0, 2.5])
def test_expected_error_in_blocks_is_one_block(p):
    torch.manual_seed(0)
    x = torch.randn(200_000) * 1.5 + 0.2
    lo, hi = float(x.min()), float(x.max())
    counts = torch.histc(x, 2048, lo, hi).double()
    edges = torch.linspace(lo, hi, 2049, dtype=torch.float64)
    k = 700
    los, his = torch.rand(k, dtype=torch.float64) * lo, torch.rand(k, dtype=torch.float64) * hi
    e = edges[None, :]
    width = (e[:, 1:] - e[:, :-1]).clamp_min(1e-300)
    one_block = _block_error(counts[None, :], e, width, los, his, QuantGrid(8, True), p)
    assert torch.equal(_bits(expected_error(counts, edges, los, his, QuantGrid(8, True), p)), _bits(one_block))
