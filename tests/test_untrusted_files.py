"""Weights files are data: reading one never runs code, deletes a file or reaches the network.

A pickle can name any callable to run while it loads. The malicious files here name ``open(marker, "w")``,
so the marker file exists exactly when a loader executed code from the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from hqbench.cli import main
from hqbench.models import create_model, list_models
from hqbench.models.yolo import read_detection_state


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: any loader that executes pickled code creates the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(params=["torch_zip", "raw_pickle", "lightning_zip"])
def evil(request, tmp_path) -> tuple[Path, Path]:
    """``(weights file, marker)``: a torch.save zip, a bare pickle, and a Lightning-shaped checkpoint,
    each carrying the code-running object where a tensor should be."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    payload = {"conv.weight": _RunsCode(marker)}
    if request.param == "raw_pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save({"state_dict": payload} if request.param == "lightning_zip" else payload, path)
    return path, marker


def _refused(call, path: Path, marker: Path) -> str:
    """Run ``call``; it must raise one clean one-line ValueError naming ``path``, and run no code."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    assert not marker.exists(), "a weights loader executed code from the file"
    return message


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_refuses_a_code_carrying_pickle(name, evil):
    """Each registry entry's ``weights=`` path (state dicts, Lightning, TFLite, EfficientNet, YOLO)."""
    path, marker = evil
    _refused(lambda: create_model(name, weights=str(path)), path, marker)


def test_read_detection_state_refuses_a_code_carrying_pickle(evil):
    path, marker = evil
    _refused(lambda: read_detection_state(path), path, marker)


def test_train_init_refuses_before_ultralytics_sees_the_file(evil, tmp_path):
    """``train.init=PATH``: the file is read safely first; nothing reaches ultralytics' unpickler."""
    from hqbench.tasks.yolo_training import train_yolo

    path, marker = evil
    work = tmp_path / "work"
    _refused(lambda: train_yolo(tmp_path / "no-data", work, init=path), path, marker)
    assert not (work / "init.pt").exists()


def test_full_ultralytics_checkpoint_is_refused_with_the_conversion(tmp_path, no_network):
    """A real ultralytics ``.pt`` (a pickled DetectionModel) is not unpickled; the message says how to convert it."""
    from hqbench.models.yolo import build_yolov3_tiny, save_ultralytics_checkpoint

    path = save_ultralytics_checkpoint(build_yolov3_tiny(nc=1), tmp_path / "best.pt")
    message = _refused(lambda: create_model("yolov3_tiny_sar", weights=str(path)), path, tmp_path / "none")
    assert "ultralytics" in message and "state_dict()" in message
    assert no_network == []


def test_state_dict_written_by_hqbench_still_loads(tmp_path):
    """The safe reader keeps accepting what hqbench and Lightning write."""
    from hqbench.models.yolo import build_yolov3_tiny

    state = build_yolov3_tiny(nc=1).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "lightning.ckpt")
    loaded = read_detection_state(tmp_path / "lightning.ckpt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_cli_detection_weights_refused_with_exit_1(evil, capsys):
    """``hqbench test task=detection model.weights=evil.pt``: exit 1 with an error, no code run."""
    path, marker = evil
    assert main(["test", "task=detection", f"model.weights={path}", "method=fp32"]) == 1
    assert "error:" in capsys.readouterr().out and not marker.exists()


def test_cli_train_init_refused_with_exit_1(tmp_path, capsys):
    """``hqbench train task=detection train.init=evil.pt`` on generated scenes: refused before training."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"w": _RunsCode(marker)}, path)
    code = main(["train", "task=detection", "model=yolov3_tiny_synth", "data=synthetic_sar",
                 f"data.root={tmp_path / 'scenes'}", "data.num_train=2", "data.num_test=1", "data.calib_size=1",
                 "data.size=64", f"train.init={path}", f"train.work_dir={tmp_path / 'work'}",
                 f"train.checkpoint={tmp_path / 'out.pt'}"])
    assert code == 1 and "error:" in capsys.readouterr().out
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("name", ["yolov3_tiny_sar", "yolov3_tiny_synth"])
def test_corrupt_asset_named_file_is_kept_and_nothing_is_downloaded(name, tmp_path, monkeypatch, no_network):
    """A damaged ``yolov8n.pt`` (an ultralytics asset name, given bare as ultralytics would resolve it):
    ultralytics' loader would delete it and download a replacement; hqbench reports it and leaves it be."""
    monkeypatch.chdir(tmp_path)
    corrupt = b"PK\x03\x04 this was a checkpoint once" + bytes(range(256))
    Path("yolov8n.pt").write_bytes(corrupt)
    with pytest.raises(ValueError, match="yolov8n.pt"):
        create_model(name, weights="yolov8n.pt")
    with pytest.raises(ValueError, match="yolov8n.pt"):
        read_detection_state(Path("yolov8n.pt"))
    assert Path("yolov8n.pt").read_bytes() == corrupt
    assert no_network == []
