"""Weight ranges (minmax / per-channel MSE) and empirical bias correction."""

import pytest
import torch

from hqbench.quant import prepare
from hqbench.quant.bias_correction import measure_bias_shift
from hqbench.quant.grid import weight_qparams
from hqbench.quant.weights import quantize_weight, weight_error, weight_scale
from hqbench.quant import AdaRoundSettings, Recipe

from .conftest import make_dataset

SHAPES = {"conv": (16, 8, 3, 3), "linear": (10, 32), "conv1d": (6, 4, 5)}


def _heavy_tailed(shape, seed=0):
    """Gaussian weights with a few large outliers per channel, like trained conv filters."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    flat = w.view(shape[0], -1)
    idx = torch.randint(0, flat.shape[1], (shape[0], 2), generator=g)
    flat.scatter_(1, idx, 6 * torch.randn(shape[0], 2, generator=g))
    return w


# ----------------------------------------------------------------------- weights
@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("per_channel", [True, False])
def test_minmax_is_grid_weight_qparams_and_shapes_broadcast(kind, per_channel):
    w = _heavy_tailed(SHAPES[kind])
    for bits in (4, 8):
        s = weight_scale(w, bits, per_channel, "minmax")
        assert torch.equal(s, weight_qparams(w, bits, per_channel))
        m = weight_scale(w, bits, per_channel, "mse")
        expected = (w.shape[0],) + (1,) * (w.dim() - 1) if per_channel else ()
        assert s.shape == m.shape == expected
        assert quantize_weight(w, m, bits).shape == w.shape


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12])
@pytest.mark.parametrize("per_channel", [True, False])
def test_mse_never_has_higher_error_than_minmax(bits, per_channel):
    for seed, kind in enumerate(SHAPES):
        w = _heavy_tailed(SHAPES[kind], seed)
        e_min = weight_error(w, weight_scale(w, bits, per_channel), bits, per_channel)
        e_mse = weight_error(w, weight_scale(w, bits, per_channel, "mse"), bits, per_channel)
        assert (e_mse <= e_min).all()


def test_mse_strictly_better_at_4_bits_on_heavy_tailed_weights():
    w = _heavy_tailed((64, 32, 3, 3))
    e_min = weight_error(w, weight_scale(w, 4), 4)
    e_mse = weight_error(w, weight_scale(w, 4, method="mse"), 4)
    assert (e_mse < e_min).all()  # every channel has outliers, so every channel clips
    assert e_mse.sum() < 0.8 * e_min.sum()
    clip = weight_scale(w, 4, method="mse") / weight_scale(w, 4)
    assert (clip < 1).all() and (clip >= 0.2 - 1e-6).all()


def test_zero_channel_keeps_a_finite_scale():
    w = torch.randn(4, 3, 3, 3)
    w[1] = 0
    s = weight_scale(w, 4, method="mse")
    assert torch.isfinite(s).all() and (s > 0).all()
    assert torch.equal(quantize_weight(w, s, 4)[1], torch.zeros(3, 3, 3))


def test_bad_method_and_bits_are_rejected_with_the_valid_values():
    w = torch.randn(4, 4)
    with pytest.raises(ValueError, match="valid: minmax, mse"):
        weight_scale(w, 8, method="percentile")
    with pytest.raises(ValueError, match=r"2\.\.16"):
        weight_scale(w, 1)


# --------------------------------------------------------------- bias correction
@pytest.fixture(scope="module")
def w4_model(trained_net):
    net, _ = trained_net
    calib = list(make_dataset(256, seed=3)[0].split(64))
    qmodel = prepare(net, calib[0], "B", recipe=Recipe(weight_bits=4))
    qmodel.calibrate(calib)
    return qmodel, calib


def _head_mean_error(qmodel, x, shifts=None):
    """Per-class mean of (quant - float) logits; with ``shifts`` subtracted from the float biases first."""
    modules = dict(qmodel.model.named_modules())
    qmodel.set_mode("float")
    with torch.no_grad():
        ref = qmodel(x)
        saved = {n: modules[n].bias.detach().clone() for n in qmodel.plan.compute}
        for n, s in (shifts or {}).items():
            modules[n].bias -= s
        qmodel.set_mode("quant")  # re-rounds the (corrected) biases to int32, as the lead applies it
        err = (qmodel(x) - ref).mean(0)
        qmodel.set_mode("float")
        for n, b in saved.items():
            modules[n].bias.copy_(b)
    qmodel.set_mode("quant")
    return err


def test_bias_shift_is_nonzero_at_4_bits_with_channel_shapes_and_mode_restored(w4_model):
    qmodel, calib = w4_model
    hooks_before = {n: len(m._forward_hooks) for n, m in qmodel.model.named_modules()}
    shifts = measure_bias_shift(qmodel, calib)
    modules = dict(qmodel.model.named_modules())
    assert list(shifts) == qmodel.plan.compute
    for name, s in shifts.items():
        assert s.shape == (modules[name].weight.shape[0],) and s.dtype == torch.float32
        assert s.abs().max() > 1e-4, name
    assert all(q.mode == "quant" for q in qmodel.quantizers.values())
    assert {n: len(m._forward_hooks) for n, m in qmodel.model.named_modules()} == hooks_before
    qmodel.set_mode("float")
    measure_bias_shift(qmodel, calib[:1])
    assert all(q.mode == "off" for q in qmodel.quantizers.values())
    qmodel.set_mode("quant")


def test_one_pass_and_sequential_agree_on_the_first_layer(w4_model):
    qmodel, calib = w4_model
    seq = measure_bias_shift(qmodel, calib)
    once = measure_bias_shift(qmodel, calib, sequential=False)
    first = qmodel.plan.compute[0]
    assert torch.allclose(seq[first], once[first], atol=1e-6)


def test_subtracting_the_shift_reduces_the_mean_logit_error_on_held_out_data(w4_model):
    qmodel, calib = w4_model
    held_out = make_dataset(512, seed=2)[0]
    before = _head_mean_error(qmodel, held_out)
    after = _head_mean_error(qmodel, held_out, measure_bias_shift(qmodel, calib))
    assert after.norm() < 0.5 * before.norm(), (before.norm(), after.norm())


def test_one_shot_iterator_is_rejected(w4_model):
    qmodel, calib = w4_model
    with pytest.raises(ValueError, match="iterator"):
        measure_bias_shift(qmodel, iter(calib))


# ---------------------------------------------------------------------- AdaRound
def test_adaround_rounds_up_or_down_and_beats_nearest_at_3_bits(trained_net):
    from hqbench.quant.adaround import adaround_weights

    net, _ = trained_net
    calib = list(make_dataset(256, seed=3)[0].split(64))
    held_out = make_dataset(512, seed=2)[0]
    qmodel = prepare(net, calib[0], "B", recipe=Recipe(weight_bits=3))
    qmodel.calibrate(calib)
    modules = dict(qmodel.model.named_modules())
    qmodel.set_mode("float")
    float_w = {n: modules[n].weight.detach().clone() for n in qmodel.plan.compute}
    with torch.no_grad():
        ref = qmodel(held_out)
    qmodel.set_mode("quant")
    nearest = {n: modules[n].weight.detach().clone() for n in qmodel.plan.compute}
    rounded = adaround_weights(qmodel, calib, settings=AdaRoundSettings(iters=200, batch_size=16)).weights
    assert all(q.mode == "quant" for q in qmodel.quantizers.values())
    assert all(torch.equal(modules[n].weight, nearest[n]) for n in nearest)  # the model is left as it was
    for name, wq in rounded.items():
        s = weight_scale(float_w[name], 3)
        k = wq / s
        assert torch.allclose(k, k.round(), atol=1e-3) and k.abs().max() <= 3 + 1e-3, name
        lo, hi = torch.floor(float_w[name] / s).clamp(-3, 3), torch.ceil(float_w[name] / s).clamp(-3, 3)
        assert ((k.round() == lo) | (k.round() == hi)).all(), name
    with torch.no_grad():
        err_nearest = ((qmodel(held_out) - ref) ** 2).mean()
        for n, w in rounded.items():
            modules[n].weight.copy_(w)
        err_ada = ((qmodel(held_out) - ref) ** 2).mean()
    qmodel.set_mode("float")
    assert all(torch.equal(modules[n].weight, float_w[n]) for n in float_w)
    assert err_ada < 0.5 * err_nearest, (err_nearest, err_ada)
