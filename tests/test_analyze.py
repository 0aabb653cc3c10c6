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
