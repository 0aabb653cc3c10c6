"""Darknet's ``.cfg``/``.weights`` format, read into ultralytics' YOLOv3-tiny modules.

Torch only: the ultralytics model is duck-typed (``model.model`` a Sequential of layers with
``.f``/``.i``, ``Conv`` layers with ``.conv``/``.bn``/``.act``, the last layer a ``Detect`` with
``.f`` and ``.stride``), so this module imports no ultralytics.

Layer correspondence, ``yolov3-tiny.cfg`` (Darknet layer index) -> ultralytics ``yolov3-tiny.yaml``
(``model.<i>``):

====================================  ==============================================
Darknet                               ultralytics
====================================  ==============================================
0,2,4,6,8,10 conv 16..512 3x3 + BN    model.0,2,4,6,8,10 ``Conv`` (conv, bn, act)
1,3,5,7,9 maxpool 2/2                 model.1,3,5,7,9 ``MaxPool2d(2, 2)``
11 maxpool size 2 stride 1            model.11 ``ZeroPad2d((0,1,0,1))`` + model.12 ``MaxPool2d(2, 1)``
12,13,14 conv 1024 3x3, 256 1x1, 512  model.13,14,15 ``Conv``
15 conv 255 1x1 linear + 16 [yolo]    :class:`DarknetYoloHead` level on model.15 (P5/32)
17 route -4, 18 conv 128 1x1          model.16 ``Conv`` (from -2)
19 upsample 2, 20 route -1,8          model.17 ``Upsample``, model.18 ``Concat`` (-1, 8)
21 conv 256 3x3                       model.19 ``Conv``
22 conv 255 1x1 linear + 23 [yolo]    :class:`DarknetYoloHead` level on model.19 (P4/16)
====================================  ==============================================

The rule behind the table: Darknet's [convolutional] sections that feed no [yolo] layer map, in
order, onto the ``Conv`` modules before ``Detect``; a convolution feeding a [yolo] layer reads the
preceding ``Conv``'s output and becomes one level of :class:`DarknetYoloHead`. ultralytics' own
``Detect`` (anchor-free, DFL box regression) has no Darknet counterpart and is never loaded.
Known numeric difference: Darknet pads its stride-1 max-pool with -inf, ultralytics with zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

_SECTIONS = ("net", "convolutional", "maxpool", "upsample", "route", "yolo")
_ACTIVATIONS = {"leaky": 0.1, "linear": None}  # Darknet activation -> LeakyReLU slope (None: none)
# Darknet divides by sqrt(var) + 1e-6; torch by sqrt(var + eps). A tiny eps reproduces it.
DARKNET_BN_EPS = 1e-6


@dataclass(frozen=True)
class DarknetConv:
    """One [convolutional] section with its input channels worked out from the cfg's routes."""

    layer: int  # Darknet's layer index ([net] not counted)
    filters: int
    channels: int
    size: int
    stride: int
    pad: int
    batch_normalize: bool
    activation: str
    yolo: dict | None = None  # the [yolo] section this convolution feeds, if any

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.filters, self.channels, self.size, self.size)

    @property
    def num_floats(self) -> int:
        return self.filters * (4 if self.batch_normalize else 1) + int(np.prod(self.shape))


def parse_cfg(path: str | Path) -> list[dict[str, str]]:
    """Sections of a Darknet ``.cfg`` in file order, each ``{"type": name, key: value, ...}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line outside any section, or a ``key=value`` line without ``=``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Darknet cfg {path} does not exist")
    sections: list[dict[str, str]] = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            sections.append({"type": line.strip("[]").strip()})
        elif not sections or "=" not in line:
            raise ValueError(f"{path}:{n}: expected [section] or key=value, got {raw!r}")
        else:
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
    return sections


def darknet_convs(cfg_path: str | Path) -> list[DarknetConv]:
    """Every [convolutional] section of ``cfg_path`` with its exact weight shape.

    Raises:
        ValueError: a section type this reader does not support (the message lists valid ones),
            an unknown activation, or a route to a missing layer.
    """
    sections = parse_cfg(cfg_path)
    if not sections or sections[0]["type"] != "net":
        raise ValueError(f"Darknet cfg {cfg_path}: the first section must be [net]")
    channels = int(sections[0].get("channels", 3))
    out: list[int] = []  # output channels per layer
    convs: list[DarknetConv] = []
    for i, s in enumerate(sections[1:]):
        kind = s["type"]
        if kind not in _SECTIONS:
            raise ValueError(f"Darknet cfg {cfg_path}: layer {i} is [{kind}]; supported: {', '.join(_SECTIONS)}")
        if kind == "convolutional":
            act = s.get("activation", "logistic")
            if act not in _ACTIVATIONS:
                raise ValueError(f"Darknet cfg {cfg_path}: layer {i} activation {act!r}; "
                                 f"supported: {', '.join(_ACTIVATIONS)}")
            size = int(s.get("size", 1))
            pad = size // 2 if int(s.get("pad", 0)) else int(s.get("padding", 0))
            convs.append(DarknetConv(i, int(s["filters"]), channels, size, int(s.get("stride", 1)), pad,
                                     bool(int(s.get("batch_normalize", 0))), act))
            channels = convs[-1].filters
        elif kind == "route":
            refs = [int(v) for v in s["layers"].split(",")]
            refs = [i + r if r < 0 else r for r in refs]
            if any(not 0 <= r < i for r in refs):
                raise ValueError(f"Darknet cfg {cfg_path}: layer {i} routes to {s['layers']}, "
                                 f"outside layers 0..{i - 1}")
            channels = sum(out[r] for r in refs)
        elif kind == "yolo":
            if not convs or convs[-1].layer != i - 1:
                raise ValueError(f"Darknet cfg {cfg_path}: [yolo] layer {i} must follow a [convolutional] layer")
            convs[-1] = replace(convs[-1], yolo=s)
        out.append(channels)
    return convs


def read_darknet_weights(path: str | Path, convs: list[DarknetConv]) -> list[dict[str, torch.Tensor]]:
    """Per convolution ``{"weight", "bias"}`` or ``{"weight", "bn_bias", "bn_weight", "bn_mean", "bn_var"}``.

    Header: int32 major, minor, revision, then ``seen`` as int64 (major*10+minor >= 2) or int32;
    then float32 values layer by layer in cfg order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file ends inside a layer (naming it) or has bytes left over.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Darknet weights {path} does not exist")
    data = path.read_bytes()
    if len(data) < 16:
        raise ValueError(f"Darknet weights {path}: {len(data)} bytes is shorter than the header")
    major, minor, _ = np.frombuffer(data[:12], dtype=np.int32)
    offset = 20 if major * 10 + minor >= 2 else 16
    if (len(data) - offset) % 4:
        raise ValueError(f"Darknet weights {path}: {len(data) - offset} bytes after the header is not whole float32s")
    values = torch.from_numpy(np.frombuffer(data[offset:], dtype=np.float32).copy())
    blobs, pos = [], 0
    for c in convs:
        if pos + c.num_floats > values.numel():
            raise ValueError(f"Darknet weights {path}: file ends inside layer {c.layer} (conv {c.shape}): needs "
                             f"{c.num_floats} floats at offset {pos}, only {values.numel() - pos} left")
        names = ("bn_bias", "bn_weight", "bn_mean", "bn_var") if c.batch_normalize else ("bias",)
        blob = {}
        for name in names:
            blob[name], pos = values[pos:pos + c.filters], pos + c.filters
        blob["weight"] = values[pos:pos + int(np.prod(c.shape))].reshape(c.shape)
        pos += int(np.prod(c.shape))
        blobs.append(blob)
    if pos != values.numel():
        raise ValueError(f"Darknet weights {path}: {values.numel() - pos} float32 values left over after the "
                         f"last layer of the cfg; the weights belong to another cfg")
    return blobs


class DarknetYoloHead(nn.Module):
    """Darknet's anchor-based [yolo] decode over its 1x1 output convolutions.

    Output matches ultralytics' ``Detect`` in eval: ``(N, 4 + nc, boxes)``, boxes ``xywh`` in input
    pixels and scores ``sigmoid(objectness) * sigmoid(class)``, so the same NMS applies.

    Args:
        convs: one 1x1 output convolution per level, in the order ``forward`` receives features.
        anchors: per level, a ``(anchors, 2)`` tensor of anchor sizes in input pixels.
        strides: per level, input pixels per feature cell.
        nc: classes.
    """

    def __init__(self, convs: list[nn.Conv2d], anchors: list[torch.Tensor], strides: list[float], nc: int):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.nc, self.strides = nc, list(strides)
        for k, a in enumerate(anchors):
            self.register_buffer(f"anchors{k}", a.float())

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for k, (conv, x) in enumerate(zip(self.convs, feats)):
            anchors = getattr(self, f"anchors{k}")
            p = conv(x)
            n, _, h, w = p.shape
            p = p.view(n, len(anchors), 5 + self.nc, h, w)
            gy, gx = torch.meshgrid(torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij")
            xy = (p[:, :, :2].sigmoid() + torch.stack((gx, gy))) * self.strides[k]
            wh = p[:, :, 2:4].exp() * anchors.view(1, -1, 2, 1, 1)
            scores = p[:, :, 4:5].sigmoid() * p[:, :, 5:].sigmoid()
            out.append(torch.cat((xy, wh, scores), 2).permute(0, 2, 1, 3, 4).reshape(n, 4 + self.nc, -1))
        return torch.cat(out, 2)


def _check(cond: bool, path: Path, conv: DarknetConv, target: str, what: str) -> None:
    if not cond:
        raise ValueError(f"Darknet cfg {path}: layer {conv.layer} (conv {conv.shape}, stride {conv.stride}, "
                         f"pad {conv.pad}) does not fit {target}: {what}")


def load_darknet_weights(model: nn.Module, cfg_path: str | Path, weights_path: str | Path) -> DarknetYoloHead:
    """Load Darknet backbone+neck into an ultralytics YOLOv3-tiny and return Darknet's own head.

    ``model``'s ``Detect`` head is left as it is (freshly initialised for fine-tuning); BatchNorm
    eps of loaded layers becomes :data:`DARKNET_BN_EPS`, as Darknet normalises.

    Args:
        model: an ultralytics ``DetectionModel`` built from ``yolov3-tiny.yaml`` with
            ``LeakyReLU(0.1)`` activations (see :func:`hqbench.models.yolo.build_yolov3_tiny`).
        cfg_path: Darknet ``.cfg``.
        weights_path: Darknet ``.weights`` matching the cfg.

    Returns:
        A :class:`DarknetYoloHead` holding the cfg's output convolutions and [yolo] anchors,
        levels ordered as ``Detect.f`` lists its inputs.

    Raises:
        ValueError: a layer whose shape, stride, padding, BatchNorm or activation differs (naming
            the Darknet layer and the ultralytics module), or a weights file of the wrong length.
    """
    cfg_path = Path(cfg_path)
    convs = darknet_convs(cfg_path)
    blobs = read_darknet_weights(weights_path, convs)
    layers = list(model.model)
    detect = layers[-1]
    targets = [(f"model.{m.i}", m) for m in layers[:-1] if hasattr(m, "conv") and hasattr(m, "bn")]
    body = [c for c in convs if c.yolo is None]
    if len(body) != len(targets):
        raise ValueError(f"Darknet cfg {cfg_path} has {len(body)} body convolutions (layers "
                         f"{[c.layer for c in body]}), the ultralytics model {len(targets)} Conv modules "
                         f"({[n for n, _ in targets]}) before Detect")
    head_convs, anchors, sources = [], [], []
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []  # applied only once every layer has passed its checks
    it = iter(targets)
    last = None
    with torch.no_grad():
        for c, blob in zip(convs, blobs):
            if c.yolo is not None:
                _check(last is not None and c.size == 1 and not c.batch_normalize and c.activation == "linear",
                       cfg_path, c, "DarknetYoloHead", "expected a 1x1 linear convolution with bias after a Conv")
                conv = nn.Conv2d(c.channels, c.filters, 1)
                conv.weight.copy_(blob["weight"])
                conv.bias.copy_(blob["bias"])
                all_anchors = torch.tensor([float(v) for v in c.yolo["anchors"].split(",")]).view(-1, 2)
                mask = [int(v) for v in c.yolo["mask"].split(",")]
                nc = int(c.yolo["classes"])
                _check(c.filters == len(mask) * (5 + nc), cfg_path, c, "its [yolo] layer",
                       f"filters must be {len(mask)} anchors x (5 + {nc} classes)")
                head_convs.append(conv)
                anchors.append(all_anchors[mask])
                sources.append(last)  # a [yolo] convolution reads the Conv loaded just before it
                continue
            name, m = next(it)
            target = f"ultralytics {name} ({type(m).__name__})"
            _check(tuple(m.conv.weight.shape) == c.shape, cfg_path, c, target, f"weight {tuple(m.conv.weight.shape)}")
            _check(m.conv.stride == (c.stride,) * 2 and m.conv.padding == (c.pad,) * 2, cfg_path, c, target,
                   f"stride {m.conv.stride}, padding {m.conv.padding}")
            _check(c.batch_normalize and m.conv.bias is None and isinstance(m.bn, nn.BatchNorm2d), cfg_path, c,
                   target, "expected BatchNorm without conv bias on both sides")
            slope = _ACTIVATIONS[c.activation]
            if slope is None:
                act_ok = isinstance(m.act, nn.Identity)
            else:
                act_ok = isinstance(m.act, nn.LeakyReLU) and abs(m.act.negative_slope - slope) < 1e-9
            _check(act_ok, cfg_path, c, target, f"activation {m.act}, Darknet {c.activation!r}")
            copies += [(m.conv.weight, blob["weight"]), (m.bn.bias, blob["bn_bias"]), (m.bn.weight, blob["bn_weight"]),
                       (m.bn.running_mean, blob["bn_mean"]), (m.bn.running_var, blob["bn_var"])]
            last = m.i
    if sorted(sources) != sorted(detect.f):
        raise ValueError(f"Darknet cfg {cfg_path}: [yolo] layers read ultralytics layers {sources}, "
                         f"but Detect reads {detect.f}")
    with torch.no_grad():
        for dst, src in copies:
            dst.copy_(src)
    for _, m in targets:
        m.bn.eps = DARKNET_BN_EPS
    order = [sources.index(f) for f in detect.f]
    strides = [float(s) for s in detect.stride]
    return DarknetYoloHead([head_convs[k] for k in order], [anchors[k] for k in order], strides, nc)
