"""Sweeps through Hydra's own multirun: its launchers fan them out and no row is lost.

Each launcher runs the same 4 jobs (2 models x 2 calibration draws of the embedded demo) in its own
way: Hydra's basic launcher one after another in one process, joblib in 2 worker processes,
submitit_local as separate jobs, Ray on a local cluster it starts. Their rows must be the
sequential run's, row for row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hqbench.multirun import hydra_overrides, sweep

SWEEP = ["model=mobilenet_v2_fmnist,vgg16_fmnist", "seed=0,1", "method=fp32,B,D", "data.eval_limit=32",
         "data.calib_size=16"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "submitit_local": ["hydra/launcher=submitit_local"],
             # a local Ray cluster, started by the launcher itself on this machine's cores
             "ray": ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"]}


def _hqbench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HQBENCH_DATA"}
    env["HQBENCH_CACHE"] = str(cwd / "cache")
    return subprocess.run([sys.executable, "-m", "hqbench", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=900)


def _comparable(rows: list[dict]) -> dict:
    """What a row measured, keyed by what identifies it (timings and provenance apart)."""
    return {(r["model"], r["method"], r["seed"], r["weight_bits"], r["act_bits"]): (r["value"], r.get("outcomes"))
            for r in rows}


def test_list_keys_are_values_and_other_comma_lists_are_axes():
    assert hydra_overrides(["method=A,B", "bits=w8a8,w4a8", "keep_8bit=first,last", "seed=0,1"]) == [
        "method=[A,B]", "bits=[w8a8,w4a8]", "keep_8bit=[first,last]", "seed=0,1"]
    assert sweep(["model=a,b", "seed=0,1", "method=A,B"]) == [
        ["model=a", "seed=0", "method=A,B"], ["model=a", "seed=1", "method=A,B"],
        ["model=b", "seed=0", "method=A,B"], ["model=b", "seed=1", "method=A,B"]]
    assert hydra_overrides(["model=tflite:/a.tflite"]) == ["model=source", "model.name='tflite:/a.tflite'"]
    with pytest.raises(ValueError, match="a sweep over model sources"):
        hydra_overrides(["model=tflite:/a.tflite,tflite:/b.tflite"])


@pytest.mark.slow
def test_every_launcher_gives_the_sequential_rows(tmp_path):
    rows = {}
    for name, launcher in LAUNCHERS.items():
        proc = _hqbench(["test", "-m", *SWEEP, *launcher, f"hydra.sweep.dir={name}"], tmp_path)
        assert proc.returncode == 0, (name, proc.stdout[-2000:], proc.stderr[-3000:])
        results = tmp_path / name / "results.json"  # the sweep's shared file, its default out
        rows[name] = json.loads(results.read_text())
        assert len(rows[name]) == 12, name  # 4 jobs x 3 methods: nothing lost
        for job in range(4):  # each job's own folder: its resolved config and what it printed
            folder = tmp_path / name / str(job)
            assert (folder / ".hydra" / "config.yaml").is_file() and "top1" in (folder / "hqbench.log").read_text()
        assert "Activation Redistribution" in proc.stdout  # the sweep's table, printed once at the end
    for name in LAUNCHERS:
        assert _comparable(rows[name]) == _comparable(rows["basic"]), name


@pytest.mark.slow
def test_per_job_files_merge_with_hqbench_report(tmp_path):
    """Where locks cannot be trusted (a shared filesystem), each job writes its own file and
    ``hqbench report`` merges them: the same rows as one shared file."""
    proc = _hqbench(["test", "-m", *SWEEP[:2], "method=fp32,B", *SWEEP[3:], "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2", "out=${hydra:runtime.output_dir}/rows.json", "hydra.sweep.dir=sw"],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(str(p) for p in (tmp_path / "sw").glob("*/rows.json"))
    assert len(files) == 4
    merged = _hqbench(["report", *files, "--out", str(tmp_path / "merged.json")], tmp_path)
    assert merged.returncode == 0, merged.stderr[-2000:]
    rows = json.loads((tmp_path / "merged.json").read_text())
    assert len(rows) == 8 and (tmp_path / "merged.md").is_file() and "MinMax" in merged.stdout
    again = _hqbench(["report", *files, "--out", str(tmp_path / "merged.json")], tmp_path)
    assert again.returncode == 1 and "exists" in again.stdout  # a user's file is never replaced


def test_a_bad_value_in_any_job_stops_the_sweep_before_it_starts(tmp_path):
    proc = _hqbench(["test", "-m", "model=mobilenet_v2_fmnist", "seed=0,zero", "hydra.sweep.dir=bad"], tmp_path)
    assert proc.returncode == 1 and "error: seed must be an integer, got 'zero'" in proc.stdout, proc.stdout
    assert not (tmp_path / "bad").exists()
    proc = _hqbench(["train", "-m", "seed=0,1"], tmp_path)
    assert proc.returncode == 1 and "-m sweeps are for hqbench test" in proc.stdout
