"""Rebuild a TFLite classifier as a plain float PyTorch model: :func:`build_tflite_classifier`.

A quantized file (int8 per-channel, or uint8 per-tensor with zero points) holds its weights with
BatchNorm already folded in; they are dequantized back to float and the network is rebuilt from
standard modules (``Conv2d``, ``ReLU6``, pools, ``Linear``; no BatchNorm), so hqbench's quantizers
start from the same folded weights the publisher shipped. Only the flatbuffer schema from the
``tflite`` package is used; no TensorFlow and no interpreter. ``mobilenet_v2_tflite`` and
``model=tflite:PATH`` both go through it.

Output: ImageNet logits in the standard (torchvision / LOC_synset_mapping) order, TF-slim's
background logit dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import tflite

from .tflite_reader import TFLiteGraph, options, read_graph

def _same_pad(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output = ceil(size / stride); any odd leftover goes after, not before."""
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


_ACTIVATIONS = {  # fused activation code -> module factory (None: no activation)
    tflite.ActivationFunctionType.NONE: None,
    tflite.ActivationFunctionType.RELU: nn.ReLU,
    tflite.ActivationFunctionType.RELU6: nn.ReLU6,
}
_ACTIVATION_OPS = {"RELU": nn.ReLU, "RELU6": nn.ReLU6, "HARD_SWISH": nn.Hardswish}
SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "CONCATENATION",
                 "AVERAGE_POOL_2D", "MEAN", "PAD", "RESHAPE", "SQUEEZE", "SOFTMAX", "QUANTIZE",
                 "DEQUANTIZE", *_ACTIVATION_OPS)
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class _Step:
    """One op of :class:`TFLiteClassifier`: ``kind`` on tensors ``inputs`` -> tensor ``out``."""

    __slots__ = ("kind", "inputs", "out", "module", "arg", "free")

    def __init__(self, kind: str, inputs: list[int], out: int, module: str | None = None, arg=None):
        self.kind, self.inputs, self.out, self.module, self.arg = kind, inputs, out, module, arg
        self.free: tuple[int, ...] = ()  # tensors no later step reads (dropped to save memory)


class TFLiteClassifier(nn.Module):
    """A TFLite graph rebuilt from standard modules, run in the file's op order.

    Convolutions, pools, pads and activations are modules in ``layers`` (named ``<op index>_<kind>``,
    e.g. ``"004_conv"``; a convolution is an ``nn.Sequential`` of pad, conv and activation), so quantizers attach
    to them with hooks; joins are plain ``x + y`` / ``torch.cat`` and the head's reshape is
    ``torch.flatten``. Tensors are NCHW. ``forward`` returns logits (the file's SOFTMAX is dropped),
    with TF-slim's background class removed when the file has 1001 outputs.

    Attributes:
        input_size: the square input side the graph (and its TF ``SAME`` padding) was built for.
        input_mean, input_std: the normalisation on [0, 1] pixels that reproduces the file's input
            dequantization (``(q - zero_point) * scale`` on 0..255 pixels).
        num_classes: logits returned.
        background_dropped: whether the file had a leading background logit (1001 -> 1000).
    """

    def __init__(self, layers: "OrderedDict[str, nn.Module]", steps: list[_Step], input_id: int,
                 output_id: int):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self._steps = steps
        self._input_id = input_id
        self._output_id = output_id
        self.input_size = 0
        self.input_mean: tuple[float, ...] = (0.5,) * 3
        self.input_std: tuple[float, ...] = (0.5,) * 3
        self.num_classes = 0
        self.background_dropped = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self._input_id: x}
        for step in self._steps:
            args = [env[t] for t in step.inputs]
            if step.kind == "module":
                y = self.layers[step.module](args[0])
            elif step.kind == "add":
                y = args[0] + args[1]
            elif step.kind == "cat":
                y = torch.cat(args, dim=step.arg)
            elif step.kind == "flatten":  # NHWC flatten order (only differs when H*W > 1)
                y = torch.flatten(args[0].permute(0, 2, 3, 1) if step.arg else args[0], 1)
            elif step.kind == "drop_background":
                y = args[0][:, 1:]
            else:  # pragma: no cover - steps are built below
                raise RuntimeError(f"unknown step {step.kind}")
            if step.module is not None and step.kind != "module":
                y = self.layers[step.module](y)  # fused activation after a join
            env[step.out] = y
            for t in step.free:
                del env[t]
        return env[self._output_id]


class _Importer:
    """Walks a TFLite subgraph op by op and records modules and steps for :class:`TFLiteClassifier`."""

    def __init__(self, graph: TFLiteGraph, path: Path):
        self.graph, self.path = graph, path
        self.alias: dict[int, int] = {}  # QUANTIZE/DEQUANTIZE/SOFTMAX/no-op reshape outputs -> inputs
        self.layers: OrderedDict[str, nn.Module] = OrderedDict()
        self.steps: list[_Step] = []
        self.rank: dict[int, int] = {}  # rank of each tensor on the torch side (4 = NCHW, 2 = NC)
        self.producer: dict[int, _Step] = {}
        self.softmax_out: set[int] = set()

    def fail(self, i: int, name: str, why: str) -> ValueError:
        return ValueError(f"{self.path}: op {i} ({name}): {why}")

    def real(self, t: int) -> int:
        while t in self.alias:
            t = self.alias[t]
        return t

    def hw(self, t: int) -> tuple[int, int]:
        shape = self.graph.shape(t)
        return shape[1], shape[2]

    def add_module(self, i: int, kind: str, module: nn.Module) -> str:
        name = f"{i:03d}_{kind}"
        self.layers[name] = module
        return name

    def emit(self, kind: str, inputs: list[int], out: int, rank: int, module: str | None = None,
             arg=None) -> _Step:
        step = _Step(kind, inputs, out, module, arg)
        self.steps.append(step)
        self.rank[out] = rank
        self.producer[out] = step
        return step

    def activation(self, i: int, name: str, code: int) -> nn.Module | None:
        if code not in _ACTIVATIONS:
            raise self.fail(i, name, f"unsupported fused activation {code}")
        factory = _ACTIVATIONS[code]
        return None if factory is None else factory()

    def bias(self, b: int, x: int, w: int) -> np.ndarray:
        """The int32 bias at ``input scale * weight scale``, the scale of the accumulator TFLite adds
        it to (the file's own bias scale is that product rounded to float32); the bias's own
        quantization when the input or weight has none."""
        def quantized(t: int) -> bool:
            q = self.graph.g.Tensors(t).Quantization()
            return q is not None and q.ScaleLength() > 0

        if quantized(x) and quantized(w):
            return self.graph.const(b, scale=self.graph.scales(x)[0] * self.graph.scales(w)[0], axis=0)
        return self.graph.const(b, axis=None)

    def conv(self, i: int, op, name: str) -> None:
        graph = self.graph
        x, w = self.real(op.Inputs(0)), op.Inputs(1)
        b = op.Inputs(2) if op.InputsLength() > 2 and op.Inputs(2) >= 0 else None
        depthwise = name == "DEPTHWISE_CONV_2D"
        opts = options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
        if self.rank.get(x) != 4:
            raise self.fail(i, name, "input is not a 4-D NHWC feature map")
        weight = graph.const(w, axis=None)
        weight = weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2)
        _, h, wd, in_c = graph.shape(op.Inputs(0))
        out_c, in_per_group, kh, kw = weight.shape
        groups = in_c if depthwise else in_c // max(in_per_group, 1)
        if depthwise:
            mult = out_c // in_c
            if mult < 1 or out_c != mult * in_c:
                raise self.fail(i, name, f"depthwise weight {weight.shape} does not fit {in_c} channels")
            weight = weight.reshape(out_c, 1, kh, kw)  # 1HW(C*M) -> (C*M)1HW, groups=C
        elif in_per_group * groups != in_c:
            raise self.fail(i, name, f"weight {weight.shape} does not fit {in_c} input channels")
        bias = self.bias(b, op.Inputs(0), w) if b is not None else np.zeros(out_c, np.float32)
        act = self.activation(i, name, opts.FusedActivationFunction())
        sh, sw = opts.StrideH(), opts.StrideW()
        dh, dw = opts.DilationHFactor(), opts.DilationWFactor()
        if opts.Padding() == tflite.Padding.SAME:
            (top, bottom) = _same_pad(h, (kh - 1) * dh + 1, sh)
            (left, right) = _same_pad(wd, (kw - 1) * dw + 1, sw)
        else:
            top = bottom = left = right = 0
        oh, ow = self.hw(op.Outputs(0))
        if not depthwise and (kh, kw) == (1, 1) and (h, wd) == (1, 1) and (oh, ow) == (1, 1):
            # A 1x1 conv on a pooled 1x1 map is a fully connected layer: flatten + Linear.
            flat = -(i + 1)  # a private tensor id for the flattened input
            self.emit("flatten", [x], flat, 2, arg=False)
            self.linear(i, weight.reshape(out_c, in_c), bias, act, flat, op.Outputs(0))
            return
        symmetric = top == bottom and left == right
        conv = nn.Conv2d(in_c, out_c, (kh, kw), (sh, sw), padding=(top, left) if symmetric else 0,
                         dilation=(dh, dw), groups=groups, bias=True)
        conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        conv.bias.data.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if not symmetric:
            layers["pad"] = nn.ZeroPad2d((left, right, top, bottom))
        layers["conv"] = conv
        if act is not None:
            layers["act"] = act
        module = self.add_module(i, "dwconv" if depthwise else "conv", nn.Sequential(layers))
        self.emit("module", [x], op.Outputs(0), 4, module)

    def linear(self, i: int, weight: np.ndarray, bias: np.ndarray, act, x: int, out: int) -> None:
        fc = nn.Linear(weight.shape[1], weight.shape[0])
        fc.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        fc.bias.data.copy_(torch.from_numpy(np.ascontiguousarray(bias)))
        layers: OrderedDict[str, nn.Module] = OrderedDict(fc=fc)
        if act is not None:
            layers["act"] = act
        self.emit("module", [x], out, 2, self.add_module(i, "fc", nn.Sequential(layers)))

    def fully_connected(self, i: int, op, name: str) -> None:
        x, w = self.real(op.Inputs(0)), op.Inputs(1)
        b = op.Inputs(2) if op.InputsLength() > 2 and op.Inputs(2) >= 0 else None
        opts = options(op, tflite.FullyConnectedOptions)
        weight = self.graph.const(w, axis=None)
        if weight.ndim != 2:
            raise self.fail(i, name, f"weight of shape {weight.shape} is not 2-D")
        bias = self.bias(b, op.Inputs(0), w) if b is not None else np.zeros(weight.shape[0], np.float32)
        act = self.activation(i, name, opts.FusedActivationFunction())
        if self.rank.get(x) == 4:
            flat = -(i + 1)
            self.emit("flatten", [x], flat, 2, arg=self.hw(op.Inputs(0)) != (1, 1))
            x = flat
        self.linear(i, weight, bias, act, x, op.Outputs(0))

    def pool(self, i: int, op, name: str) -> None:
        x = self.real(op.Inputs(0))
        h, w = self.hw(op.Inputs(0))
        if name == "MEAN":
            axes = sorted(int(a) % 4 for a in np.atleast_1d(self.graph.const(op.Inputs(1))))
            if axes != [1, 2] or self.rank.get(x) != 4:
                raise self.fail(i, name, f"averages over axes {axes}, not over H and W of a 4-D map")
            keep = options(op, tflite.ReducerOptions).KeepDims()
            module = self.add_module(i, "pool", nn.AdaptiveAvgPool2d(1))
            if keep:
                self.emit("module", [x], op.Outputs(0), 4, module)
            else:
                pooled = -(i + 1)
                self.emit("module", [x], pooled, 4, module)
                self.emit("flatten", [pooled], op.Outputs(0), 2, arg=False)
            return
        opts = options(op, tflite.Pool2DOptions)
        k, s = (opts.FilterHeight(), opts.FilterWidth()), (opts.StrideH(), opts.StrideW())
        act = self.activation(i, name, opts.FusedActivationFunction())
        if self.hw(op.Outputs(0)) == (1, 1) and k == (h, w):
            pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        else:
            top, bottom = _same_pad(h, k[0], s[0]) if opts.Padding() == tflite.Padding.SAME else (0, 0)
            left, right = _same_pad(w, k[1], s[1]) if opts.Padding() == tflite.Padding.SAME else (0, 0)
            if top != bottom or left != right:
                raise self.fail(i, name, "non-global average pool with asymmetric SAME padding")
            # TFLite's average leaves the padding out of the count.
            pool = nn.AvgPool2d(k, s, padding=(top, left), count_include_pad=False)
        module = self.add_module(i, "pool", pool if act is None else nn.Sequential(
            OrderedDict(pool=pool, act=act)))
        self.emit("module", [x], op.Outputs(0), 4, module)

    def join(self, i: int, op, name: str) -> None:
        graph = self.graph
        ins = [self.real(op.Inputs(j)) for j in range(op.InputsLength())]
        if any(graph.is_const(t) for t in ins):
            raise self.fail(i, name, "adds or concatenates a constant tensor")
        if name == "ADD":
            opts = options(op, tflite.AddOptions)
            if len(ins) != 2 or graph.shape(op.Inputs(0)) != graph.shape(op.Inputs(1)):
                raise self.fail(i, name, "only an ADD of two tensors of one shape is supported")
            kind, arg = "add", None
        else:
            opts = options(op, tflite.ConcatenationOptions)
            rank = self.rank.get(ins[0], 4)
            axis = opts.Axis() % len(graph.shape(op.Inputs(0)))
            kind, arg = "cat", _NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis
        act = self.activation(i, name, opts.FusedActivationFunction())
        module = None if act is None else self.add_module(i, "act", act)
        self.emit(kind, ins, op.Outputs(0), self.rank.get(ins[0], 4), module, arg)

    def pad(self, i: int, op, name: str) -> None:
        x = self.real(op.Inputs(0))
        pads = self.graph.const(op.Inputs(1)).astype(int).reshape(-1, 2)
        if pads.shape != (4, 2) or pads[0].any() or pads[3].any() or self.rank.get(x) != 4:
            raise self.fail(i, name, f"pads {pads.tolist()} are not spatial pads of a 4-D map")
        (top, bottom), (left, right) = pads[1], pads[2]
        module = self.add_module(i, "pad", nn.ZeroPad2d((int(left), int(right), int(top), int(bottom))))
        self.emit("module", [x], op.Outputs(0), 4, module)

    def reshape(self, i: int, op, name: str) -> None:
        x, out = self.real(op.Inputs(0)), op.Outputs(0)
        in_shape, out_shape = self.graph.shape(op.Inputs(0)), self.graph.shape(out)
        rank = self.rank.get(x)
        if rank == 4 and len(out_shape) == 2 and in_shape[1:3] == (1, 1):
            self.emit("flatten", [x], out, 2, arg=False)
        elif (rank == 2 and len(out_shape) == 2) or in_shape == out_shape:
            self.alias[out] = x  # nothing to do on the torch side
        else:
            raise self.fail(i, name, f"reshape {in_shape} -> {out_shape} is not a classifier-head squeeze")

    def run(self) -> TFLiteClassifier:
        graph, g = self.graph, self.graph.g
        if g.InputsLength() != 1 or g.OutputsLength() != 1:
            raise ValueError(f"{self.path}: expected 1 input and 1 output, found "
                             f"{g.InputsLength()} and {g.OutputsLength()}")
        inp = g.Inputs(0)
        shape = graph.shape(inp)
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
            raise ValueError(f"{self.path}: input of shape {shape} is not a square NHWC RGB image")
        self.rank[inp] = 4
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            name = graph.op_name(op)
            if name not in SUPPORTED_OPS:
                raise ValueError(f"{self.path}: unsupported TFLite op {name} (op {i}); supported: "
                                 f"{', '.join(SUPPORTED_OPS)}")
            if name in ("QUANTIZE", "DEQUANTIZE"):
                src = op.Inputs(0)
                self.alias[op.Outputs(0)] = src  # the rebuilt model is float throughout
                if not graph.is_const(src):
                    self.rank[op.Outputs(0)] = self.rank.get(self.real(src), 4)
                continue
            if name == "SOFTMAX":
                self.alias[op.Outputs(0)] = self.real(op.Inputs(0))  # logits, not probabilities
                self.softmax_out.add(op.Outputs(0))
                continue
            if self.real(op.Inputs(0)) not in self.rank:
                raise self.fail(i, name, f"reads tensor {graph.name(op.Inputs(0))!r}, which no "
                                "earlier op produced")
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                self.conv(i, op, name)
            elif name == "FULLY_CONNECTED":
                self.fully_connected(i, op, name)
            elif name in ("MEAN", "AVERAGE_POOL_2D"):
                self.pool(i, op, name)
            elif name in ("ADD", "CONCATENATION"):
                self.join(i, op, name)
            elif name == "PAD":
                self.pad(i, op, name)
            elif name in ("RESHAPE", "SQUEEZE"):
                self.reshape(i, op, name)
            else:  # RELU, RELU6, HARD_SWISH
                x = self.real(op.Inputs(0))
                module = self.add_module(i, "act", _ACTIVATION_OPS[name]())
                self.emit("module", [x], op.Outputs(0), self.rank[x], module)
        return self.finish(graph.g.Outputs(0), inp)

    def finish(self, out: int, inp: int) -> TFLiteClassifier:
        graph = self.graph
        # A SOFTMAX may only be the last op: anything after it would see logits instead.
        for s in self.softmax_out:
            if self.real(s) != self.real(out) or any(s in st.inputs for st in self.steps):
                raise ValueError(f"{self.path}: SOFTMAX is not the graph's last op")
        logits = self.real(out)
        if self.rank.get(logits) != 2:
            raise ValueError(f"{self.path}: output {graph.name(out)!r} is not an (N, classes) tensor")
        classes = graph.shape(out)[-1]
        drop = classes == 1001  # TF-slim's background class at index 0
        if drop:
            step = self.producer.get(logits)
            fc = self.layers[step.module] if step is not None and step.kind == "module" else None
            if isinstance(fc, nn.Sequential) and isinstance(getattr(fc, "fc", None), nn.Linear) \
                    and "act" not in fc._modules:
                old = fc.fc  # drop row 0 of the classifier itself: no extra op in the graph
                fc.fc = nn.Linear(old.in_features, old.out_features - 1)
                fc.fc.weight.data.copy_(old.weight.data[1:])
                fc.fc.bias.data.copy_(old.bias.data[1:])
            else:
                self.emit("drop_background", [logits], -10**9, 2)
                logits = -10**9
        # Free each tensor after its last reader, so large inputs do not keep every activation.
        last: dict[int, int] = {}
        for k, step in enumerate(self.steps):
            for t in step.inputs:
                last[t] = k
        for t, k in last.items():
            if t != logits:
                self.steps[k].free = tuple(sorted({*self.steps[k].free, t}))
        model = TFLiteClassifier(self.layers, self.steps, inp, logits)
        model.input_size = graph.shape(inp)[1]
        model.input_mean, model.input_std = _input_normalisation(graph, inp)
        model.num_classes = classes - 1 if drop else classes
        model.background_dropped = drop
        return model


def _input_normalisation(graph: TFLiteGraph, inp: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std on [0, 1] pixels equal to the file's input dequantization on 0..255 pixels.

    uint8 input, scale ``s``, zero point ``z``: ``(p - z) * s`` = ``(p/255 - z/255) / (1/(255 s))``.
    int8 input holds ``p - 128``, so the mean moves to ``(z + 128) / 255``. A float input carries no
    such record; the MobileNet/EfficientNet-Lite convention [-1, 1] (mean = std = 0.5) is assumed.
    """
    tensor = graph.g.Tensors(inp)
    scale, zp = graph.scales(inp)
    kind = tensor.Type()
    if kind not in (tflite.TensorType.UINT8, tflite.TensorType.INT8) or scale.size != 1:
        return (0.5,) * 3, (0.5,) * 3
    offset = 128 if kind == tflite.TensorType.INT8 else 0
    mean = (float(zp[0]) + offset) / 255.0
    std = 1.0 / (255.0 * float(scale[0]))
    return (mean,) * 3, (std,) * 3


def build_tflite_classifier(path: str | Path) -> TFLiteClassifier:
    """Rebuild any supported TFLite image classifier as a float ``nn.Module`` in eval mode.

    Weights of any TFLite quantization (int8 or uint8, per-tensor or per-channel, with zero points)
    are dequantized as ``(q - zero_point) * scale``; float32 and float16 weights are used as they are.
    The ops of the MobileNet and EfficientNet-Lite families are supported (``SUPPORTED_OPS``); TF
    ``SAME`` padding becomes the conv's padding, or an explicit ``ZeroPad2d`` where it is
    asymmetric. The input size is the file's.

    Args:
        path: the ``.tflite`` file (one subgraph, one NHWC RGB image input, one class output).

    Returns:
        A :class:`TFLiteClassifier` mapping ``(N, 3, S, S)`` normalised images to logits; its
        ``input_size``, ``input_mean``, ``input_std`` and ``num_classes`` describe the contract.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a TFLite flatbuffer, or a graph this importer does not support; one line
            naming the file and the op.
    """
    path = Path(path)
    return _Importer(read_graph(path), path).run().eval()
