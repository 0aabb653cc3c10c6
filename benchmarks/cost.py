"""What quantization costs, as multiples of the float model, measured interleaved in one process.

    HQBENCH_DATA=../shared/data python benchmarks/cost.py                 # default, <= 10 min on 2 cores
    HQBENCH_DATA=../shared/data python benchmarks/cost.py --full          # 256-image calibration, 1024 in the sweep
    python benchmarks/cost.py --synthetic                                 # random batches of the input size

For each model (default ``mobilenet_v2_tflite``, with ``$HQBENCH_DATA/weights/tf2_mobilenet_v2_1.0_224_ptq.tflite``,
and ``efficientnet_lite0``) and each method A-D it reports, each as a ratio to the FP32 model timed
right next to it (alternately, ``--repeats`` times, median of the per-repeat ratios):

* ``fake``: fake-quant forward / FP32 forward (batch ``--batch``);
* ``calib``: calibration (all passes and the range choice; graph recording and BN folding excluded)
  / one FP32 pass over the same images; ``search`` is the share of calibration time spent choosing
  ranges (``compute_range``, D's histogram search), timed by re-running it on the final statistics;
  ``calib after B``: the same for a two-pass method given MinMax's (B) ranges, as in a run of A-D,
  where its first pass is taken from B's calibration;
* ``int``: integer-only executor / FP32 (batch ``--int-batch``);
* ``onnx``: ``OnnxRuntimeEngine`` / FP32 (batch ``--batch``; export time excluded);
* ``rss``: peak RSS of a subprocess that calibrates and evaluates / that of one running FP32 only;
* the sweeps: calibration time of D (``--sweep-methods``) against the number of calibration images
  (8 .. 256, 1024 with ``--full``) and against D's histogram bins.

Prints rich tables and writes JSON (``--out``, default ``results/cost.json``) with the machine's
load average before and after. Timings on a shared machine are noisy: read the ratios, not seconds.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from hqbench.paths import atomic_write, refuse_existing
from hqbench.quant.integer import IntegerExecutor

METHODS = ("A", "B", "C", "D")
TFLITE_WEIGHTS = "weights/tf2_mobilenet_v2_1.0_224_ptq.tflite"


# ----------------------------------------------------------------------------- model and data
def load_model(name: str):
    from hqbench.models import create_model

    weights = None
    if name == "mobilenet_v2_tflite":
        data = os.environ.get("HQBENCH_DATA")
        if not data:
            raise SystemExit("mobilenet_v2_tflite needs its weights: set HQBENCH_DATA (its weights/ folder)")
        weights = str(Path(data) / TFLITE_WEIGHTS)
    model, card = create_model(name, weights=weights)
    return model.eval(), card


def load_batches(card, n_images: int, batch: int, synthetic: bool, split: str = "calib") -> list[torch.Tensor]:
    """``n_images`` images in batches of ``batch``, held in memory so loading is never timed."""
    if synthetic:
        g = torch.Generator().manual_seed(0 if split == "calib" else 1)
        sizes = [min(batch, n_images - i) for i in range(0, n_images, batch)]
        return [torch.randn(s, card.channels, card.input_size, card.input_size, generator=g) for s in sizes]
    from hqbench.data.imagenet import ImageNetDataModule

    data = os.environ.get("HQBENCH_DATA")
    if not data:
        raise SystemExit("real batches need HQBENCH_DATA (or pass --synthetic)")
    dm = ImageNetDataModule(Path(data) / "imagenet", card, batch_size=batch, eval_limit=n_images,
                            calib_size=n_images, seed=0)
    loader = dm.calibration_dataloader() if split == "calib" else dm.test_dataloader()
    return [x for x, _ in loader]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_ratio(pairs: list[tuple[float, float]]) -> dict:
    ratios = [q / f for f, q in pairs]
    return {"ratio": statistics.median(ratios), "ratios": ratios,
            "fp32_s": statistics.median(f for f, _ in pairs), "method_s": statistics.median(q for _, q in pairs)}


# ----------------------------------------------------------------------------- measurements
@torch.no_grad()
def fp32_pass(model, batches) -> None:
    for x in batches:
        model(x)


def calibrated(model, batches, method: str, ranges=None, **calibrator_kwargs):
    """Prepare (untimed) and calibrate (timed); returns (qmodel, calibration s, range-choice s).
    ``ranges``: MinMax statistics that stand in for a two-pass method's first pass (a run with B)."""
    from hqbench.quant import prepare
    from hqbench.quant.calibrators.redistribution import ActivationRedistribution

    qm = prepare(model, (batches[0],), method=method)
    if calibrator_kwargs:  # the bins sweep: D with another histogram size
        for q in qm.quantizers.values():
            q.calibrator = ActivationRedistribution(**calibrator_kwargs)
    seconds = _time(lambda: qm.calibrate(batches, ranges=ranges))
    # The range choice again on the final statistics: the share of calibration spent searching.
    search = _time(lambda: [q.calibrator.compute_range(q.grid) for q in qm.quantizers.values()])
    return qm, seconds, search


@torch.no_grad()
def measure_fake(fp, qm, x, repeats: int) -> dict:
    fp(x), qm(x)  # warm-up
    return _median_ratio([(_time(lambda: fp(x)), _time(lambda: qm(x))) for _ in range(repeats)])


def measure_calibration(fp, model, batches, method: str, repeats: int, ranges=None, **kw) -> dict:
    pairs, searches = [], []
    for _ in range(repeats):
        before = _time(lambda: fp32_pass(fp, batches))
        _, seconds, search = calibrated(model, batches, method, ranges, **kw)
        after = _time(lambda: fp32_pass(fp, batches))
        pairs.append(((before + after) / 2, seconds))
        searches.append(search / seconds)
    out = _median_ratio(pairs)
    out["search_share"] = statistics.median(searches)
    out["images"] = sum(len(b) for b in batches)
    return out


@torch.no_grad()
def measure_integer(fp, qm, x, repeats: int) -> dict:
    executor = IntegerExecutor(qm)
    executor(x)
    return _median_ratio([(_time(lambda: fp(x)), _time(lambda: executor(x))) for _ in range(repeats)])


@torch.no_grad()
def measure_onnx(fp, qm, x, repeats: int) -> dict:
    from hqbench.quant.onnx_engine import OnnxRuntimeEngine

    start = time.perf_counter()
    engine = OnnxRuntimeEngine(qm, (x,), threads=torch.get_num_threads())
    export_s = time.perf_counter() - start
    try:
        engine(x)
        out = _median_ratio([(_time(lambda: fp(x)), _time(lambda: engine(x))) for _ in range(repeats)])
    finally:
        engine.close()
    out["export_s"] = export_s
    return out


def rss_child(args) -> None:
    """Subprocess body: build, (calibrate,) evaluate; print peak RSS in KiB as the last line."""
    model, card = load_model(args.model)
    calib = load_batches(card, args.calib, args.batch, args.synthetic)
    x = load_batches(card, args.batch, args.batch, args.synthetic, split="eval")[0]
    loaded = _vm_hwm_kib()
    _reset_peak()  # from here VmHWM is the peak of the work itself (Linux >= 4.0)
    if args.rss_child == "fp32":
        fp32_pass(model, calib)
        fp32_pass(model, [x])
    else:
        from hqbench.quant import quantize

        qm = quantize(model, calib, method=args.rss_child, inplace=True)
        with torch.no_grad():
            qm(x)
    print(json.dumps({"ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "load_peak_kib": loaded, "work_peak_kib": _vm_hwm_kib()}))


def _vm_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure_rss(model_name: str, methods, args) -> dict:
    out = {}
    for method in ("fp32", *methods):
        cmd = [sys.executable, __file__, "--rss-child", method, "--model", model_name, "--calib", str(args.calib),
               "--batch", str(args.batch)] + (["--synthetic"] if args.synthetic else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"rss child {method} failed:\n{proc.stderr[-2000:]}")
        out[method] = json.loads(proc.stdout.strip().splitlines()[-1])  # KiB on Linux
    # ru_maxrss: the whole process, model loading included; work_peak: the peak after loading.
    ref = out["fp32"]
    return {m: {"peak_rss_mib": v["ru_maxrss_kib"] / 1024, "ratio": v["ru_maxrss_kib"] / ref["ru_maxrss_kib"],
                "work_peak_mib": (v["work_peak_kib"] or 0) / 1024,
                "work_ratio": (v["work_peak_kib"] / ref["work_peak_kib"]) if v["work_peak_kib"] and ref["work_peak_kib"] else None}
            for m, v in out.items()}


# ----------------------------------------------------------------------------- driver
def run_model(name: str, args, console) -> dict:
    model, card = load_model(name)
    fp = copy.deepcopy(model)
    calib = load_batches(card, args.calib, args.batch, args.synthetic)
    x = load_batches(card, args.batch, args.batch, args.synthetic, split="eval")[0]
    x_int = x[: args.int_batch]
    result = {"model": name, "input_size": card.input_size, "methods": {}}
    ranges_of_b = calibrated(model, calib, "B")[0].calibration_statistics()  # untimed: what a run with B holds
    for method in args.methods:
        console.print(f"[bold]{name}[/] {method}: calibration", highlight=False)
        entry = {"calib": measure_calibration(fp, model, calib, method, args.calib_repeats)}
        qm, _, _ = calibrated(model, calib, method)
        if qm.passes_left(ranges_of_b) < qm.num_passes:  # in a run with B, the first pass is B's
            console.print(f"[bold]{name}[/] {method}: calibration given B's ranges", highlight=False)
            entry["calib_after_b"] = measure_calibration(fp, model, calib, method, args.calib_repeats, ranges_of_b)
        console.print(f"[bold]{name}[/] {method}: fake-quant, integer executor, onnxruntime", highlight=False)
        entry["fake"] = measure_fake(fp, qm, x, args.repeats)
        if not args.skip_int:
            entry["int"] = measure_integer(fp, qm, x_int, args.repeats)
        if not args.skip_onnx:
            try:
                entry["onnx"] = measure_onnx(fp, qm, x, args.repeats)
            except Exception as e:  # noqa: BLE001 - an export failure is a finding, not a crash
                entry["onnx_error"] = f"{type(e).__name__}: {e}"
                console.print(f"[red]onnxruntime engine failed[/]: {entry['onnx_error'][:300]}", highlight=False)
        result["methods"][method] = entry
        del qm
        console.print(f"  {name} {method}: fake {entry['fake']['ratio']:.2f}x, calibration {entry['calib']['ratio']:.2f}x "
                      f"(search {100 * entry['calib']['search_share']:.1f} %)"
                      + (f", after B {entry['calib_after_b']['ratio']:.2f}x" if "calib_after_b" in entry else "")
                      + (f", int {entry['int']['ratio']:.1f}x" if "int" in entry else "")
                      + (f", onnxruntime {entry['onnx']['ratio']:.2f}x" if "onnx" in entry else ""), highlight=False)
        args.checkpoint(result)
    if not args.skip_rss:
        console.print(f"[bold]{name}[/]: peak RSS (subprocesses)", highlight=False)
        rss = measure_rss(name, args.methods, args)
        result["rss"] = rss
        for method in args.methods:
            result["methods"][method]["rss"] = rss[method]
    if name in args.sweep_models:
        pool = load_batches(card, max(args.sweep_images), args.batch, args.synthetic)
        images = torch.cat(pool)
        result["sweep_images"], result["sweep_bins"] = {}, {}
        for method in args.sweep_methods:
            rows = []
            for n in args.sweep_images:
                console.print(f"[bold]{name}[/] {method}: {n} calibration images", highlight=False)
                rows.append(measure_calibration(fp, model, list(images[:n].split(args.batch)), method, 1))
                console.print(f"  {n} images: {rows[-1]['ratio']:.2f}x, search {100 * rows[-1]['search_share']:.1f} %",
                              highlight=False)
                args.checkpoint(result)
            result["sweep_images"][method] = rows
        bins_batches = list(images[:args.bins_images].split(args.batch))
        for bins in args.sweep_bins:
            console.print(f"[bold]{name}[/] D: {bins} bins", highlight=False)
            row = measure_calibration(fp, model, bins_batches, "D", 1, bins=bins)
            result["sweep_bins"][str(bins)] = row
            console.print(f"  {bins} bins: {row['ratio']:.2f}x, search {100 * row['search_share']:.1f} %", highlight=False)
            args.checkpoint(result)
    return result


def print_tables(results: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="Cost as a multiple of FP32 (median over repeats)")
    for col in ("model", "method", "fake fwd", "calib / FP32 pass", "calib after B", "search share", "int exec",
                "onnxruntime", "peak RSS"):
        table.add_column(col, justify="left" if col in ("model", "method") else "right")
    for r in results:
        for method, e in r["methods"].items():
            table.add_row(r["model"], method, f"{e['fake']['ratio']:.2f}x",
                          f"{e['calib']['ratio']:.2f}x ({e['calib']['images']} img)",
                          f"{e['calib_after_b']['ratio']:.2f}x" if "calib_after_b" in e else "-",
                          f"{100 * e['calib']['search_share']:.1f} %",
                          f"{e['int']['ratio']:.1f}x" if "int" in e else "-",
                          f"{e['onnx']['ratio']:.2f}x" if "onnx" in e else ("failed" if "onnx_error" in e else "-"),
                          (f"{e['rss']['ratio']:.2f}x ({e['rss']['peak_rss_mib']:.0f} MiB); after load "
                           + (f"{e['rss']['work_ratio']:.2f}x ({e['rss']['work_peak_mib']:.0f} MiB)" if e['rss']['work_ratio'] else "-"))
                          if "rss" in e else "-")
    console.print(table)
    for r in results:
        for method, rows in r.get("sweep_images", {}).items():
            t = Table(title=f"{r['model']} {method}: calibration vs calibration images")
            for col in ("images", "calib s", "FP32 pass s", "ratio", "search share"):
                t.add_column(col, justify="right")
            for row in rows:
                t.add_row(str(row["images"]), f"{row['method_s']:.2f}", f"{row['fp32_s']:.2f}", f"{row['ratio']:.2f}x",
                          f"{100 * row['search_share']:.1f} %")
            console.print(t)
        if r.get("sweep_bins"):
            t = Table(title=f"{r['model']} D: calibration vs histogram bins")
            for col in ("bins", "images", "calib s", "ratio", "search share"):
                t.add_column(col, justify="right")
            for bins, row in r["sweep_bins"].items():
                t.add_row(bins, str(row["images"]), f"{row['method_s']:.2f}", f"{row['ratio']:.2f}x",
                          f"{100 * row['search_share']:.1f} %")
            console.print(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenet_v2_tflite,efficientnet_lite0")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--synthetic", action="store_true", help="random batches of the model's input size")
    parser.add_argument("--full", action="store_true",
                        help="256 calibration images, 3 calibration repeats, sweeps on every model up to 1024 images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--int-batch", type=int, default=2)
    parser.add_argument("--calib", type=int, default=None, help="calibration images (default 64; 256 with --full)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calib-repeats", type=int, default=None)
    parser.add_argument("--sweep-models", default=None, help="models that get the sweeps (default: the first)")
    parser.add_argument("--sweep-methods", default="D")
    parser.add_argument("--sweep-images", default=None, help="default 8,32,128,256 (8,...,1024 with --full)")
    parser.add_argument("--sweep-bins", default="256,512,1024,2048,4096")
    parser.add_argument("--bins-images", type=int, default=64)
    parser.add_argument("--skip-int", action="store_true")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="results/cost.json")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calib is None:
        args.calib = 256 if args.full else 64
    if args.rss_child:
        return rss_child(args)
    refuse_existing(args.out, hint="name a new --out")  # later writes replace only this run's own file

    from rich.console import Console

    console = Console(width=200)
    args.methods = [m for m in args.methods.split(",") if m]
    models = [m for m in args.models.split(",") if m]
    args.calib_repeats = args.calib_repeats or (3 if args.full else 1)
    args.sweep_models = (args.sweep_models.split(",") if args.sweep_models else (models if args.full else models[:1]))
    args.sweep_methods = [m for m in args.sweep_methods.split(",") if m]
    args.sweep_images = [int(v) for v in (args.sweep_images or ("8,32,128,256,1024" if args.full else "8,32,128,256")).split(",")]
    args.sweep_bins = [int(v) for v in args.sweep_bins.split(",") if v]
    started = time.time()
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_before": os.getloadavg(),
               "platform": platform.platform(), "torch": torch.__version__, "python": platform.python_version()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []

    def checkpoint(partial: dict | None = None) -> None:  # the JSON so far, so a long run is never lost
        rows = results + ([partial] if partial is not None and partial not in results else [])
        text = json.dumps({"command": " ".join(sys.argv), "synthetic": args.synthetic, "machine": machine,
                           "complete": False, "results": rows}, indent=1)
        atomic_write(out, lambda f: f.write(text))

    args.checkpoint = checkpoint
    for name in models:
        results.append(run_model(name, args, console))
        checkpoint()
    machine["load_after"] = os.getloadavg()
    machine["wall_s"] = time.time() - started
    print_tables(results, console)
    console.print(f"load average before {machine['load_before']}, after {machine['load_after']}; "
                  f"{machine['cpus']} CPUs, {machine['torch_threads']} torch threads; {machine['wall_s']:.0f} s")
    text = json.dumps({"command": " ".join(sys.argv), "synthetic": args.synthetic, "machine": machine,
                       "complete": True, "results": results}, indent=1)
    atomic_write(out, lambda f: f.write(text))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
