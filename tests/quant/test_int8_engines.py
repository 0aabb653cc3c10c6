"""issue 29: hqbench's QDQ export on the fused int8 kernels of ONNX Runtime and OpenVINO, each checked
against fake-quant, each saying which layers ran in int8; the CPU's int8 instructions read and recorded."""

import pytest
import torch

from hqbench.quant import quantize
from hqbench.quant.agreement import Agreement, output_steps
from hqbench.quant.cpu import cpu_features
from hqbench.quant.onnx_engine import OnnxRuntimeEngine, weight_container_for

from .conftest import small_mobilenet_v2

pytest.importorskip("onnxruntime")

ZEN1 = "model name\t: AMD EPYC 7551 32-Core Processor\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2 sha_ni\n"
XEON = "model name\t: Intel(R) Xeon(R) Platinum 8380\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"


@pytest.mark.parametrize("text, saturating", [(ZEN1, True), (XEON, False), (GRAVITON, False), ("", False)],
                         ids=["zen1-avx2", "xeon-vnni", "graviton-dotprod", "unknown"])
def test_the_cpu_says_whether_its_u8s8_kernels_saturate(text, saturating):
    features = cpu_features.__wrapped__(text)
    assert features["saturating_u8s8"] is saturating
    # the exact U8U8 path exactly where U8S8 would saturate
    assert weight_container_for(features) == ("uint8" if saturating else "int8")


def _mobilenet():
    net = small_mobilenet_v2()
    calib = [torch.rand(8, 3, 32, 32) * 2 - 1 for _ in range(2)]
    return quantize(net, calib, method="D"), calib[0]


def _openvino(qmodel, example):
    pytest.importorskip("openvino")
    from hqbench.quant.openvino_engine import OpenVinoEngine

    return OpenVinoEngine(qmodel, (example,))


ENGINES = {"onnxruntime": lambda q, x: OnnxRuntimeEngine(q, (x,), weights="int8"),
           "onnxruntime-u8u8": lambda q, x: OnnxRuntimeEngine(q, (x,), weights="uint8"),
           "openvino": _openvino}


@pytest.mark.parametrize("name", ENGINES)
def test_every_layer_runs_int8_on_the_fused_kernels_within_a_step_of_fake_quant(name):
    """The fused sessions users get, not an unfused reference: all 52 convs and the classifier's
    Gemm in int8 (the Gemm used to stay float: DQ -> Flatten -> Gemm never fused), and the logits
    within one step of fake-quant's. Measured here (Xeon with VNNI and AMX): 100 % within 1 LSB for
    all three on these 128 images; the bound leaves room for other CPUs' rounding."""
    qmodel, example = _mobilenet()
    engine = ENGINES[name](qmodel, example)
    try:
        record = engine.record()
        assert record["int8_layers"] == "53/53" and record["float_layers"] == [] and record["all_int8"], record
        assert record["engine_settings"]["weights"] == ("uint8" if name.endswith("u8u8") else "int8")
        assert record["engine_version"].startswith(name.split("-")[0] + " ") and "int8 dot" in record["cpu"]
        meter = Agreement(output_steps(qmodel, (example,)))
        assert meter.steps == [float(qmodel.quantizer("classifier.1").scale)]  # the logits' grid step
        with torch.no_grad():
            for seed in range(2):
                x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
                meter.update(qmodel(x), engine(x))
    finally:
        engine.close()
    summary = meter.summary()
    assert summary["rows"] == 128 and summary["outputs_on_grid"] == 1280
    assert summary["within_1_lsb"] >= 99.0 and summary["top1_agree"] >= 98.0, summary


def test_agreement_counts_steps_flips_and_off_grid_outputs():
    meter = Agreement([0.5, None])
    ref = (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3.0]))
    out = (torch.tensor([[1.5, 0.0], [2.0, 1.0]]), torch.tensor([3.25]))  # 1, 0, 4, 0 steps; one flip
    meter.update(ref, out)
    s = meter.summary()
    assert s == {"outputs_on_grid": 4, "within_1_lsb": 75.0, "worst_lsb": 4.0, "max_abs_diff": 2.0,
                 "rows": 2, "top1_agree": 50.0}
    with pytest.raises(ValueError, match="1 outputs, fake-quant 2"):
        meter.update(ref, out[:1])
