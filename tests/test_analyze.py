"""``hqbench analyze``: the layer report of each method on the embedded demo, its files and its errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from hqbench.cli import main
from hqbench.reporting.layers import FILES, depth_figure, read_json
from hqbench.reporting.plots import _method_style

DEMO = ["model=mobilenet_v2_fmnist", "data=fashion_mnist", "data.eval_limit=32", "data.calib_size=16"]


def _pixels_of(image: np.ndarray, colour: str) -> int:
    rgb = np.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] - rgb).max(axis=-1) < 2 / 255).sum())


def test_analyze_writes_json_csv_and_a_line_per_method(no_data, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", *DEMO, "method=B,D", "bits=w8a4", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "B (MinMax) w8a4: 10 worst points" in printed and "D (Activation Redistribution) w8a4" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)

    doc = json.loads((out / "layers.json").read_text())
    assert (doc["model"], doc["n_eval"], doc["n_calib"]) == ("mobilenet_v2_fmnist", 32, 16)
    assert [r["label"] for r in doc["reports"]] == ["B", "D"]
    for r in doc["reports"]:
        assert (r["weight_bits"], r["act_bits"]) == (8, 4)
        assert [p["depth"] for p in r["points"]] == list(range(len(r["points"])))
        assert {p["bits"] for p in r["points"]} == {4} and r["layers"] and r["output"]["sqnr_db"] is not None

    with open(out / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    points = len(doc["reports"][0]["points"])
    assert sum(r["kind"] == "activation" and r["label"] == "D" for r in rows) == points
    assert {r["kind"] for r in rows} == {"activation", "weight", "output"}

    # the figure: one line per method in the method's own colour; the PNG shows both colours and no other
    reports = read_json(out / "layers.json")
    lines = depth_figure(reports).axes[0].get_lines()
    assert [(line.get_label(), line.get_color()) for line in lines] == [
        (m, _method_style(m)["color"]) for m in ("B", "D")]
    assert all(len(line.get_xdata()) == points for line in lines)
    from matplotlib.image import imread

    png = imread(out / "layers.png")
    assert _pixels_of(png, _method_style("B")["color"]) > 100 and _pixels_of(png, _method_style("D")["color"]) > 100
    assert _pixels_of(png, _method_style("A")["color"]) == 0 and _pixels_of(png, _method_style("C")["color"]) == 0


@pytest.mark.parametrize("args, message", [
    (["method=Z"], "unknown method 'Z'"),
    (["method=fp32"], "no hqbench calibrator among method="),
    (["method=B", "engine=int"], "engine=int: hqbench analyze measures the fake-quant model"),
    (["method=B", "-m"], "hqbench analyze runs once"),
])
def test_bad_input_is_one_error_line(no_data, tmp_path, capsys, args, message):
    assert main(["analyze", *DEMO, *args, f"out={tmp_path / 'a'}"]) == 1
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("error: ") and message in printed[-1]
    assert not (tmp_path / "a").exists()


def test_out_must_be_a_folder(no_data, tmp_path, capsys):
    (tmp_path / "file.json").write_text("[]")
    assert main(["analyze", *DEMO, "method=B", "bits=w8a4", f"out={tmp_path / 'file.json'}"]) == 1
    assert "is a file" in capsys.readouterr().out


def test_a_report_never_replaces_an_earlier_one(no_data, tmp_path, capsys):
    """A folder that holds any file analyze would write is refused before calibrating; the user's
    file is untouched and nothing else is written beside it."""
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "sensitivity.csv").write_text("mine\n")
    assert main(["analyze", *DEMO, "method=B", "bits=w8a4", "sensitivity=reverse", f"out={out}"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{out / 'sensitivity.csv'} exists; name a new out=DIR" in last
    assert (out / "sensitivity.csv").read_text() == "mine\n" and [p.name for p in out.iterdir()] == ["sensitivity.csv"]
    # without sensitivity= that file is not one analyze writes, so the folder is fine
    assert main(["analyze", *DEMO, "method=B", "bits=w8a4", f"out={out}"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted((*FILES, "sensitivity.csv"))


def test_analyze_ranks_the_points_both_ways_with_paired_intervals(no_data, tmp_path, capsys):
    """issue 30 item 2: sensitivity=reverse,one_at_a_time ranks every point on the calibration
    images, each with its Top-1 change against the reference on the same images."""
    out = tmp_path / "analysis"
    assert main(["analyze", *DEMO, "method=B", "bits=w8a4", "sensitivity=reverse,one_at_a_time", f"out={out}"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # titles wrap at the console's width
    assert "most sensitive points, all quantized, one point restored to 8 bits" in printed
    assert "all float, one point quantized" in printed
    doc = json.loads((out / "sensitivity.json").read_text())
    assert doc["samples"] == "calibration images" and [r["direction"] for r in doc["reports"]] == ["reverse", "one_at_a_time"]
    reverse, single = doc["reports"]
    points = len(reverse["points"])
    assert reverse["passes"] == points + 2 and single["passes"] == points + 1 and reverse["samples"] == 16
    assert len(reverse["reference"]["outcomes"]) == 16
    gains = [r["gain_db"] for r in reverse["ranked"]]
    assert gains == sorted(gains, reverse=True) and len(gains) == points
    for row in reverse["ranked"]:  # Top-1 of the model with that point restored, against the quantized one
        assert row["change_lo"] <= row["metric_change"] <= row["change_hi"] and 0 <= row["p"] <= 1
    assert all(r["sqnr_db"] is not None and r["gain_db"] == -r["sqnr_db"] for r in single["ranked"])
    with open(out / "sensitivity.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2 * points


def test_a_bad_sensitivity_direction_is_one_line(no_data, tmp_path, capsys):
    assert main(["analyze", *DEMO, "method=D", "sensitivity=sideways", f"out={tmp_path / 'a'}"]) == 1
    assert "sensitivity: unknown direction 'sideways'; valid: reverse, one_at_a_time" in capsys.readouterr().out
    assert not (tmp_path / "a").exists()
