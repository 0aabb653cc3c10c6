"""Sweep figures read back from their artists: one style per method, bounded offsets, categorical
widths and titles that name the data set (matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from hqbench.methods import method_title
from hqbench.reporting import ResultRow
from hqbench.reporting.plots import plot_sweep

WIDTHS = [(8, 8), (8, 4), (4, 8)]


def _row(method: str, value: float, bits: tuple[int, int] = (8, 8), **kw) -> ResultRow:
    fp32 = method == "fp32"
    fields = dict(
        task="classification", model="mnv2", dataset="$HQBENCH_DATA/imagenet", method=method, metric="top1",
        value=value, n_eval=200, n_calib=0 if fp32 else 64, seed=0, calib_seconds=0.0 if fp32 else 1.0,
        eval_seconds=2.0, act_range="float" if fp32 else "0..255", engine="float" if fp32 else "fake",
        weight_bits=32 if fp32 else bits[0], act_bits=32 if fp32 else bits[1],
    )
    fields.update(kw)
    return ResultRow(**fields)


@pytest.fixture
def figures(monkeypatch):
    """Every figure plot_sweep saves, kept for reading back (the PNG is still written)."""
    saved: list[Figure] = []
    savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def _sweep(methods: list[str], **kw) -> list[ResultRow]:
    rows = [_row("fp32", 80.0, **kw)]
    for i, m in enumerate(methods):
        rows += [_row(m, 70.0 + i - 5 * j, bits, **kw) for j, bits in enumerate(WIDTHS)]
    return rows


def _series(fig: Figure) -> dict[str, object]:
    """Legend label -> the data line (markers) of its error-bar container, over every panel."""
    return {c.get_label(): c.lines[0] for ax in fig.axes for c in ax.containers}


def test_a_method_keeps_its_colour_and_marker_in_every_figure(tmp_path, figures):
    plot_sweep(_sweep(["A", "D"]), tmp_path / "two.png")
    plot_sweep(_sweep(["pytorch", "B", "C", "D", "ort-minmax"]), tmp_path / "five.png")
    first, second = (_series(f) for f in figures)
    d = method_title("D")
    assert to_hex(first[d].get_color()) == to_hex(second[d].get_color())
    assert first[d].get_marker() == second[d].get_marker()
    # and methods within one figure stay apart
    styles = {(to_hex(line.get_color()), line.get_marker()) for line in second.values()}
    assert len(styles) == len(second) == 5


def test_the_side_by_side_offset_stays_within_its_width_with_19_series(tmp_path, figures):
    rows = [_row("fp32", 80.0)]
    for i in range(19):  # one method under 19 settings: 19 series on one panel
        rows += [_row("D", 60.0 + i, bits, options={"weight_range": f"r{i}"}) for bits in WIDTHS]
    plot_sweep(rows, tmp_path / "many.png")
    lines = list(_series(figures[0]).values())
    assert len(lines) == 19
    offsets = [x - j for line in lines for j, x in enumerate(line.get_xdata())]  # from its width's tick
    assert max(abs(o) for o in offsets) <= 0.25 + 1e-9  # half the spacing in all, never the next width's
    assert len({round(o, 9) for o in offsets}) == 19  # still side by side, none on top of another


def test_widths_are_categories_with_points_and_error_bars_not_joined_by_lines(tmp_path, figures):
    plot_sweep(_sweep(["A", "D"]), tmp_path / "sweep.png")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["w8a8", "w8a4", "w4a8"]
    assert list(ax.get_xticks()) == [0, 1, 2]
    for container in ax.containers:
        data = container.lines[0]
        assert data.get_linestyle() == "None" and data.get_marker() not in (None, "", "None")
        assert sorted(round(x) for x in data.get_xdata()) == [0, 1, 2]  # one point per width category
        assert container.has_yerr


@pytest.mark.parametrize("dataset, name", [
    ("$HQBENCH_DATA/imagenet", "imagenet"),
    ("$HQBENCH_DATA/sar-ships", "sar-ships"),
    ("imagenet:/work/shared/data/imagenet", "imagenet"),
    (".../data/imagenet/val", "imagenet"),
])
def test_the_title_names_the_data_set_never_a_path(tmp_path, figures, dataset, name):
    plot_sweep(_sweep(["A", "D"], dataset=dataset), tmp_path / "sweep.png")
    title = figures[0].axes[0].get_title()
    assert title == f"mnv2 ({name}, classification)"
    assert "$" not in title and "/" not in title


def test_a_described_data_set_keeps_its_description(tmp_path, figures):
    plot_sweep(_sweep(["A", "D"], dataset="embedded demo data (Fashion-MNIST subset)"), tmp_path / "sweep.png")
    assert figures[0].axes[0].get_title() == "mnv2 (embedded demo data (Fashion-MNIST subset), classification)"
