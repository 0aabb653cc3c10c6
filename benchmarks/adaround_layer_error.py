"""What AdaRound's options do to single layers: output error per layer, on calibration and held-out images.

    HQBENCH_DATA=../shared/data python benchmarks/adaround_layer_error.py --model mobilenet_v2_tflite \
        --bits w4a8 --keep-8bit first,last --calib 128 --eval 64 --layers 1,2,5,10,30 \
        --out docs/results/adaround_layer_error_mobilenet_v2_tflite.json

The model is calibrated (D) as in a table cell. For each chosen compute layer (its index in
execution order), the layer's input is taken from the quantized model with every earlier layer
rounded to nearest (a simplification: in a real run the earlier layers hold their AdaRound weights),
and its target is its float output after its activation, AdaRound's loss. Each variant is fitted on
the calibration images with AdaRound's defaults (:data:`hqbench.quant.recipe.ADAROUND_DEFAULTS`)
and its mean squared error is measured on whole maps, on the calibration images it learnt from and
on held-out evaluation images:

* ``float``: the float weights (the error the quantized input alone brings);
* ``nearest``: round-to-nearest on the weight range's scale;
* ``adaround``: the learnt rounding; ``+bias``, ``+scale``, ``+scale+bias``: with ``learn_bias``,
  ``learn_scale`` or both.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hqbench.config import compose
from hqbench.models import create_model
from hqbench.paths import atomic_write, refuse_existing
from hqbench.quant import parse_bit_widths, quantize
from hqbench.quant.recipe import ADAROUND_DEFAULTS
from hqbench.quant.adaround import Layer, Rounding, _optimise, _single_layer_samples
from hqbench.quant.model import default_input_fn
from hqbench.quant.weights import quantize_weight
from hqbench.data.resolve import build_data
from hqbench.quant import Recipe

VARIANTS = {"adaround": {}, "+bias": {"learn_bias": True}, "+scale": {"learn_scale": True},
            "+scale+bias": {"learn_scale": True, "learn_bias": True}}


def _error(samples, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
    with torch.no_grad():
        return float(((samples.forward(samples.x, {name: (weight, bias)}) - samples.y) ** 2).mean())


def measure(qmodel, calib: list, held_out: list, layers: list[int]) -> list[dict]:
    d = ADAROUND_DEFAULTS
    modules = dict(qmodel.model.named_modules())
    out = []
    for index in layers:
        name = qmodel.plan.compute[index]
        fit = _single_layer_samples(qmodel, name, calib, default_input_fn, Rounding(), d["window"], True)
        whole = {"calib": _single_layer_samples(qmodel, name, calib, default_input_fn, Rounding(), None, True),
                 "held_out": _single_layer_samples(qmodel, name, held_out, default_input_fn, Rounding(), None, True)}
        qmodel.set_mode("quant")
        scale, bits = qmodel.weight_scale(name), qmodel.layer_weight_bits(name)
        qmodel.set_mode("float")
        module = modules[name]
        weight = module.weight.detach().clone()
        bias = None if module.bias is None else module.bias.detach().clone()
        fitted = {"float": (weight, bias), "nearest": (quantize_weight(weight, scale, bits), bias)}
        for variant, learn in VARIANTS.items():
            g = torch.Generator().manual_seed(d["seed"])
            layer = _optimise(fit, {name: Layer(weight, bias, scale, 2 ** (bits - 1) - 1)}, d["iters"], d["reg"],
                              d["beta"], d["batch_size"], d["lr"], d["warm_start"], g, **learn)[name]
            fitted[variant] = (layer.weight, layer.bias)
        out.append({"index": index, "layer": name, "groups": getattr(module, "groups", 1),
                    "shape": list(weight.shape),
                    **{split: {v: _error(s, name, *wb) for v, wb in fitted.items()} for split, s in whole.items()}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2_tflite")
    parser.add_argument("--bits", default="w4a8")
    parser.add_argument("--keep-8bit", default="")
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--eval", type=int, default=64)
    parser.add_argument("--layers", default="1,2,5,10,30", help="compute-layer indices, in execution order")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.out:
        refuse_existing(args.out, hint="name a new --out")
    torch.manual_seed(0)
    weight_bits, act_bits = parse_bit_widths(args.bits)
    cfg = compose("classification", [f"model={args.model}", f"data.eval_limit={args.eval}",
                                      f"data.calib_size={args.calib}", "seed=0"])
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)
    dm, _ = build_data(cfg, card)
    calib = list(dm.calibration_dataloader())
    held_out = [x for x, _ in dm.test_dataloader()]
    recipe = Recipe(weight_bits=weight_bits, act_bits=act_bits, keep_8bit=args.keep_8bit or ())
    qmodel = quantize(copy.deepcopy(model), calib, method="D", recipe=recipe)
    rows = measure(qmodel, calib, held_out, [int(i) for i in args.layers.split(",")])
    table = Table(title=f"{args.model} {args.bits}: layer output MSE, calibration / held-out images")
    for col in ["#", "layer", "groups", "float", "nearest", *VARIANTS]:
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["index"]), r["layer"], str(r["groups"]),
                      *(f"{r['calib'][v]:.4g} / {r['held_out'][v]:.4g}" for v in ["float", "nearest", *VARIANTS]))
    Console(width=180).print(table)
    if args.out:
        text = json.dumps({"model": args.model, "bits": args.bits, "keep_8bit": args.keep_8bit,
                           "calib": args.calib, "eval": args.eval, "layers": rows}, indent=1)
        atomic_write(args.out, lambda f: f.write(text + "\n"), replace=False)


if __name__ == "__main__":
    main()
