"""issue 29: deployment profiles constrain every point's grid (and pow2 the weight scales); every
calibrator runs under every profile; each profile exports and runs on the engines, agreeing with
fake-quant; bad combinations are one-line errors."""

import math

import pytest
import torch
from torch import nn

from hqbench.quant import Recipe, prepare, quantize
from hqbench.quant.agreement import Agreement, output_steps
from hqbench.quant.calibrators import list_calibrators
from hqbench.quant.engines import create_engine
from hqbench.quant.profiles import PROFILES
from hqbench.quant.qat import QuantTraining

from .conftest import small_mobilenet_v2


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()


BATCHES = [torch.randn(5, 3, 6, 6) * (i + 1) for i in range(3)]


def _is_pow2(t: torch.Tensor) -> bool:
    return all(math.log2(v) == round(math.log2(v)) for v in t.double().reshape(-1).tolist())


def test_each_profile_stores_the_points_as_its_target_does():
    paper = quantize(_net(), BATCHES, "B")
    signed = {n: q.grid.signed for n, q in paper.quantizers.items()}
    assert set(signed.values()) == {True, False}  # the hybrid scheme: both kinds of point
    for name in PROFILES:
        qmodel = quantize(_net(), BATCHES, "B", Recipe(profile=name))
        for point, q in qmodel.quantizers.items():
            zp = int(q.zero_point)
            if name == "x86-u8s8":
                assert not q.grid.signed, point
            elif name == "tflite-int8":
                assert q.grid.signed, point
            else:
                assert q.grid.signed == signed[point], (name, point)
            if name == "openvino" and q.grid.signed:
                assert zp == 0, point
            if name == "integer-pow2":
                assert _is_pow2(q.scale), point
        if name == "integer-pow2":
            assert all(_is_pow2(qmodel.weight_scale(n)) for n in qmodel.plan.compute)
            assert "power-of-two" in qmodel.summary()["weights"]


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("method", [e.name for e in list_calibrators()])
def test_every_calibrator_runs_under_every_profile(method, profile):
    qmodel = quantize(_net(), BATCHES, method, Recipe(act_bits=4, profile=profile))
    with torch.no_grad():
        out = qmodel(BATCHES[0])
    assert torch.isfinite(out).all()
    assert all(float(q.scale) > 0 for q in qmodel.quantizers.values())


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("engine", ["int", "onnxruntime", "openvino"])
def test_each_profile_exports_and_runs_on_the_engines_as_fake_quant_does(profile, engine):
    if engine != "int":
        pytest.importorskip(engine)
    calib = [torch.rand(8, 3, 32, 32) * 2 - 1 for _ in range(2)]
    qmodel = quantize(small_mobilenet_v2(), calib, "D", Recipe(profile=profile))
    runner = create_engine(engine, qmodel, (calib[0],))
    meter = Agreement(output_steps(qmodel, (calib[0],)))
    try:
        if engine != "int":  # every quantized layer on the int8 kernels, none fallen back to float
            assert runner.record()["float_layers"] == [] and runner.record()["all_int8"], (profile, runner.record())
        with torch.no_grad():
            x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
            meter.update(qmodel(x), runner(x))
    finally:
        getattr(runner, "close", lambda: None)()
    summary = meter.summary()
    assert summary["within_1_lsb"] >= 99.0 and summary["top1_agree"] >= 98.0, (profile, engine, summary)


def test_the_row_records_the_profile_and_paper_is_the_default():
    assert Recipe(profile="paper") == Recipe() and "profile" not in Recipe(profile="paper").to_options()
    recipe = Recipe(act_bits=4, profile="tflite-int8")
    assert recipe.to_options() == {"profile": "tflite-int8"}
    assert Recipe.from_options(8, 4, recipe.to_options()) == recipe


@pytest.mark.parametrize("settings, message", [
    ({"profile": "tensorrt"}, r"unknown profile 'tensorrt'; valid: paper, x86-u8s8"),
    ({"profile": "integer-pow2", "weight_rounding": "adaround", "adaround": {"learn_scale": True}},
     r"profile=integer-pow2 stores power-of-two weight scales; adaround.learn_scale=true"),
])
def test_bad_combinations_are_one_line_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**settings)


def test_learnt_qat_scales_are_refused_under_power_of_two_scales():
    qmodel = quantize(_net(), BATCHES, "D", Recipe(profile="integer-pow2"))
    with pytest.raises(ValueError, match="power-of-two scales, which learnt scales are not"):
        QuantTraining(qmodel, learn_scales=True)
    QuantTraining(qmodel, learn_scales=False)  # fixed power-of-two scales train


def test_a_state_from_one_profile_is_refused_by_a_model_of_another():
    state = quantize(_net(), BATCHES, "D").quant_state_dict()
    other = prepare(_net(), BATCHES[0], "D", Recipe(profile="openvino"))
    with pytest.raises(ValueError, match=r"saved producer and grid .*'-128..127'.*'-128..127 sym'"):
        other.load_quant_state_dict(state)
