"""Why one calibrator beats another at a width: range and error per activation point (issue 10).

    HQBENCH_DATA=../shared/data python benchmarks/layer_error.py --model efficientnet_lite0 \
        --bits w8a4 --methods C,D --calib 64 --eval 32 --out results/layer_error.json
    HQBENCH_DATA=../shared/data python benchmarks/layer_error.py --task detection --model yolov3_tiny_sar \
        --bits w8a6 --methods C,D --calib 64 --eval 116 --out results/layer_error_sar.json
    HQBENCH_DATA=../shared/data python benchmarks/layer_error.py --model mobilenet_v2_tflite \
        --bits w8a4 --methods D,D+bc --calib 64 --eval 64 --out results/layer_error_bc.json

A method followed by ``+bc`` is that method with bias correction (``bias_correction=true``, measured
on the same calibration images): what the correction does to each point's error.

Each method is calibrated as in a table cell (same images, seed 0). Then, on the evaluation images:

* ``local``: the SQNR (dB) of each point's own quantization of the *float* activation with that
  method's range: the per-tensor error D's search minimises;
* ``clipped``: the share of float values outside the chosen range;
* ``propagated``: the SQNR of the point's activation in the fully quantized model against the float
  one: the error that reaches the point through every layer before it;
* the output's SQNR (logits, or a detector's raw predictions) and, for classifiers, Top-1.

Model, data and calibration images come from the task's config (``hqbench test`` would use the same),
and a detector's box decoding stays float as in ``hqbench test``.

Prints the points where the methods differ most and a summary, and writes the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hydra.utils import instantiate

from hqbench.config import compose
from hqbench.models import create_model
from hqbench.quant import parse_bit_widths, quantize
from hqbench.data.resolve import build_data
from hqbench.quant.grid import fake_quantize
from hqbench.quant import Recipe


def _sqnr(signal: float, noise: float) -> float:
    return 10.0 * torch.log10(torch.tensor(signal / max(noise, 1e-30))).item()


def _capture(qmodel, store: dict):
    """Pre-hooks on every ActQuantizer: a copy of what enters it (quantizers may overwrite their input),
    one per call."""
    handles = []
    for q in qmodel.quantizers.values():
        def hook(module, args, _name=q.name):
            store.setdefault(_name, []).append(args[0].detach().clone())
        handles.append(q.register_forward_pre_hook(hook))
    return handles


def measure(model, dm, methods, weight_bits, act_bits, float_scopes=(), classifier=True) -> dict:
    calib = list(dm.calibration_dataloader())
    qmodels = {m: quantize(copy.deepcopy(model), calib, method=m.removesuffix("+bc"), float_scopes=float_scopes,
                           recipe=Recipe(act_bits=act_bits, weight_bits=weight_bits, bias_correction=m.endswith("+bc")))
               for m in methods}
    stats = {m: {} for m in methods}
    logits = {m: [0.0, 0.0, 0] for m in methods}  # signal, noise, correct
    images = 0
    for x, y in dm.test_dataloader():
        images += len(y)
        for m, qm in qmodels.items():
            floats = {}
            qm.set_mode("float")
            handles = _capture(qm, floats)
            with torch.no_grad():
                ref = qm(x)
            for h in handles:
                h.remove()
            qm.set_mode("quant")
            outs = {}
            handles = [q.register_forward_hook(lambda mod, a, out, _n=q.name: outs.setdefault(_n, []).append(
                out.detach().clone())) for q in qm.quantizers.values()]
            with torch.no_grad():
                out = qm(x)
            for h in handles:
                h.remove()
            logits[m][0] += float(ref.double().pow(2).sum())
            logits[m][1] += float((out - ref).double().pow(2).sum())
            logits[m][2] += int((out.argmax(1) == y).sum()) if classifier else 0
            for q in qm.quantizers.values():
                lo, hi = (float(v) for v in q.clip)
                s = stats[m].setdefault(q.name, {"signal": 0.0, "local": 0.0, "propagated": 0.0, "clipped": 0, "n": 0,
                                                 "range": [round(lo, 5), round(hi, 5)], "grid": q.grid.describe()})
                # In quant mode a passthrough op (a detector's Upsample) re-applies its producer's
                # quantizer, idempotently; pairing calls in order compares the producer's own call.
                for f, o in zip(floats[q.name], outs[q.name]):
                    local = fake_quantize(f, q.scale, q.zero_point, q.grid.qmin, q.grid.qmax)
                    s["signal"] += float(f.double().pow(2).sum())
                    s["local"] += float((local - f).double().pow(2).sum())
                    s["propagated"] += float((o - f).double().pow(2).sum())
                    s["clipped"] += int(((f < lo) | (f > hi)).sum())
                    s["n"] += f.numel()
    points = {}
    for m in methods:
        for name, s in stats[m].items():
            points.setdefault(name, {})[m] = {
                "range": s["range"], "grid": s["grid"], "clipped_pct": round(100.0 * s["clipped"] / s["n"], 4),
                "local_db": round(_sqnr(s["signal"], s["local"]), 2),
                "propagated_db": round(_sqnr(s["signal"], s["propagated"]), 2)}
    summary = {m: {**({"top1": round(100.0 * logits[m][2] / images, 2)} if classifier else {}),
                   "output_db": round(_sqnr(*logits[m][:2]), 2),
                   "mean_local_db": round(sum(p[m]["local_db"] for p in points.values()) / len(points), 2),
                   "mean_propagated_db": round(sum(p[m]["propagated_db"] for p in points.values()) / len(points), 2),
                   "points_with_lower_local_error": sum(
                       all(p[m]["local_db"] >= p[o]["local_db"] for o in methods) for p in points.values())}
               for m in methods}
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
