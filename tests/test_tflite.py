"""Tests for the TFLite MobileNetV2 loader (hqbench.models.tflite)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from hqbench.models.tflite import build_tflite_classifier

_WEIGHTS = "weights/tf2_mobilenet_v2_1.0_224_ptq.tflite"


def _data_root() -> Path:
    """Return $HQBENCH_DATA if it holds the TFLite file, else skip the test."""
    root = os.environ.get("HQBENCH_DATA")
    if not root:
        pytest.skip("HQBENCH_DATA is not set; it must point at a folder with " + _WEIGHTS)
    if not (Path(root) / _WEIGHTS).is_file():
        pytest.skip(f"{Path(root) / _WEIGHTS} not found")
    return Path(root)


def test_missing_file_raises_with_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tflite"
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        build_tflite_classifier(missing)


def test_non_tflite_file_raises_value_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="TFLite"):
        build_tflite_classifier(bogus)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_model_shape_structure_and_accuracy() -> None:
    from PIL import Image
    from torchvision import transforms as T

    root = _data_root()
    torch.set_num_threads(2)
    model = build_tflite_classifier(root / _WEIGHTS)

    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    traced = torch.fx.symbolic_trace(model)
    assert traced(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)

    val = root / "imagenet" / "val"
    if not val.is_dir():
        pytest.skip(f"{val} not found")
    # Class index = line number in LOC_synset_mapping.txt, not the order of folders present.
    mapping = root / "imagenet" / "LOC_synset_mapping.txt"
    wnid_to_idx = {line.split()[0]: i for i, line in enumerate(mapping.read_text().splitlines())}
    files = sorted(val.glob("*/*.JPEG"))[::50][:16]  # spread over many classes
    assert files, f"no JPEGs under {val}"
    pre = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize([0.5] * 3, [0.5] * 3)])
    x = torch.stack([pre(Image.open(f).convert("RGB")) for f in files])
    y = torch.tensor([wnid_to_idx[f.parent.name] for f in files])
    with torch.inference_mode():
        top1 = (model(x).argmax(1) == y).float().mean().item()
    assert top1 >= 0.5, f"top-1 {top1:.2%} on {len(files)} val images"


# --------------------------------------------------------------------------------------------------
# The generic importer (build_tflite_classifier) and the tflite:PATH source.
# --------------------------------------------------------------------------------------------------

_V1_FILES = {  # file -> (input size, Top-1 floor on 32 real val images)
    "mobilenet_v1_0.25_128_quant.tflite": (128, 0.25),
    "mobilenet_v1_0.5_160_quant.tflite": (160, 0.40),
}


def _tiny_tflite(path: Path, pool_op: str = "AVERAGE_POOL_2D") -> dict:
    """Write a uint8 per-tensor graph: input (1,6,6,3) -> CONV_2D 3x3/2 SAME + RELU6 (weights with a
    zero point; an odd-size SAME pad, 0 before and 1 after) -> ``pool_op`` 3x3 -> RESHAPE (1,4).
    Returns the float parameters the file encodes, for a reference computation."""
    import flatbuffers
    import numpy as np
    import tflite

    rng = np.random.default_rng(0)
    w_q = rng.integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)  # OHWI
    w_scale, w_zp = 0.02, 131
    in_scale, in_zp = 1 / 128, 128
    b_q = rng.integers(-500, 500, 4).astype(np.int32)
    b = flatbuffers.Builder(1024)

    def vec(start, values, prepend):
        start(b, len(values))
        for v in reversed(values):
            prepend(v)
        return b.EndVector()

    def ivec(values):
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependInt32(int(v))
        return b.EndVector()

    def buffer(data: bytes | None):
        vdata = None
        if data is not None:
            b.StartVector(1, len(data), 16)
            for byte in reversed(data):
                b.PrependUint8(byte)
            vdata = b.EndVector()
        tflite.BufferStart(b)
        if vdata is not None:
            tflite.BufferAddData(b, vdata)
        return tflite.BufferEnd(b)

    def quant(scale, zp):
        s = vec(tflite.QuantizationParametersStartScaleVector, [scale], b.PrependFloat32)
        z = vec(tflite.QuantizationParametersStartZeroPointVector, [zp], b.PrependInt64)
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, s)
        tflite.QuantizationParametersAddZeroPoint(b, z)
        return tflite.QuantizationParametersEnd(b)

    def tensor(name, shape, ttype, buf, q=None):
        n, sh = b.CreateString(name), ivec(shape)
        tflite.TensorStart(b)
        tflite.TensorAddName(b, n)
        tflite.TensorAddShape(b, sh)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, buf)
        if q is not None:
            tflite.TensorAddQuantization(b, q)
        return tflite.TensorEnd(b)

    U8, I32 = tflite.TensorType.UINT8, tflite.TensorType.INT32
    tensors = [
        tensor("input", [1, 6, 6, 3], U8, 0, quant(in_scale, in_zp)),
        tensor("w", [4, 3, 3, 3], U8, 1, quant(w_scale, w_zp)),
        tensor("b", [4], I32, 2, quant(in_scale * w_scale, 0)),
        tensor("conv", [1, 3, 3, 4], U8, 0, quant(6 / 255, 0)),
        tensor("pool", [1, 1, 1, 4], U8, 0, quant(6 / 255, 0)),
        tensor("shape", [2], I32, 3),
        tensor("logits", [1, 4], U8, 0, quant(6 / 255, 0)),
    ]
    buffers = [buffer(None), buffer(w_q.tobytes()), buffer(b_q.tobytes()),
               buffer(np.array([1, 4], np.int32).tobytes())]

    tflite.Conv2DOptionsStart(b)
    tflite.Conv2DOptionsAddPadding(b, tflite.Padding.SAME)
    tflite.Conv2DOptionsAddStrideH(b, 2)
    tflite.Conv2DOptionsAddStrideW(b, 2)
    tflite.Conv2DOptionsAddDilationHFactor(b, 1)
    tflite.Conv2DOptionsAddDilationWFactor(b, 1)
    tflite.Conv2DOptionsAddFusedActivationFunction(b, tflite.ActivationFunctionType.RELU6)
    conv_opts = tflite.Conv2DOptionsEnd(b)
    tflite.Pool2DOptionsStart(b)
    tflite.Pool2DOptionsAddPadding(b, tflite.Padding.VALID)
    for add in (tflite.Pool2DOptionsAddStrideH, tflite.Pool2DOptionsAddStrideW):
        add(b, 1)
    for add in (tflite.Pool2DOptionsAddFilterHeight, tflite.Pool2DOptionsAddFilterWidth):
        add(b, 3)
    pool_opts = tflite.Pool2DOptionsEnd(b)

    def operator(code_index, ins, outs, opts_type=0, opts=None):
        i, o = ivec(ins), ivec(outs)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, code_index)
        tflite.OperatorAddInputs(b, i)
        tflite.OperatorAddOutputs(b, o)
        if opts is not None:
            tflite.OperatorAddBuiltinOptionsType(b, opts_type)
            tflite.OperatorAddBuiltinOptions(b, opts)
        return tflite.OperatorEnd(b)

    ops = [operator(0, [0, 1, 2], [3], tflite.BuiltinOptions.Conv2DOptions, conv_opts),
           operator(1, [3], [4], tflite.BuiltinOptions.Pool2DOptions, pool_opts),
           operator(2, [4, 5], [6])]
    codes = []
    for name in ("CONV_2D", pool_op, "RESHAPE"):
        code = getattr(tflite.BuiltinOperator, name)
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddVersion(b, 1)
        codes.append(tflite.OperatorCodeEnd(b))

    t_vec = vec(tflite.SubGraphStartTensorsVector, tensors, b.PrependUOffsetTRelative)
    o_vec = vec(tflite.SubGraphStartOperatorsVector, ops, b.PrependUOffsetTRelative)
    ins, outs = ivec([0]), ivec([6])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, t_vec)
    tflite.SubGraphAddInputs(b, ins)
    tflite.SubGraphAddOutputs(b, outs)
    tflite.SubGraphAddOperators(b, o_vec)
    subgraph = tflite.SubGraphEnd(b)
    s_vec = vec(tflite.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    c_vec = vec(tflite.ModelStartOperatorCodesVector, codes, b.PrependUOffsetTRelative)
    bf_vec = vec(tflite.ModelStartBuffersVector, buffers, b.PrependUOffsetTRelative)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, c_vec)
    tflite.ModelAddSubgraphs(b, s_vec)
    tflite.ModelAddBuffers(b, bf_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(b.Output())
    return dict(weight=(w_q.astype(np.float64) - w_zp) * w_scale, bias=b_q * in_scale * w_scale,
                in_scale=in_scale, in_zp=in_zp)


def _reference(x_nhwc, weight_ohwi, bias):
    """Independent NHWC float computation of the tiny graph: TF SAME pad (0, 1), conv 3x3/2, ReLU6,
    mean over H and W."""
    import numpy as np

    xp = np.pad(x_nhwc, ((0, 0), (0, 1), (0, 1), (0, 0)))
    out = np.zeros((x_nhwc.shape[0], 3, 3, weight_ohwi.shape[0]))
    for i in range(3):
        for j in range(3):
            patch = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            out[:, i, j, :] = np.einsum("nhwc,ohwc->no", patch, weight_ohwi) + bias
    return np.clip(out, 0, 6).mean(axis=(1, 2))


def test_generic_importer_uint8_zero_points_and_asymmetric_same_pad(tmp_path: Path) -> None:
    import numpy as np

    params = _tiny_tflite(tmp_path / "tiny.tflite")
    model = build_tflite_classifier(tmp_path / "tiny.tflite")
    assert model.input_size == 6 and model.num_classes == 4 and not model.background_dropped
    # uint8 input, scale 1/128, zero point 128: (p - 128) / 128 = (p/255 - 128/255) / (128/255).
    assert model.input_mean == pytest.approx((128 / 255,) * 3)
    assert model.input_std == pytest.approx((128 / 255,) * 3)
    pads = [m.padding for m in model.modules() if isinstance(m, nn.ZeroPad2d)]
    assert pads == [(0, 1, 0, 1)]  # 6 px, 3x3, stride 2: TF pads 0 before and 1 after
    pixels = np.random.default_rng(1).integers(0, 256, (2, 6, 6, 3))
    x = (pixels - params["in_zp"]) * params["in_scale"]  # the file's input dequantization
    expected = _reference(x, params["weight"], params["bias"])
    with torch.inference_mode():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2).float()).double().numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_generic_importer_unsupported_op_is_one_line_naming_op_and_file(tmp_path: Path) -> None:
    from hqbench.models import create_model
    path = tmp_path / "maxpool.tflite"
    _tiny_tflite(path, pool_op="MAX_POOL_2D")
    with pytest.raises(ValueError) as err:
        build_tflite_classifier(path)
    msg = str(err.value)
    assert "MAX_POOL_2D" in msg and str(path) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="unsupported TFLite op MAX_POOL_2D"):
        create_model(f"tflite:{path}")  # the same line through the registry


def test_tflite_source_card_comes_from_the_file(tmp_path: Path) -> None:
    from hqbench.models import create_model, list_sources

    path = tmp_path / "tiny.tflite"
    _tiny_tflite(path)
    assert "tflite:" in list_sources()
    model, card = create_model(f"tflite:{path}")
    assert (card.input_size, card.num_classes, card.weights) == (6, 4, str(path))
    assert card.name == "tflite:tiny.tflite" and card.resize == round(6 / 0.875)
    assert card.mean == pytest.approx((128 / 255,) * 3)
    _, same = create_model("tflite", weights=str(path))  # model=tflite model.weights=PATH
    assert same == card
    with pytest.raises(ValueError, match="model.weights"):
        create_model("tflite")
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        create_model(f"tflite:{tmp_path / 'nope.tflite'}")
    with pytest.raises(ValueError, match="tflite:PATH"):
        create_model("nosuchsource:x")  # an unknown prefix lists the sources


def test_cli_config_selects_tflite_by_name_or_group(tmp_path: Path) -> None:
    from hqbench.config import compose

    path = tmp_path / "tiny.tflite"
    cfg = compose("classification", [f"model.name=tflite:{path}"])
    assert cfg.model.name == f"tflite:{path}"
    cfg = compose("classification", ["model=tflite", f"model.weights={path}"])
    assert (cfg.model.name, cfg.model.weights) == ("tflite", str(path))


def _val_batch(root: Path, card, n: int = 32):
    from PIL import Image

    from hqbench.data.transforms import build_transform

    val = root / "imagenet" / "val"
    lines = (root / "imagenet" / "LOC_synset_mapping.txt").read_text().splitlines()
    wnid_to_idx = {line.split()[0]: i for i, line in enumerate(lines) if line.strip()}
    files = sorted(val.glob("*/*.JPEG"))[::40][:n]  # spread over many classes
    assert len(files) == n, f"fewer than {n} JPEGs under {val}"
    pre = build_transform(card)
    x = torch.stack([pre(Image.open(f)) for f in files])
    return x, torch.tensor([wnid_to_idx[f.parent.name] for f in files])


def _numpy_reference(path: Path, x_nchw: torch.Tensor):
    """Dequantized float forward of a MobileNetV1 file written straight from the flatbuffer in NHWC
    with numpy (TF SAME pads, depthwise as per-channel products): shares no code with the importer."""
    import numpy as np
    import tflite

    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    g = m.Subgraphs(0)

    def deq(t):
        tensor = g.Tensors(t)
        raw = m.Buffers(tensor.Buffer()).DataAsNumpy()
        dtype = {tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT32: np.int32}[tensor.Type()]
        q = raw.view(dtype).reshape(tensor.ShapeAsNumpy()).astype(np.float64)
        qp = tensor.Quantization()
        return (q - qp.ZeroPointAsNumpy()[0]) * qp.ScaleAsNumpy()[0]

    x = x_nchw.permute(0, 2, 3, 1).double().numpy()
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        name = tflite.opcode2name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w, bias = deq(op.Inputs(1)), deq(op.Inputs(2))
            opts_cls = tflite.Conv2DOptions if name == "CONV_2D" else tflite.DepthwiseConv2DOptions
            opts = opts_cls()
            opts.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            s, k = opts.StrideH(), w.shape[1]
            n, h, wd, c = x.shape
            oh = -(-h // s)
            total = max((oh - 1) * s + k - h, 0)
            before, after = total // 2, total - total // 2  # TF SAME: the odd pixel goes after
            xp = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
            out = np.zeros((n, oh, oh, w.shape[0] if name == "CONV_2D" else w.shape[3]))
            for a in range(k):
                for b_ in range(k):
                    patch = xp[:, a:a + s * oh:s, b_:b_ + s * oh:s, :]
                    if name == "CONV_2D":
                        out += np.einsum("nhwc,oc->nhwo", patch, w[:, a, b_, :])
                    else:
                        out += patch * w[0, a, b_, :]
            x = np.clip(out + bias, 0, 6) if opts.FusedActivationFunction() == 3 else out + bias
        elif name == "AVERAGE_POOL_2D":
            x = x.mean(axis=(1, 2), keepdims=True)
        elif name == "RESHAPE":
            x = x.reshape(x.shape[0], -1)
    return x[:, 1:]  # drop the background logit


@pytest.mark.realdata
@pytest.mark.parametrize("filename", sorted(_V1_FILES))
def test_uint8_mobilenet_v1_matches_reference_and_classifies(real_data: Path, filename: str) -> None:
    import numpy as np

    from hqbench.models import create_model

    path = real_data / "weights" / filename
    if not path.is_file():
        pytest.skip(f"{path} not found")
    torch.set_num_threads(2)
    model, card = create_model(f"tflite:{path}")
    size, floor = _V1_FILES[filename]
    assert card.input_size == size and card.num_classes == 1000 and model.background_dropped
    assert card.mean == pytest.approx((128 / 255,) * 3) and card.std == pytest.approx((128 / 255,) * 3)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert isinstance(list(model.layers.values())[-1].fc, nn.Linear)  # 1x1 head conv -> Linear

    x, y = _val_batch(real_data, card)
    with torch.inference_mode():
        logits = model(x)
        traced = torch.fx.symbolic_trace(model)(x[:2])
    assert logits.shape == (32, 1000) and torch.allclose(traced, logits[:2], atol=1e-5)
    ref = _numpy_reference(path, x[:4])
    assert np.abs(logits[:4].double().numpy() - ref).max() < 1e-3
    assert torch.equal(logits[:4].argmax(1), torch.from_numpy(ref.argmax(1)))
    top1 = (logits.argmax(1) == y).float().mean().item()
    assert top1 >= floor, f"{filename}: top-1 {top1:.2%} on 32 val images"


@pytest.mark.realdata
def test_mobilenet_v2_file_input_normalisation(real_data: Path) -> None:
    path = real_data / _WEIGHTS
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model = build_tflite_classifier(path)
    # int8 input, scale 1/127.5, zero point -1 (after the QUANTIZE): (p - 127) / 127.5.
    assert model.input_mean == pytest.approx((127 / 255,) * 3)
    assert model.input_std == pytest.approx((127.5 / 255,) * 3, rel=1e-5)