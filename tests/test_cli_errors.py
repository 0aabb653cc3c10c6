"""What the CLI does with a broken plugin, a help request, a bad ``out=``, a DataLoader worker's error
and a config folder from elsewhere (issue 32: PL1, help, K09/K11/K12/K25, D05-D07, targets)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hqbench import config
from hqbench.cli import main

TRUST = "HQBENCH_TRUST_TARGETS"  # the opt-out, named in the error
SMALL = ["model=mobilenet_v2_fmnist", "data=fashion_mnist", "data.eval_limit=16", "data.calib_size=16"]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- PL1: a calibrator plugin that fails to import ------------------------------------------------


def _broken_plugin(site: Path) -> None:
    """A distribution on ``site`` whose ``hqbench.calibrators`` entry point names a module that raises."""
    dist = site / "broken_plugin-0.dist-info"
    dist.mkdir(parents=True)
    (site / "broken_plugin.py").write_text('raise RuntimeError("calibration table missing\\nsecond line")\n')
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[hqbench.calibrators]\nbroken = broken_plugin\n")


def test_a_broken_calibrator_plugin_is_one_warning_and_its_method_one_error(tmp_path):
    """Each in a fresh process, so the plugin is discovered there; hqbench imports and runs, and only
    ``method=broken`` fails, in one line saying why."""
    _broken_plugin(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if k != "HQBENCH_DATA"}
    env.update(PYTHONPATH=str(tmp_path / "site"), HQBENCH_CACHE=str(tmp_path / "cache"))
    run = lambda *args: subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                                       cwd=tmp_path, timeout=600)
    imported = run("-c", "import hqbench.quant, hqbench.methods as m; print(m.list_methods())")
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert "'B'" in imported.stdout and "broken" not in imported.stdout
    warning = _lines(imported.stderr)
    assert len(warning) == 1, imported.stderr
    for words in ("warning:", "'broken'", "broken_plugin", "RuntimeError: calibration table missing"):
        assert words in warning[0], (words, warning)
    assert "second line" not in imported.stderr
    asked = run("-m", "hqbench", "test", *SMALL, "method=fp32,broken")
    assert asked.returncode == 1, asked.stdout[-2000:] + asked.stderr[-2000:]
    errors = [line for line in _lines(asked.stdout) if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), asked.stdout
    assert "'broken'" in errors[0] and "RuntimeError: calibration table missing" in errors[0], errors
    assert "Traceback" not in asked.stdout + asked.stderr and len(_lines(asked.stderr)) == 1


# --- help: a usage text, without torch ------------------------------------------------------------

_HELP = """
import sys
from hqbench.cli import main
codes = [main(a) for a in (["--help"], ["-h"], ["test", "--help"], ["test", "task=detection", "--help"],
                            ["train", "--help"], [])]
print("CODES", codes)
print("HEAVY", [m for m in ("torch", "lightning", "ultralytics", "torchvision") if m in sys.modules])
"""


def test_every_help_prints_its_usage_without_importing_torch():
    proc = subprocess.run([sys.executable, "-c", _HELP], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CODES [0, 0, 0, 0, 0, 2]" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout[-2000:]
    assert proc.stdout.count("usage: hqbench test") == 6 and "task=detection: " in proc.stdout
    assert "mobilenet_v2_fmnist" in proc.stdout and "hqbench --list" in proc.stdout


def test_list_fills_in_the_registries(capsys):
    assert main(["--list"]) == 0
    text = capsys.readouterr().out
    assert "A,B,C,D" in text and "onnxruntime" in text and "tflite:PATH" in text and "--list prints" not in text


# --- out=: checked before anything is computed ---------------------------------------------------


@pytest.fixture
def no_run(monkeypatch):
    """Records whether a run (or a sweep) started: a bad ``out=`` must stop the command before."""
    import hqbench.multirun
    import hqbench.runner

    started = []
    monkeypatch.setattr(hqbench.runner, "run", lambda *a, **k: started.append("run") or [])
    monkeypatch.setattr(hqbench.multirun, "run_multirun", lambda *a, **k: started.append("sweep") or [])
    return started


def _bad_outs(tmp: Path) -> list[tuple[str, str]]:
    (tmp / "folder").mkdir()
    (tmp / "a_file").write_text("")
    (tmp / "notes.json").write_text("my notes, not rows\n")
    (tmp / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp / "object.json").write_text('{"rows": []}\n')
    return [("folder", "is a directory"), ("folder/", "is a directory"), ("r.txt", "ends in .json"),
            ("r", "ends in .json"), ("r.csv", "ends in .json"), ("a_file/sub/r.json", "is a file"),
            ("notes.json", "not a results file: not valid JSON"), ("binary.json", "not UTF-8"),
            ("object.json", "expected a JSON list")]


def test_a_bad_out_is_one_line_before_anything_runs_or_is_written(tmp_path, no_data, no_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = _bad_outs(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "cache" not in p.parts)
    for out, words in cases:
        for extra in ([], ["redo=true"]):  # redo skips the resume lookup that met some of these early
            assert main(["test", *SMALL, "method=fp32,B", f"out={out}", *extra]) == 1, out
            text = capsys.readouterr().out
            assert len(_lines(text)) == 1 and text.startswith(f"error: out={out}") and words in text, (out, text)
    assert main(["test", "-m", "seed=0,1", *SMALL, "out=folder"]) == 1
    assert "is a directory" in capsys.readouterr().out
    assert no_run == []
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "cache" not in p.parts) == before
    assert main(["test", *SMALL, "out=new/sub/r.json"]) == 0  # a missing folder is created later, as before
    assert main(["test", "-m", "seed=0,1", *SMALL, "out=new/sweep.json"]) == 0
    assert no_run == ["run", "sweep"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes in any folder")
def test_out_in_a_folder_without_write_permission(tmp_path, no_data, no_run, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["test", *SMALL, f"out={locked / 'sub' / 'r.json'}"]) == 1
    finally:
        locked.chmod(0o700)
    assert "permission denied" in capsys.readouterr().out and no_run == []


def test_a_bad_out_loses_no_computed_row(tmp_path, no_data, capsys):
    """K12 as users met it: the first cell computed, then the write refused. Now nothing starts."""
    assert main(["test", *SMALL, "method=fp32,B", f"out={tmp_path / 'r.txt'}"]) == 1
    text = capsys.readouterr().out
    assert len(_lines(text)) == 1 and "ends in .json" in text and "acc" not in text
    assert list(tmp_path.glob("r.*")) == []


# --- D05-D07: an error inside a DataLoader worker ------------------------------------------------


class _Failing(torch.utils.data.Dataset):
    def __init__(self, error: Exception):
        self.error = error

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        raise self.error


@pytest.mark.parametrize("error", [ValueError("image /data/x.JPEG is damaged or truncated"),
                                   FileNotFoundError("/data/y.JPEG was removed during the run"),
                                   KeyError("label n0000 is not in the mapping")], ids=lambda e: type(e).__name__)
def test_a_dataloader_workers_error_is_its_last_line(error, monkeypatch, capsys):
    """torch re-raises it with the worker's traceback as its message; only the original line is shown."""
    import hqbench.cli

    def dispatch(*args):
        for _ in torch.utils.data.DataLoader(_Failing(error), num_workers=1):
            pass

    monkeypatch.setattr(hqbench.cli, "_dispatch", dispatch)
    assert main(["test"]) == 1
    assert capsys.readouterr().out == f"error: {error}\n"  # as the same error raised in this process prints


def test_a_damaged_image_read_by_a_worker_is_one_line(tmp_path, no_data, capsys):
    from PIL import Image

    wnids = [f"n{i:08d}" for i in range(10)]  # the demo model's ten classes, in a folder of images
    for split in ("train", "val"):
        for i in range(2):
            (tmp_path / "images" / split / wnids[i]).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (40 * i, 90, 160)).save(tmp_path / "images" / split / wnids[i] / f"{i}.png")
    (tmp_path / "images" / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {w}\n" for w in wnids))
    damaged = tmp_path / "images" / "val" / wnids[0] / "0.png"
    damaged.write_bytes(damaged.read_bytes()[:60])
    code = main(["test", "model=mobilenet_v2_fmnist", "data=imagenet", f"data.root={tmp_path / 'images'}",
                 "data.num_workers=1", "data.calib_size=2", "method=fp32"])
    lines = _lines(capsys.readouterr().out)
    assert code == 1 and lines[-1].startswith("error: ") and str(damaged) in lines[-1], lines
    assert not any("Traceback" in line or "DataLoader worker" in line for line in lines), lines


# --- targets: what a config folder from elsewhere may make Hydra call ------------------------------


@pytest.fixture
def foreign_tasks(tmp_path, monkeypatch) -> Path:
    """A copy of the config folder, used as ``HQBENCH_TASKS=DIR`` is."""
    folder = tmp_path / "downloaded"
    shutil.copytree(config.TASKS_DIR, folder)
    monkeypatch.setattr(config, "TASKS_DIR", folder)
    monkeypatch.setenv("HQBENCH_TASKS", str(folder))
    monkeypatch.delenv(TRUST, raising=False)
    return folder


@pytest.mark.parametrize("target, args, words", [
    ("builtins.open", '["{marker}", "w"]', "builtins.open is outside"),  # Hydra's own blocklist lets it create files
    ("torch.os.system", '["touch {marker}"]', "(not a class of those packages)"),  # a trusted prefix naming os.system
    # a function of a trusted package that runs a folder's hubconf.py: only classes may be named
    ("torch.hub.load", '["{marker}", "m"]', "(not a class of those packages)"),
], ids=["builtins.open", "torch.os.system", "torch.hub.load"])
def test_a_downloaded_config_can_make_hydra_call_only_trusted_packages(target, args, words, foreign_tasks, no_data, tmp_path,
                                                              capsys):
    marker = tmp_path / "code-ran"
    data = foreign_tasks / "data" / "fashion_mnist.yaml"
    data.write_text(data.read_text().replace("eval_limit: null", f"eval_limit:\n  _target_: {target}\n"
                                             f"  _args_: {args.format(marker=marker)}"))
    assert main(["test", *SMALL[:2], "method=fp32"]) == 1
    text = capsys.readouterr().out
    assert not marker.exists(), "a _target_ from the config folder was called"
    error = [line for line in _lines(text) if line.startswith("error:")]
    assert len(error) == 1 and f"data.eval_limit._target_={target}" in error[0] and words in error[0], text
    assert TRUST in error[0]


def test_trusted_targets_and_the_opt_out(foreign_tasks, monkeypatch, tmp_path):
    logger = "+trainer.logger._target_=lightning.pytorch.loggers.CSVLogger"
    cfg = config.compose("classification", [logger, f"+trainer.logger.save_dir={tmp_path}"])
    assert cfg.trainer.logger._target_ == "lightning.pytorch.loggers.CSVLogger"
    for bad in ("+trainer.plugins=[{_target_: subprocess.run, args: [ls]}]", "+trainer.profiler._target_=builtins.exec"):
        with pytest.raises(ValueError, match=r"trainer\.(plugins\.0|profiler)\._target_="):
            config.compose("classification", [bad])
    monkeypatch.setenv(TRUST, "1")  # the user's own word, which no config can give
    config.compose("classification", ["+trainer.profiler._target_=builtins.exec"])


def test_a_sweeps_launcher_target_is_checked_too(foreign_tasks, no_run, capsys):
    (foreign_tasks / "hydra" / "launcher").mkdir(parents=True)
    (foreign_tasks / "hydra" / "launcher" / "evil.yaml").write_text("_target_: os.system\n")
    assert main(["test", "-m", "seed=0,1", *SMALL, "hydra/launcher=evil"]) == 1
    assert "hydra.launcher._target_=os.system is outside" in capsys.readouterr().out and no_run == []
    config.check_hydra_targets("classification", ["hydra/launcher=joblib"])  # Hydra's plugins are trusted


def test_a_lightning_logger_from_the_command_line_runs(tmp_path, no_data):
    assert main(["test", *SMALL, "method=fp32", "+trainer.logger._target_=lightning.pytorch.loggers.CSVLogger",
                 f"+trainer.logger.save_dir={tmp_path}"]) == 0
    assert list(tmp_path.rglob("metrics.csv"))


def test_a_key_the_datamodule_does_not_take_is_one_error_line(no_data, capsys):
    """UNK: +data.extras=1 ended in Hydra's InstantiationException traceback."""
    assert main(["test", *SMALL, "method=fp32", "+data.extras=1", "out=null"]) == 1
    text = capsys.readouterr().out
    errors = [line for line in _lines(text) if line.startswith("error:")]
    assert len(errors) == 1 and "extras" in errors[0] and "Traceback" not in text, text


def test_a_model_with_other_classes_than_fashion_mnist_is_one_error_line(tmp_path, no_data, capsys):
    """A 5-class model on Fashion-MNIST's 10 classes failed inside torchmetrics with a traceback."""
    pytest.importorskip("timm")
    import timm
    import torch

    path = tmp_path / "five.pt"
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5).state_dict(), path)
    assert main(["test", "model=timm:mobilenetv3_small_050", f"model.weights={path}", "data=fashion_mnist",
                 "data.eval_limit=8", "data.calib_size=8", "method=fp32", "out=null"]) == 1
    text = capsys.readouterr().out
    assert "outputs 5 classes per image but the data (Fashion-MNIST) has 10" in " ".join(text.split()), text


def test_the_kl_criterion_on_the_detector_is_one_line_before_any_work(no_data, capsys):
    """mixed.criterion=kl needs a classifier's softmax: task=detection refuses it before loading
    anything, naming the setting and the way out."""
    assert main(["test", "task=detection", "method=B", "bits=w8a4", "mixed.budget=2", "mixed.criterion=kl"]) == 1
    text = capsys.readouterr().out
    error = _lines(text)[-1]  # after the embedded demo's notice
    assert error.startswith("error: mixed.criterion=kl is not available for task=detection"), text
    assert "mixed.criterion=sqnr" in error and "calib" not in text
