"""Cost of QuantizedModel.layer_report as a ratio to one FP32 pass over the same images (min of N rounds).

    HQBENCH_DATA=../shared/data python benchmarks/layer_report_cost.py D 4 5   # method, act bits, rounds

MobileNetV2-TFLite, the first 64 val images (64 calibration images, seed 0), preloaded batches.
"""
import os, sys, time
import torch
from hydra.utils import instantiate
from hqbench.config import compose
from hqbench.data.resolve import build_data
from hqbench.models import create_model
from hqbench.quant import Recipe, quantize

method, bits, rounds = (sys.argv[1:] + ["D", "4", "3"][len(sys.argv) - 1:])[:3]
cfg = compose("classification", ["model=mobilenet_v2_tflite", "data.eval_limit=64", "data.calib_size=64", "seed=0"])
model, card = create_model(cfg.model.name, weights=cfg.model.weights)
dm, _ = build_data(cfg, card)
task = instantiate(cfg.module, _partial_=True)(model, card).eval()
calib, evalb = list(dm.calibration_dataloader()), list(dm.test_dataloader())
qm = quantize(task, calib, method=method, recipe=Recipe(act_bits=int(bits)))


def timed(f):
    wall, before = time.perf_counter(), os.times()
    f()
    after = os.times()
    return time.perf_counter() - wall, after.user - before.user, after.system - before.system


def passes(m):
    with torch.no_grad():
        for x, _ in evalb:
            m(x)


t = {"fp32": [], "quant": [], "report": []}
for _ in range(int(rounds)):
    t["fp32"].append(timed(lambda: passes(task)))
    t["quant"].append(timed(lambda: passes(qm)))
    t["report"].append(timed(lambda: qm.layer_report(evalb)))
print(f"{len(dm.eval_files)} images in {len(evalb)} batches, {torch.get_num_threads()} threads, method {method} a{bits}")
print({k: [tuple(round(x, 2) for x in r) for r in v] for k, v in t.items()})
for i, clock in enumerate(("wall", "user", "sys")):
    best = {k: min(v[i] for v in vs) for k, vs in t.items()}
    print(clock, {k: round(v, 3) for k, v in best.items()},
          f"report / FP32 pass = {best['report'] / best['fp32']:.2f}; (FP32 + quant passes) / FP32 = "
          f"{(best['fp32'] + best['quant']) / best['fp32']:.2f}")
