"""``model=ultralytics:PATH.yaml model.weights=STATE.pt``: an ultralytics detection architecture
from its yaml, weights from a plain state dict, through ``hqbench test task=detection``.

The YOLOv8n is built by ultralytics itself from its own ``yolov8.yaml`` (scale n, nc 1 for ships),
so the state dict is exactly what a user saves with ``torch.save(model.state_dict(), PATH)``.
On ``$HQBENCH_DATA/sar-ships`` when it is there, else on generated SAR scenes (the newcomer's data).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from hqbench.cli import main
from hqbench.models import create_model
from hqbench.models.ultralytics_source import find_model_yaml

IMGSZ = 256  # small for CPU; SSDD images are letterboxed to it as to the shipped model's 512
SMALL = ["data.eval_limit=8", "data.calib_size=8"]


def _write_yaml(folder: Path, package_yaml: str, name: str, **keys) -> Path:
    spec = yaml.safe_load(find_model_yaml(package_yaml).read_text())
    spec.update(keys)
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def yolov8n(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """``(yolov8n.yaml with nc 1, its model's state dict file, the model)``, built by ultralytics."""
    from hqbench.models.yolo import offline_ultralytics

    folder = tmp_path_factory.mktemp("yolov8n")
    path = _write_yaml(folder, "yolov8.yaml", "yolov8n.yaml", nc=1, names=["ship"], imgsz=IMGSZ)
    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(str(path), nc=1, verbose=False).eval()  # ultralytics reads the scale from the name
    torch.save(model.state_dict(), folder / "yolov8n_state.pt")
    return path, folder / "yolov8n_state.pt", model


def _data(tmp_path: Path, monkeypatch) -> list[str]:
    """The shared SSDD copy when ``$HQBENCH_DATA`` has it, else a few generated scenes."""
    env = os.environ.get("HQBENCH_DATA")
    if env and (Path(env) / "sar-ships").is_dir():
        return ["data=sar"]
    monkeypatch.delenv("HQBENCH_DATA", raising=False)
    monkeypatch.setenv("HQBENCH_CACHE", str(tmp_path / "cache"))
    return ["data=synthetic_sar", f"data.root={tmp_path / 'scenes'}", "data.num_train=8", "data.num_test=8"]


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_source_builds_what_ultralytics_builds(yolov8n):
    path, state, model = yolov8n
    ours, card = create_model(f"ultralytics:{path}", str(state))
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], model(x)[0])
    assert ours(x)[0].shape == (2, 4 + 1, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2)
    assert (card.name, card.input_size, card.num_classes, card.classes) == ("ultralytics:yolov8n.yaml", IMGSZ, 1, ("ship",))
    assert card.weights == str(state)
    # a bare name is one of ultralytics' own yamls, its scale from the name, as ultralytics reads it
    bare, card = create_model("ultralytics:yolov8n.yaml", "random")
    assert card.num_classes == 80 and card.input_size == 640
    assert sum(p.numel() for p in bare.model[:22].parameters()) == sum(p.numel() for p in model.model[:22].parameters())


@pytest.mark.slow
def test_every_method_runs_the_yolov8n(yolov8n, tmp_path, monkeypatch, no_network):
    path, state, _ = yolov8n
    out = tmp_path / "rows.json"
    common = ["test", "task=detection", *_data(tmp_path, monkeypatch), f"model=ultralytics:{path}",
              f"model.weights={state}", *SMALL, f"out={out}"]
    assert main([*common, "method=fp32,A,B,C,D"]) == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["fp32", "A", "B", "C", "D"]
    assert {r["model"] for r in rows} == {"ultralytics:yolov8n.yaml"} and {r["n_eval"] for r in rows} == {8}
    assert all(0 <= r["value"] <= 100 and 0 <= r["mAP50_95"] <= r["value"] for r in rows)
    assert all(r["act_range"] == "-128..127" for r in rows[1:])  # SiLU: a signed grid
    assert "model.model.22" in rows[1]["float_ops"]  # the Detect head's box decoding stays float

    assert main([*common, "method=B", "engine=onnxruntime"]) == 0
    ort = [r for r in json.loads(out.read_text()) if r["engine"] == "onnxruntime"]
    assert [r["method"] for r in ort] == ["B"] and 0 <= ort[0]["value"] <= 100
    assert not no_network


def test_errors_are_one_line_naming_the_file(yolov8n, tmp_path, capsys):
    path, state, _ = yolov8n
    run = ["test", "task=detection", "data=synthetic_sar", "method=fp32"]

    missing = tmp_path / "nope.yaml"
    assert main([*run, f"model=ultralytics:{missing}", f"model.weights={state}"]) == 1
    assert f"model yaml {missing} does not exist" in _error_line(capsys)

    seg = _write_yaml(tmp_path, "yolov8-seg.yaml", "yolov8n-seg.yaml", nc=1)
    assert main([*run, f"model=ultralytics:{seg}", f"model.weights={state}"]) == 1
    assert f"{seg} is not a detection model: its last layer is Segment" in _error_line(capsys)
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("path: .\ntrain: images\nnames: [ship]\n")
    assert main([*run, f"model=ultralytics:{data_yaml}", f"model.weights={state}"]) == 1
    assert f"{data_yaml} is not an ultralytics model yaml" in _error_line(capsys)

    coco = _write_yaml(tmp_path, "yolov8.yaml", "yolov8n-coco.yaml", imgsz=IMGSZ)  # nc 80: another head
    assert main([*run, f"model=ultralytics:{coco}", f"model.weights={state}"]) == 1
    line = _error_line(capsys)
    assert (f"weights file {state} does not fit the yaml's architecture: key 'model.22.cv3.0.0.conv.weight' has "
            "shape (64, 64, 3, 3) in the file but (80, 64, 3, 3) in the model (36 keys of another shape") in line
    short = tmp_path / "short.pt"
    torch.save({k: v for k, v in torch.load(state).items() if not k.startswith("model.22.")}, short)
    assert main([*run, f"model=ultralytics:{path}", f"model.weights={short}"]) == 1
    assert "key 'model.22.cv2.0.0.conv.weight' (shape (64, 64, 3, 3) in the model) is missing" in _error_line(capsys)


def test_a_pickled_model_is_refused_unopened(yolov8n, tmp_path, capsys):
    path, _, model = yolov8n
    pickled = tmp_path / "best.pt"
    torch.save({"model": model, "train_args": {}}, pickled)  # ultralytics' checkpoint layout
    assert main(["test", "task=detection", "data=synthetic_sar", f"model=ultralytics:{path}",
                 f"model.weights={pickled}"]) == 1
    assert f"weights file {pickled} is a full ultralytics checkpoint" in _error_line(capsys)


def test_a_yaml_cannot_run_code(yolov8n, tmp_path):
    """ultralytics' builder eval-s ``activation`` and calls any name of its module: both checked first."""
    marker = tmp_path / "ran"
    evil = _write_yaml(tmp_path, "yolov8.yaml", "yolov8n-evil.yaml", nc=1,
                       activation=f"__import__('pathlib').Path('{marker}').touch()")
    with pytest.raises(ValueError, match=f"{evil}: activation .* is not a torch.nn module call"):
        create_model(f"ultralytics:{evil}", "random")
    spec = yaml.safe_load(evil.read_text())
    spec.pop("activation")
    spec["backbone"][0] = [-1, 1, "torch_safe_load", [str(tmp_path / "x.pt")]]
    evil.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=f"{evil}: layer 0: 'torch_safe_load' is not an ultralytics or torch.nn layer"):
        create_model(f"ultralytics:{evil}", "random")
    assert not marker.exists()


def test_class_names_are_checked_against_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HQBENCH_DATA", raising=False)
    monkeypatch.setenv("HQBENCH_CACHE", str(tmp_path / "cache"))
    boats = _write_yaml(tmp_path, "yolov8.yaml", "yolov8n.yaml", nc=1, names=["boat"], imgsz=64)
    assert main(["test", "task=detection", "data=synthetic_sar", f"data.root={tmp_path / 'scenes'}", "data.num_train=2",
                 "data.num_test=2", "data.calib_size=1", "data.size=64", f"model=ultralytics:{boats}",
                 "model.weights=random", "method=fp32"]) == 1
    assert "model 'ultralytics:yolov8n.yaml' detects ['boat'] but the data's categories are ['ship']" in _error_line(capsys)


def test_an_ultralytics_source_picks_detection_data_without_data_given():
    """model=ultralytics:... needs no data=: its source option picks SAR detection data, while other
    sources keep ImageNet."""
    from hqbench.config import compose

    assert compose("detection", ["model=ultralytics:yolov8n.yaml"]).data._target_.endswith("SARShipDataModule")
    assert compose("classification", ["model=tflite:x.tflite"]).data._target_.endswith("ImageNetDataModule")
