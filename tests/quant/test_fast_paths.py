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
    kept = x.clone()
    with torch.no_grad():
        fast = q(x)
        assert torch.equal(_bits(x), _bits(kept))  # not owned: the input is left as it was
        owned = q(kept.clone(), owned=True)  # owned: overwritten in place, same values
    slow = fake_quantize(x, q.scale, q.zero_point, q.grid.qmin, q.grid.qmax)
    for out in (fast, owned):
        # the same bits, except that a zero may keep the sign of round(x/s) (-0.0): equal values
        assert torch.equal(out, slow)
        nonzero = slow != 0
        assert torch.equal(_bits(out)[nonzero], _bits(slow)[nonzero])
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


class _Aliasing(torch.nn.Module):
    """Pass-through modules, an in-place activation, a residual and a view: every case _owned decides."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Identity()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.act = torch.nn.ReLU6(inplace=True)
        self.keep = torch.nn.Dropout(0.5)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        x = self.first(x)
        y = self.keep(self.act(self.conv1(x)))
        z = self.conv2(y) + y
        return self.fc(torch.flatten(z, 1))


def test_owned_outputs_are_quantized_in_place_without_touching_what_others_read(monkeypatch):
    """In-place quantization gives the same outputs as the copying path, and never changes the
    caller's input or a tensor a pass-through module handed on."""
    from hqbench.quant import points, quantize

    torch.manual_seed(0)
    model = _Aliasing().eval()
    calib = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    qmodel = quantize(model, calib, method="B")
    x = torch.randn(3, 3, 6, 6)
    before = x.clone()
    with torch.no_grad():
        fast = qmodel(x)
        assert torch.equal(x, before)
        monkeypatch.setattr(points, "_owned", lambda *a, **k: False)
        slow = qmodel(x)
    assert torch.equal(fast, slow)


def test_a_new_zero_point_is_used_in_quant_mode():
    """The zero point is cached as an int; loading a state or editing the buffer must not leave it stale."""
    q = ActQuantizer("t", ActivationRedistribution(), QuantGrid(8, True))
    q.scale.fill_(0.1)
    q.calibrated.fill_(True)
    q.mode = QUANT
    x = torch.full((4,), 12.7)  # 127 steps: at the top of the grid only while the zero point is 0
    assert q(x)[0].item() == pytest.approx(12.7)
    q.load_state_dict({**q.state_dict(), "zero_point": torch.tensor(10)})
    assert q(x)[0].item() == pytest.approx(11.7)
    q.zero_point.fill_(-10)
    assert q(x)[0].item() == pytest.approx(12.7)
    assert q(torch.full((1,), -14.0)).item() == pytest.approx(-11.8)
