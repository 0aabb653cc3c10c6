"""A saved calibration state loads only into the graph it was made for (issue 32, A18/A21/W05)."""

import pytest
import torch
from torch import nn

from hqbench.quant import prepare, quantize
from tests.quant.conftest import ResidualNet


def _leaky_twin() -> nn.Module:
    """The same layer names as ResidualNet, with the stem's ReLU a LeakyReLU (a signed grid)."""
    net = ResidualNet().eval()
    net.stem[2] = nn.LeakyReLU(0.1)
    return net


def test_a_state_for_a_relu_model_is_refused_by_a_leaky_relu_twin(calib_batches):
    state = quantize(ResidualNet().eval(), calib_batches, method="D").quant_state_dict()
    twin = prepare(_leaky_twin(), calib_batches[0], "D")
    with pytest.raises(ValueError, match=r"point 'stem\.2'.*ReLU.*LeakyReLU"):
        twin.load_quant_state_dict(state)


def test_per_layer_tensors_of_another_shape_are_refused_naming_the_layer(calib_batches):
    net = ResidualNet().eval()
    state = quantize(net, calib_batches, method="B").quant_state_dict()
    state["bias_shift"] = {"head": torch.zeros(3)}  # head has 10 output channels
    fresh = prepare(net, calib_batches[0], "B")
    with pytest.raises(ValueError, match=r"bias_shift: 'head' has shape \(3,\), the layer's weight \(10, 16\)"):
        fresh.load_quant_state_dict(state)
    state["bias_shift"] = {}
    state["signature"]["layers"]["head"][1] = [10, 32]  # a head of another width, under the same name
    with pytest.raises(ValueError, match=r"layer 'head': saved kind and weight shape"):
        fresh.load_quant_state_dict(state)


def test_a_state_from_before_signatures_loads_with_a_warning(calib_batches):
    net = ResidualNet().eval()
    q = quantize(net, calib_batches, method="B")
    old = {k: v for k, v in q.quant_state_dict().items() if k != "signature"}
    fresh = prepare(net, calib_batches[0], "B")
    with pytest.warns(UserWarning, match="no graph signature"):
        fresh.load_quant_state_dict({**old, "version": 3})
    x = calib_batches[1]
    assert torch.equal(fresh(x), q(x))


def _snapshot(net: nn.Module) -> tuple[dict, list, int]:
    modules = [type(m).__name__ for m in net.modules()]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    return {k: v.clone() for k, v in net.state_dict().items()}, modules, hooks


class _Interrupted:
    """A loader interrupted by the user at its second batch."""

    def __init__(self, batches, error: BaseException):
        self.batches, self.error = batches, error

    def __iter__(self):
        yield self.batches[0]
        raise self.error


@pytest.mark.parametrize("failure", ["nan", "interrupt", "bad recipe"])
def test_quantize_in_place_gives_the_model_back_on_any_failure(calib_batches, failure):
    """A37/C21: a NaN batch, a KeyboardInterrupt from the loader, or a point_bits naming no point
    leave the model of quantize(..., inplace=True) as it was: weights, modules, no hooks."""
    from hqbench.quant import Recipe

    net = ResidualNet().eval()
    before = _snapshot(net)
    recipe = Recipe(point_bits=(("nowhere", 8),)) if failure == "bad recipe" else None
    data = ([calib_batches[0], torch.full_like(calib_batches[1], float("nan"))] if failure == "nan"
            else _Interrupted(calib_batches, KeyboardInterrupt()) if failure == "interrupt" else calib_batches)
    with pytest.raises((ValueError, KeyboardInterrupt)):
        quantize(net, data, method="D", recipe=recipe, inplace=True)
    after = _snapshot(net)
    assert after[1:] == before[1:]
    assert all(torch.equal(after[0][k], v) for k, v in before[0].items()) and after[0].keys() == before[0].keys()


class _Branchy(nn.Module):
    """Takes its ``large`` conv only for inputs wider than 8 pixels: a data-dependent branch."""

    def __init__(self):
        super().__init__()
        self.stem, self.small, self.large = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        return self.large(x) if x.shape[-1] > 6 else self.small(x)


def test_a_branch_the_recording_never_took_is_an_error_naming_it():
    """A25: a layer that ran neither when the graph was recorded nor in calibration used to run in
    float, its input clamped, silently; now it is refused (naming it) in observe and quant mode."""
    torch.manual_seed(0)
    net = _Branchy().eval()
    small = [torch.rand(2, 1, 8, 8) for _ in range(3)]
    large = torch.rand(2, 1, 10, 10)
    q = quantize(net, small, method="B")
    with pytest.raises(RuntimeError, match=r"layer 'large' \(Conv2d\) ran, but not in the forward that recorded"):
        q(large)
    with pytest.raises(RuntimeError, match="'large'"):
        quantize(net, [small[0], large], method="B")
    q.set_mode("float")
    q(large)  # float mode quantizes nothing, so nothing is hidden
    assert q.remove()(large).shape == (2, 4, 8, 8)


def test_a_point_tensor_of_another_shape_is_refused_before_anything_loads(calib_batches):
    """A21b: a wrong-shaped calibrator buffer was torch's multi-line error after earlier points loaded."""
    net = ResidualNet().eval()
    state = quantize(net, calib_batches, method="B").quant_state_dict()
    first, last = list(state["points"])[0], list(state["points"])[-1]
    key = next(k for k, v in state["points"][last].items() if v.ndim == 0 and k != "calibrated")
    state["points"][last][key] = torch.zeros(3)
    fresh = prepare(net, calib_batches[0], "B")
    before = fresh.quantizer(first).scale.clone()
    with pytest.raises(ValueError, match=rf"point '{last}': {key} has shape \(3,\), the model's \(\)"):
        fresh.load_quant_state_dict(state)
    assert torch.equal(fresh.quantizer(first).scale, before) and not bool(fresh.quantizer(first).calibrated)
