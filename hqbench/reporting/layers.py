"""Per-layer error reports (:mod:`hqbench.quant.layer_report`): JSON and CSV files, a terminal table
of the worst points, a figure of propagated SQNR against depth (``hqbench analyze``:
:mod:`hqbench.reporting.analyze`).

Reports are keyed by a label: the method's row name (``"D"``), with the widths when several are
compared (``"D w8a4"``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.table import Table

from hqbench.methods import method_title, row_method
from hqbench.paths import atomic_write
from hqbench.quant.layer_report import LayerReport
from hqbench.reporting.plots import _method_style

FILES = ("layers.json", "layers.csv", "layers.png")
CSV_COLUMNS = ("label", "method", "weight_bits", "act_bits", "kind", "name", "depth", "producer", "bits", "signed",
               "qmin", "qmax", "clip_lo", "clip_hi", "scale", "zero_point", "clipped_share", "local_db",
               "propagated_db", "mse", "cosine", "weight_db", "scale_min", "scale_max", "input_point")
_LINESTYLES = ("-", "--", ":", "-.")  # one per width, where several are compared


def report_label(report: LayerReport, with_widths: bool = False) -> str:
    return row_method(report.method) + (f" w{report.weight_bits}a{report.act_bits}" if with_widths else "")


def _finite(value: Any) -> Any:
    """JSON without Infinity/NaN: a non-finite number (an error-free point's SQNR) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(reports: dict[str, LayerReport], path: str | os.PathLike[str], meta: dict | None = None) -> Path:
    doc = {**(meta or {}), "reports": [{"label": label, **r.to_dict()} for label, r in reports.items()]}
    text = json.dumps(_finite(doc), indent=1, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text + "\n"))


def read_json(path: str | os.PathLike[str]) -> dict[str, LayerReport]:
    """The reports of a ``layers.json``, by label (an error-free point's SQNR reads back as None)."""
    names = {f.name for f in fields(LayerReport)}
    docs = json.loads(Path(path).read_text(encoding="utf-8"))["reports"]
    return {d["label"]: LayerReport(**{k: v for k, v in d.items() if k in names}) for d in docs}


def csv_rows(reports: dict[str, LayerReport]) -> list[dict]:
    """One row per activation point, per weight layer and per output, every report in turn."""
    rows = []
    for label, r in reports.items():
        base = {"label": label, "method": row_method(r.method), "weight_bits": r.weight_bits, "act_bits": r.act_bits}
        rows += [{**base, "kind": "activation", **p} for p in r.points]
        rows += [{**base, "kind": "weight", **{k: v for k, v in w.items() if k != "kind"}, "producer": w["kind"]}
                 for w in r.layers]
        rows.append({**base, "kind": "output", "name": "output", "propagated_db": r.output["sqnr_db"],
                     "mse": r.output["mse"], "cosine": r.output["cosine"]})
    return rows


def write_csv(reports: dict[str, LayerReport], path: str | os.PathLike[str]) -> Path:
    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in csv_rows(reports):
            writer.writerow({k: "" if v is None else v for k, v in row.items()})

    return atomic_write(path, write, newline="")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def worst_table(report: LayerReport, n: int = 10) -> Table:
    """The ``n`` points with the lowest propagated SQNR, worst first."""
    out, method = report.output, row_method(report.method)
    table = Table(title=f"{method} ({method_title(method)}) w{report.weight_bits}a{report.act_bits}: "
                        f"{n} worst points by propagated SQNR (dB); output {_fmt(out['sqnr_db'])} dB, "
                        f"cosine {_fmt(out['cosine'], 4)}")
    table.add_column("depth", justify="right")
    table.add_column("point", overflow="fold")  # the name is the point's identity: wrapped, never cut
    for column in ("grid", "range", "clip %", "local", "propagated", "cosine"):
        table.add_column(column, justify="left" if column in ("grid", "range") else "right")
    for p in report.worst(n):
        share = p["clipped_share"]
        table.add_row(str(p["depth"]), p["name"], p["grid"], f"[{p['clip_lo']:.3g}, {p['clip_hi']:.3g}]",
                      _fmt(None if share is None else 100 * share, 3), _fmt(p["local_db"]), _fmt(p["propagated_db"]),
                      _fmt(p["cosine"], 4))
    return table


def depth_figure(reports: dict[str, LayerReport], title: str = ""):
    """Propagated SQNR against depth, one line per report; a method keeps its colour and marker of
    every hqbench figure (:func:`hqbench.reporting.plots._method_style`), a width its line style."""
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state, no global backend

    widths = list(dict.fromkeys((r.weight_bits, r.act_bits) for r in reports.values()))
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for label, r in reports.items():
        shown = [p for p in r.points if p["depth"] is not None and p["propagated_db"] is not None
                 and math.isfinite(p["propagated_db"])]
        ax.plot([p["depth"] for p in shown], [p["propagated_db"] for p in shown], label=label, markersize=3,
                linestyle=_LINESTYLES[widths.index((r.weight_bits, r.act_bits)) % len(_LINESTYLES)],
                **_method_style(row_method(r.method)))
    ax.set_xlabel("depth (activation points in execution order)")
    ax.set_ylabel("propagated SQNR (dB)")
    ax.set_title(title or "propagated SQNR per activation point")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_depth(reports: dict[str, LayerReport], path: str | os.PathLike[str], title: str = "") -> Path:
    fig = depth_figure(reports, title)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)


def write_layers(reports: dict[str, LayerReport], folder: str | os.PathLike[str], meta: dict | None = None,
                 title: str = "") -> list[Path]:
    """``layers.json``, ``layers.csv`` and ``layers.png`` in ``folder``, each written atomically."""
    folder = Path(folder)
    return [write_json(reports, folder / FILES[0], meta), write_csv(reports, folder / FILES[1]),
            plot_depth(reports, folder / FILES[2], title)]
