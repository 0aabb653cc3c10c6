"""The hybrid rule picks grids from producers; quantize() handles bad input with clear errors."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from hqbench.quant import prepare, quantize
from hqbench.quant.integer import IntegerExecutor

from .conftest import ResidualNet


def test_hybrid_grids_follow_producers():
    q = prepare(ResidualNet().eval(), torch.randn(2, 1, 16, 16), "B")
    grids = {name: p.grid.describe() for name, p in q.plan.points.items()}
    assert grids["stem.2"] == "0..255"  # ReLU
    assert grids["expand.2"] == "0..255"  # ReLU6
    assert grids["project.1"] == "-128..127"  # linear bottleneck (conv+BN, no activation)
    assert grids[":add0"] == "-128..127"  # residual add with a signed input
    assert grids["branch_a.2"] == "-128..127"  # LeakyReLU
    assert grids[":cat0"] == "-128..127"  # concat of a signed and an unsigned branch
    assert grids["head"] == "-128..127"  # logits
    assert grids["input0"] == "-128..127"  # network input
    assert ("stem.0", "stem.1") in q.plan.folds and len(q.plan.folds) == 5
    assert q.plan.float_ops == {}


def test_float_ops_are_listed_not_hidden():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.out = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return self.out(y * torch.sigmoid(y))  # gating has no integer kernel in the scheme

    q = prepare(Gated().eval(), torch.randn(1, 3, 4, 4), "B")
    assert any("mul" in n for n in q.plan.float_ops), q.plan.float_ops
    # ...and its output is still stored as int8 before the next conv reads it.
    assert any("mul" in n for n in q.plan.points)


def test_restores_float_model(calib_batches):
    net = ResidualNet().eval()
    x = calib_batches[0]
    ref = net(x)
    q = quantize(net, calib_batches, method="D", inplace=True)
    assert not torch.equal(q(x), ref)
    q.remove()
    assert torch.allclose(net(x), ref, atol=1e-6)
    assert isinstance(net.stem[1], nn.BatchNorm2d)


def test_state_round_trip_without_recalibrating(calib_batches):
    net = ResidualNet().eval()
    q = quantize(net, calib_batches, method="D")
    state = q.quant_state_dict()
    fresh = prepare(net, calib_batches[0], "D")
    fresh.load_quant_state_dict(state)
    x = calib_batches[1]
    assert torch.equal(fresh(x), q(x))
    other = prepare(net, calib_batches[0], "B")
    with pytest.raises(ValueError, match="method: saved 'redistribution', model 'minmax'"):
        other.load_quant_state_dict(state)


def test_errors_name_what_is_wrong(calib_batches):
    net = ResidualNet().eval()
    with pytest.raises(ValueError, match="unknown calibration method 'Z'.*A, B, C, D"):
        quantize(net, calib_batches, method="Z")
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize(net, [], method="B")
    bad = [calib_batches[0].clone()]
    bad[0][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite activation.*'input0'"):
        quantize(net, bad, method="B")
    with pytest.raises(ValueError, match="nothing to quantize"):
        quantize(nn.Sequential(nn.ReLU()), calib_batches, method="B")
    with pytest.raises(ValueError, match="makes 2 passes"):
        quantize(net, iter(calib_batches), method="D", example_inputs=(calib_batches[0],))


@pytest.mark.parametrize("method", ["A", "B", "C", "D"])
def test_constant_tensors_get_valid_qparams(method):
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(0.5)
    q = quantize(net, [torch.ones(2, 1, 4, 4)] * 2, method=method)
    out = q(torch.ones(1, 1, 4, 4))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.01)


def test_core_imports_no_lightning_or_ultralytics():
    code = "import sys, hqbench.quant; print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'ultralytics', 'pytorch_lightning')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_bn_modules_that_carry_their_activation_are_folded():
    """timm's BatchNormAct2d (EfficientNet-Lite) applies ReLU6 itself: fold it, keep the ReLU6."""
    from timm.layers import BatchNormAct2d

    net = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer="relu6"), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8) * 3
    ref = net(x)
    q = prepare(net, x, "B", inplace=True)
    assert q.plan.folds == [("0", "1")] and q.plan.float_ops == {}
    assert q.plan.points["1"].grid.describe() == "0..255" and q.plan.points["1"].producer == "Conv2d+ReLU6"
    assert torch.allclose(q(x), ref, atol=1e-5)  # float mode: folded BN, same activation
    q.calibrate([x])
    assert torch.equal(IntegerExecutor(q)(x).argmax(1), q(x).argmax(1))
    q.remove()
    assert isinstance(net[1], BatchNormAct2d) and torch.allclose(net(x), ref)
