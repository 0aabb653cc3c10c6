"""Device-correctness: everything a calibration makes lives on the model's device.

CPU-only CI cannot run CUDA, so the leak test makes torch's *default* device ``meta`` while the
model and batches stay explicitly on the CPU: a tensor made without naming a device lands on
``meta`` and mixing it with the CPU tensors raises (on a GPU the same tensor would land on the CPU
beside CUDA activations). Before the quantizers were built on the model's device and the range
searches ran on the statistics' device, every calibrator failed here. The parity tests run on
every accelerator present against the CPU: CUDA when there is one (skipped with the reason otherwise).
"""

from __future__ import annotations

import copy

import pytest
import torch

from hqbench.quant import Recipe, prepare, quantize
from hqbench.quant.calibrators import Histogram, list_calibrators
from hqbench.quant.calibrators.base import bincount_histogram
from hqbench.quant.integer import IntegerExecutor

from .conftest import ResidualNet, make_dataset

CALIBRATORS = [e.name for e in list_calibrators()]
RECIPES = {
    "w8a8": Recipe(),
    "w4a6 mse + bias correction + keep ends": Recipe(weight_bits=4, act_bits=6, weight_range="mse",
                                                     bias_correction=True, keep_8bit="first,last"),
    "w4a8 adaround blocks, learnt scale and bias": Recipe(weight_bits=4, weight_rounding="adaround", adaround=dict(
        iters=5, granularity="block", learn_scale=True, learn_bias=True)),
}
# Accelerators present, each compared with the CPU (the CPU itself is covered by the leak test).
DEVICES = [pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine: the CUDA parity runs on a GPU"))]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return ResidualNet().eval()


def _batches(device: str = "cpu") -> list[torch.Tensor]:
    x, _ = make_dataset(48, seed=3)
    return [b.to(device) for b in x.split(16)]


def _qparams(qmodel) -> dict:
    return {q.name: (q.scale.cpu(), q.zero_point.cpu(), q.clip.cpu()) for q in qmodel.quantizers.values()}


# Every calibrator at W8A8; the weight side (the same for every calibrator) with D.
CASES = [(m, "w8a8") for m in CALIBRATORS] + [("redistribution", r) for r in RECIPES if r != "w8a8"]


@pytest.mark.parametrize("method, recipe", CASES, ids=[f"{m}-{r}" for m, r in CASES])
def test_nothing_is_made_off_the_models_device(method, recipe):
    batches, net, again = _batches(), _net(), _net()
    want = quantize(copy.deepcopy(net), batches, method, RECIPES[recipe])
    torch.set_default_device("meta")
    try:
        got = quantize(net, batches, method, RECIPES[recipe])
        logits = got(batches[0])
        integer = IntegerExecutor(got)(batches[0])
        reloaded = prepare(again, batches[0], method, RECIPES[recipe])
        reloaded.load_quant_state_dict(got.quant_state_dict())
        shared = prepare(_net_on_cpu(), batches[0], method, RECIPES[recipe]).calibrate_from(got.calibration_statistics())
    finally:
        torch.set_default_device(None)
    assert logits.device.type == integer.device.type == "cpu"
    for q in (got, reloaded):
        for name, (scale, zp, clip) in _qparams(q).items():
            w_scale, w_zp, w_clip = _qparams(want)[name]
            assert torch.equal(scale, w_scale) and torch.equal(zp, w_zp) and torch.equal(clip, w_clip), name
    assert _qparams(shared).keys() == _qparams(want).keys()


def _net_on_cpu() -> torch.nn.Module:
    with torch.device("cpu"):
        return _net()


@pytest.mark.parametrize("seed", range(5))
def test_the_deterministic_histogram_counts_as_histc(seed):
    """The CUDA-deterministic path's formula, run on the CPU, equals torch.histc there."""
    g = torch.Generator().manual_seed(seed)
    for trial in range(40):
        x = torch.randn(int(torch.randint(1, 4000, (1,), generator=g)), generator=g) * (1 + trial)
        x = x.relu() if trial % 3 == 0 else x
        lo, hi = float(x.min()), float(x.max())
        lo, hi = (lo * 0.6, hi * 0.8) if trial % 4 == 0 else (lo, hi)  # values outside are ignored
        if hi > lo:
            bins = (2048, 255, 16, 1)[trial % 4]
            assert torch.equal(bincount_histogram(x, bins, lo, hi), torch.histc(x, bins, lo, hi).double())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", CALIBRATORS)
def test_qparams_on_each_device_equal_the_cpus(device, method):
    cpu = quantize(_net(), _batches(), method)
    there = quantize(_net().to(device), _batches(device), method)
    assert all(q.scale.device.type == device for q in there.quantizers.values())
    for name, (scale, zp, clip) in _qparams(cpu).items():
        d_scale, d_zp, d_clip = _qparams(there)[name]
        torch.testing.assert_close(d_scale, scale, rtol=1e-5, atol=0)
        assert torch.equal(d_zp, zp) or (d_zp - zp).abs().max() <= 1, name  # a tie may round either way


@pytest.mark.parametrize("device", DEVICES)
def test_adaround_on_each_device_keeps_the_cpus_roundings(device):
    recipe = Recipe(weight_bits=4, weight_rounding="adaround", adaround=dict(iters=50))
    cpu = quantize(_net(), _batches(), "D", recipe)
    there = quantize(_net().to(device), _batches(device), "D", recipe)
    for name, weight in cpu.rounded_weights.items():
        other = there.rounded_weights[name].cpu()
        assert (weight != other).float().mean() <= 0.02, name  # float sums differ by device: a few flips


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_deterministic_cuda_histograms_work_and_c_says_why_not():
    torch.use_deterministic_algorithms(True)
    try:
        quantize(_net().cuda(), _batches("cuda"), "D")  # the bincount path
        with pytest.raises(RuntimeError, match="no deterministic CUDA kernel"):
            quantize(_net().cuda(), _batches("cuda"), "C")
    finally:
        torch.use_deterministic_algorithms(False)


def test_c_refuses_deterministic_cuda_in_one_line(monkeypatch):
    """What a CUDA run with trainer.deterministic=true meets with C, checked without a GPU."""
    calibrator = Histogram()
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    cuda_like = torch.randn(4)
    monkeypatch.setattr(type(cuda_like), "is_cuda", property(lambda self: True))
    with pytest.raises(RuntimeError) as err:
        calibrator.observe(cuda_like)
    assert "no deterministic CUDA kernel" in str(err.value) and "\n" not in str(err.value)
