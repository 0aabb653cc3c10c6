"""Same command, same numbers (issue 13, item 10).

The cause of the differences a new user saw: oneDNN's float32 convolutions sum in an order that
depends on the thread count (YOLOv3-tiny's later convs differ by up to 1e-5 between 1 and 2
threads), which moves values across quantization bins; the detector's PyTorch and Histogram cells
changed with it, D and B did not. So a result is reproducible for the same torch build, the same
CPU kernels (``torch.backends.cpu.get_cpu_capability()``) and the same torch thread count; every
row records all three. Here: two processes with the same settings give bit-identical rows, and on
the platform the numbers were pinned on, the numbers themselves.
"""

import json
import os
import subprocess
import sys

import torch

COMMAND = ["test", "model=mobilenet_v2_fmnist", "method=fp32,pytorch,B,D", "data.eval_limit=500"]
# Measured with `OMP_NUM_THREADS=2 hqbench test model=mobilenet_v2_fmnist method=fp32,pytorch,B,D
# data.eval_limit=500` (embedded Fashion-MNIST, 256 calibration images, seed 0) on this platform:
PINNED_ON = ("AVX512", "2.14.1")
PINNED = {"fp32": 91.40, "pytorch": 91.60, "B": 91.20, "D": 91.20}


def _run(tmp_path, name: str) -> list[dict]:
    folder = tmp_path / name
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HQBENCH_DATA"}
    env.update(OMP_NUM_THREADS="2", HQBENCH_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "hqbench", *COMMAND, f"out={folder / 'r.json'}"],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads((folder / "r.json").read_text())


def test_same_command_same_numbers(tmp_path):
    first, second = _run(tmp_path, "first"), _run(tmp_path, "second")
    assert [(r["method"], r["value"], r["outcomes"]) for r in first] == \
           [(r["method"], r["value"], r["outcomes"]) for r in second]
    assert {(r["cpu_capability"], r["torch_threads"]) for r in first} == {(torch.backends.cpu.get_cpu_capability(), 2)}
    if (torch.backends.cpu.get_cpu_capability(), torch.__version__.split("+")[0]) == PINNED_ON:
        assert {r["method"]: round(r["value"], 2) for r in first} == PINNED
