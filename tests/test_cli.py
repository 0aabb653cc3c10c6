"""The hqbench CLI, its configs and result.py, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class

from hqbench.cli import main
from hqbench.config import TASKS_DIR, compose, list_tasks

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {"task", "model", "dataset", "method", "metric", "value", "n_eval", "n_calib", "seed",
            "calib_seconds", "eval_seconds", "act_range", "engine"}


@pytest.mark.parametrize("task", list_tasks())
def test_every_task_config_composes_and_its_targets_import(task):
    cfg = compose(task, [])
    assert get_class(cfg.data._target_)
    for model_file in (TASKS_DIR / "model").glob("*.yaml"):
        if not model_file.stem.startswith("source"):  # options behind model=PREFIX:SPEC: the name is the spec
            assert compose(task, [f"model={model_file.stem}"]).model.name == model_file.stem
    assert compose(task, ["model=tflite:/m.tflite"]).model.name == "tflite:/m.tflite"


def test_comma_list_is_a_value_not_a_sweep():
    assert list(compose("classification", ["method=A,D"]).method) == ["A", "D"]
    assert list(compose("classification", ["method=D"]).method) == ["D"]


def test_usage_and_errors(capsys):
    assert main([]) == 2
    assert "usage: hqbench test" in capsys.readouterr().out
    assert main(["test", "task=nope"]) == 1
    assert "unknown task 'nope'; valid: classification" in capsys.readouterr().out
    assert main(["test", "method=Z", "data.root=/nonexistent"]) == 1
    assert "unknown method 'Z'; valid: fp32, pytorch, A, B, C, D" in capsys.readouterr().out
    assert main(["test", "model=nope"]) == 1
    assert "nope" in capsys.readouterr().out


def test_cli_on_real_imagenet(real_data, tmp_path):
    out = tmp_path / "r.json"
    code = main(["test", "task=classification", "model=mobilenet_v2_tflite", "method=fp32,B,D",
                 "data.eval_limit=16", "data.calib_size=16", "data.num_workers=0", f"out={out}"])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["fp32", "B", "D"]
    for r in rows:
        assert CONTRACT <= set(r)
        assert 40 <= r["value"] <= 100 and r["n_eval"] == 16
    assert rows[0]["act_range"] == "float" and rows[2]["act_range"] == "-128..127 & 0..255"
    assert out.with_suffix(".md").read_text().count("mobilenet_v2_tflite") == 1


def test_result_py_prints_the_paper_table(real_data, tmp_path):
    out = tmp_path / "paper.json"
    proc = subprocess.run([sys.executable, str(ROOT / "result.py"), "-D", "data.eval_limit=8", "data.calib_size=8",
                           "data.num_workers=0", "model.weights=null", f"out={out}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Activation Redistribution" in proc.stdout and "\x1b" not in proc.stdout
    methods = {(r["model"], r["method"]) for r in json.loads(out.read_text())}
    assert {("mobilenet_v2_tflite", m) for m in ("fp32", "pytorch", "D")} <= methods


def test_result_py_runs_the_embedded_demo_without_data(tmp_path, monkeypatch):
    """A fresh machine: no HQBENCH_DATA, no data.root. Rows come from the embedded Fashion-MNIST
    subset, generated SAR scenes and the committed checkpoints."""
    monkeypatch.delenv("HQBENCH_DATA", raising=False)
    out = tmp_path / "demo.json"
    env = {k: v for k, v in __import__("os").environ.items() if k != "HQBENCH_DATA"}
    proc = subprocess.run([sys.executable, str(ROOT / "result.py"), "-B", "data.eval_limit=200", "data.calib_size=64",
                           f"out={out}"], capture_output=True, text=True, cwd=tmp_path, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "embedded demo data" in proc.stdout
    rows = json.loads(out.read_text())
    assert {("mobilenet_v2_fmnist", m) for m in ("fp32", "pytorch", "B")} <= {(r["model"], r["method"]) for r in rows}
    fp32 = next(r["value"] for r in rows if r["model"] == "mobilenet_v2_fmnist" and r["method"] == "fp32")
    classification = [r for r in rows if r["task"] == "classification"]
    assert fp32 > 80 and all(r["n_eval"] == 200 for r in classification)
    assert "Fashion-MNIST subset" in rows[0]["dataset"]
    detection = {r["method"]: r for r in rows if r["task"] == "detection"}
    assert set(detection) == {"fp32", "pytorch", "B"} and "synthetic SAR" in detection["fp32"]["dataset"]
    assert detection["fp32"]["value"] > 50 and detection["B"]["value"] > 50


def test_detection_task_runs_every_column_through_hooks(tmp_path):
    """hqbench test task=detection on generated scenes with an untrained detector: the plumbing
    (letterboxed data, NMS, mAP, hooks-based PyTorch column, restore) independent of any checkpoint."""
    out = tmp_path / "det.json"
    code = main(["test", "task=detection", "model=yolov3_tiny_synth", "model.weights=random", "data=synthetic_sar",
                 f"data.root={tmp_path / 'scenes'}", "data.num_train=4", "data.num_test=3", "data.calib_size=2",
                 "data.size=128", "method=fp32,pytorch,D", f"out={out}"])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["fp32", "pytorch", "D"]
    assert {r["metric"] for r in rows} == {"mAP50"} and all(0 <= r["value"] <= 100 for r in rows)
    assert [r["act_range"] for r in rows] == ["float", "0..127", "-128..127"]  # LeakyReLU: signed grid
    assert all("mAP50_95" in r for r in rows) and "model.model.20" in rows[2]["float_ops"]


def test_train_detection_writes_half_precision_weights_and_a_card(tmp_path):
    """hqbench train task=detection: ultralytics fine-tunes, the result loads through the registry."""
    ckpt = tmp_path / "det.pt"
    code = main(["train", "task=detection", "model=yolov3_tiny_synth", "data=synthetic_sar",
                 f"data.root={tmp_path / 'scenes'}", "data.num_train=4", "data.num_test=2", "data.calib_size=2",
                 "train.init=random", "train.epochs=1", "train.batch=2", f"train.checkpoint={ckpt}",
                 f"train.work_dir={tmp_path / 'work'}"])
    assert code == 0
    state = torch.load(ckpt, weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    card = ckpt.with_suffix(".md").read_text()
    assert "1 epochs" in card and "train2017 (4 images)" in card and "FP32 mAP50" in card
    from hqbench.models import create_model

    model, model_card = create_model("yolov3_tiny_synth", weights=str(ckpt))
    assert model_card.weights == str(ckpt)

    # A second stage starts from the fp16 checkpoint itself (how the committed checkpoints were refined).
    ckpt2 = tmp_path / "det2.pt"
    code = main(["train", "task=detection", "model=yolov3_tiny_synth", "data=synthetic_sar",
                 f"data.root={tmp_path / 'scenes'}", "data.num_train=4", "data.num_test=2", "data.calib_size=2",
                 f"train.init={ckpt}", "train.epochs=1", "train.batch=2", f"train.checkpoint={ckpt2}",
                 f"train.work_dir={tmp_path / 'work2'}"])
    assert code == 0 and f"start: {ckpt}" in ckpt2.with_suffix(".md").read_text()
    start = torch.load(tmp_path / "work2" / "init.pt", weights_only=False)["model"].state_dict()
    assert all(torch.equal(start[k].half(), v) for k, v in state.items())


def test_cfg_job_prints_the_config_and_group_lists_are_refused(capsys):
    assert main(["test", "--cfg", "job", "bits=w8a4", "model=mobilenet_v2_fmnist", "data=fashion_mnist"]) == 0
    out = capsys.readouterr().out
    assert "bits: w8a4" in out and "name: mobilenet_v2_fmnist" in out
    assert main(["test", "model=googlenet_fmnist,vgg16_fmnist"]) == 1
    out = capsys.readouterr().out
    assert "model= takes one choice" in out and len([ln for ln in out.splitlines() if "error" in ln]) == 1
