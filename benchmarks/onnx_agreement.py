"""Real INT8 on onnxruntime vs fake-quant on ImageNet: Top-1, agreement, and INT8 vs FP32 throughput.

    HQBENCH_DATA=../shared/data python benchmarks/onnx_agreement.py --out docs/results/onnx_agreement_mobilenet_v2_tflite.json

Calibrates ``--method`` on ``--calib`` seeded train/ images, evaluates the first ``--eval`` val/
images with fake-quant (torch), the exported QDQ model (onnxruntime, int8 kernels) and the float
model exported to ONNX (onnxruntime FP32), then times both onnxruntime sessions back to back,
alternating, at ``--batch`` and at batch 1 (latency). Prints one JSON object; writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from hqbench.data.imagenet import ImageNetDataModule
from hqbench.models import create_model
from hqbench.quant import quantize
from hqbench.quant.onnx_engine import OnnxRuntimeEngine, make_session


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def float_session(model, example: torch.Tensor, folder: Path, threads: int | None):
    """The float model as plain ONNX (no Q/DQ), run by the same onnxruntime."""
    path = folder / "fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=17, input_names=["input0"],
                          output_names=["output0"], dynamic_axes={"input0": {0: "batch"}, "output0": {0: "batch"}})
    return make_session(path, threads)


def fused_ops(path: Path, folder: Path, threads: int | None) -> dict:
    """Op counts of the graph onnxruntime actually runs (after QDQ fusion)."""
    import onnx

    optimized = folder / "optimized.onnx"
    make_session(path, threads, optimized_path=optimized)
    counts: dict = {}
    for node in onnx.load(optimized).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def run_session(session, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([torch.from_numpy(session.run(None, {"input0": b.numpy()})[0]) for b in x.split(batch)])


def images_per_second(session, x: torch.Tensor, repeats: int) -> float:
    feed = {"input0": x.numpy()}
    session.run(None, feed)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feed)
    return repeats * len(x) / (time.perf_counter() - start)


def output_scale(qmodel) -> torch.Tensor:
    """Scale of the grid the logits are stored on (the point that produces the model output)."""
    return qmodel.quantizer(qmodel.graph.outputs.name).scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("HQBENCH_DATA"), help="folder holding imagenet/ (default $HQBENCH_DATA)")
    p.add_argument("--model", default="mobilenet_v2_tflite")
    p.add_argument("--weights", default=None)
    p.add_argument("--method", default="D")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed batches per engine and round")
    p.add_argument("--rounds", type=int, default=2, help="INT8/FP32 timing rounds, alternating")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--container", default="uint8", choices=("uint8", "native"),
                   help="activation Q/DQ type: uint8 everywhere (fuses) or int8 on signed grids")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    model, card = create_model(args.model, weights=args.weights)
    dm = ImageNetDataModule(Path(args.data) / "imagenet", card, batch_size=args.batch, eval_limit=args.eval,
                            calib_size=args.calib, seed=args.seed)
    calib = [x for x, _ in dm.calibration_dataloader()]
    x, y = collect(dm.test_dataloader())
    t0 = time.perf_counter()
    qmodel = quantize(copy.deepcopy(model), calib, method=args.method, seed=args.seed)
    calib_s = time.perf_counter() - t0
    with torch.no_grad():
        fake = torch.cat([qmodel(b) for b in x.split(args.batch)])
        fp32_torch = torch.cat([model(b) for b in x.split(args.batch)])
    with tempfile.TemporaryDirectory() as tmp:
        engine = OnnxRuntimeEngine(qmodel, (x[:2],), tmp, threads=args.threads, container=args.container)
        ort_int8 = torch.cat([engine(b) for b in x.split(args.batch)])
        fp32 = float_session(model, x[:2], Path(tmp), args.threads)
        ort_fp32 = run_session(fp32, x, args.batch)
        ops = fused_ops(engine.path, Path(tmp), args.threads)
        timing = {"int8": [], "fp32": [], "int8_batch1": [], "fp32_batch1": []}
        bench, single = x[: args.batch], x[:1]
        for _ in range(args.rounds):
            timing["int8"].append(images_per_second(engine.session, bench, args.repeats))
            timing["fp32"].append(images_per_second(fp32, bench, args.repeats))
            timing["int8_batch1"].append(images_per_second(engine.session, single, args.repeats * args.batch))
            timing["fp32_batch1"].append(images_per_second(fp32, single, args.repeats * args.batch))
        engine.close()
    scale = output_scale(qmodel)
    lsb = (ort_int8 - fake).abs() / scale
    result = {
        "model": args.model, "method": args.method, "container": args.container, "calib_images": len(torch.cat(calib)), "eval_images": len(y),
        "calib_seconds": round(calib_s, 1),
        "top1": {name: round(100.0 * (out.argmax(1) == y).float().mean().item(), 2)
                 for name, out in (("fp32_torch", fp32_torch), ("fp32_ort", ort_fp32), ("fake_int8", fake),
                                   ("ort_int8", ort_int8))},
        "agreement_ort_vs_fake": {
            "argmax_equal": round((ort_int8.argmax(1) == fake.argmax(1)).float().mean().item(), 4),
            "max_logit_diff_lsb": round(lsb.max().item(), 3),
            "logits_within_1_lsb": round((lsb <= 1.001).float().mean().item(), 5),
            "logits_equal": round((lsb < 1e-3).float().mean().item(), 5),
            "output_scale": float(scale),
        },
        "ort_ops_after_fusion": ops,
        "throughput_batch": args.batch,
        "images_per_s": {k: [round(v, 1) for v in vs] for k, vs in timing.items()},
        "int8_speedup": round(max(timing["int8"]) / max(timing["fp32"]), 2),
        "int8_speedup_batch1": round(max(timing["int8_batch1"]) / max(timing["fp32_batch1"]), 2),
        "threads": args.threads, "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
