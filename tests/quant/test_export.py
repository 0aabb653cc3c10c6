"""QDQ ONNX export and the onnxruntime engine agree with fake-quant; fake-quant keeps its old rounding."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hqbench.quant import prepare, quantize
from hqbench.quant.fake import QUANT, ActQuantizer
from hqbench.quant.calibrators import create_calibrator
from hqbench.quant.weights import weight_scale
from hqbench.quant.grid import QuantGrid, fake_quantize, fake_quantize_op, fake_quantize_weight, weight_qparams
from hqbench.quant.export import export_onnx
from hqbench.quant import Recipe

from .conftest import make_dataset, small_mobilenet_v2

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

GRIDS = [QuantGrid(b, s) for b in (2, 4, 6, 8, 12, 16) for s in (False, True)]


def old_fake_quantize(x, scale, zero_point, qmin, qmax):
    """The hand-written formula fake_quantize had before the QDQ rewrite."""
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def grid_case(grid: QuantGrid, seed: int = 0):
    """Random values plus exact ties ``(k + 0.5) * scale`` around and beyond the grid."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor(0.0371)
    z = torch.tensor(grid.qmin + grid.levels // 3 if grid.signed else 0)
    k = torch.randint(grid.qmin - 8, grid.qmax + 8, (20000,), generator=g).float() - z
    x = torch.cat([torch.randn(200000, generator=g) * scale * grid.levels / 4, (k + 0.5) * scale])
    return x, scale, z


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{'s' if g.signed else 'u'}{g.bits}")
def test_fake_quantize_parity_with_old_formula(grid):
    """Eager fake-quant is bit-identical to the old formula; torch's op differs by at most 1 LSB, on ties."""
    x, scale, z = grid_case(grid)
    old = old_fake_quantize(x, scale, z, grid.qmin, grid.qmax)
    assert torch.equal(fake_quantize(x, scale, z, grid.qmin, grid.qmax), old)
    op = fake_quantize_op(x, scale, z, grid.qmin, grid.qmax)
    assert (torch.round(op / scale) - torch.round(old / scale)).abs().max() <= 1
    assert (op[:200000] != old[:200000]).float().mean() < 1e-3  # off exact ties they (almost) always agree


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_weight_fake_quantize_parity(bits):
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(bits))
    qmax = 2 ** (bits - 1) - 1
    s = weight_qparams(w, bits)
    old = torch.clamp(torch.round(w / s), -qmax, qmax) * s
    assert torch.equal(fake_quantize_weight(w, bits), old)
    per_channel = fake_quantize_op(w, s, torch.zeros(()), -qmax, qmax)
    assert (torch.round(per_channel / s) - torch.round(old / s)).abs().max() <= 1


@pytest.mark.parametrize("all_uint8", [False, True], ids=["native", "uint8"])
@pytest.mark.parametrize("grid", [QuantGrid(8, False), QuantGrid(8, True), QuantGrid(6, True), QuantGrid(3, False)],
                         ids=["u8", "s8", "s6", "u3"])
def test_onnx_quantize_linear_equals_eager_fake_quant_bit_for_bit(grid, all_uint8, tmp_path):
    """An exported quantizer run by onnxruntime gives exactly eager fake-quant, ties included."""
    x, scale, z = grid_case(grid, seed=1)
    q = ActQuantizer("point", create_calibrator("B"), grid)
    q.scale.fill_(scale)
    q.zero_point.fill_(int(z))
    q.calibrated.fill_(True)
    q.mode = QUANT
    from hqbench.quant.export import _qdq_symbolic

    path = tmp_path / "q.onnx"
    symbolic = functools.partial(_qdq_symbolic, all_uint8=all_uint8)
    torch.onnx.register_custom_op_symbolic("aten::fake_quantize_per_tensor_affine", symbolic, 17)
    try:
        with torch.no_grad():
            torch.onnx.export(q, (x[:4],), path, dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": {0: "n"}})
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::fake_quantize_per_tensor_affine", 17)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert ("Clip" in ops) == (grid.bits < 8)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert torch.equal(torch.from_numpy(out), q(x))


def test_tracing_records_torch_fake_quant_ops():
    q = ActQuantizer("point", create_calibrator("B"), QuantGrid(8, True))
    q.calibrated.fill_(True)
    q.mode = QUANT
    assert "fake_quantize_per_tensor_affine" in str(torch.jit.trace(q, torch.randn(4)).graph)


def test_quant_mode_refuses_an_uncalibrated_point_by_name():
    q = ActQuantizer("layer3.conv", create_calibrator("B"), QuantGrid())
    with pytest.raises(RuntimeError, match="'layer3.conv' was never calibrated"):
        q.mode = QUANT


def calibrated(net, weight_bits: int, act_bits: int, **weight_options):
    x, _ = make_dataset(256, seed=3)
    return quantize(net, list(x.split(64)), method="D",
                    recipe=Recipe(act_bits=act_bits, weight_bits=weight_bits, **weight_options))


# AdaRound with each layer's weight scale and bias learnt: the export must carry the learnt scales.
LEARNT = {"weight_rounding": "adaround", "adaround": {"iters": 100, "learn_scale": True, "learn_bias": True}}


@pytest.mark.parametrize("bits, container, weight_options",
                         [((8, 8), "native", {}), ((8, 8), "uint8", {}), ((4, 6), "native", {}),
                          ((4, 6), "native", LEARNT)], ids=["w8a8", "w8a8-uint8", "w4a6", "w4a6-learnt-scales"])
def test_export_and_onnxruntime_agree_with_fake_quant(trained_net, tmp_path, bits, container, weight_options):
    net, _ = trained_net
    qmodel = calibrated(net, *bits, **weight_options)
    assert bool(qmodel.learned_scales) == bool(weight_options)
    example = make_dataset(4, seed=5)[0]
    info = export_onnx(qmodel, tmp_path / "net.onnx", example, container=container)
    model = onnx.load(info["onnx"])
    ops = [n.op_type for n in model.graph.node]
    # one more Q/DQ pair on the classifier's input: after its Flatten, on the same grid (requantize_reshapes)
    assert info["requantized"] == 1
    assert ops.count("QuantizeLinear") == info["activation_tensors"] + 1 > len(qmodel.quantizers)
    inits = {i.name: i for i in model.graph.initializer}
    for name in qmodel.plan.compute:
        assert inits[f"{name}.weight_quantized"].data_type == onnx.TensorProto.INT8
        assert inits[f"{name}.bias_quantized"].data_type == onnx.TensorProto.INT32

    enc = json.loads((tmp_path / "net.encodings.json").read_text())
    layers = {e["layer"]: e for e in enc["activations"].values()}
    assert set(layers) == {q.name for q in qmodel.quantizers.values()}
    for q in qmodel.quantizers.values():
        e = layers[q.name]
        assert (e["qmin"], e["qmax"], e["bits"], e["signed"]) == (q.grid.qmin, q.grid.qmax, bits[1], q.grid.signed)
        assert e["dtype"] == ("int8" if q.grid.signed and container == "native" else "uint8")
        assert e["container_offset"] == (128 if q.grid.signed and container == "uint8" else 0)
    assert not layers["stem.2"]["signed"] and layers["stem.2"]["zero_point"] == 0  # after ReLU: unsigned
    assert layers[":add0"]["signed"]  # residual add of a linear bottleneck: signed
    qmax_w = 2 ** (bits[0] - 1) - 1
    assert all((w["qmin"], w["qmax"]) == (-qmax_w, qmax_w) for w in enc["weights"].values())

    from hqbench.quant.onnx_engine import make_session

    x, _ = make_dataset(512, seed=2)  # another batch size than the export: axis 0 is dynamic
    fused = tmp_path / "fused.onnx"
    ort_out = torch.from_numpy(make_session(info["onnx"], optimized_path=fused).run(None, {"input0": x.numpy()})[0])
    ran = [n.op_type for n in onnx.load(fused).graph.node]
    if container == "uint8":  # one type everywhere: onnxruntime fuses the uint8-in/int8-out layers too
        assert ran.count("QLinearConv") >= 4 and "QLinearAdd" in ran and "QGemm" in ran
    with torch.no_grad():
        fake = qmodel(x)
    lsb = (ort_out - fake).abs().max() / qmodel.quantizer("head").scale
    assert lsb <= 1.001  # measured: 1.0 LSB at w8a8 and at w4a6 (a few logits one step apart)
    assert (ort_out.argmax(1) == fake.argmax(1)).float().mean() >= 0.99

    state = torch.load(info["qstate"], weights_only=True)
    assert state["points"].keys() == qmodel.quant_state_dict()["points"].keys()


def test_export_refuses_an_uncalibrated_model(trained_net, tmp_path):
    qmodel = prepare(trained_net[0], make_dataset(2, seed=5)[0], "D")
    with pytest.raises(RuntimeError, match="never calibrated"):
        export_onnx(qmodel, tmp_path / "net.onnx", make_dataset(2, seed=5)[0])
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="example_inputs"):
        export_onnx(qmodel, tmp_path / "net.onnx")


def test_export_refuses_to_overwrite(trained_net, tmp_path):
    qmodel = calibrated(trained_net[0], 8, 8)
    example = make_dataset(2, seed=5)[0]
    export_onnx(qmodel, tmp_path / "net.onnx", example)
    with pytest.raises(FileExistsError, match="net.onnx"):
        export_onnx(qmodel, tmp_path / "net.onnx", example)
    (tmp_path / "net.onnx").unlink()
    with pytest.raises(FileExistsError, match="net.encodings.json"):  # any of the three files
        export_onnx(qmodel, tmp_path / "net.onnx", example)
    export_onnx(qmodel, tmp_path / "net.onnx", example, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.encodings.json", "net.onnx", "net.qstate.pt"]


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.body(x)
        return self.a(y), self.b(y)


def test_engine_keeps_the_output_structure_and_batch_size():
    from hqbench.quant.onnx_engine import OnnxRuntimeEngine

    torch.manual_seed(0)
    calib = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    qmodel = quantize(TwoHeads().eval(), calib, method="B")
    engine = OnnxRuntimeEngine(qmodel, (calib[0][:2],))
    x = torch.randn(5, 3, 8, 8)
    out = engine(x)
    with torch.no_grad():
        fake = qmodel(x)
    assert isinstance(out, tuple) and len(out) == 2
    for o, f, name in zip(out, fake, ("a", "b")):
        assert o.shape == f.shape
        assert (o - f).abs().max() <= qmodel.quantizer(name).scale * 1.001
    engine.close()


def test_all_zero_weight_channel_with_a_large_bias_is_widened_exactly(tmp_path):
    """MobileNetV2-TFLite has a dead channel whose bias overflows int32 at the floor weight scale."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight[0].zero_()
        net[0].bias[0] = 20.0  # 20 / (s_in * eps) > 2^31
    calib = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    qmodel = quantize(net, calib, method="B")
    info = export_onnx(qmodel, tmp_path / "net.onnx", calib[0][:2])
    enc = json.loads((tmp_path / "net.encodings.json").read_text())
    assert enc["weights"]["0.weight"]["widened_channels"] == [0]
    out = torch.from_numpy(ort.InferenceSession(info["onnx"], providers=["CPUExecutionProvider"])
                           .run(None, {"input0": calib[1].numpy()})[0])
    with torch.no_grad():
        fake = qmodel(calib[1])
    assert (out - fake).abs().max() <= qmodel.quantizer("1").scale * 1.001


def test_bias_integers_beyond_float32_precision_export_exactly(tmp_path):
    """Between 2^24 and 2^29 a float32 bias cannot be read back as its integer; the export takes the model's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU()).eval()
    calib = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    qmodel = quantize(net, calib, method="B")
    s_in = qmodel.quantizer(qmodel.plan.compute_inputs["0"]).scale
    qmodel.set_mode("float")
    with torch.no_grad():  # biases of 2^24..2^28 accumulator units, with fractional parts
        units = torch.tensor([2**24 + 0.3, 2**25 + 0.7, 3e7 + 0.45, 2**27 + 0.55, 2**28 + 0.2, 12345.6])
        conv = qmodel.model[0]
        conv.bias.copy_(units * s_in * weight_scale(conv.weight).reshape(-1))
    qmodel.set_mode(QUANT)
    b_int = qmodel.bias_integers("0")
    assert b_int.abs().max() > 2**24 and not qmodel.widened_channels
    info = export_onnx(qmodel, tmp_path / "net.onnx", calib[0][:2])
    from onnx import load, numpy_helper
    inits = {i.name: numpy_helper.to_array(i) for i in load(info["onnx"]).graph.initializer}
    assert torch.equal(torch.from_numpy(inits["0.bias_quantized"]).double(), b_int)


def test_tiny_nonzero_weight_channel_with_a_large_bias_exports_and_runs_as_integers(tmp_path):
    """EfficientNet-Lite0's stem has live channels with weights ~1e-6 whose bias overflowed int32.

    Fake-quant widens their weight scale itself, so fake, the integer executor and ONNX Runtime run
    the same widened channel (the export used to refuse the model with an OverflowError).
    """
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight[1].mul_(1e-7)
        net[0].bias[1] = 5.0  # 5 / (s_in * max|w| / 127) > 2^31
    calib = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    qmodel = quantize(net, calib, method="D")
    assert qmodel.widened_channels == {"0": [1]}
    s_in = qmodel.quantizer(qmodel.plan.compute_inputs["0"]).scale
    b_int = net[0].bias.detach().double() / (s_in * qmodel.weight_scale("0").reshape(-1)).double()
    assert b_int.abs().max() <= 2**29 + 1
    info = export_onnx(qmodel, tmp_path / "net.onnx", calib[0][:2])
    out = torch.from_numpy(ort.InferenceSession(info["onnx"], providers=["CPUExecutionProvider"])
                           .run(None, {"input0": calib[1].numpy()})[0])
    with torch.no_grad():
        fake = qmodel(calib[1])
    assert (out - fake).abs().max() <= qmodel.quantizer("1").scale * 1.001


def _ops_onnxruntime_runs(path, tmp_path) -> dict:
    """Op counts of the graph onnxruntime runs after its optimiser (QDQ fusion included)."""
    import collections

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_the_default_export_runs_every_conv_and_add_in_int8_on_onnxruntime(tmp_path):
    """issue 29: the default file was the native container, in which onnxruntime left MobileNetV2's
    projection convs and residual adds in float (uint8 in, int8 out never fuses). The default is now
    the uint8 container: no float Conv or Add left after onnxruntime's optimiser."""
    net = small_mobilenet_v2()
    calib = [torch.rand(2, 3, 32, 32) * 2 - 1 for _ in range(2)]
    qmodel = quantize(net, calib, method="D")
    default = _ops_onnxruntime_runs(Path(export_onnx(qmodel, tmp_path / "default.onnx", calib[0])["onnx"]), tmp_path)
    native = _ops_onnxruntime_runs(Path(export_onnx(qmodel, tmp_path / "native.onnx", calib[0],
                                                    container="native")["onnx"]), tmp_path)
    assert default["QLinearConv"] == 52 and default["QLinearAdd"] >= 10  # every conv, the 10 residual adds
    assert default["Conv"] + default["FusedConv"] + default["Add"] == 0
    assert native["Conv"] >= 10 and native["Add"] >= 10  # what the native container costs
