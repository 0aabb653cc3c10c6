"""Calibration statistics do not depend on the widths: one calibration freezes every width (issue 15)."""

import pytest
import torch
from torch import nn

from hqbench.quant import prepare
from hqbench.quant.calibrators import list_calibrators
from hqbench.quant import Recipe


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()


@pytest.mark.parametrize("method", [e.name for e in list_calibrators()])
def test_statistics_from_w8a8_freeze_w4a4_as_a_w4a4_calibration_does(method):
    model = _net()
    batches = [torch.randn(5, 3, 6, 6) * (i + 1) for i in range(3)]
    wide = prepare(model, batches[0], method).calibrate(batches)
    statistics = wide.calibration_statistics()
    recipe = Recipe(act_bits=4, weight_bits=4, keep_8bit="first")
    direct = prepare(model, batches[0], method, recipe).calibrate(batches)
    shared = prepare(model, batches[0], method, recipe).calibrate_from(statistics)
    for name, q in direct.quantizers.items():
        assert torch.equal(q.scale, shared.quantizers[name].scale), (method, name)
        assert torch.equal(q.zero_point, shared.quantizers[name].zero_point), (method, name)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(direct(x), shared(x))
    # the statistics are a copy: freezing another model from them leaves the source untouched
    assert all(torch.equal(v, wide.calibration_statistics()[n][k]) for n, s in statistics.items() for k, v in s.items())


def test_statistics_of_another_model_are_refused():
    model = _net()
    batches = [torch.randn(4, 3, 6, 6)]
    statistics = prepare(model, batches[0], "B").calibrate(batches).calibration_statistics()
    statistics.pop(next(iter(statistics)))
    with pytest.raises(ValueError, match="do not match this model's points"):
        prepare(model, batches[0], "B").calibrate_from(statistics)


@pytest.mark.parametrize("method", [e.name for e in list_calibrators()])
def test_minmax_ranges_stand_in_for_a_two_pass_methods_first_pass(method):
    """D's (and percentile's, entropy's, mse's) first pass finds exactly MinMax's ranges: given B's
    statistics it skips that pass and ends with the same statistics and qparams, bit for bit. A
    method whose first pass is something else ignores them."""
    model = _net()
    batches = [torch.randn(5, 3, 6, 6) * (i + 1) for i in range(3)]
    ranges = prepare(model, batches[0], "B").calibrate(batches).calibration_statistics()
    alone = prepare(model, batches[0], method).calibrate(batches)
    counted = prepare(model, batches[0], method)
    seen = []
    counted.model.register_forward_pre_hook(lambda m, a: seen.append(1))
    counted.calibrate(batches, ranges=ranges)
    assert len(seen) == len(batches) * counted.passes_left(ranges)
    assert counted.passes_left(ranges) == alone.num_passes - (alone.num_passes == 2)
    mine, theirs = alone.calibration_statistics(), counted.calibration_statistics()
    assert all(torch.equal(v, theirs[n][k]) for n, s in mine.items() for k, v in s.items()), method
    for name, q in alone.quantizers.items():
        assert torch.equal(q.scale, counted.quantizers[name].scale) and torch.equal(q.zero_point, counted.quantizers[name].zero_point)
