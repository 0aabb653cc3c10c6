"""Per-layer error reports (:mod:`hqbench.quant.layer_report`): JSON and CSV files, a terminal table
of the worst points, a figure of propagated SQNR against depth; and ``hqbench analyze``, which
calibrates every method of a task config and reports each on the held-out evaluation images.

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

from rich.console import Console
from rich.table import Table

from hqbench.methods import FP32, PYTORCH, is_peer, method_title, row_method
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


# ------------------------------------------------------------------ hqbench analyze
def _device(cfg):
    import torch

    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    return torch.device("cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")


def _cells(cfg, console: Console) -> list:
    """The config's cells of hqbench's own calibrators; fp32 (the reference), pytorch and peers are skipped."""
    from hqbench.runner import plan_cells, plan_engines

    engines = plan_engines(cfg)
    if engines != ["fake"]:
        raise ValueError(f"engine={','.join(engines)}: hqbench analyze measures the fake-quant model; drop engine=")
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    if precision != "32-true":
        raise ValueError(f"trainer.precision={precision}: hqbench analyze runs in float32 only")
    cells = plan_cells(cfg)
    skipped = list(dict.fromkeys(c.method for c in cells if c.method in (FP32, PYTORCH) or is_peer(c.method)))
    cells = [c for c in cells if c.method not in skipped]
    if not cells:
        raise ValueError("hqbench analyze: no hqbench calibrator among method=; give e.g. method=A,B,C,D")
    if skipped:
        console.print(f"analyze: skipping {', '.join(skipped)} (the float model is the reference; "
                      "pytorch and peers have no hqbench quantization points)", markup=False, soft_wrap=True)
    return cells


def _calibrated(task, calib: list, cell, float_scopes, input_fn, statistics: dict):
    """``task`` quantized as a table cell is (a copy): calibrated once per method, frozen at each width
    from the same statistics, then the recipe's weight-side steps."""
    from hqbench.quant import fit_weights, prepare, quantize

    if cell.method in statistics:
        qmodel = prepare(task, input_fn(calib[0]), cell.method, cell.recipe, float_scopes=float_scopes)
        qmodel.calibrate_from(statistics[cell.method])
        return fit_weights(qmodel, calib, input_fn=input_fn)
    qmodel = quantize(task, calib, method=cell.method, recipe=cell.recipe, float_scopes=float_scopes,
                      input_fn=input_fn)
    statistics[cell.method] = qmodel.calibration_statistics()
    return qmodel


def analyze(cfg, console: Console | None = None, command: str = "") -> dict[str, LayerReport]:
    """``hqbench analyze``: each method and width of ``cfg`` calibrated on the task's calibration
    images, its layer report on the evaluation images; prints the worst points of each and writes
    :data:`FILES` to ``cfg.out`` (a folder; none when null). Returns the reports by label."""
    import lightning as L
    from hydra.utils import instantiate

    from hqbench.data.resolve import build_data
    from hqbench.models import create_model
    from hqbench.quant import default_input_fn
    from hqbench.runner import portable_path, provenance

    console = console or Console()
    cells = _cells(cfg, console)
    folder = Path(str(cfg.out)).expanduser() if cfg.get("out") else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise FileExistsError(f"out={cfg.out} is a file; hqbench analyze writes {', '.join(FILES)} into a folder")
    L.seed_everything(cfg.seed, verbose=False)
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)
    dm, source = build_data(cfg, card)
    device = _device(cfg)
    task = instantiate(cfg.module, _partial_=True)(model, card).to(device).eval()

    def input_fn(batch) -> tuple:
        return tuple(t.to(device) for t in default_input_fn(batch))

    calib = list(dm.calibration_dataloader())
    console.print(f"[bold]{card.name}[/]: layer report of {', '.join(dict.fromkeys(c.method for c in cells))} on "
                  f"{len(dm.eval_files)} eval images, calibrated on {len(dm.calibration_files)} (seed {cfg.seed})",
                  soft_wrap=True)
    with_widths = len({(c.recipe.weight_bits, c.recipe.act_bits) for c in cells}) > 1
    reports, statistics = {}, {}
    for cell in cells:
        qmodel = _calibrated(task, calib, cell, task.float_scopes, input_fn, statistics)
        report = qmodel.layer_report(dm.test_dataloader(), input_fn)
        del qmodel  # a copy of the model per cell: one at a time
        label = report_label(report, with_widths)
        reports[label] = report
        console.print(worst_table(report))
    if folder is not None:
        meta = {"task": cfg.task, "model": card.name, "dataset": portable_path(source), "n_eval": len(dm.eval_files),
                "n_calib": len(dm.calibration_files), "seed": cfg.seed, "engine": "fake",
                "options": cells[0].options, **provenance(command)}
        written = write_layers(reports, folder, meta, title=f"{card.name}: propagated SQNR per activation point")
        console.print(f"written {', '.join(str(p) for p in written)}", markup=False, soft_wrap=True)
    return reports
