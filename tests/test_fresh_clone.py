"""On a fresh clone (no data.root, no HQBENCH_DATA), `hqbench test` runs the embedded demo and says
so first, instead of failing on the missing ImageNet (issue 14)."""

import json

import pytest

from hqbench.cli import demo_overrides, main


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.delenv("HQBENCH_DATA", raising=False)
    monkeypatch.setenv("HQBENCH_CACHE", str(tmp_path / "cache"))  # generated SAR scenes go here
    return monkeypatch


def test_demo_only_when_nothing_names_data_or_a_model(fresh):
    # the demo model comes from the task config (demo_model); its model file picks the embedded data
    assert demo_overrides("classification", ["method=fp32", "data.eval_limit=5"]) == ["model=mobilenet_v2_fmnist"]
    assert demo_overrides("detection", []) == ["model=yolov3_tiny_synth"]
    for given in (["model=vgg16"], ["data=imagenet"], ["data.root=/x"], ["model.weights=/w.tflite"]):
        assert demo_overrides("classification", given) == [], given
    assert demo_overrides("nope", []) == []
    fresh.setenv("HQBENCH_DATA", "/data")
    assert demo_overrides("classification", []) == []


@pytest.mark.slow
def test_fresh_clone_classification_runs_the_demo(fresh, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["test", "task=classification", "data.eval_limit=50", "data.calib_size=16", "method=fp32,B",
                 f"out={out}"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("No data configured") and "embedded classification demo" in first, first
    assert "model=mobilenet_v2_fmnist with its embedded data" in first
    rows = json.loads(out.read_text())
    assert [(r["model"], r["method"], r["n_eval"]) for r in rows] == [("mobilenet_v2_fmnist", "fp32", 50),
                                                                      ("mobilenet_v2_fmnist", "B", 50)]


@pytest.mark.slow
def test_fresh_clone_detection_runs_the_demo(fresh, tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["test", "task=detection", "data.num_test=4", "data.num_train=8", "data.calib_size=2",
                 "method=fp32,B", f"out={out}"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "embedded detection demo" in first and "model=yolov3_tiny_synth with its embedded data" in first, first
    rows = json.loads(out.read_text())
    assert [(r["model"], r["method"], r["n_eval"]) for r in rows] == [("yolov3_tiny_synth", "fp32", 4),
                                                                      ("yolov3_tiny_synth", "B", 4)]
    assert (tmp_path / "cache" / "synthetic-sar").is_dir()  # scenes generated in the cache, not the checkout


def test_without_the_demo_the_missing_data_error_points_to_it(fresh, capsys):
    assert main(["test", "model=mobilenet_v2_fmnist", "data=imagenet", "method=fp32"]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "no data for ImageNetDataModule" in text and "embedded demo" in text, text
