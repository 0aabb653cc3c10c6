"""Trustworthy runs: rows keyed by everything that changes them, merged under a lock, resumed,
never holding a machine's absolute path; methods from the registry, plugins included."""

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hqbench.cli import main
from hqbench.config import TASKS_DIR
from hqbench.quant import Recipe
from hqbench.quant.engines import list_engines
from hqbench.reporting import ResultRow, append_row, read_results

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model=mobilenet_v2_fmnist", "data=fashion_mnist", "data.eval_limit=64", "data.calib_size=32"]


def _rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_aliases_bits_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["test", *SMALL, "method=fp32,redistribution", "bits=w8a8,w4a8", f"out={out}"]) == 0
    rows = _rows(out)
    assert [(r["method"], r["weight_bits"], r["act_bits"]) for r in rows] == [("fp32", 32, 32), ("D", 8, 8), ("D", 4, 8)]
    assert len(rows[1]["outcomes"]) > 10 and rows[1]["hqbench_version"] and rows[1]["torch_version"]
    capsys.readouterr()
    for bad, words in [("bits=w0a8", "2..16"), ("bits=8", "w8a8"), ("keep_8bit=middle", "first, last"),
                       ("weight_range=max", "minmax, mse"), ("method=E", "valid: fp32, pytorch, A, B, C, D"),
                       ("engine=tpu", ", ".join(e.name for e in list_engines())), ("bias_correction=maybe", "true or false"),
                       ("adaround.lr=0", "adaround.lr must be a positive number"),
                       ("adaround.iters=5", "apply to weight_rounding=adaround, not nearest")]:
        assert main(["test", *SMALL, bad, f"out={tmp_path / 'bad.json'}"]) == 1, bad
        text = capsys.readouterr().out
        assert "error:" in text and words in text and "Traceback" not in text, (bad, text)
    assert not (tmp_path / "bad.json").exists()


def test_a_float64_trainer_is_a_row_of_its_own_with_fake_equal_to_integer(tmp_path):
    """trainer.precision=64-true changes every number, so it keys the rows (FP32's too) and never
    reuses a float32 row; there fake-quant sums exactly and scores what the integer executor does."""
    out = tmp_path / "p.json"
    assert main(["test", *SMALL, "method=fp32,B", f"out={out}"]) == 0
    for engine in ("fake", "int"):
        assert main(["test", *SMALL, "method=fp32,B", f"engine={engine}", "+trainer.precision=64-true", f"out={out}"]) == 0
    rows = _rows(out)
    assert [(r["method"], r["engine"], r["options"]) for r in rows] == [
        ("fp32", "float", {}), ("B", "fake", {}), ("fp32", "float", {"precision": "64-true"}),
        ("B", "fake", {"precision": "64-true"}), ("B", "int", {"precision": "64-true"})]
    exact = [r for r in rows if r["method"] == "B" and r["options"]]
    assert exact[0]["outcomes"] == exact[1]["outcomes"]


def test_a_run_with_minmax_gives_d_its_first_pass(tmp_path):
    """method=B,D: D takes its range pass from B's calibration of the same draw, says so in its row,
    and scores exactly what D alone scores."""
    both, alone = tmp_path / "both.json", tmp_path / "alone.json"
    assert main(["test", *SMALL, "method=B,D", f"out={both}"]) == 0
    assert main(["test", *SMALL, "method=D", f"out={alone}"]) == 0
    shared, own = _rows(both)[1], _rows(alone)[0]
    assert "MinMax (B)" in shared["calibration"] and "calibration" not in own
    assert shared["value"] == own["value"] and shared["outcomes"] == own["outcomes"]


def test_one_calibration_per_method_and_draw_serves_every_width(tmp_path):
    """A sweep calibrates each method once per draw; the other widths freeze from its statistics
    and give the numbers a run at that width alone gives."""
    swept, alone = tmp_path / "swept.json", tmp_path / "alone.json"
    assert main(["test", *SMALL, "method=C,D", "bits=w8a8,w4a4", "draws=2", f"out={swept}"]) == 0
    assert main(["test", *SMALL, "method=C,D", "bits=w4a4", "seed=1", f"out={alone}"]) == 0
    rows = {(r["method"], r["act_bits"], r["seed"]): r for r in _rows(swept)}
    assert len(rows) == 8
    for r in _rows(alone):
        shared = rows[(r["method"], 4, 1)]
        assert shared["value"] == r["value"] and shared["outcomes"] == r["outcomes"]
        assert "shared" in shared["calibration"] and "calibration" not in r
    assert all("calibration" not in r for k, r in rows.items() if k[1] == 8)


def test_resume_merge_seed_and_redo(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["test", *SMALL, "method=fp32,B", f"out={out}"]) == 0
    first = _rows(out)
    capsys.readouterr()
    assert main(["test", *SMALL, "method=fp32,B,D", f"out={out}"]) == 0  # fp32 and B reused, D added
    assert capsys.readouterr().out.count("already in") == 2
    second = _rows(out)
    assert [r["method"] for r in second] == ["fp32", "B", "D"]
    assert second[:2] == first  # untouched, not rerun
    assert main(["test", *SMALL, "method=B", "seed=1", f"out={out}"]) == 0  # another draw: another row
    assert [(r["method"], r["seed"]) for r in _rows(out)] == [("fp32", 0), ("B", 0), ("D", 0), ("B", 1)]
    assert main(["test", *SMALL, "method=B", "redo=true", f"out={out}"]) == 0
    redone = next(r for r in _rows(out) if r["method"] == "B" and r["seed"] == 0)
    assert redone["timestamp"] >= first[1]["timestamp"] and len(_rows(out)) == 4
    for row in _rows(out):  # portable rows: no absolute path of this machine
        for key in ("dataset", "weights"):
            assert not os.path.isabs(row[key]), (key, row[key])


def test_adaround_settings_key_the_row():
    """A cell records the AdaRound settings that differ from the defaults: another setting is another row."""
    from hqbench.config import compose
    from hqbench.runner import plan_cells

    ada = ["method=fp32,D", "bits=w4a8", "weight_rounding=adaround", "adaround.window=null"]
    cells = {n: plan_cells(compose("classification", [*ada, f"adaround.iters={n}"])) for n in (1000, 3)}
    assert cells[1000][1].options == {"weight_rounding": "adaround", "adaround": "window=null"}
    assert cells[3][1].options == {"weight_rounding": "adaround", "adaround": "iters=3,window=null"}
    assert cells[3][1].recipe.adaround.changed() == {"iters": 3, "window": None}  # what the callback is given
    assert cells[3][0].options == {} and cells[3][0].recipe == Recipe()  # FP32 is the same row whatever the settings
    block = plan_cells(compose("classification", [*ada, "adaround.granularity=block"]))[1]
    assert block.options["adaround"] == "granularity=block,window=null" and block.recipe.adaround.granularity == "block"


def test_keep_8bit_reaches_every_low_bit_cell():
    """The recipe is read from the config once, at W8A8, then set to each width: keep_8bit must
    survive into the W4A8 cell (a recipe that dropped it at 8 bits lost it there)."""
    from hqbench.config import compose
    from hqbench.runner import plan_cells

    cells = plan_cells(compose("classification", ["method=D", "bits=w8a8,w4a8", "keep_8bit=first,last"]))
    assert [c.options for c in cells] == [{}, {"keep_8bit": "first+last"}]
    assert cells[1].recipe.keep_8bit == ("first", "last")


def test_profiles_sweep_as_one_run_each_row_keyed_by_its_profile(tmp_path):
    """``profile=paper,tflite-int8`` is two cells of one run: the paper's row keeps its old key (no
    option), the other records its profile, stores every point signed, and runs on ``engine=int``."""
    from hqbench.config import compose
    from hqbench.runner import plan_cells

    out = tmp_path / "profiles.json"
    assert main(["test", *SMALL, "method=fp32,D", "profile=paper,tflite-int8", "engine=fake,int", f"out={out}"]) == 0
    rows = {(r["method"], r["engine"], r["options"].get("profile")): r for r in _rows(out)}
    assert set(rows) == {("fp32", "float", None), ("D", "fake", None), ("D", "int", None),
                         ("D", "fake", "tflite-int8"), ("D", "int", "tflite-int8")}
    assert rows["D", "fake", None]["act_range"] == "-128..127 & 0..255"
    assert rows["D", "fake", "tflite-int8"]["act_range"] == "-128..127"
    assert rows["D", "int", "tflite-int8"]["agreement"]["top1_agree"] >= 95.0
    with pytest.raises(ValueError, match="unknown profile 'tensorrt'"):
        plan_cells(compose("classification", ["method=D", "profile=paper,tensorrt"]))


def _append_many(path: str, writer: int, count: int) -> None:
    for i in range(count):
        row = ResultRow("classification", f"m{writer}", "d", "B", "top1", float(i), 10, 5, i, 0.0, 0.0, "0..255", "fake")
        append_row(row, path, siblings=True)


def test_eight_concurrent_writers_keep_every_row(tmp_path):
    """8 processes (a sweep's jobs, say) append to one results file at once: every row survives."""
    path = str(tmp_path / "shared.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 12)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert all(p.exitcode == 0 for p in procs)
    rows = read_results(path)
    assert len(rows) == 96 and len({r.key for r in rows}) == 96


PLUGIN = textwrap.dedent('''
    """A calibrator added in one file: the 99th percentile of |x| as a symmetric range."""
    import torch
    from hqbench.quant.calibrators import Calibrator, register_calibrator

    class AbsQuantile(Calibrator):
        def __init__(self):
            super().__init__()
            self.register_buffer("amax", torch.tensor(float("nan")))

        def observe(self, x):
            q = torch.quantile(x.detach().abs().flatten()[:100000].float(), 0.99)
            self.amax = q if torch.isnan(self.amax) else torch.maximum(self.amax, q)

        def has_data(self):
            return not bool(torch.isnan(self.amax))

        def compute_range(self, grid):
            return -self.amax if grid.signed else torch.tensor(0.0), self.amax

    register_calibrator("absq", AbsQuantile, title="Abs quantile", letter="E")
''')


def test_a_calibrator_in_one_file_runs_through_the_cli_and_result_py(tmp_path):
    """An entry point in the hqbench.calibrators group registers it: no hqbench file is touched."""
    site = tmp_path / "site"
    (site / "absq_plugin-0.dist-info").mkdir(parents=True)
    (site / "absq_plugin.py").write_text(PLUGIN)
    (site / "absq_plugin-0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: absq-plugin\nVersion: 0\n")
    (site / "absq_plugin-0.dist-info" / "entry_points.txt").write_text("[hqbench.calibrators]\nabsq = absq_plugin\n")
    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS_DIR, tasks)
    (tasks / "paper.yaml").write_text("real: []\nembedded:\n  - {model: mobilenet_v2_fmnist}\n")
    env = {k: v for k, v in os.environ.items() if k != "HQBENCH_DATA"}
    env.update(PYTHONPATH=str(site), HQBENCH_TASKS=str(tasks))
    small = ["data.eval_limit=64", "data.calib_size=32"]
    out = tmp_path / "cli.json"
    cli = subprocess.run([sys.executable, "-m", "hqbench", "test", *SMALL, "method=fp32,E", f"out={out}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert [r["method"] for r in _rows(out)] == ["fp32", "E"] and "Abs quantile" in cli.stdout
    paper = tmp_path / "paper.json"
    for flags in (["-B"], ["--method", "E"]):  # two runs into one file: both kept, fp32/pytorch reused
        proc = subprocess.run([sys.executable, str(ROOT / "result.py"), *flags, *small, f"out={paper}"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "already in" in proc.stdout
    assert sorted(r["method"] for r in _rows(paper)) == ["B", "E", "fp32", "pytorch"]
    assert "Abs quantile" in paper.with_suffix(".md").read_text()


@pytest.mark.slow
def test_result_py_killed_after_its_first_model_resumes_with_only_the_rest(tmp_path):
    """Rows are written as they finish: SIGKILL after the first model loses nothing, and the rerun
    runs only the second model's rows (issue 13, item 3)."""
    import signal
    import time

    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS_DIR, tasks)
    (tasks / "paper.yaml").write_text("real: []\nembedded:\n  - {model: mobilenet_v2_fmnist}\n  - {model: vgg16_fmnist}\n")
    env = {k: v for k, v in os.environ.items() if k != "HQBENCH_DATA"}
    env.update(HQBENCH_TASKS=str(tasks), HQBENCH_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "paper.json"
    cmd = [sys.executable, str(ROOT / "result.py"), "-B", "data.eval_limit=48", "data.calib_size=16", f"out={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and sum(r["model"] == "mobilenet_v2_fmnist" for r in _rows(out)) == 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _rows(out)
    assert {(r["model"], r["method"]) for r in first} >= {("mobilenet_v2_fmnist", m) for m in ("fp32", "pytorch", "B")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " ".join(done.stdout.split()).count("already in") >= 3  # the first model's rows were reused
    rows = _rows(out)
    assert sorted((r["model"], r["method"]) for r in rows) == sorted(
        (m, k) for m in ("mobilenet_v2_fmnist", "vgg16_fmnist") for k in ("fp32", "pytorch", "B"))
    for r in first:  # the reused rows are the ones written before the kill, unchanged
        assert next(x for x in rows if (x["model"], x["method"]) == (r["model"], r["method"]))["timestamp"] == r["timestamp"]


def test_another_weights_file_under_the_same_model_name_is_never_reused(tmp_path, capsys):
    """R14: rows are keyed by the weights' digest. A second run with model.weights=OTHER runs
    every cell again and keeps both models' rows apart; a row written before digests were
    recorded is migrated when it names the same weights file, and rerun when it names another."""
    import torch

    from hqbench.models import create_model, state_digest

    model, card = create_model("mobilenet_v2_fmnist")
    other = tmp_path / "other.pt"
    with torch.no_grad():
        next(model.parameters()).mul_(0.5)
    torch.save(model.state_dict(), other)
    out = tmp_path / "r.json"
    assert main(["test", *SMALL, "method=fp32,B", f"out={out}"]) == 0
    capsys.readouterr()
    assert main(["test", *SMALL, "method=fp32,B", f"model.weights={other}", f"out={out}"]) == 0
    assert "already in" not in capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 4 and rows[2]["weights_digest"] == state_digest(model) != rows[0]["weights_digest"]
    assert main(["report", str(out)]) == 0
    assert "@" + rows[0]["weights_digest"][:8] in capsys.readouterr().out  # two models, two labels

    legacy = [{k: v for k, v in r.items() if k != "weights_digest"} for r in rows[:2]]  # as rows were before
    out.write_text(json.dumps(legacy))
    assert main(["test", *SMALL, "method=fp32,B", f"out={out}"]) == 0  # same file: migrated, not rerun
    text = capsys.readouterr().out
    assert text.count("migrated") == 2 and "already in" in text
    assert [r["weights_digest"] for r in _rows(out)] == [rows[0]["weights_digest"]] * 2
    assert [r["outcomes"] for r in _rows(out)] == [r["outcomes"] for r in rows[:2]]
    out.write_text(json.dumps(legacy))
    assert main(["test", *SMALL, "method=B", f"model.weights={other}", f"out={out}"]) == 0  # another file: rerun
    text = capsys.readouterr().out
    assert "predates weight digests" in text and "already in" not in text
    assert [r["weights_digest"] for r in _rows(out)] == ["", "", rows[2]["weights_digest"]]


def test_hqbench_test_without_out_writes_its_rows_under_outputs(tmp_path, capsys):
    """issue 32: a run without out= left only terminal output; now outputs/DATE/TIME/results.json
    in the working folder (Hydra's convention), and out=null writes nothing."""
    assert main(["test", *SMALL, "method=fp32"]) == 0
    written = list(Path("outputs").glob("*/*/results.json"))
    assert len(written) == 1 and [r["method"] for r in _rows(written[0])] == ["fp32"]
    assert written[0].with_suffix(".csv").is_file() and str(written[0]) in capsys.readouterr().out
    shutil.rmtree("outputs")
    assert main(["test", *SMALL, "method=fp32", "out=null"]) == 0
    assert not Path("outputs").exists()


def test_export_dir_writes_each_quantized_cell_named_by_its_key_and_never_replaces(tmp_path, capsys):
    """issue 29: export.dir=DIR writes each quantized cell's .onnx, .qstate.pt and .encodings.json;
    an existing file stops the run before the cell unless export.overwrite=true."""
    import onnxruntime as ort

    out, folder = tmp_path / "r.json", tmp_path / "exports"
    assert main(["test", *SMALL, "method=fp32,B,D", "bits=w8a8,w8a6", f"export.dir={folder}", f"out={out}"]) == 0
    onnx_files = sorted(folder.glob("*.onnx"))
    assert len(onnx_files) == 4 and len(list(folder.glob("*.qstate.pt"))) == 4  # B and D at two widths, no FP32
    rows = {(r["method"], r["act_bits"]): r for r in _rows(out)}
    assert Path(rows[("D", 6)]["export"]).name in {p.name for p in onnx_files}
    assert "-D-w8a6-" in Path(rows[("D", 6)]["export"]).name
    ort.InferenceSession(str(onnx_files[0]), providers=["CPUExecutionProvider"])  # a file onnxruntime loads
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    capsys.readouterr()
    assert main(["test", *SMALL, "method=B", "redo=true", f"export.dir={folder}", f"out={out}"]) == 1
    text = capsys.readouterr().out
    assert "export.overwrite=true" in text and "Traceback" not in text
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert main(["test", *SMALL, "method=B", "redo=true", f"export.dir={folder}", "export.overwrite=true",
                 f"out={out}"]) == 0


def test_mixed_budgets_share_one_ranking_and_every_engine_runs_the_promoted_points(tmp_path):
    """issue 30: mixed.budget=0,2,0.1 is three cells of one ranking (measured once, on the calibration
    data); a row names the points it promoted, and engine=int and onnxruntime run them from the same state."""
    out = tmp_path / "r.json"
    assert main(["test", *SMALL, "method=B", "bits=w8a4", "mixed.budget=0,2,0.1", "engine=fake,int,onnxruntime",
                 f"out={out}"]) == 0
    rows = {(r["options"].get("mixed_budget"), r["engine"]): r for r in _rows(out)}
    engines = ("fake", "int", "onnxruntime")
    assert sorted(rows, key=str) == sorted([(b, e) for b in (None, "2", "0.1") for e in engines], key=str)
    two, share = rows[("2", "fake")]["promoted"].split(","), rows[("0.1", "fake")]["promoted"].split(",")
    assert len(two) == 2 and share[:2] == two and 2 < len(share) <= 6  # 0.1 of 64 points: at most 6
    assert rows[("2", "fake")]["points_8bit"] == "2/64"
    assert "shared" in rows[("0.1", "fake")]["calibration"]
    for budget in ("2", "0.1"):
        fake = rows[(budget, "fake")]
        for engine in ("int", "onnxruntime"):
            row = rows[(budget, engine)]
            assert row["promoted"] == fake["promoted"] and "earlier engine" in row["calibration"]
            assert row["agreement"]["top1_agree"] >= 95, (engine, row["agreement"])
    assert "promoted" not in rows[(None, "fake")] and rows[(None, "fake")]["points_8bit"] == "0/64"


def test_a_greedy_search_for_a_larger_budget_continues_the_smaller_ones(tmp_path):
    """issue 30: mixed.search=greedy keys the row; budget 2 continues budget 1's promotion (its first
    point is the same) instead of starting again, and the row names both points."""
    out = tmp_path / "r.json"
    assert main(["test", *SMALL, "method=B", "bits=w8a4", "mixed.budget=1,2", "mixed.search=greedy",
                 f"out={out}"]) == 0
    rows = {r["options"]["mixed_budget"]: r for r in _rows(out)}
    assert {r["options"]["mixed_search"] for r in rows.values()} == {"greedy"}
    one, two = rows["1"]["promoted"].split(","), rows["2"]["promoted"].split(",")
    assert len(one) == 1 and len(two) == 2 and two[0] == one[0]
