"""Result files (atomic, resumable, validated) and the paper-layout tables."""

from __future__ import annotations

import csv
import json
import os
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from hqbench.methods import method_title
from hqbench.reporting import (
    METHOD_COLUMNS,
    ResultRow,
    append_row,
    markdown_table,
    notes_line,
    paper_table,
    print_tables,
    read_results,
    timing_table,
    write_all,
    write_results,
)

# Keep rich's terminal detection hermetic: these variables force colour even into a StringIO.
_COLOUR_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CLICOLOR_FORCE")


def _row(model: str, method: str, value: float, **kw) -> ResultRow:
    fields = dict(
        task="classification", model=model, dataset="imagenet", method=method, metric="top1",
        value=value, n_eval=1000, n_calib=0 if method == "fp32" else 256, seed=0,
        calib_seconds=0.0 if method == "fp32" else 1.5, eval_seconds=10.25,
        act_range="float" if method == "fp32" else "mixed: 0..255 & -128..127",
        engine="float" if method == "fp32" else "fake",
    )
    if method == "fp32":
        fields.update(weight_bits=32, act_bits=32)
    fields.update(kw)
    return ResultRow(**fields)


@pytest.fixture
def rows() -> list[ResultRow]:
    # vgg16: C is the best INT8 cell and FP32 is higher than every INT8 cell (must not be marked).
    # mobilenet_v2: PyTorch wins; D is never the best here. No "B" rows: no MinMax column.
    return [
        _row("vgg16", "fp32", 71.59),
        _row("vgg16", "pytorch", 70.10),
        _row("vgg16", "A", 69.91),
        _row("vgg16", "C", 71.33),
        _row("vgg16", "D", 71.02, extra={"top5": 90.1, "float_layers": ["fc"]}),
        _row("mobilenet_v2", "fp32", 71.88),
        _row("mobilenet_v2", "pytorch", 70.95),
        _row("mobilenet_v2", "D", 68.40),
    ]


@pytest.fixture
def no_colour_env(monkeypatch):
    for name in _COLOUR_ENV:
        monkeypatch.delenv(name, raising=False)


def _render(table, width: int = 200) -> str:
    console = Console(file=StringIO(), width=width)
    console.print(table)
    return console.file.getvalue()


def _line_of(text: str, model: str) -> str:
    return next(line for line in text.splitlines() if f" {model} " in line)


# --- files ---------------------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_files(tmp_path, rows):
    write_results(rows, tmp_path / "r.json")
    write_results(rows[:2], tmp_path / "r.json")
    assert sorted(os.listdir(tmp_path)) == ["r.json"]
    paths = write_all(rows, tmp_path / "paper.json", title="Table 2")
    assert sorted(os.listdir(tmp_path)) == ["paper.csv", "paper.json", "paper.md", "r.json"]
    assert paths == {e: tmp_path / f"paper.{e}" for e in ("json", "csv", "md")}


def test_atomic_write_without_replace_keeps_a_taken_name(tmp_path):
    from hqbench.paths import atomic_write, refuse_existing

    out = tmp_path / "mine.json"
    atomic_write(out, lambda f: f.write("first"), replace=False)
    with pytest.raises(FileExistsError, match=r"mine\.json exists; name a new file"):
        atomic_write(out, lambda f: f.write("second"), replace=False)
    assert out.read_text() == "first" and os.listdir(tmp_path) == ["mine.json"]  # no temp file left
    with pytest.raises(FileExistsError, match=r"mine\.json exists; name a new out=DIR"):
        refuse_existing(tmp_path / "free.json", out, hint="name a new out=DIR")
    refuse_existing(tmp_path / "free.json")


def test_failed_serialisation_keeps_previous_file(tmp_path, rows):
    out = tmp_path / "r.json"
    write_results(rows, out)
    before = out.read_bytes()
    bad = _row("resnet", "D", 1.0, extra={"handle": object()})
    # The bad row comes after good ones, so the failure happens midway through the temp file.
    with pytest.raises(TypeError, match=r"r\.json: row 8 .*resnet"):
        write_results([*rows, bad], out)
    assert out.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.json"]


def test_round_trip_json_to_rows(tmp_path, rows):
    rows[1].extra["weights"] = tmp_path / "vgg16.pth"  # paths are stored as strings
    out = write_results(rows, tmp_path / "r.json")
    back = read_results(out)
    assert [r.key for r in back] == [r.key for r in rows]
    assert back[4] == rows[4]
    assert back[4].extra == {"top5": 90.1, "float_layers": ["fc"]}
    assert back[1].extra == {"weights": str(tmp_path / "vgg16.pth")}
    flat = json.loads(out.read_text())[4]
    assert flat["top5"] == 90.1 and "extra" not in flat  # extra is serialised flat


def test_append_row_replaces_by_key_and_appends_new(tmp_path, rows):
    out = tmp_path / "sub" / "r.json"
    for r in rows[:3]:
        append_row(r, out)
    updated = _row("vgg16", "pytorch", 70.5)
    int_engine = _row("vgg16", "pytorch", 70.4, engine="int")
    append_row(updated, out)
    result = append_row(int_engine, out)
    back = read_results(out)
    assert back == result
    assert [r.value for r in back] == [71.59, 70.5, 69.91, 70.4]
    assert sorted(os.listdir(out.parent)) == ["r.json", "r.json.lock"]  # no temp files left


def test_append_row_siblings_writes_csv_and_md(tmp_path, rows):
    out = tmp_path / "r.json"
    for r in rows:
        append_row(r, out, siblings=True)
    assert sorted(os.listdir(tmp_path)) == ["r.csv", "r.json", "r.json.lock", "r.md"]
    with open(tmp_path / "r.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert table[4]["float_layers"] == "fc" and table[4]["top5"] == "90.1"
    assert table[0]["top5"] == ""


def test_markdown_file_is_table_then_notes(tmp_path, rows):
    md = Path(write_all(rows, tmp_path / "paper", title="Table 2")["md"]).read_text()
    assert md.startswith("# Table 2\n\n| Model |")
    last = md.rstrip("\n").splitlines()[-1]
    assert last.startswith("Notes:") and "n_calib 256" in last and "Activation Redistribution" in last


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[{not json", "not valid JSON"),
        ('{"task": "classification"}', "expected a JSON list"),
        ("[1]", "row 0 is int"),
    ],
)
def test_malformed_json_names_the_file(tmp_path, content, match):
    bad = tmp_path / "broken.json"
    bad.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        read_results(bad)
    assert str(bad) in str(info.value)


def test_missing_key_names_file_row_and_key(tmp_path, rows):
    data = [r.to_dict() for r in rows]
    del data[2]["eval_seconds"]
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"r\.json row 2: missing key 'eval_seconds'") as info:
        read_results(bad)
    assert str(bad) in str(info.value)


def test_bad_values_name_key_and_list_choices(tmp_path, rows):
    data = [r.to_dict() for r in rows]
    data[0]["method"] = "E"
    data[1]["n_eval"] = "many"
    (tmp_path / "m.json").write_text(json.dumps(data[:1]))
    (tmp_path / "n.json").write_text(json.dumps(data[1:2]))
    with pytest.raises(ValueError, match=r"m\.json row 0: unknown method 'E'; valid: fp32, pytorch, A, B, C, D"):
        read_results(tmp_path / "m.json")
    with pytest.raises(ValueError, match=r"n\.json row 0: key 'n_eval' must be int"):
        read_results(tmp_path / "n.json")


def test_row_validation():
    with pytest.raises(ValueError, match="valid: float, fake, int"):
        _row("vgg16", "D", 1.0, engine="gpu")
    with pytest.raises(ValueError, match="clash"):
        _row("vgg16", "D", 1.0, extra={"value": 2.0})


# --- tables --------------------------------------------------------------------------------


def test_paper_table_marks_true_best_int8(rows):
    text = _render(paper_table(rows, "Top-1"))
    vgg, mnv2 = _line_of(text, "vgg16"), _line_of(text, "mobilenet_v2")
    assert "71.33*" in vgg and vgg.count("*") == 1  # C, not D, and not the higher FP32
    assert "71.59" in vgg and "71.59*" not in vgg
    assert "70.95*" in mnv2 and mnv2.count("*") == 1
    assert "—" in mnv2  # no A / C rows for mobilenet_v2
    assert "MinMax" not in text.replace("Moving MinMax", "")  # no B data, no B column
    assert text.index("vgg16") < text.index("mobilenet_v2")  # first-seen order


def test_paper_table_tie_and_nan():
    rows = [_row("m", "A", 50.0), _row("m", "B", 50.0), _row("m", "D", float("nan"))]
    line = _line_of(_render(paper_table(rows)), "m")
    assert line.count("50.00*") == 2 and "nan*" not in line


def test_second_engine_gets_its_own_line(rows):
    text = _render(paper_table([*rows, _row("vgg16", "D", 70.9, engine="int")]))
    line = _line_of(text, r"vgg16 [int]")
    assert "70.90" in line and "71.59" in line  # FP32 reference repeated
    assert "*" not in line  # D is the only quantised cell of its line: nothing to be best among


def test_timing_table(rows):
    text = _render(timing_table(rows))
    assert "1.5 / 10.2" in _line_of(text, "vgg16") and "0.0 / 10.2" in text


def test_markdown_table(rows):
    md = markdown_table(rows)
    header = md.splitlines()[0]
    for name in ("Model", "Metric", "FP32", "PyTorch", "Moving MinMax", "Histogram", "Activation Redistribution"):
        assert f"| {name} |" in header
    assert "| MinMax |" not in header
    vgg = next(line for line in md.splitlines() if line.startswith("| vgg16 "))
    assert vgg == "| vgg16 | top1 | 71.59 | 70.10 | 69.91 | **71.33** | 71.02 |"
    assert md.splitlines()[1] == "|---|---|---:|---:|---:|---:|---:|"


def test_method_vocabulary_is_one_table():
    assert list(METHOD_COLUMNS) == ["fp32", "pytorch", "A", "B", "C", "D"]
    assert METHOD_COLUMNS["D"] == "Activation Redistribution"
    assert METHOD_COLUMNS == {m: method_title(m) for m in METHOD_COLUMNS}  # titles live in hqbench.methods


def test_files_written_before_bit_widths_render_as_before(tmp_path, rows):
    data = [r.to_dict() for r in rows]
    for d in data:
        del d["weight_bits"], d["act_bits"], d["options"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    back = read_results(old)
    assert markdown_table(back) == markdown_table(rows)
    assert "| vgg16 | top1 | 71.59 | 70.10 | 69.91 | **71.33** | 71.02 |" in markdown_table(back)
    assert "significance unknown (no per-image evidence)" in notes_line(back)


def test_print_tables_emits_no_ansi_off_terminal(rows, no_colour_env):
    console = Console(file=StringIO())
    print_tables([*rows, _row("efficientnet_lite0", "D", 74.0)], "Top-1", console=console)
    out = console.file.getvalue()
    assert "\x1b" not in out
    assert "Top-1" in out and "calibration / evaluation" in out
    # Off a terminal nothing is cropped to rich's assumed 80 columns.
    assert "…" not in out and "efficientnet_lite0" in out and "Activation Redistribution" in out
    assert "1.5 / 10.2" in out
    assert out.rstrip("\n").splitlines()[-1].startswith("Notes:")  # notes stay on one line


def test_print_tables_default_console_detects_non_terminal(rows, no_colour_env, capsys):
    assert not sys.stdout.isatty()
    print_tables(rows, "Top-1")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "71.33*" in out


def test_narrow_terminal_folds_labels_not_numbers(rows):
    console = Console(file=StringIO(), width=80, force_terminal=True, color_system=None)
    print_tables([*rows, _row("efficientnet_lite0", "D", 74.0)], console=console)
    out = console.file.getvalue()
    assert "…" not in out and "71.33*" in out and "74.00" in out and "74.00*" not in out  # 74.00: alone


def test_the_budget_table_tests_each_budget_against_first_last_on_the_same_images(tmp_path):
    """issue 30 item 4: rows of one method that differ only in their 8-bit rule are one curve, each
    tested against keep_8bit=first,last with McNemar on the same images; the PNG is drawn."""
    from hqbench.evidence import encode_outcomes
    from hqbench.reporting.budget import budget_markdown, budget_rows, plot_budget
    from hqbench.reporting.stats import mcnemar_exact

    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.3
    fixed = base | (rng.random(400) < 0.2)
    mixed = fixed | (rng.random(400) < 0.3)

    def row(outcomes, points, **options):
        return _row("m", "D", 100 * outcomes.mean(), weight_bits=8, act_bits=4, n_eval=400, options=options,
                    extra={"outcomes": encode_outcomes(outcomes), "points_8bit": f"{points}/64"})

    rows = [_row("m", "fp32", 79.0, n_eval=400), row(base, 0), row(fixed, 4, keep_8bit="first+last"),
            row(mixed, 4, mixed_budget="4")]
    items = budget_rows(rows)
    assert [(i["rule"], i["points_8bit"]) for i in items] == [("none", 0), ("first/last", 4), ("mixed 4", 4)]
    greedy = budget_rows([*rows, row(mixed, 4, mixed_budget="4", mixed_search="greedy")])  # the same curve
    assert [i["rule"] for i in greedy][-2:] == ["greedy 4", "mixed 4"] and greedy[-2]["vs_fixed"] is not None
    assert [i["ranking"] for i in greedy] == [None, None, "greedy", "mixed"]  # the plot's line per ranking
    vs = items[2]["vs_fixed"]
    assert vs["p"] == mcnemar_exact(mixed, fixed) and vs["diff"] == pytest.approx(100 * (mixed.mean() - fixed.mean()))
    assert vs["ci"][0] < vs["diff"] < vs["ci"][1] and items[1]["vs_fixed"] is None
    assert items[0]["fp32"] == pytest.approx(100 * base.mean() - 79.0)
    assert "| m | Activation Redistribution w8a4 | mixed 4 | 4/64 |" in budget_markdown(rows)
    assert plot_budget(rows, tmp_path / "b.png").stat().st_size > 1000
    assert budget_markdown(rows[:2]) == ""  # nothing but the plain rule: no table


def test_the_budget_profile_and_qat_tables_take_detection_rows(tmp_path):
    """A detector's rows carry mAP bootstrap replicates, not per-image outcomes: each table's interval
    is their percentile interval and its paired test the paired bootstrap (a detection sweep with
    mixed.budget crashed in the budget table, asking the replicates for per-image outcomes)."""
    from hqbench.evidence import Replicates
    from hqbench.reporting.budget import budget_rows, plot_budget
    from hqbench.reporting.profiles import profile_rows
    from hqbench.reporting.qat import qat_rows

    rng = np.random.default_rng(0)
    shared = rng.normal(0, 2, 500)

    def row(value, **kw):
        reps = Replicates(value, value + shared + rng.normal(0, 0.3, 500), 116, 0)
        return _row("yolo", "D", value, task="detection", metric="mAP50", n_eval=116, weight_bits=8, act_bits=6,
                    extra={"bootstrap": reps.encode(), "points_8bit": kw.pop("points", "0/27")}, **kw)

    plain, fixed, mixed = row(77.6), row(80.0, points="2/27", options={"keep_8bit": "first+last"}), \
        row(88.0, points="2/27", options={"mixed_budget": "2"})
    items = budget_rows([plain, fixed, mixed])
    assert [i["rule"] for i in items] == ["none", "first/last", "mixed 2"]
    assert all(i["ci"][0] < i["value"] < i["ci"][1] for i in items)
    vs = items[2]["vs_fixed"]
    assert vs["diff"] == pytest.approx(8.0) and vs["p"] < 0.01 and vs["ci"][0] > 0
    assert plot_budget([plain, fixed, mixed], tmp_path / "b.png").stat().st_size > 1000
    profiled = profile_rows([plain, row(76.0, options={"profile": "openvino"})])
    assert profiled[0]["ci"][0] < 76.0 < profiled[0]["ci"][1] and profiled[0]["vs_paper"]["diff"] == pytest.approx(-1.6)
    trained = qat_rows([plain, row(85.0, options={"qat": "lsq"})])
    assert trained[0]["ci"][0] < 85.0 < trained[0]["ci"][1] and trained[0]["vs_start"]["diff"] == pytest.approx(7.4)
