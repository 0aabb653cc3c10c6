"""Engine agreement as a result: each real-INT8 row against its fake-quant twin on the same images.

A twin is the row with the same key but ``engine="fake"`` (``hqbench test ... engine=fake,onnxruntime``
runs both on one calibration). Per-image Top-1 flips and McNemar's test come from the two rows'
outcomes; for mAP, the difference with its paired bootstrap interval. The logits' distance in
LSB is what the engine's row measured (:mod:`hqbench.quant.agreement`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

from rich.table import Table

from ..evidence import Replicates
from ..methods import FP32, PYTORCH, is_peer, method_title
from .lines import bits_label, evidence_of, options_label
from .render import ALPHA, TableSpec
from .results import ResultRow
from .stats import discordant_counts, paired_difference_ci, paired_pvalue, pairing_key


def agreement_rows(rows: Iterable[ResultRow]) -> list[dict[str, Any]]:
    """One dict per row of hqbench's methods on an engine other than fake that has a fake twin."""
    rows = list(rows)
    by_key = {r.key: r for r in rows}
    out = []
    for r in rows:
        if r.engine in ("fake", "float") or r.method in (FP32, PYTORCH) or is_peer(r.method):
            continue
        fake = by_key.get(replace(r, engine="fake").key)
        if fake is None:
            continue
        item = {"model": r.model, "method": r.method, "bits": bits_label(r.weight_bits, r.act_bits),
                "options": options_label(r.options), "engine": r.engine, "metric": r.metric, "fake": fake.value,
                "value": r.value, "diff": r.value - fake.value, "flips": None, "p": None, "ci": None, "test": None,
                **_lsb(r.extra.get("agreement")), "int8_layers": r.extra.get("int8_layers"),
                "float_layers": r.extra.get("float_layers") or [], "cpu": r.extra.get("cpu")}
        a, b = evidence_of(r), evidence_of(fake)
        if a is not None and b is not None and pairing_key(a) == pairing_key(b):
            item["p"] = paired_pvalue(a, b)
            item["ci"] = paired_difference_ci(a, b)
            if isinstance(a, Replicates):
                item["test"] = "paired bootstrap"
            else:
                item["flips"] = discordant_counts(b, a)  # (lost, gained): fake right and engine wrong, and back
                item["test"] = "McNemar"
        out.append(item)
    return out


def _lsb(measured: dict | None) -> dict:
    measured = measured or {}
    return {"top1_agree": measured.get("top1_agree"), "within_1_lsb": measured.get("within_1_lsb"),
            "worst_lsb": measured.get("worst_lsb"), "max_abs_diff": measured.get("max_abs_diff")}


def _fmt(value, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def _cells(item: dict) -> list[str]:
    lost_gained = "-" if item["flips"] is None else f"-{item['flips'][0]} / +{item['flips'][1]}"
    ci = "-" if item["ci"] is None else f"[{item['ci'][0]:+.2f}, {item['ci'][1]:+.2f}]"
    p = "-" if item["p"] is None else f"{item['p']:.3g}" + (" *" if item["p"] < ALPHA else "")
    name = item["model"] + (f" {item['options']}" if item["options"] else "")
    return [name, f"{method_title(item['method'])} {item['bits']}", item["engine"], f"{item['fake']:.2f}",
            f"{item['value']:.2f}", f"{item['diff']:+.2f} {ci}", lost_gained, p, _fmt(item["top1_agree"]),
            _fmt(item["within_1_lsb"]), _fmt(item["worst_lsb"], "{:g}"), item["int8_layers"] or "-"]


TABLE = TableSpec(
    "Engines against fake-quant (same calibration, same images)",
    ("Model", "Method", "Engine", "fake", "engine", "diff [95 % CI]", "lost / gained", "p", "top-1 agree %",
     "≤1 LSB %", "worst LSB", "int8 layers"),
    "p: McNemar (Top-1) or paired bootstrap (mAP), * p<0.05; lost/gained: images the engine gets wrong/right that "
    "fake-quant gets right/wrong; LSB: the output's grid step",
    n_text=3)


def agreement_table(rows: Iterable[ResultRow]) -> Table | None:
    """The rich table of :func:`agreement_rows`, or None when no row has a fake twin."""
    return TABLE.rich([_cells(item) for item in agreement_rows(rows)])


def agreement_markdown(rows: Iterable[ResultRow]) -> str:
    """The same table in Markdown ("" when no row has a fake twin)."""
    return TABLE.markdown([_cells(item) for item in agreement_rows(rows)])


__all__ = ["agreement_markdown", "agreement_rows", "agreement_table"]
