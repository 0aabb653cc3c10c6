"""The layer-by-layer weight methods' shortcuts: forwards that stop at the layer, and AdaRound's loss
windows that equal the full output."""

import pytest
import torch
from torch import nn

from hqbench.quant import quantize
from hqbench.quant.adaround import _capture
from hqbench.quant.samples import _Windows
from hqbench.quant.recipe import AdaRoundSettings
from hqbench.quant.bias_correction import measure_bias_shift
from hqbench.quant.fake import QUANT
from hqbench.quant import Recipe


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 8, 3, padding=1),
    nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6),
    nn.Conv2d(6, 4, 5, stride=2, padding=3, dilation=2),
    nn.Conv2d(6, 4, 3, padding="same", padding_mode="reflect"),
    nn.Conv2d(6, 4, 1),
])
def test_a_window_of_the_padded_input_gives_exactly_that_window_of_the_output(conv):
    x = torch.randn(5, 6, 23, 19)
    with torch.no_grad():
        y = conv(x)
    windows = _Windows("conv", conv, x, y, size=7)
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([4, 0, 2])
    for _ in range(20):  # random offsets, borders included
        xw, yw = windows.sample(idx, g)
        with torch.no_grad():
            out = windows.forward(xw, {"conv": (conv.weight, conv.bias)})
        assert out.shape == yw.shape == (3, conv.out_channels, *windows.size)
        torch.testing.assert_close(out, yw, rtol=1e-5, atol=1e-5)


def test_a_capture_that_stops_at_its_layer_leaves_the_model_as_it_was(trained_net, calib_batches):
    net, _ = trained_net
    q = quantize(net, calib_batches, method="D")
    x = calib_batches[0]
    with torch.no_grad():
        before = q(x)
    middle = q.plan.compute[len(q.plan.compute) // 2]
    captured = _capture(q, calib_batches, lambda b: (b,), middle, QUANT)
    assert len(captured) == sum(len(b) for b in calib_batches)
    # The stop unwound cleanly: no function mode left on the stack, the op tracker balanced,
    # and the next forward is the same (its per-forward call counters were reset).
    assert torch._C._len_torch_function_stack() == 0
    assert q._tracker.depth == 0 and q._tracker.scope == ""
    with torch.no_grad():
        assert torch.equal(q(x), before)
    # What it captured is the layer's quantized input, as a full forward sees it.
    seen = []
    module = dict(q.model.named_modules())[middle]
    handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        q(x)
    handle.remove()
    assert torch.equal(captured[:len(x)], seen[0])


def test_bias_correction_stopped_at_each_layer_finds_the_shifts_of_full_forwards(trained_net, calib_batches,
                                                                                  monkeypatch):
    net, _ = trained_net
    q = quantize(net, calib_batches, method="B", recipe=Recipe(weight_bits=4))
    stopped = measure_bias_shift(q, calib_batches)
    import hqbench.quant.bias_correction as bc
    full_run = bc._run
    monkeypatch.setattr(bc, "_run", lambda qm, b, f, hooks, until=None: full_run(qm, b, f, hooks))
    full = measure_bias_shift(q, calib_batches)
    assert list(stopped) == list(full)
    for name in full:
        torch.testing.assert_close(stopped[name], full[name], rtol=0, atol=0)


def test_the_activation_loss_uses_each_layers_own_activation_without_its_quantizer(trained_net, calib_batches):
    from hqbench.quant.adaround import _activation

    net, _ = trained_net
    q = quantize(net, calib_batches, method="D")
    modules = dict(q.model.named_modules())
    acts = {name: _activation(q, name, modules) for name in q.plan.compute}
    # ResidualNet: stem ReLU, expand ReLU6, project none (linear bottleneck), branch_a LeakyReLU, head none
    assert acts["project.0"] is None and acts["head"] is None
    t = torch.linspace(-8, 8, 33).reshape(1, 1, 3, 11)
    before = t.clone()
    torch.testing.assert_close(acts["expand.0"](t), nn.functional.relu6(before))
    torch.testing.assert_close(acts["branch_a.0"](t), nn.functional.leaky_relu(before, 0.1))
    assert torch.equal(t, before)  # out of place, even for an in-place module
    calls = []  # the module's hooks (hqbench's quantizer among them) stay out of the loss
    handle = modules["stem.2"].register_forward_hook(lambda m, a, out: calls.append(m))
    torch.testing.assert_close(acts["stem.0"](t), nn.functional.relu(before))
    handle.remove()
    assert calls == []


def test_adaround_settings_keep_only_what_differs_from_the_defaults():
    same = AdaRoundSettings.from_mapping({"iters": 1000, "lr": 0.01, "beta": [20, 2]})
    assert AdaRoundSettings.from_mapping(None).changed() == {} == same.changed() and same == AdaRoundSettings()
    settings = AdaRoundSettings.from_mapping({"iters": 10000, "lr": 1e-3, "beta": [10, 2], "window": None,
                                              "granularity": "block"})
    changed = settings.changed()
    assert changed == {"iters": 10000, "lr": 0.001, "beta": (10.0, 2.0), "window": None, "granularity": "block"}
    assert settings.to_text() == "beta=10.0/2.0,granularity=block,iters=10000,lr=0.001,window=null"
    assert AdaRoundSettings.from_text(settings.to_text()) == settings  # a row's options read back


@pytest.mark.parametrize("options, words", [
    ({"steps": 5}, "unknown AdaRound setting 'steps'; valid: iters,"),
    ({"iters": 0}, "adaround.iters must be a positive integer, got 0"),
    ({"iters": True}, "adaround.iters must be a positive integer"),
    ({"lr": -1}, "adaround.lr must be a positive number"),
    ({"warm_start": 1.0}, "adaround.warm_start must be a fraction in [0, 1)"),
    ({"beta": [20]}, "adaround.beta must be two positive numbers"),
    ({"activation_loss": "yes"}, "adaround.activation_loss must be true or false"),
    ({"granularity": "net"}, "adaround.granularity must be layer or block, got 'net'"),
])
def test_bad_adaround_settings_are_one_line_errors(options, words):
    with pytest.raises(ValueError) as err:
        AdaRoundSettings.from_mapping(options)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_adaround_settings_without_adaround_are_refused_before_any_work(trained_net, calib_batches):
    with pytest.raises(ValueError, match="apply to weight_rounding=adaround, not nearest"):
        quantize(trained_net[0], calib_batches, method="B", recipe=Recipe(adaround={"iters": 5}))
