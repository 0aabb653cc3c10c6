"""Throughput of every engine on one model: hqbench's QDQ on ONNX Runtime and OpenVINO against the
floats and the peers' own INT8 models, interleaved, at batch 1 and 32 (issue 29).

    HQBENCH_DATA=../shared/data python benchmarks/engine_throughput.py --out docs/results/engine_throughput_mobilenet_v2_tflite.json
    HQBENCH_DATA=../shared/data python benchmarks/engine_throughput.py --profile openvino --out docs/results/engine_throughput_mobilenet_v2_tflite_openvino.json

Calibrates ``--method`` (hqbench) and each peer (``--peers``) on ``--calib`` seeded train/ images,
then times, round after round, one batch on each runner in turn (so a slow spell of a shared
machine hits all of them alike): torch FP32, fake-quant (torch), ONNX Runtime FP32 and OpenVINO
FP32 (the float model exported as plain ONNX), hqbench's QDQ on ONNX Runtime and on OpenVINO, and
each peer's model on its own engine. Reports the best round's images/s per runner and its ratio to
torch FP32 and to ONNX Runtime FP32, each engine's record (which layers ran in int8), the CPU,
and the measured MAC peak of one core in float32 (a large matmul) and in exact u8s8 int8 (ONNX
Runtime's MatMulInteger), so a CPU without VNNI can state its share of the peak. Agreement with
fake-quant is measured by the CLI (``hqbench test ... engine=fake,onnxruntime,openvino``), not here.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hqbench.data.imagenet import ImageNetDataModule
from hqbench.models import create_model
from hqbench.paths import atomic_write, refuse_existing
from hqbench.peers import create_peer
from hqbench.peers._common import export_float_onnx
from hqbench.quant import Recipe, cpu, quantize
from hqbench.quant.onnx_engine import OnnxRuntimeEngine, make_session
from hqbench.quant.openvino_engine import OpenVinoEngine


def ort_float(path: Path, threads: int | None):
    session = make_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def ov_float(path: Path, threads: int | None):
    import openvino as ov

    config = {**OpenVinoEngine.CONFIG, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    return lambda x: compiled(x.numpy())[compiled.output(0)]


def torch_runner(module):
    def run(x):
        with torch.no_grad():
            return module(x)
    return run


def mac_peaks(threads: int = 1) -> dict:
    """GMAC/s of one big float32 matmul (torch) and one exact u8s8 MatMulInteger (ONNX Runtime)."""
    import onnx
    from onnx import TensorProto, helper

    n = 1024
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best_f = min(_timed(lambda: a @ b) for _ in range(5))
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
                              [helper.make_tensor("b", TensorProto.INT8, [n, n],
                                                  np.random.default_rng(0).integers(-127, 128, n * n).tolist())])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mm.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        session = make_session(path, threads)
        feed = {"a": np.random.default_rng(1).integers(0, 256, (n, n), dtype=np.uint8)}
        best_i = min(_timed(lambda: session.run(None, feed)) for _ in range(5))
    return {"threads": threads, "fp32_gmac_s": round(n ** 3 / best_f / 1e9, 1), "u8s8_gmac_s": round(n ** 3 / best_i / 1e9, 1)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("HQBENCH_DATA"), help="folder holding imagenet/ (default $HQBENCH_DATA)")
    p.add_argument("--model", default="mobilenet_v2_tflite")
    p.add_argument("--method", default="D")
    p.add_argument("--profile", default=None, help="deployment profile of hqbench's model (hqbench.quant.profiles; default: the paper's)")
    p.add_argument("--peers", default="ort-minmax,nncf", help="comma list of peers whose INT8 model is timed too")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="runtime threads (their defaults when None)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.out:
        refuse_existing(args.out, hint="name a new --out")  # before the measurement, not after it

    model, card = create_model(args.model)
    dm = ImageNetDataModule(Path(args.data) / "imagenet", card, batch_size=32, eval_limit=32,
                            calib_size=args.calib, seed=args.seed)
    calib = [x for x, _ in dm.calibration_dataloader()]
    batch = next(iter(dm.test_dataloader()))[0]
    qmodel = quantize(copy.deepcopy(model), calib, method=args.method, recipe=Recipe(profile=args.profile), seed=args.seed)
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_float_onnx(model, batch[:2], Path(tmp) / "fp32.onnx")  # what the ORT peers quantize
        ort_q = OnnxRuntimeEngine(qmodel, (batch[:2],), threads=args.threads)
        ov_q = OpenVinoEngine(qmodel, (batch[:2],), threads=args.threads)
        records.update({"onnxruntime": ort_q.record(), "openvino": ov_q.record()})
        runners = {"torch fp32": torch_runner(model), "fake (torch)": torch_runner(qmodel),
                   "onnxruntime fp32": ort_float(fp32_path, args.threads), "openvino fp32": ov_float(fp32_path, args.threads),
                   f"hqbench {args.method} on onnxruntime": ort_q, f"hqbench {args.method} on openvino": ov_q}
        for peer in filter(None, args.peers.split(",")):
            result = create_peer(peer)(copy.deepcopy(model), calib, (batch[:2],))
            runners[f"{peer} on its engine"] = result.forward
            records[peer] = {k: result.record[k] for k in ("version", "measured_on")}
        best: dict[str, dict[int, float]] = {name: {} for name in runners}
        for size in (1, 32):
            x = batch[:size].contiguous()
            repeats = 32 if size == 1 else 3
            for run in runners.values():  # warm-up: first calls compile and allocate
                run(x)
            for _ in range(args.rounds):
                for name, run in runners.items():
                    seconds = _timed(lambda: [run(x) for _ in range(repeats)])
                    best[name][size] = max(best[name].get(size, 0.0), repeats * size / seconds)
        ort_q.close()
        ov_q.close()
    table = {name: {f"batch{size}": {"images_per_s": round(v, 1), "x_torch_fp32": round(v / best["torch fp32"][size], 2),
                                     "x_ort_fp32": round(v / best["onnxruntime fp32"][size], 2)}
                    for size, v in sizes.items()} for name, sizes in best.items()}
    result = {"model": args.model, "method": args.method, "profile": qmodel.recipe.profile, "calib_images": sum(len(c) for c in calib),
              "rounds": args.rounds, "threads": args.threads, "torch_threads": torch.get_num_threads(),
              "cpu": cpu.describe(), "throughput": table, "engines": records, "mac_peak_one_core": mac_peaks(1)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        atomic_write(args.out, lambda f: f.write(text + "\n"), replace=False)


if __name__ == "__main__":
    main()
