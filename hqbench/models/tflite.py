"""Load Google's int8 TFLite MobileNetV2 as a plain float PyTorch model.

The TFLite file (``tf2_mobilenet_v2_1.0_224_ptq.tflite``) holds per-channel int8 weights with
BatchNorm already folded in. We dequantize them back to float and rebuild the network from standard
modules (``Conv2d`` + ``ReLU6``, no BatchNorm), so the project's own quantizers start from the same
folded weights Google shipped. Only the flatbuffer schema from the ``tflite`` package is used; no
TensorFlow and no interpreter.

Input contract: RGB scaled to [-1, 1] (``(x - 0.5) / 0.5`` on [0, 1] values), 224x224.
Output: 1000 ImageNet logits in the standard (torchvision / LOC_synset_mapping) order.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import tflite

_DTYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT8: np.int8,
           tflite.TensorType.INT32: np.int32}
_SKIPPED = {"QUANTIZE", "DEQUANTIZE"}  # int8 <-> float boundaries; the rebuilt model is float


class ConvLayer(nn.Sequential):
    """Optional explicit padding, a biased convolution and an optional ReLU6."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int] | None, relu6: bool):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if pad is not None:
            layers["pad"] = nn.ZeroPad2d(pad)
        layers["conv"] = conv
        if relu6:
            layers["act"] = nn.ReLU6()
        super().__init__(layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: [expand 1x1] -> depthwise 3x3 -> linear project 1x1 [+ input]."""

    def __init__(self, layers: list[ConvLayer]):
        super().__init__()
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = False  # set when the graph's ADD is found after the block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2TFLite(nn.Module):
    """``features`` (stem, bottlenecks, head conv) -> global average pool -> ``classifier``."""

    def __init__(self, features: list[nn.Module], classifier: nn.Linear):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class _Graph:
    """Thin accessor over subgraph 0 of a TFLite flatbuffer."""

    def __init__(self, buf: bytes):
        self.model = tflite.Model.GetRootAsModel(buf, 0)
        if self.model.SubgraphsLength() != 1:
            raise ValueError(f"expected 1 subgraph, found {self.model.SubgraphsLength()}")
        self.g = self.model.Subgraphs(0)

    def op_name(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        # Newer files keep small codes in the deprecated int8 field; take whichever is set.
        return tflite.opcode2name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))

    def name(self, t: int) -> str:
        return self.g.Tensors(t).Name().decode()

    def shape(self, t: int) -> tuple[int, ...]:
        return tuple(int(s) for s in self.g.Tensors(t).ShapeAsNumpy())

    def scales(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        q = self.g.Tensors(t).Quantization()
        if q is None or q.ScaleLength() == 0:
            return np.ones(1, np.float64), np.zeros(1, np.int64)
        zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1)
        return q.ScaleAsNumpy().astype(np.float64), np.asarray(zp, np.int64)

    def const(self, t: int, scale: np.ndarray | None = None, axis: int = 0) -> np.ndarray:
        """Dequantize constant ``t`` as ``scale * (q - zero_point)``, per channel along ``axis``."""
        tensor = self.g.Tensors(t)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if tensor.Type() not in _DTYPES or not isinstance(data, np.ndarray):
            raise ValueError(f"tensor {self.name(t)!r}: not a constant of a supported type")
        q = data.view(_DTYPES[tensor.Type()]).reshape(self.shape(t))
        if tensor.Type() == tflite.TensorType.FLOAT32:
            return q.astype(np.float32)
        own_scale, zp = self.scales(t)
        scale = own_scale if scale is None else scale
        bshape = [1] * q.ndim
        bshape[axis] = -1  # per-channel params broadcast along the quantized axis
        if scale.size > 1:
            scale = scale.reshape(bshape)
            zp = zp if zp.size == 1 else zp.reshape(bshape)
        return (scale * (q.astype(np.float64) - zp)).astype(np.float32)


def _options(op, cls):
    opts = cls()
    table = op.BuiltinOptions()
    opts.Init(table.Bytes, table.Pos)
    return opts


def _same_pad(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output = ceil(size / stride); any odd leftover goes after, not before."""
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _conv(graph: _Graph, op, depthwise: bool) -> tuple[ConvLayer, bool]:
    """Build a ConvLayer from a CONV_2D / DEPTHWISE_CONV_2D op; also return whether it has ReLU6."""
    x, w, b = (op.Inputs(i) for i in range(3))
    opts = _options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
    act = opts.FusedActivationFunction()
    if act not in (tflite.ActivationFunctionType.NONE, tflite.ActivationFunctionType.RELU6):
        raise ValueError(f"unsupported fused activation {act} on {graph.name(op.Outputs(0))!r}")
    if opts.DilationHFactor() != 1 or opts.DilationWFactor() != 1:
        raise ValueError(f"dilated convolution on tensor {graph.name(w)!r}")
    w_scale, _ = graph.scales(w)
    weight = graph.const(w, axis=3 if depthwise else 0)
    # TFLite adds the int32 bias straight into the int32 accumulator: bias scale = in * w scale.
    bias = graph.const(b, scale=graph.scales(x)[0] * w_scale)
    if depthwise:
        weight = weight.transpose(3, 0, 1, 2)  # 1HWO -> O1HW (= OIHW with groups=O)
    else:
        weight = weight.transpose(0, 3, 1, 2)  # OHWI -> OIHW
    out_c, in_per_group, kh, kw = weight.shape
    _, h, wd, in_c = graph.shape(x)
    groups = in_c if depthwise else 1
    if in_per_group * groups != in_c or (depthwise and out_c != in_c):
        raise ValueError(f"weight {graph.name(w)!r} {weight.shape} does not fit {in_c} channels")
    sh, sw = opts.StrideH(), opts.StrideW()
    if opts.Padding() == tflite.Padding.SAME:
        (top, bottom), (left, right) = _same_pad(h, kh, sh), _same_pad(wd, kw, sw)
    else:
        top = bottom = left = right = 0
    symmetric = top == bottom and left == right
    conv = nn.Conv2d(in_c, out_c, (kh, kw), (sh, sw), padding=(top, left) if symmetric else 0,
                     groups=groups, bias=True)
    conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
    conv.bias.data.copy_(torch.from_numpy(bias))
    relu6 = act == tflite.ActivationFunctionType.RELU6
    return ConvLayer(conv, None if symmetric else (left, right, top, bottom), relu6), relu6


def _classifier(graph: _Graph, op, name: str) -> nn.Linear:
    """1x1 CONV_2D or FULLY_CONNECTED head -> Linear with the background logit (row 0) dropped."""
    x, w, b = (op.Inputs(i) for i in range(3))
    w_scale, _ = graph.scales(w)
    weight = graph.const(w, axis=0).reshape(graph.shape(w)[0], -1)  # O11I or OI -> OI
    bias = graph.const(b, scale=graph.scales(x)[0] * w_scale)
    if weight.shape[0] != 1001:
        raise ValueError(f"classifier {graph.name(w)!r} has {weight.shape[0]} outputs, not 1001")
    if name == "CONV_2D" and graph.shape(w)[1:3] != (1, 1):
        raise ValueError(f"classifier {graph.name(w)!r} is not a 1x1 conv")
    # Index 0 is TF-slim's "background" class; rows 1..1000 are ImageNet classes in synset order.
    fc = nn.Linear(weight.shape[1], 1000)
    fc.weight.data.copy_(torch.from_numpy(weight[1:]))
    fc.bias.data.copy_(torch.from_numpy(bias[1:]))
    return fc


def build_mobilenet_v2_tflite(path: str | Path) -> nn.Module:
    """Rebuild the int8 TFLite MobileNetV2 as a float ``nn.Module`` in eval mode.

    Args:
        path: the ``.tflite`` file (MobileNetV2, per-channel int8 weights, folded BatchNorm).

    Returns:
        A model mapping ``(N, 3, 224, 224)`` RGB in [-1, 1] to ``(N, 1000)`` ImageNet logits.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a TFLite graph of MobileNetV2's shape (message names the op or
            tensor that did not fit).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite model not found: {path}")
    buf = path.read_bytes()
    if buf[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite flatbuffer (missing 'TFL3' identifier)")
    graph = _Graph(buf)
    g = graph.g

    alias: dict[int, int] = {}  # QUANTIZE/DEQUANTIZE outputs -> their inputs
    cur = g.Inputs(0)  # tensor feeding the next op of the (linear except residuals) chain
    features: list[nn.Module] = []
    block: list[ConvLayer] = []
    block_in = cur
    pooled, classifier = False, None
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        name = graph.op_name(op)
        ins = [alias.get(op.Inputs(j), op.Inputs(j)) for j in range(op.InputsLength())]
        out = op.Outputs(0)
        if name in _SKIPPED:
            alias[out] = ins[0]  # later ops see through the boundary to the same values
            continue
        if name == "SOFTMAX":
            continue  # return logits, not probabilities
        if name != "ADD" and ins[0] != cur:
            raise ValueError(f"op {i} ({name}) reads tensor {graph.name(ins[0])!r}, "
                             "not the previous op's output: graph is not MobileNetV2-shaped")
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and not pooled:
            layer, relu6 = _conv(graph, op, name == "DEPTHWISE_CONV_2D")
            if not features:
                features.append(layer)  # stem conv
            else:
                if not block:
                    block_in = cur
                block.append(layer)
                if not relu6:  # the linear projection closes a bottleneck
                    features.append(InvertedResidual(block))
                    block = []
        elif name == "ADD":
            last = features[-1] if features else None
            if not isinstance(last, InvertedResidual) or block or set(ins) != {block_in, cur}:
                raise ValueError(f"op {i} (ADD) is not a residual around the preceding bottleneck")
            if _options(op, tflite.AddOptions).FusedActivationFunction() != 0:
                raise ValueError(f"op {i} (ADD) has a fused activation")
            last.use_res_connect = True
        elif name in ("MEAN", "AVERAGE_POOL_2D") and not pooled:
            _, h, w, _ = graph.shape(cur)
            if name == "MEAN" and sorted(graph.const(op.Inputs(1)).astype(int)) != [1, 2]:
                raise ValueError(f"op {i} (MEAN) does not average over H and W")
            if name == "AVERAGE_POOL_2D":
                opts = _options(op, tflite.Pool2DOptions)
                if (opts.FilterHeight(), opts.FilterWidth()) != (h, w):
                    raise ValueError(f"op {i} (AVERAGE_POOL_2D) is not a global pool")
            features.extend(block)  # 1x1 head conv(s) with ReLU6 before the pool
            block, pooled = [], True
        elif name in ("CONV_2D", "FULLY_CONNECTED") and pooled and classifier is None:
            classifier = _classifier(graph, op, name)
        elif name == "RESHAPE" and pooled:
            pass  # squeeze of the 1x1 spatial dims; torch.flatten in forward does it
        else:
            raise ValueError(f"unsupported TFLite op {i}: {name}")
        cur = out
    if classifier is None or len(features) < 2:
        raise ValueError(f"{path}: no classifier/feature layers found; not a MobileNetV2 graph")
    return MobileNetV2TFLite(features, classifier).eval()
