"""Why one calibrator beats another at a width: range and error per activation point (issue 10).

    HQBENCH_DATA=../shared/data python benchmarks/layer_error.py --model efficientnet_lite0 \
        --bits w8a4 --methods C,D --calib 64 --eval 32 --out results/layer_error.json
    HQBENCH_DATA=../shared/data python benchmarks/layer_error.py --task detection --model yolov3_tiny_sar \
        --bits w8a6 --methods C,D --calib 64 --eval 116 --out results/layer_error_sar.json
    HQBENCH_DATA=../shared/data python benchmarks/layer_error.py --model mobilenet_v2_tflite \
        --bits w8a4 --methods D,D+bc --calib 64 --eval 64 --out results/layer_error_bc.json

A method followed by ``+bc`` is that method with bias correction (``bias_correction=true``, measured
on the same calibration images): what the correction does to each point's error.

Each method is calibrated as in a table cell (same images, seed 0); then its
``QuantizedModel.layer_report`` (hqbench.quant.layer_report) measures, on the evaluation images:

* ``local``: the SQNR (dB) of each point's own quantization of the *float* activation with that
  method's range: the per-tensor error D's search minimises;
* ``clipped``: the share of float values outside the chosen range (widened to contain 0, as the grid is);
* ``propagated``: the SQNR of the point's activation in the fully quantized model against the float
  one: the error that reaches the point through every layer before it;
* the output's SQNR (logits, or a detector's raw predictions) and, for classifiers, Top-1.

Model, data and calibration images come from the task's config (``hqbench test`` would use the same),
and a detector's box decoding stays float as in ``hqbench test``.

Prints the points where the methods differ most and a summary, and writes the JSON. The library's
own report of every point and weight layer, with CSV and a figure, is ``hqbench analyze``.
"""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table

from hydra.utils import instantiate

from hqbench.config import compose
from hqbench.models import create_model
from hqbench.paths import atomic_write, refuse_existing
from hqbench.quant import parse_bit_widths, quantize
from hqbench.data.resolve import build_data
from hqbench.quant import Recipe


def _round(value, digits: int = 2):
    return None if value is None else round(value, digits)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 2) if values else None


def measure(model, dm, methods, weight_bits, act_bits, float_scopes=(), classifier=True) -> dict:
    """Each method's :meth:`~hqbench.quant.QuantizedModel.layer_report` on the evaluation images, in
    this script's JSON layout (points by name, then by method)."""
    calib = list(dm.calibration_dataloader())
    points, summary, images = {}, {}, 0
    for m in methods:
        qm = quantize(model, calib, method=m.removesuffix("+bc"), float_scopes=float_scopes,
                      recipe=Recipe(act_bits=act_bits, weight_bits=weight_bits, bias_correction=m.endswith("+bc")))
        seen = [0, 0]  # images, correct

        def count(batch, ref, out):
            seen[0] += len(batch[1])
            seen[1] += int((out.argmax(1) == batch[1]).sum()) if classifier else 0

        report = qm.layer_report(dm.test_dataloader(), on_batch=count)
        del qm
        images = seen[0]
        for p in report.points:
            points.setdefault(p["name"], {})[m] = {
                "range": [round(p["clip_lo"], 5), round(p["clip_hi"], 5)], "grid": p["grid"],
                "clipped_pct": _round(None if p["clipped_share"] is None else 100.0 * p["clipped_share"], 4),
                "local_db": _round(p["local_db"]), "propagated_db": _round(p["propagated_db"])}
        summary[m] = {**({"top1": round(100.0 * seen[1] / seen[0], 2)} if classifier else {}),
                      "output_db": _round(report.output["sqnr_db"])}
    for m in methods:
        summary[m].update(
            mean_local_db=_mean(p[m]["local_db"] for p in points.values()),
            mean_propagated_db=_mean(p[m]["propagated_db"] for p in points.values()),
            points_with_lower_local_error=sum(all((p[m]["local_db"] or 0) >= (p[o]["local_db"] or 0) for o in methods)
                                              for p in points.values()))
    return {"images": images, "points": points, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="classification")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--bits", default="w8a4")
    parser.add_argument("--methods", default="C,D")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=12, help="points shown, by the gap in propagated SQNR")
    parser.add_argument("--out", default="results/layer_error.json")
    args = parser.parse_args()
    refuse_existing(args.out, hint="name a new --out")
    torch.manual_seed(0)
    weight_bits, act_bits = parse_bit_widths(args.bits)
    methods = args.methods.split(",")
    cfg = compose(args.task, [f"model={args.model}", f"data.eval_limit={args.eval}", f"data.calib_size={args.calib}",
                              f"data.batch_size={args.batch}", "seed=0"])
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)
    dm, _ = build_data(cfg, card)
    task = instantiate(cfg.module, _partial_=True)(model, card)  # what hqbench test quantizes
    result = {"task": args.task, "model": args.model, "bits": args.bits, "calib": args.calib,
              **measure(task, dm, methods, weight_bits, act_bits, getattr(task, "float_scopes", ()),
                        classifier=args.task == "classification")}
    console = Console()
    a, b = methods[0], methods[-1]
    table = Table(title=f"{args.model} {args.bits}: points where {a} and {b} differ most (SQNR dB, higher is better)")
    for col in ("point", "grid", f"{a} range", f"{b} range", f"{a} clipped %", f"{b} clipped %",
                f"{a} local", f"{b} local", f"{a} propagated", f"{b} propagated"):
        table.add_column(col)
    ranked = sorted(result["points"].items(), key=lambda kv: -abs(kv[1][a]["propagated_db"] - kv[1][b]["propagated_db"]))
    for name, p in ranked[:args.top]:
        table.add_row(name, p[a]["grid"], str(p[a]["range"]), str(p[b]["range"]), str(p[a]["clipped_pct"]),
                      str(p[b]["clipped_pct"]), str(p[a]["local_db"]), str(p[b]["local_db"]),
                      str(p[a]["propagated_db"]), str(p[b]["propagated_db"]))
    console.print(table)
    console.print(json.dumps(result["summary"], indent=1))
    out = atomic_write(args.out, lambda f: f.write(json.dumps(result, indent=1) + "\n"), replace=False)
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
