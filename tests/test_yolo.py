"""YOLOv3-tiny: Darknet converter, untouched-weights COCO check, offline guard, quantization path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hqbench.models.darknet import darknet_convs, load_darknet_weights, read_darknet_weights
from hqbench.models.yolo import build_yolov3_tiny, darknet_yolov3_tiny

# yolov3-tiny.cfg reduced to the keys the reader uses (the real file is public domain).
TINY_CFG = """[net]
channels=3
""" + "".join(f"[convolutional]\nbatch_normalize=1\nfilters={f}\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
              f"[maxpool]\nsize=2\nstride={1 if f == 512 else 2}\n" for f in (16, 32, 64, 128, 256, 512)) + """
[convolutional]
batch_normalize=1
filters=1024
size=3
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=256
size=1
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=512
size=3
stride=1
pad=1
activation=leaky
[convolutional]
size=1
stride=1
pad=1
filters=255
activation=linear
[yolo]
mask = 3,4,5
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=80
[route]
layers = -4
[convolutional]
batch_normalize=1
filters=128
size=1
stride=1
pad=1
activation=leaky
[upsample]
stride=2
[route]
layers = -1, 8
[convolutional]
batch_normalize=1
filters=256
size=3
stride=1
pad=1
activation=leaky
[convolutional]
size=1
stride=1
pad=1
filters=255
activation=linear
[yolo]
mask = 0,1,2
anchors = 10,14,  23,27,  37,58,  81,82,  135,169,  344,319
classes=80
"""
# (Darknet layer, weight shape, batch-normalised) of the official yolov3-tiny.cfg.
KNOWN = [(0, (16, 3, 3, 3), True), (2, (32, 16, 3, 3), True), (4, (64, 32, 3, 3), True), (6, (128, 64, 3, 3), True),
         (8, (256, 128, 3, 3), True), (10, (512, 256, 3, 3), True), (12, (1024, 512, 3, 3), True),
         (13, (256, 1024, 1, 1), True), (14, (512, 256, 3, 3), True), (15, (255, 512, 1, 1), False),
         (18, (128, 256, 1, 1), True), (21, (256, 384, 3, 3), True), (22, (255, 256, 1, 1), False)]
# A natural image shipped inside the ultralytics wheel (found without importing ultralytics).
BUS = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets" / "bus.jpg"


@pytest.fixture
def darknet_files() -> tuple[Path, Path]:
    root = os.environ.get("HQBENCH_DATA")
    files = tuple(Path(root or ".") / "weights" / f"yolov3-tiny.{ext}" for ext in ("cfg", "weights"))
    if not root or not all(f.is_file() for f in files):
        pytest.skip("HQBENCH_DATA is unset or holds no weights/yolov3-tiny.{cfg,weights}: not run")
    return files


def _write_weights(path: Path, cfg: Path, extra: int = 0, seed: int = 0) -> list[np.ndarray]:
    """A Darknet v0.2 weights file of seeded random values for ``cfg`` (+/- ``extra`` floats)."""
    rng = np.random.default_rng(seed)
    blobs = []
    for c in darknet_convs(cfg):
        n = c.filters * (4 if c.batch_normalize else 1) + int(np.prod(c.shape))
        blob = rng.uniform(0.5, 1.5, n).astype(np.float32)  # positive: valid BN variances
        blobs.append(blob)
    data = np.concatenate(blobs)
    data = data[:extra] if extra < 0 else np.concatenate([data, np.zeros(extra, np.float32)])
    path.write_bytes(np.array([0, 2, 0], np.int32).tobytes() + np.array([0], np.int64).tobytes() + data.tobytes())
    return blobs


def test_cfg_gives_known_layer_shapes(tmp_path):
    (tmp_path / "tiny.cfg").write_text(TINY_CFG)
    assert [(c.layer, c.shape, c.batch_normalize) for c in darknet_convs(tmp_path / "tiny.cfg")] == KNOWN


def test_shared_cfg_gives_known_layer_shapes(darknet_files):
    convs = darknet_convs(darknet_files[0])
    assert [(c.layer, c.shape, c.batch_normalize) for c in convs] == KNOWN
    assert sum(c.num_floats for c in convs) * 4 + 20 == darknet_files[1].stat().st_size


def test_converter_puts_every_value_in_its_module(tmp_path):
    cfg, weights = tmp_path / "tiny.cfg", tmp_path / "tiny.weights"
    cfg.write_text(TINY_CFG)
    blobs = _write_weights(weights, cfg)
    model = build_yolov3_tiny(nc=80)
    detect_before = {k: v.clone() for k, v in model.model[20].state_dict().items()}
    head = load_darknet_weights(model, cfg, weights)
    convs = darknet_convs(cfg)
    body = dict(zip([c.layer for c in convs], blobs))
    for layer, index in [(0, 0), (2, 2), (10, 10), (12, 13), (13, 14), (14, 15), (18, 16), (21, 19)]:
        m, c, blob = model.model[index], convs[[c.layer for c in convs].index(layer)], torch.from_numpy(body[layer])
        f = c.filters
        torch.testing.assert_close(m.bn.bias, blob[:f]), torch.testing.assert_close(m.bn.running_var, blob[3 * f:4 * f])
        torch.testing.assert_close(m.conv.weight.flatten(), blob[4 * f:])
    # Head levels follow Detect.f = [19, 15]: P4 (Darknet layer 22) first, then P5 (layer 15).
    torch.testing.assert_close(head.convs[0].bias, torch.from_numpy(body[22][:255]))
    torch.testing.assert_close(head.convs[1].weight.flatten(), torch.from_numpy(body[15][255:]))
    assert head.strides == [16.0, 32.0] and head.anchors0.tolist() == [[10, 14], [23, 27], [37, 58]]
    assert all(torch.equal(v, model.model[20].state_dict()[k]) for k, v in detect_before.items())


@pytest.mark.parametrize("extra, message", [(-1, "file ends inside layer 22"), (3, "3 float32 values left over")])
def test_converter_rejects_wrong_length(tmp_path, extra, message):
    cfg, weights = tmp_path / "tiny.cfg", tmp_path / "tiny.weights"
    cfg.write_text(TINY_CFG)
    _write_weights(weights, cfg, extra=extra)
    with pytest.raises(ValueError, match=message):
        read_darknet_weights(weights, darknet_convs(cfg))


def test_converter_names_the_mismatched_layer(tmp_path):
    cfg, weights = tmp_path / "wide.cfg", tmp_path / "wide.weights"
    cfg.write_text(TINY_CFG.replace("filters=1024", "filters=1000"))
    _write_weights(weights, cfg)
    model = build_yolov3_tiny(nc=80)
    before = model.model[0].conv.weight.clone()
    with pytest.raises(ValueError, match=r"layer 12 \(conv \(1000, 512, 3, 3\).*ultralytics model.13 \(Conv\)"):
        load_darknet_weights(model, cfg, weights)
    assert torch.equal(model.model[0].conv.weight, before)  # nothing loaded when any layer fails


def test_cfg_with_unsupported_section_lists_valid_ones(tmp_path):
    (tmp_path / "x.cfg").write_text(TINY_CFG.replace("[upsample]", "[shortcut]"))
    with pytest.raises(ValueError, match=r"layer 19 is \[shortcut\]; supported: net, convolutional"):
        darknet_convs(tmp_path / "x.cfg")


@pytest.mark.realdata
def test_untouched_darknet_weights_detect_coco_objects(darknet_files):
    from PIL import Image

    from hqbench.data.sar import letterbox
    from hqbench.tasks.detection import nms

    if not BUS.is_file():
        pytest.skip(f"{BUS} (shipped with ultralytics) is missing")
    model = darknet_yolov3_tiny(*darknet_files)
    with Image.open(BUS) as img:
        x = letterbox(img, 416)[0][None]
    with torch.no_grad():
        det = nms(model(x), conf_thres=0.25, iou_thres=0.45)[0]
    labels = det["labels"].tolist()
    # COCO: 0 person, 5 bus. The image shows a bus and four people.
    assert 5 in labels and labels.count(0) >= 3, labels
    bus = det["boxes"][det["labels"] == 5][0]
    assert (bus[2] - bus[0]) > 0.6 * 416  # the bus spans most of the frame


_OFFLINE_SCRIPT = """
import json, socket, sys
attempts = []
def refuse(name):
    def fn(*args, **kwargs):
        attempts.append(f"{name}{args[1:2] if name == 'connect' else args[:1]}")
        raise OSError("network disabled by test")
    return fn
socket.socket.connect = refuse("connect")
socket.create_connection = refuse("create_connection")
socket.getaddrinfo = refuse("getaddrinfo")
import hqbench.models, hqbench.tasks.detection, hqbench.data.sar
lazy = "ultralytics" not in sys.modules
import torch
from hqbench.models.yolo import build_yolov3_tiny, offline_ultralytics
ul = offline_ultralytics()
from ultralytics.utils import SETTINGS, USER_CONFIG_DIR
from ultralytics.utils.checks import check_font
model = build_yolov3_tiny(nc=1)
with torch.no_grad():
    shape = list(model(torch.rand(1, 3, 128, 128))[0].shape)
print(json.dumps({"attempts": attempts, "lazy": lazy, "shape": shape, "sync": SETTINGS["sync"],
                  "font": str(check_font("Arial.ttf")), "config": str(USER_CONFIG_DIR)}))
"""


def test_offline_guard_makes_no_network_attempt_from_a_fresh_import(tmp_path):
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("YOLO_OFFLINE", None)
    run = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []
    assert result["lazy"], "importing hqbench.models/tasks/data must not import ultralytics"
    assert result["shape"] == [1, 5, 8 * 8 + 4 * 4] and result["sync"] is False
    assert result["font"] == str(tmp_path / "Ultralytics" / "Arial.ttf")


def test_offline_guard_in_process(monkeypatch):
    import socket

    attempts = []

    def refuse(*args, **kwargs):  # recorded, because ultralytics swallows OSError around its probes
        attempts.append(args)
        raise OSError("network disabled by test")

    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = build_yolov3_tiny(nc=1)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))[0]
    assert out.shape == (1, 5, 4 * 4 + 2 * 2)  # xywh + 1 class over the stride-16 and stride-32 grids
    assert attempts == []


def test_quantization_core_runs_on_the_detector():
    from hqbench import quant

    model = build_yolov3_tiny(nc=1)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ref = model(x)[0]
    qmodel = quant.quantize(model, [torch.rand(1, 3, 128, 128)], "B", float_scopes=("model.20",))
    assert len(qmodel.plan.folds) == 19 and len(qmodel.plan.points) == 27
    assert qmodel.plan.float_ops and all(n.startswith("model.20") for n in qmodel.plan.float_ops)
    with torch.no_grad():
        out = qmodel(x)[0]
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert torch.equal(qmodel.remove()(x)[0], ref)
