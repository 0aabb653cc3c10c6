"""Tables and figures from rows with per-image outcomes, calibration draws, bit widths and options."""

from __future__ import annotations

import os
from io import StringIO

import numpy as np
import pytest
from rich.console import Console

from hqbench.quant import calibrators
from hqbench.reporting import ResultRow
from hqbench.reporting.plots import plot_sweep
from hqbench.evidence import encode_outcomes
from hqbench.reporting.tables import (
    cost_markdown,
    gap_markdown,
    markdown_table,
    notes_line,
    pairwise_markdown,
    pairwise_table,
    paper_table,
    print_tables,
    timing_table,
)

N = 1000
_BASE = np.random.default_rng(0).permutation(N) < 780  # 78.0 % correct


def _flip(to_right: int = 0, to_wrong: int = 0) -> np.ndarray:
    """The base outcomes with some wrong images made right and some right ones made wrong."""
    out = _BASE.copy()
    out[np.flatnonzero(~_BASE)[:to_right]] = True
    out[np.flatnonzero(_BASE)[:to_wrong]] = False
    return out


def _row(method: str, outcomes: np.ndarray | None = None, value: float | None = None, **kw) -> ResultRow:
    fp32 = method == "fp32"
    fields = dict(
        task="classification", model="mnv2", dataset="imagenet", method=method, metric="top1",
        value=value if value is not None else 100.0 * float(outcomes.mean()), n_eval=N,
        n_calib=0 if fp32 else 256, seed=0, calib_seconds=0.0 if fp32 else 2.0, eval_seconds=8.0,
        act_range="float" if fp32 else "0..255", engine="float" if fp32 else "fake",
        weight_bits=32 if fp32 else 8, act_bits=32 if fp32 else 8,
    )
    fields.update(kw)
    if outcomes is not None:
        fields["extra"] = {**fields.get("extra", {}), "outcomes": encode_outcomes(outcomes)}
    return ResultRow(**fields)


def _md_line(md: str, label: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {label} |"))


def _render(table, width: int = 120) -> str:
    console = Console(file=StringIO(), width=width)
    console.print(table)
    return console.file.getvalue()


def test_significant_winner_is_marked_alone_with_intervals():
    rows = [_row("fp32", _flip(to_right=30)), _row("A", _BASE), _row("C", _flip(to_wrong=5)),
            _row("D", _flip(to_right=40))]  # D: +4 points, 40 discordant images all its way
    line = _md_line(markdown_table(rows), "mnv2")
    cells = line.split(" | ")[2:]
    assert cells[0].startswith("81.00 [") and "**" not in cells[0]  # FP32 never competes
    assert cells[1].startswith("78.00 [") and "~" not in line
    assert cells[3].startswith("**82.00** [")
    lo, hi = (float(v) for v in cells[3].split("[")[1].rstrip(" |").rstrip("]").split(","))
    assert 79.0 < lo < 82.0 < hi < 85.0
    assert "McNemar exact for Top-1" in notes_line(rows) and "bootstrap interval" in notes_line(rows)


def test_close_cells_are_tied_not_best():
    rows = [_row("A", _BASE), _row("B", _flip(to_right=2)), _row("C", _flip(to_right=3, to_wrong=2)),
            _row("D", _flip(to_wrong=40))]
    cells = _md_line(markdown_table(rows), "mnv2").split(" | ")[2:]
    assert [c.split(" [")[0] for c in cells] == ["78.00~", "78.20~", "78.10~", "74.00"]
    assert "**" not in "".join(cells)
    text = _render(paper_table(rows))
    assert "78.20~" in text and "*" not in text.split("\n", 3)[-1].replace("* best", "")
    notes = notes_line(rows)
    assert "~ = not significantly different from the best" in notes and "significance unknown" not in notes


def test_rows_without_outcomes_keep_the_old_mark_and_say_so():
    rows = [_row("A", value=78.0), _row("D", value=78.5),
            _row("A", _BASE, model="vgg"), _row("D", _flip(to_right=60), model="vgg")]
    md = markdown_table(rows)
    assert _md_line(md, "mnv2") == "| mnv2 | top1 | 78.00 | **78.50** |"
    assert "**84.00** [" in _md_line(md, "vgg")
    notes = notes_line(rows)
    assert "McNemar exact" in notes and "lines without per-image evidence: best marked, significance unknown" in notes
    assert "significance unknown (no per-image evidence)" in notes_line(rows[:2])


def test_a_lone_quantised_column_is_not_marked_best():
    # README: `*` is the best among the quantised methods; with one there is nothing to compare
    rows = [_row("fp32", value=79.0), _row("D", value=80.0)]
    assert _md_line(markdown_table(rows), "mnv2") == "| mnv2 | top1 | 79.00 | 80.00 |"
    assert "80.00*" not in _render(paper_table(rows)) and "80.00" in _render(paper_table(rows))
    assert "nothing to compare, no mark" in notes_line(rows) and "best" not in notes_line(rows)
    with_outcomes = [_row("fp32", _BASE), _row("D", _flip(to_right=20)), _row("A", value=float("nan"))]
    assert "**" not in markdown_table(with_outcomes) and "~" not in markdown_table(with_outcomes)
    two = [*rows, _row("A", value=78.0)]  # a second quantised method: the best is marked again
    assert _md_line(markdown_table(two), "mnv2") == "| mnv2 | top1 | 79.00 | 78.00 | **80.00** |"


def test_draws_show_mean_and_std_and_test_on_the_lowest_shared_seed():
    rows = [_row("A", _BASE, seed=1), _row("A", _flip(to_right=1), seed=2),
            _row("D", _flip(to_right=50), seed=2), _row("D", _flip(to_right=70), seed=1, value=85.0)]
    cells = _md_line(markdown_table(rows), "mnv2").split(" | ")[2:]
    assert cells[0] == "78.05 ± 0.07"
    assert cells[1].rstrip(" |") == "**84.00 ± 1.41**"  # seed 1 outcomes: +70 images, significant
    notes = notes_line(rows)
    assert "mean ± sample std over n=2 calibration draws" in notes and "seed 1/2" in notes
    single = [_row("A", _BASE, seed=3), *rows]  # a third A draw changes the count, not the test
    assert "n=2/3" in notes_line(single)


def test_bit_widths_and_options_get_their_own_lines_with_the_fp32_reference():
    ref = _row("fp32", value=79.0)
    rows = [ref, _row("A", _BASE), _row("D", _flip(to_right=1)),
            _row("A", _flip(to_wrong=50), weight_bits=4),
            _row("D", _flip(to_wrong=20), weight_bits=4, options={"weight_range": "mse", "bias_correction": "true"}),
            _row("D", _flip(to_wrong=30), act_bits=4, engine="int")]
    md = markdown_table(rows)
    labels = [line.split(" | ")[0][2:] for line in md.splitlines()[2:]]
    assert labels == ["mnv2", "mnv2 w4a8", "mnv2 w4a8 mse+bc", "mnv2 w8a4 [int]"]
    assert all(" | 79.00 | " in line for line in md.splitlines()[2:])  # FP32 in every line
    assert "| — | 76.00 [" in _md_line(md, "mnv2 w4a8 mse+bc")  # alone on its line: nothing to beat, no mark
    notes = notes_line(rows)
    assert "lines without wXaY are w8a8" in notes and "bc = bias_correction=true" in notes
    assert "mse+bc" in _render(timing_table(rows))


def test_runs_on_other_image_counts_are_not_hidden():
    rows = [_row("fp32", value=79.0), _row("fp32", value=80.0, n_eval=500), _row("D", _BASE),
            _row("D", value=77.0, n_eval=500, n_calib=64)]
    md = markdown_table(rows)
    assert _md_line(md, "mnv2 n1000/c256") == "| mnv2 n1000/c256 | top1 | 79.00 | 78.00 [75.4, 80.5] |"
    assert _md_line(md, "mnv2 n500/c64") == "| mnv2 n500/c64 | top1 | 80.00 | 77.00 |"  # its own FP32
    assert "nN/cM = N evaluation and M calibration images" in notes_line(rows)
    assert "n1000" not in markdown_table(rows[:3])


def test_registered_method_names_get_columns_in_registry_order(monkeypatch):
    try:
        ResultRow("classification", "m", "d", "percentile:99.999", "top1", 1.0, 1, 1, 0, 0.0, 0.0, "0..255", "fake")
    except ValueError:  # not registered in this tree yet: a stand-in, removed after the test
        monkeypatch.setattr(calibrators, "_REGISTRY", dict(calibrators._REGISTRY))
        calibrators.register_calibrator("percentile", object, title="Percentile", option="percentile")
    rows = [_row("percentile:99.999", _flip(to_right=2)), _row("D", _BASE), _row("pytorch", value=70.0)]
    header = markdown_table(rows).splitlines()[0]
    assert header == "| Model | Metric | PyTorch | Activation Redistribution | Percentile 99.999 |"


def test_pairwise_table_lists_every_quantised_pair():
    rows = [_row("fp32", value=79.0), _row("A", _BASE), _row("B", _flip(to_right=2)),
            _row("D", _flip(to_right=40)), _row("A", value=70.0, model="old"), _row("D", value=71.0, model="old")]
    pairs = pairwise_table(rows)
    assert [(p["line"], p["a"], p["b"]) for p in pairs] == [
        ("mnv2", "A", "B"), ("mnv2", "A", "D"), ("mnv2", "B", "D"), ("old", "A", "D")]
    assert pairs[0]["diff"] == pytest.approx(-0.2) and pairs[0]["p"] == pytest.approx(0.5)
    assert pairs[1]["p"] < 1e-10 and pairs[1]["n"] == N and pairs[1]["seed"] == 0
    assert pairs[3]["p"] is None and pairs[3]["diff"] == pytest.approx(-1.0)
    md = pairwise_markdown(rows).splitlines()
    assert md[0].startswith("| Model | Metric | A | B | A − B | paired p | test |")
    assert md[2] == "| mnv2 | top1 | Moving MinMax | MinMax | -0.20 | 0.5 | McNemar | 1000 |"
    assert md[-1] == "| old | top1 | Moving MinMax | Activation Redistribution | -1.00 | — | — | — |"


def test_intervals_fit_120_columns_and_compact_drops_them():
    rows = [_row("fp32", _flip(to_right=30)), _row("pytorch", _flip(to_wrong=90)),
            *(_row(m, _flip(to_right=i)) for i, m in enumerate("ABCD"))]
    rows += [_row(r.method, value=r.value, model="efficientnet_lite0_long_name", extra=dict(r.extra)) for r in rows]
    console = Console(file=StringIO(), width=120, force_terminal=True, color_system=None)
    print_tables(rows, console=console)
    out = console.file.getvalue()
    assert max(len(line) for line in out.splitlines()) <= 120
    assert "…" not in out and out.count("[66.2, 71.8]") == 2  # PyTorch's interval, both models
    compact = _render(paper_table(rows, compact=True))
    assert "[" not in compact and compact.count("78.30~") == 2


def test_plot_sweep_writes_a_png(tmp_path):
    rows = [_row("fp32", value=79.0)]
    for i, (w, a) in enumerate([(8, 8), (4, 4), (8, 4), (4, 8)]):
        rows += [_row("A", _flip(to_wrong=10 * i), weight_bits=w, act_bits=a),
                 _row("D", _flip(to_right=5, to_wrong=8 * i), weight_bits=w, act_bits=a)]
    rows += [_row("D", value=70.0, seed=s, weight_bits=4, act_bits=4, model="vgg") for s in (0, 1)]
    out = plot_sweep(rows, tmp_path / "figs" / "sweep.png")
    assert out == tmp_path / "figs" / "sweep.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert os.listdir(out.parent) == ["sweep.png"]  # no temp file left
    with pytest.raises(ValueError, match="no quantised result rows"):
        plot_sweep(rows[:1], tmp_path / "empty.png")


def test_the_gap_to_fp32_has_a_paired_interval_that_decides_a_within_x_target():
    rows = [_row("fp32", _BASE), _row("B", _flip(to_wrong=4)), _row("D", _flip(to_wrong=60)),
            _row("C", None, value=70.0)]
    lines = gap_markdown(rows).splitlines()
    by_method = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[4:-1]] for line in lines[2:]}
    b_gap, b_draw, b_p, _ = by_method["MinMax"]
    assert b_gap == "-0.40" and b_draw.startswith("-0.40 [")  # 4 of 1000 images
    lo, hi = (float(v) for v in b_draw.split("[")[1].rstrip("]").split(","))
    assert -1.0 < lo < -0.40 < hi <= 0.0 and float(b_p) > 0.05  # tight, since the pair shares 996 images
    d_lo, d_hi = (float(v) for v in by_method["Activation Redistribution"][1].split("[")[1].rstrip("]").split(","))
    assert d_lo < -6.0 < d_hi < 0 and float(by_method["Activation Redistribution"][2]) < 1e-6
    assert by_method["Histogram"][1:3] == ["—", "—"]  # no outcomes: a gap, no interval


def test_the_cost_table_sums_the_rows_time_with_adaround_apart():
    rows = [_row("fp32", _BASE), _row("B", _flip(to_wrong=4)),
            _row("D", _flip(to_wrong=4), calib_seconds=3600.0, options={"weight_rounding": "adaround"})]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in
             cost_markdown(rows).splitlines()[2:]}
    assert cells["without AdaRound"] == ["2", "0.00 h", "0.00 h", "0.01 h"]  # 2 + 16 s
    assert cells["with AdaRound"] == ["1", "1.00 h", "0.00 h", "1.00 h"]
    assert cells["all"] == ["3", "1.00 h", "0.01 h", "1.01 h"]


def test_rows_from_before_weight_digests_join_the_rows_of_their_weights_file():
    """A pre-digest row naming the same weights file as rows of one digest is one of them (the runner
    would migrate it); a pre-digest row of another file stays apart, labelled name@?."""
    def row(method, digest, weights):
        return _row(method, _BASE, weights_digest=digest, extra={"weights": weights})

    rows = [row("fp32", "", "a.pt"), row("B", "", "a.pt"), row("D", "abcdef0123", "a.pt")]
    md = markdown_table(rows)
    assert "| mnv2 | top1 |" in md and "@" not in md.split("Notes")[0]  # one model, one line
    rows.append(row("C", "", "b.pt"))
    md = markdown_table(rows)
    assert "| mnv2@abcdef01 | top1 |" in md and "| mnv2@? | top1 |" in md


def test_each_profile_row_is_tested_against_the_same_cell_under_the_papers_scheme():
    from hqbench.reporting.profiles import profile_markdown, profile_rows

    rows = [_row("D", _BASE, weight_bits=8, act_bits=4), _row("D", _flip(to_wrong=40), weight_bits=8, act_bits=4,
                                                               options={"profile": "integer-pow2"}),
            _row("B", _BASE, options={"profile": "openvino"})]  # no paper cell for it: no test
    pow2, ov = profile_rows(rows)
    assert pow2["profile"] == "integer-pow2" and pow2["paper"] == rows[0].value
    assert pow2["vs_paper"]["diff"] == pytest.approx(-4.0) and pow2["vs_paper"]["p"] < 1e-9
    assert ov["vs_paper"] is None
    md = profile_markdown(rows)
    assert "| mnv2 | Activation Redistribution w8a4 | integer-pow2 |" in md and "p<0.05" in md
    assert profile_markdown(rows[:1]) == ""
