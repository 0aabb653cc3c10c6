"""Sensitivity rankings (:mod:`hqbench.quant.sensitivity`) as files and tables.

Each ranked point shows its output SQNR and gain, and, where the task scores samples (Top-1
correct), the metric's change against the ranking's reference model (all quantized for
``reverse``, float for ``one_at_a_time``) on the same samples, with its paired bootstrap interval
and McNemar's p: a ranking built on 256 calibration images separates only the points whose change
is larger than a few images.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from rich.table import Table

from hqbench.methods import method_title, row_method
from hqbench.paths import atomic_write
from hqbench.quant.sensitivity import SensitivityReport
from hqbench.reporting.layers import _finite, _fmt
from hqbench.reporting.stats import mcnemar_exact, paired_difference_ci

FILES = ("sensitivity.json", "sensitivity.csv")
CSV_COLUMNS = ("label", "method", "weight_bits", "act_bits", "direction", "restore_bits", "rank", "name", "index",
               "producer", "bits", "sqnr_db", "gain_db", "cosine", "kl", "gain_kl", "metric", "metric_change", "change_lo",
               "change_hi", "p", "skipped")
_DIRECTION_TITLES = {"reverse": "all quantized, one point restored", "one_at_a_time": "all float, one point quantized"}


def ranked_rows(report: SensitivityReport) -> list[dict]:
    """The report's points, most sensitive first, then the skipped ones; each with its metric
    change against the reference (percentage points) where both have per-sample scores."""
    reference = report.reference.get("outcomes")
    ref = None if reference is None else np.asarray(reference) > 0.5
    rows = []
    for rank, p in enumerate(report.ranked(), 1):
        row = {k: v for k, v in p.items() if k != "outcomes"}
        row["rank"] = rank
        if ref is not None and p["outcomes"] is not None:
            mine = np.asarray(p["outcomes"]) > 0.5
            lo, hi = paired_difference_ci(mine, ref)
            row.update(metric=100.0 * float(mine.mean()), metric_change=100.0 * float(mine.mean() - ref.mean()),
                       change_lo=lo, change_hi=hi, p=mcnemar_exact(mine, ref))
        rows.append(row)
    rows += [{**{k: v for k, v in p.items() if k != "outcomes"}, "rank": None}
             for p in report.points if p["skipped"] is not None]
    return rows


def _restored(report: SensitivityReport) -> str:
    if report.direction != "reverse":
        return ""
    return " to float" if report.restore_bits is None else f" to {report.restore_bits} bits"


def sensitivity_table(report: SensitivityReport, n: int = 10, metric: str = "top1") -> Table:
    """The ``n`` most sensitive points of ``report``."""
    method = row_method(report.method)
    ref = report.reference
    scored = ref.get("outcomes") is not None
    title = (f"{method} ({method_title(method)}) w{report.weight_bits}a{report.act_bits}: {n} most sensitive points, "
             f"{_DIRECTION_TITLES[report.direction]}{_restored(report)}; {report.samples} samples, reference output "
             f"{_fmt(ref.get('sqnr_db'))} dB" + (f", {metric} {100.0 * float(np.mean(ref['outcomes'])):.2f}" if scored else "")
             + f"; {report.passes} passes, {report.seconds:.0f} s")
    table = Table(title=title)
    table.add_column("rank", justify="right")
    table.add_column("point", overflow="fold")
    for column in ("bits", "output SQNR", "gain dB") + ((f"{metric} change [95 % CI]", "p") if scored else ()):
        table.add_column(column, justify="right")
    for row in ranked_rows(report)[:n]:
        if row["rank"] is None:
            break
        cells = [str(row["rank"]), row["name"], str(row["bits"]), _fmt(row["sqnr_db"]), _fmt(row["gain_db"])]
        if scored:
            cells += [f"{row['metric_change']:+.2f} [{row['change_lo']:+.2f}, {row['change_hi']:+.2f}]",
                      f"{row['p']:.3g}"] if "metric_change" in row else ["-", "-"]
        table.add_row(*cells)
    return table


def write_sensitivity(reports: dict[str, list[SensitivityReport]], folder: str | os.PathLike[str],
                      meta: dict | None = None) -> list[Path]:
    """``sensitivity.json`` (every report whole, per-sample scores included, and its ranked rows) and
    ``sensitivity.csv`` (the ranked rows) in ``folder``, each written atomically."""
    import json

    folder = Path(folder)
    docs, flat = [], []
    for label, items in reports.items():
        for r in items:
            ranked = ranked_rows(r)
            docs.append({"label": label, **r.to_dict(), "ranked": ranked})
            base = {"label": label, "method": row_method(r.method), "weight_bits": r.weight_bits,
                    "act_bits": r.act_bits, "direction": r.direction, "restore_bits": r.restore_bits}
            flat += [{**base, **row} for row in ranked]
    text = json.dumps(_finite({**(meta or {}), "reports": docs}), indent=1, allow_nan=False)

    def write_csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in flat:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})

    return [atomic_write(folder / FILES[0], lambda f: f.write(text + "\n")),
            atomic_write(folder / FILES[1], write_csv, newline="")]
