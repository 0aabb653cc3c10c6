"""QuantizedModel.layer_report on the tiny ResidualNet: each figure checked against its definition."""

from __future__ import annotations

import math

import pytest
import torch

from hqbench.quant import Recipe, prepare, quantize
from hqbench.quant.grid import fake_quantize


def _report(net, calib, method="D", act_bits=8, batches=None, **recipe):
    qmodel = quantize(net, calib, method=method, recipe=Recipe(act_bits=act_bits, **recipe))
    return qmodel, qmodel.layer_report(calib if batches is None else batches)


def test_local_sqnr_falls_with_fewer_bits_at_every_point(trained_net, calib_batches):
    net, _ = trained_net
    for method in ("B", "D"):
        _, eight = _report(net, calib_batches, method, 8)
        _, four = _report(net, calib_batches, method, 4)
        by_name = {p["name"]: p for p in four.points}
        assert [p["name"] for p in eight.points] == list(by_name)
        for p in eight.points:
            assert p["local_db"] > by_name[p["name"]]["local_db"], (method, p["name"])
            assert (p["bits"], by_name[p["name"]]["bits"]) == (8, 4)
        assert eight.output["sqnr_db"] > four.output["sqnr_db"]


def test_first_point_propagated_equals_local(trained_net, calib_batches):
    # nothing runs before the network input's quantizer: its propagated error is its own
    _, report = _report(trained_net[0], calib_batches, "D", 4)
    first = report.points[0]
    assert first["depth"] == 0 and first["producer"] == "input"
    assert first["propagated_db"] == pytest.approx(first["local_db"], abs=1e-4)
    # after it, the errors of the layers before add up
    assert all(p["propagated_db"] < p["local_db"] for p in report.points[1:])


def test_minmax_clips_nothing_on_its_own_calibration_data(trained_net, calib_batches):
    _, report = _report(trained_net[0], calib_batches, "B", 4)
    assert [p["clipped_share"] for p in report.points] == [0.0] * len(report.points)
    _, d = _report(trained_net[0], calib_batches, "D", 4)
    assert any(p["clipped_share"] > 0 for p in d.points)  # D clips: the count is not always zero


def test_mode_and_outputs_are_unchanged(trained_net, calib_batches):
    qmodel = quantize(trained_net[0], calib_batches, method="D", recipe=Recipe(act_bits=6))
    x = calib_batches[0][:8]
    with torch.no_grad():
        quant = qmodel(x)
        qmodel.set_mode("float")
        floats = qmodel(x)
        qmodel.set_mode("quant")
    qmodel.layer_report(calib_batches[:2])
    modes = {q.name: q.mode for q in qmodel.quantizers.values()}
    assert qmodel._mode == "quant" and set(modes.values()) == {"quant"}
    with torch.no_grad():
        assert torch.equal(qmodel(x), quant)
    qmodel.set_mode("float")
    qmodel.train()
    qmodel.layer_report(calib_batches[:1])
    assert qmodel._mode == "float" and qmodel.model.training
    qmodel.eval()
    with torch.no_grad():
        assert torch.equal(qmodel(x), floats)
    # a quantizer switched off by hand (a sensitivity sweep) stays off
    qmodel.set_mode("quant")
    first = next(iter(qmodel.quantizers.values()))
    first.mode = "off"
    qmodel.layer_report(calib_batches[:1])
    assert first.mode == "off" and qmodel._mode == "quant"


def test_mode_is_restored_on_error(trained_net, calib_batches):
    qmodel = quantize(trained_net[0], calib_batches, method="B")

    def batches():
        yield calib_batches[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        qmodel.layer_report(batches())
    assert qmodel._mode == "quant" and {q.mode for q in qmodel.quantizers.values()} == {"quant"}
    assert all(not q._forward_hooks for q in qmodel.quantizers.values())
    with pytest.raises(ValueError, match="no batch"):
        qmodel.layer_report([])
    fresh = prepare(trained_net[0], calib_batches[0], method="B")
    with pytest.raises(RuntimeError, match="never calibrated"):
        fresh.layer_report(calib_batches[:1])
    assert fresh._mode == "float"


def _capture(qmodel, x, mode):
    """Each quantizer's first input (float mode) or first output (quant mode), in double."""
    seen = {}

    def keep(module, args, out):  # returns None: the output stays the model's
        seen.setdefault(module.name, out.detach().double().clone())

    handles = [q.register_forward_hook(keep) for q in qmodel.quantizers.values()]
    qmodel.set_mode(mode)
    with torch.no_grad():
        out = qmodel(x).double()
    for h in handles:
        h.remove()
    return seen, out


def _db(signal, noise):
    return 10 * math.log10(float(signal) / float(noise))


def test_streaming_sums_equal_a_brute_force_computation(trained_net, calib_batches):
    """The report over four batches against the definitions on their concatenation, in double."""
    qmodel = quantize(trained_net[0], calib_batches, method="D", recipe=Recipe(act_bits=4, weight_bits=6))
    g = torch.Generator().manual_seed(0)
    eval_batches = [t + 0.3 * torch.randn(t.shape, generator=g) for t in calib_batches]  # some values out of range
    report = qmodel.layer_report(eval_batches)
    assert report.batches == 4
    x = torch.cat(eval_batches)
    floats, ref = _capture(qmodel, x, "float")
    quants, out = _capture(qmodel, x, "quant")
    for p in report.points:
        q, f, o = qmodel.quantizer(p["name"]), floats[p["name"]], quants[p["name"]]
        local = fake_quantize(f.float(), q.scale, q.zero_point, q.grid.qmin, q.grid.qmax).double()
        lo, hi = min(float(q.clip[0]), 0.0), max(float(q.clip[1]), 0.0)
        signal, noise = f.square().sum(), (o - f).square().sum()
        assert p["values"] == f.numel()
        assert p["local_db"] == pytest.approx(_db(signal, (local - f).square().sum()), abs=1e-5)
        assert p["propagated_db"] == pytest.approx(_db(signal, noise), abs=1e-5)
        assert p["mse"] == pytest.approx(float(noise) / f.numel(), rel=1e-5)
        assert p["cosine"] == pytest.approx(float((o * f).sum() / (o.norm() * f.norm())), abs=1e-6)
        assert p["clipped_share"] == pytest.approx(float(((f < lo) | (f > hi)).double().mean()), abs=1e-12)
        assert (p["clip_lo"], p["clip_hi"]) == (float(q.clip[0]), float(q.clip[1]))
    noise = (out - ref).square().sum()
    assert report.output["sqnr_db"] == pytest.approx(_db(ref.square().sum(), noise), abs=1e-5)
    assert report.output["mse"] == pytest.approx(float(noise) / ref.numel(), rel=1e-5)
    assert report.output["cosine"] == pytest.approx(float((out * ref).sum() / (out.norm() * ref.norm())), abs=1e-6)
    assert [p["depth"] for p in report.points] == list(range(len(report.points)))
    assert any(p["clipped_share"] > 0 for p in report.points)


def test_weight_layers(trained_net, calib_batches):
    qmodel, report = _report(trained_net[0], calib_batches, "B", 8, weight_bits=4, keep_8bit=("first",))
    assert [w["name"] for w in report.layers] == qmodel.plan.compute
    assert [w["bits"] for w in report.layers] == [8] + [4] * (len(report.layers) - 1)
    _, eight = _report(trained_net[0], calib_batches, "B", 8)
    for w4, w8 in zip(report.layers[1:], eight.layers[1:]):
        assert w4["weight_db"] < w8["weight_db"]
        assert 0 < w4["scale_min"] <= w4["scale_max"]
    assert report.layers[0]["weight_db"] == pytest.approx(eight.layers[0]["weight_db"])
    assert report.weight_bits == 4 and report.act_bits == 8 and report.method == "minmax"
