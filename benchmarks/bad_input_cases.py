"""Re-run issue 32's bad-input cases and classify each outcome (docs/ROBUSTNESS.md quotes the table).

    .venv/bin/python benchmarks/bad_input_cases.py --out docs/results/bad_input_cases.json
    .venv/bin/python benchmarks/bad_input_cases.py --only R14,F13 --out /tmp/cases.json

Every case runs in its own subprocess (``hqbench test ...`` or this file's ``--child NAME`` for the
Python API cases), with a timeout, in a fresh temporary folder; ``$HQBENCH_DATA``,
``$HQBENCH_TASKS``, ``$HQBENCH_TRUST_TARGETS`` and ``$HQBENCH_CHECKPOINTS`` are removed and
``$HQBENCH_CACHE`` points into the temporary folder, so only the embedded demo (Fashion-MNIST subset,
``checkpoints/``) and files the case makes are read, and nothing outside the temporary folder is
written. The repository's ``checkpoints/`` and ``tasks/`` are only read (their digests are compared
before and after the run).

Outcomes:
    ok              the expected one-line ``error:`` (or Python exception) naming the file, key or
                    layer, or the correct result
    traceback       a Python traceback, or a failure without an ``error:`` line
    silent wrong    completed with a wrong number, or without the expected refusal
    hang            the case ran past its timeout
    model modified  API cases: weights, module types, hooks, training flags or outputs differ after
                    the failure
    half-written    a ``.tmp`` file or a partial results file was left
    unnamed error   refused, but not in one line naming the file, key or layer

Prints a rich table and writes the cases as JSON to ``--out`` (``--markdown PATH``: also as the
Markdown table docs/ROBUSTNESS.md quotes). Cases in :data:`EXTRA` go beyond issue 32's list and are
counted apart. Exit status 0 when every one of issue 32's cases is ``ok``, 1 otherwise. ``--only
ID,ID`` runs some; ``--keep`` keeps the temporary folders.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HQ = [PY, "-m", "hqbench"]
DEMO = ["model=mobilenet_v2_fmnist", "data=fashion_mnist", "data.eval_limit=32", "data.calib_size=16"]
OUTCOMES = ("ok", "traceback", "silent wrong", "hang", "model modified", "half-written", "unnamed error")
ROW_LINE = re.compile(r"^\s*\S+(?: w\d+a\d+)?(?: s\d+)?: (?:top1|mAP50) ", re.M)  # a row the runner printed
TRACEBACK = "Traceback (most recent call last)"
CLEARED_ENV = ("HQBENCH_DATA", "HQBENCH_TASKS", "HQBENCH_TRUST_TARGETS", "HQBENCH_CHECKPOINTS")


# ---------------------------------------------------------------------------------------------- harness
@dataclass
class Run:
    cmd: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    @property
    def out(self) -> str:
        return self.stdout + self.stderr

    def error_lines(self) -> list[str]:
        return [line.strip() for line in self.out.splitlines() if line.strip().startswith("error:")]

    def tail(self, n: int = 3) -> str:
        lines = [line for line in self.out.strip().splitlines() if line.strip()]
        return " | ".join(line.strip() for line in lines[-n:])[-600:]


@dataclass
class Verdict:
    outcome: str
    detail: str


@dataclass
class CaseResult:
    id: str
    title: str
    expected: str
    outcome: str
    detail: str
    seconds: float
    commands: list[str] = field(default_factory=list)


class Ctx:
    """One case's temporary folder, environment and the commands it ran."""

    def __init__(self, folder: Path, timeout: float):
        self.dir = folder
        self.timeout = timeout
        self.commands: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        self.env.update(HQBENCH_CACHE=str(folder / "cache"), PYTHONUNBUFFERED="1", COLUMNS="200")

    def note(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        shown = ["hqbench", *cmd[3:]] if cmd[:3] == HQ else [Path(c).name if c == PY else c for c in cmd]
        extra = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        self.commands.append(((extra + " " if extra else "") + " ".join(shown)).replace(str(self.dir), "$TMP"))

    def run(self, cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None,
            wrap: list[str] | None = None) -> Run:
        self.note(cmd, env)
        full = (wrap or []) + cmd
        start = time.monotonic()
        proc = subprocess.Popen(full, cwd=self.dir, env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout or self.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            timed_out = True
        return Run(full, proc.returncode, out, err, time.monotonic() - start, timed_out)

    def cli(self, *args: str, env: dict[str, str] | None = None, wrap: list[str] | None = None) -> Run:
        return self.run([*HQ, *args], env=env, wrap=wrap)

    def child(self, name: str, *args: str) -> Run:
        return self.run([PY, str(Path(__file__).resolve()), "--child", name, *map(str, args)])


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this harness started for ``proc`` (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def leftovers(folder: Path) -> list[str]:
    """Temp files (``*.tmp``) anywhere under ``folder`` except the cache."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp") if "cache" not in p.relative_to(folder).parts)


def results_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def refusal(run: Run, names: list[str], *, nothing_computed: bool = True, untouched: list[Path] = (),
            folder: Path | None = None) -> Verdict:
    """The expected outcome of a bad input through the CLI: exit 1, one ``error:`` line holding every
    string of ``names``, no traceback, (optionally) no row printed before it, ``untouched`` files not
    created, no ``.tmp`` under ``folder``."""
    if run.timed_out:
        return Verdict("hang", f"no exit within {run.seconds:.0f} s")
    if TRACEBACK in run.out:
        last = [line for line in run.out.splitlines() if line.strip()][-1].strip()
        return Verdict("traceback", last[:400])
    errors = run.error_lines()
    if run.rc == 0:
        return Verdict("silent wrong", f"exit 0, no refusal; output: {run.tail()}")
    if not errors:
        return Verdict("traceback", f"exit {run.rc} without an error: line; output: {run.tail()}")
    if nothing_computed and ROW_LINE.search(run.stdout.split(errors[0])[0] if errors[0] in run.stdout else run.stdout):
        return Verdict("silent wrong", f"a row was computed before the refusal: {ROW_LINE.search(run.stdout).group(0).strip()}")
    if folder is not None and leftovers(folder):
        return Verdict("half-written", f"left {leftovers(folder)}")
    made = [str(p.name) for p in untouched if p.exists()]
    if made:
        return Verdict("half-written", f"wrote {made} although it refused: {errors[0]}")
    missing = [n for n in names if n not in errors[0]]
    if len(errors) != 1 or missing:
        why = f"{len(errors)} error lines" if len(errors) != 1 else f"does not name {missing}"
        return Verdict("unnamed error", f"{why}: {errors[0][:400]}")
    return Verdict("ok", errors[0][:400])


def completed(run: Run, folder: Path | None = None) -> Verdict | None:
    """None when ``run`` completed cleanly (exit 0, no traceback, no .tmp); else the verdict."""
    if run.timed_out:
        return Verdict("hang", f"no exit within {run.seconds:.0f} s")
    if TRACEBACK in run.out:
        return Verdict("traceback", [line for line in run.out.splitlines() if line.strip()][-1].strip()[:400])
    if run.rc != 0:
        return Verdict("traceback" if not run.error_lines() else "silent wrong",
                       f"exit {run.rc}: {run.tail()}")
    if folder is not None and leftovers(folder):
        return Verdict("half-written", f"left {leftovers(folder)}")
    return None


def child_verdict(run: Run) -> Verdict:
    """An API case's verdict, from the ``RESULT {json}`` line its child printed last."""
    if run.timed_out:
        return Verdict("hang", f"no exit within {run.seconds:.0f} s")
    found = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.rc != 0 or not found:
        last = [line for line in run.out.splitlines() if line.strip()]
        return Verdict("traceback", (last[-1].strip() if last else f"exit {run.rc}")[:400])
    data = json.loads(found[-1][len("RESULT "):])
    return Verdict(data["outcome"], data["detail"])


# ------------------------------------------------------------------------------------------ file makers
def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares ``width`` x ``height`` (8-bit grey) with a few bytes of pixel data:
    what a decompression bomb looks like to a reader that trusts the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
                     + chunk(b"IEND", b""))
    return path


def fashion_images(count: int, split: str = "test_images", offset: int = 0):
    """``count`` (28x28 uint8 image, label) pairs of the embedded Fashion-MNIST subset."""
    import numpy as np

    data = np.load(ROOT / "hqbench" / "data" / "embedded" / "fashion_mnist_subset.npz")
    labels = data[split.replace("images", "labels")]
    return [(data[split][i], int(labels[i])) for i in range(offset, offset + count)]


def image_folder(root: Path, n_val: int = 8, n_train: int = 8, sixteen_bit: bool = False) -> Path:
    """``root/{train,val}/<0..9>/*.png`` from the embedded Fashion-MNIST images (all ten class folders,
    so the demo model's 10 outputs fit); 16-bit PNGs hold value*257 (the same picture)."""
    import numpy as np
    from PIL import Image

    for split, count, source in (("val", n_val, "test_images"), ("train", n_train, "train_images")):
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(fashion_images(count, source)):
            pixels = img.astype(np.uint16) * 257 if sixteen_bit else img
            Image.fromarray(pixels).save(root / split / str(label) / f"{i:04d}.png")
    return root


def demo_checkpoint(name: str = "mobilenet_v2_fmnist") -> Path:
    return ROOT / "checkpoints" / f"{name}.pt"


# ------------------------------------------------------------------------------------------------ cases
def case_R14(ctx: Ctx) -> Verdict:
    import torch

    out = ctx.dir / "r.json"
    first = ctx.cli("test", *DEMO, "method=fp32,B", f"out={out}")
    if (bad := completed(first, ctx.dir)) is not None:
        return bad
    state = torch.load(demo_checkpoint(), map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(14)
    other = {k: (v.float() * (1 + 0.15 * torch.randn(v.shape, generator=gen))).to(v.dtype) if v.ndim >= 2 else v
             for k, v in state.items()}  # conv and linear weights perturbed; BN statistics kept (no negative variance)
    torch.save(other, ctx.dir / "other.pt")
    second = ctx.cli("test", *DEMO, "method=fp32,B", f"model.weights={ctx.dir / 'other.pt'}", f"out={out}")
    if (bad := completed(second, ctx.dir)) is not None:
        return bad
    if "already in" in second.stdout:
        return Verdict("silent wrong", "the other weights file reused rows measured with the demo weights ('already in')")
    again = ctx.cli("test", *DEMO, "method=fp32,B", f"out={out}")  # the harness's control: a true rerun is reused
    if (bad := completed(again, ctx.dir)) is not None:
        return bad
    rows = results_rows(out)
    digests = {r["weights_digest"] for r in rows}
    if len(rows) != 4 or len(digests) != 2 or " ".join(again.stdout.split()).count("already in") != 2:
        return Verdict("silent wrong", f"{len(rows)} rows, {len(digests)} weights digests, rerun reused "
                       f"{' '.join(again.stdout.split()).count('already in')} of 2")
    shown = "; ".join(f"{r['weights_digest'][:8]} {r['method']} {r['value']:.2f}" for r in rows)
    return Verdict("ok", f"model.weights=other.pt: no 'already in', its 2 rows added under another weights_digest; "
                   f"the first command again reuses its 2 rows; top1: {shown}")


def _coco(folder: Path, declared: tuple[int, int] | None) -> Path:
    import numpy as np
    from PIL import Image

    images, annotations = [], []
    rng = np.random.default_rng(7)
    for i in range(3):
        pixels = (rng.random((64, 64)) * 60).astype(np.uint8)
        pixels[20:30, 24:40] = 230  # a bright "ship"
        Image.fromarray(pixels).save(folder / f"scene{i}.png")
        entry = {"id": i + 1, "file_name": f"scene{i}.png"}
        if declared:
            entry.update(width=declared[0], height=declared[1])
        images.append(entry)
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [24, 20, 16, 10],
                            "area": 160, "iscrowd": 0})
    path = folder / "A.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "ship"}]}))
    return path


def case_I07(ctx: Ctx) -> Verdict:
    ann = _coco(ctx.dir, (100000, 100000))
    out = ctx.dir / "r.json"
    run = ctx.cli("test", "task=detection", "model=yolov3_tiny_synth", "data=sar", f"data.train={ann}",
                  f"data.test={ann}", "data.calib_size=2", "method=fp32,B", f"out={out}")
    return refusal(run, [str(ann), "100000"], untouched=[out], folder=ctx.dir)


def case_D08b(ctx: Ctx) -> Verdict:
    grey = ctx.child("D08b-read", ctx.dir)
    verdict = child_verdict(grey)
    if verdict.outcome != "ok":
        return verdict
    runs = {}
    for bits, sixteen in (("8", False), ("16", True)):
        root = image_folder(ctx.dir / f"folder{bits}", n_val=64, n_train=16, sixteen_bit=sixteen)
        out = ctx.dir / f"r{bits}.json"
        run = ctx.cli("test", "model=mobilenet_v2_fmnist", "data=imagefolder", f"data.root={root}",
                      "data.calib_size=16", "data.num_workers=0", "method=fp32,B", f"out={out}")
        if (bad := completed(run, ctx.dir)) is not None:
            return bad
        runs[bits] = {r["method"]: (r["value"], r["outcomes"]) for r in results_rows(out)}
    same = runs["8"] == runs["16"]
    top1 = {m: v for m, (v, _) in runs["16"].items()}
    if not same or top1["fp32"] < 50:
        return Verdict("silent wrong", f"16-bit folder top1 {top1} vs 8-bit {dict((m, v) for m, (v, _) in runs['8'].items())}")
    return Verdict("ok", f"{verdict.detail}; data=imagefolder of 64 Fashion-MNIST images as 16-bit PNGs: the same "
                   f"per-image outcomes as the 8-bit PNGs, top1 {top1}")


def case_F13(ctx: Ctx, signum: int = signal.SIGTERM) -> Verdict:
    out = ctx.dir / "r.json"
    cmd = [*HQ, "test", *DEMO, "method=fp32,D", "bits=w4a8", "weight_rounding=adaround",
           "adaround.iters=1000000", f"out={out}"]
    ctx.note(cmd)
    log = (ctx.dir / "log.txt").open("w")
    proc = subprocess.Popen(cmd, cwd=ctx.dir, env=ctx.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + ctx.timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                if any(r["method"] == "fp32" for r in results_rows(out)):
                    break
            time.sleep(0.2)
        else:
            return Verdict("hang" if proc.poll() is None else "traceback",
                           f"the fp32 row never reached out= (exit {proc.poll()}): {(ctx.dir / 'log.txt').read_text()[-300:]}")
        time.sleep(3.0)  # D calibrates in well under a second here: AdaRound is running
        if proc.poll() is not None:
            return Verdict("silent wrong", f"exited {proc.returncode} before the signal")
        sent = time.monotonic()
        if signum == signal.SIGINT:  # Ctrl-C: the terminal signals the whole process group
            os.killpg(proc.pid, signum)
        else:  # a scheduler signals the process
            proc.send_signal(signum)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            return Verdict("hang", f"{signal.Signals(signum).name}: still running 20 s after the signal")
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.wait()
        log.close()
    text = (ctx.dir / "log.txt").read_text()
    if TRACEBACK in text:
        return Verdict("traceback", text.strip().splitlines()[-1][:400])
    if leftovers(ctx.dir):
        return Verdict("half-written", f"left {leftovers(ctx.dir)}")
    try:
        rows = results_rows(out)
    except ValueError as err:
        return Verdict("half-written", f"{out.name} is not valid JSON after the signal: {err}")
    want = 128 + signum
    if rc != want or [r["method"] for r in rows] != ["fp32"]:
        return Verdict("silent wrong", f"exit {rc} (want {want}), rows {[r['method'] for r in rows]}")
    stop = next((line.strip() for line in text.splitlines() if line.startswith("stopped:")), "")
    return Verdict("ok", f"{signal.Signals(signum).name} during AdaRound: exit {rc} after {took:.1f} s, no .tmp, "
                   f"{out.name} holds the fp32 row; '{stop[:60]}...'")


def case_F13_int(ctx: Ctx) -> Verdict:
    return case_F13(ctx, signal.SIGINT)


BROKEN_PLUGIN = "raise RuntimeError('this calibrator plugin is broken on purpose')\n"


def case_PL1(ctx: Ctx) -> Verdict:
    site = ctx.dir / "site"
    (site / "broken_plugin-0.dist-info").mkdir(parents=True)
    (site / "broken_plugin.py").write_text(BROKEN_PLUGIN)
    (site / "broken_plugin-0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0\n")
    (site / "broken_plugin-0.dist-info" / "entry_points.txt").write_text("[hqbench.calibrators]\nbrokencal = broken_plugin\n")
    env = {"PYTHONPATH": str(site)}
    out = ctx.dir / "r.json"
    works = ctx.cli("test", *DEMO, "method=B", f"out={out}", env=env)
    if (bad := completed(works, ctx.dir)) is not None:
        return bad
    warnings = [line for line in works.out.splitlines() if "warning" in line.lower() and "brokencal" in line]
    if len(warnings) != 1 or [r["method"] for r in results_rows(out)] != ["B"]:
        return Verdict("unnamed error", f"method=B: {len(warnings)} warning lines about the plugin, "
                       f"rows {[r['method'] for r in results_rows(out)]}")
    asked = ctx.cli("test", *DEMO, "method=brokencal", f"out={ctx.dir / 'r2.json'}", env=env)
    verdict = refusal(asked, ["brokencal", "broken on purpose"], untouched=[ctx.dir / "r2.json"], folder=ctx.dir)
    if verdict.outcome == "ok":
        verdict.detail = f"method=B ran with one warning ({warnings[0].strip()[:90]}...); method=brokencal: {verdict.detail}"
    return verdict


def _out_case(ctx: Ctx, out: str, names: list[str], untouched: list[Path] = (), wrap: list[str] | None = None) -> Verdict:
    run = ctx.cli("test", *DEMO, "method=fp32,B", f"out={out}", wrap=wrap)
    return refusal(run, names, untouched=list(untouched), folder=ctx.dir)


def case_K11(ctx: Ctx) -> Verdict:
    (ctx.dir / "results").mkdir()
    verdict = _out_case(ctx, str(ctx.dir / "results"), ["out=", "directory"])
    if verdict.outcome == "ok" and any((ctx.dir / "results").iterdir()):
        return Verdict("half-written", f"wrote into the directory: {list((ctx.dir / 'results').iterdir())}")
    return verdict


def case_K09(ctx: Ctx) -> Verdict:
    return _out_case(ctx, str(ctx.dir / "r.txt"), ["out=", "r.txt"],
                     untouched=[ctx.dir / "r.txt", ctx.dir / "r.csv", ctx.dir / "r.md"])


def _untouched_file(ctx: Ctx, text: str) -> Verdict:
    path = ctx.dir / "notes.json"
    path.write_text(text)
    verdict = _out_case(ctx, str(path), ["out=", "notes.json"], untouched=[ctx.dir / "notes.csv", ctx.dir / "notes.md"])
    if path.read_text() != text:
        return Verdict("half-written", "the existing file was replaced")
    return verdict


def case_K12(ctx: Ctx) -> Verdict:
    return _untouched_file(ctx, json.dumps({"experiment": "mine", "notes": [1, 2, 3]}) + "\n")


def case_K12b(ctx: Ctx) -> Verdict:
    return _untouched_file(ctx, "lab notebook, not JSON\n")


def case_K25(ctx: Ctx) -> Verdict:
    folder = ctx.dir / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    # root passes every permission check: drop the capabilities that let it write anywhere
    wrap = (["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
            if os.geteuid() == 0 and shutil.which("setpriv") else None)
    try:
        verdict = _out_case(ctx, str(folder / "r.json"), ["out=", "readonly"], untouched=[folder / "r.json"], wrap=wrap)
    finally:
        folder.chmod(0o755)
    if wrap:
        verdict.detail += " (run as root without CAP_DAC_OVERRIDE)"
    return verdict


def _damaged_case(ctx: Ctx, name: str, content: bytes | Callable[[Path], object], workers: int = 1) -> Verdict:
    root = image_folder(ctx.dir / "folder", n_val=8, n_train=16)
    bad = root / "val" / "0" / name
    if callable(content):
        content(bad)
    else:
        bad.write_bytes(content)
    out = ctx.dir / "r.json"
    run = ctx.cli("test", "model=mobilenet_v2_fmnist", "data=imagefolder", f"data.root={root}", "data.calib_size=16",
                  f"data.num_workers={workers}", "method=fp32,B", f"out={out}")
    return refusal(run, [name], untouched=[out], folder=ctx.dir)


def _truncated_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(5).random((64, 64)) * 255).astype(np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    return data[: len(data) // 2]


def case_D05(ctx: Ctx) -> Verdict:
    return _damaged_case(ctx, "0000_truncated.png", _truncated_png())


def case_D06(ctx: Ctx) -> Verdict:
    return _damaged_case(ctx, "0000_empty.png", b"")


def case_D07(ctx: Ctx) -> Verdict:
    return _damaged_case(ctx, "0000_notes.jpg", b"this is not an image\n" * 20)


def case_BOMB(ctx: Ctx) -> Verdict:
    return _damaged_case(ctx, "0000_huge.png", lambda p: png_header_only(p, 30000, 30000), workers=2)


def case_W05(ctx: Ctx) -> Verdict:
    other = demo_checkpoint("vgg16_fmnist")
    run = ctx.cli("test", *DEMO, "method=fp32,B", f"model.weights={other}", f"out={ctx.dir / 'r.json'}")
    verdict = refusal(run, [str(other), "first mismatched key 'features.0.0.weight'"], untouched=[ctx.dir / "r.json"],
                      folder=ctx.dir)
    return verdict


def case_W17(ctx: Ctx) -> Verdict:
    import torch

    state = torch.load(demo_checkpoint(), map_location="cpu", weights_only=True)
    state["classifier.1.weight"], state["classifier.1.bias"] = state["classifier.1.weight"][:5], state["classifier.1.bias"][:5]
    path = ctx.dir / "truncated_head.pt"
    torch.save(state, path)
    run = ctx.cli("test", *DEMO, "method=fp32,B", f"model.weights={path}", f"out={ctx.dir / 'r.json'}")
    return refusal(run, [str(path), "classifier.1.weight", "(5, 1280)"], untouched=[ctx.dir / "r.json"], folder=ctx.dir)


def case_W17_yolo(ctx: Ctx) -> Verdict:
    import torch

    state = torch.load(demo_checkpoint("yolov3_tiny_synth"), map_location="cpu", weights_only=True)
    key = [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 4 and v.shape[0] > 1][-1]  # a head conv
    state[key] = state[key][: state[key].shape[0] // 2]
    path = ctx.dir / "truncated_yolo.pt"
    torch.save(state, path)
    ann = _coco(ctx.dir, None)
    run = ctx.cli("test", "task=detection", "model=yolov3_tiny_synth", f"model.weights={path}", "data=sar",
                  f"data.train={ann}", f"data.test={ann}", "data.calib_size=2", "method=fp32,B", f"out={ctx.dir / 'r.json'}")
    return refusal(run, [str(path), key], untouched=[ctx.dir / "r.json"], folder=ctx.dir)


def case_W17_timm(ctx: Ctx) -> Verdict:
    made = ctx.child("W17-timm-file", ctx.dir)
    if made.rc != 0:
        return Verdict("traceback", f"could not make the timm file: {made.tail()}")
    path = ctx.dir / "timm_truncated.pt"
    run = ctx.cli("test", "model=timm:mobilenetv3_small_050", f"model.weights={path}", "data=fashion_mnist",
                  "data.eval_limit=32", "data.calib_size=16", "method=fp32,B", f"out={ctx.dir / 'r.json'}")
    return refusal(run, [str(path), "conv_stem.weight"], untouched=[ctx.dir / "r.json"], folder=ctx.dir)


def case_TMP30(ctx: Ctx) -> Verdict:
    return child_verdict(ctx.child("TMP30", ctx.dir))


def _tasks_copy(ctx: Ctx, node: str) -> dict[str, str]:
    """A copy of tasks/ whose data/fashion_mnist.yaml has ``batch_size:`` replaced by ``node`` (a mapping
    with a ``_target_``, so Hydra would call it to make the value); the env that selects the copy."""
    tasks = ctx.dir / "tasks"
    shutil.copytree(ROOT / "tasks", tasks)
    data = tasks / "data" / "fashion_mnist.yaml"
    text, n = re.subn(r"^batch_size: .*$", "batch_size:\n" + node.rstrip("\n"), data.read_text(), count=1, flags=re.M)
    if n != 1:
        raise RuntimeError(f"harness: no batch_size line in {data}")
    data.write_text(text)
    return {"HQBENCH_TASKS": str(tasks)}


def case_TASKS(ctx: Ctx) -> Verdict:
    marker = ctx.dir / "pwned.txt"
    env = _tasks_copy(ctx, f"  _target_: builtins.open\n  file: {marker}\n  mode: w\n")
    run = ctx.cli("test", *DEMO, "method=B", f"out={ctx.dir / 'r.json'}", env=env)
    if marker.exists():
        return Verdict("silent wrong", f"builtins.open was called: {marker.name} exists")
    return refusal(run, ["builtins.open", "HQBENCH_TASKS"], untouched=[ctx.dir / "r.json"], folder=None)


HUBCONF = "import pathlib\npathlib.Path({marker!r}).write_text('code from a config folder ran')\n" \
          "def batch(**kw):\n    return 16\n"


def case_TASKS_hub(ctx: Ctx) -> Verdict:
    marker = ctx.dir / "pwned.txt"
    hub = ctx.dir / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(HUBCONF.format(marker=str(marker)))
    env = _tasks_copy(ctx, f"  _target_: torch.hub.load\n  repo_or_dir: {hub}\n  model: batch\n  source: local\n"
                           "  trust_repo: true\n")
    run = ctx.cli("test", *DEMO, "method=B", f"out={ctx.dir / 'r.json'}", env=env)
    if marker.exists():
        after = "the run then completed (exit 0)" if run.rc == 0 else f"then exit {run.rc}: {run.tail(1)[:150]}"
        return Verdict("silent wrong", f"data.batch_size._target_=torch.hub.load passed the check (a 'torch.' name) and "
                       f"imported the folder's hubconf.py, which wrote {marker.name}; {after}")
    return refusal(run, ["torch.hub.load"], untouched=[ctx.dir / "r.json"], folder=None)


def case_UNK(ctx: Ctx) -> Verdict:
    run = ctx.cli("test", *DEMO, "method=B", "+data.extras=1", f"out={ctx.dir / 'r.json'}")
    return refusal(run, ["extras"], untouched=[ctx.dir / "r.json"], folder=ctx.dir)


# --------------------------------------------------------------------------------- API cases (in a child)
def api(name: str) -> Callable[[Ctx], Verdict]:
    return lambda ctx: child_verdict(ctx.child(name, ctx.dir))


# Cases beyond issue 32's list, found while writing this script; counted apart from the issue's.
EXTRA = {"W17-timm", "TASKS-hub", "UNK"}

CASES: list[tuple[str, str, str, Callable[[Ctx], Verdict]]] = [
    ("R14", "model.weights=other.pt into the same out= as the demo weights",
     "no 'already in'; rows under 2 weights_digest", case_R14),
    ("I07", "COCO width/height 100000x100000 for 64x64 images (data=sar data.train/test=A.json)",
     "one error line naming A.json", case_I07),
    ("D08b", "16-bit PNGs in an ImageFolder", "mid-grey 32896 -> 128; same top1 as 8-bit", case_D08b),
    ("A18", "state of a ReLU model loaded into its LeakyReLU twin", "ValueError naming the point", api("A18")),
    ("A21", "state of a twin whose conv has another width (same names)", "ValueError", api("A21")),
    ("A21b", "state whose point tensors have another shape", "ValueError", api("A21b")),
    ("A21c", "state whose bias_shift has another shape", "ValueError", api("A21c")),
    ("C14", "NaN scale in a state", "ValueError naming the point", api("C14")),
    ("C14b", "negative scale in a state", "ValueError naming the point", api("C14b")),
    ("C11b", "Recipe(bias_correction='false')", "ValueError/TypeError", api("C11b")),
    ("A25", "data-dependent branch not taken while recording", "RuntimeError naming the layer", api("A25")),
    ("A37", "quantize(inplace=True), NaN calibration batch", "ValueError; model unchanged", api("A37")),
    ("C21", "quantize(inplace=True, D), loader raises KeyboardInterrupt in pass 2",
     "KeyboardInterrupt; model unchanged", api("C21")),
    ("C21b", "quantize(inplace=True, AdaRound), loader raises KeyboardInterrupt",
     "KeyboardInterrupt; model unchanged", api("C21b")),
    ("F13", "SIGTERM during AdaRound", "exit 143 within 20 s, no .tmp", case_F13),
    ("F13-int", "SIGINT (process group) during AdaRound", "exit 130 within 20 s, no .tmp", case_F13_int),
    ("PL1", "broken hqbench.calibrators entry point", "method=B: one warning; method=<it>: one error", case_PL1),
    ("K11", "out= an existing directory", "one error line, nothing computed", case_K11),
    ("K09", "out=r.txt (bad suffix)", "one error line, nothing computed", case_K09),
    ("K12", "out= an existing JSON file that is not results", "one error line, file untouched", case_K12),
    ("K12b", "out= an existing text file named .json", "one error line, file untouched", case_K12b),
    ("K25", "out= in an unwritable folder", "one error line, nothing computed", case_K25),
    ("D05", "truncated PNG, data.num_workers=1", "one error line naming it", case_D05),
    ("D06", "empty PNG, data.num_workers=1", "one error line naming it", case_D06),
    ("D07", "text file named .jpg, data.num_workers=1", "one error line naming it", case_D07),
    ("BOMB", "900-megapixel PNG header (30000x30000), 2 workers", "one error line naming it", case_BOMB),
    ("W05", "model.weights= vgg16_fmnist's file for mobilenet_v2_fmnist", "one error line: file, first key", case_W05),
    ("W17", "model.weights= demo weights with a 5-class head", "one error line: file, first key", case_W17),
    ("W17-yolo", "yolov3_tiny_synth weights with a halved head conv", "one error line: file, first key", case_W17_yolo),
    ("W17-timm", "model=timm:... weights whose stem conv has another shape (extra)",
     "one error line: file, first key", case_W17_timm),
    ("TMP30", "30 SIGKILLs during write_all (results .json/.csv/.md) loops",
     "files always whole; no .tmp after the next write", case_TMP30),
    ("TASKS", "HQBENCH_TASKS copy whose data.batch_size is a node with _target_: builtins.open",
     "one error line; nothing called", case_TASKS),
    ("TASKS-hub", "the same with _target_: torch.hub.load of a local hubconf.py (extra: a trusted prefix)",
     "one error line; nothing called", case_TASKS_hub),
    ("UNK", "+data.extras=1: a key the datamodule does not take (extra)", "one error line naming the key", case_UNK),
]


# ------------------------------------------------------------------------------ child side (API cases)
def _snapshot(model, x) -> dict:
    import torch
    from torch.nn.modules import module as mod

    with torch.no_grad():
        y = model(x)
    hooks = {}
    for name, m in model.named_modules():
        counts = [len(getattr(m, a, {}) or {}) for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                         "_backward_pre_hooks", "_state_dict_hooks",
                                                         "_load_state_dict_pre_hooks")]
        if any(counts) or hasattr(m, "parametrizations"):
            hooks[name] = counts + [hasattr(m, "parametrizations")]
    return {
        "state": {k: (str(v.dtype), tuple(v.shape), v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                  for k, v in model.state_dict().items()},
        "modules": [(n, type(m).__qualname__) for n, m in model.named_modules()],
        "training": [(n, m.training) for n, m in model.named_modules()],
        "params": [(n, id(p), p.requires_grad) for n, p in model.named_parameters()],
        "hooks": hooks,
        "global": [len(mod._global_forward_hooks), len(mod._global_forward_pre_hooks),
                   len(mod._global_backward_hooks), torch._C._len_torch_function_stack()],
        "output": y.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes(),
    }


def _differences(a: dict, b: dict) -> list[str]:
    found = []
    for key in a:
        if key == "state":
            changed = [k for k in a["state"] if a["state"][k] != b["state"].get(k)] + sorted(set(b["state"]) - set(a["state"]))
            if changed:
                found.append(f"state tensors differ: {changed[:3]}")
        elif a[key] != b[key]:
            found.append(f"{key} differ" + (f": {sorted(set(map(str, b[key])) ^ set(map(str, a[key])))[:3]}"
                                            if isinstance(a[key], (list, dict)) and key != "output" else ""))
    return found


def _small(act=None, width: int = 8):
    from torch import nn

    act = act or nn.ReLU
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), act(), nn.Conv2d(width, 8, 3, padding=1),
                         act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def _calib(n: int = 3, shape=(4, 3, 16, 16)):
    import torch

    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=gen) for _ in range(n)]


def _expect_raise(fn, kinds: tuple, names: list[str], qmodel=None) -> dict:
    """``fn()`` must raise one of ``kinds`` with a one-line message holding ``names``; ``qmodel``'s
    calibrated state must be the same after the failed call (nothing half-loaded)."""
    before = _state_bytes(qmodel) if qmodel is not None else None
    try:
        fn()
    except kinds as err:
        message = f"{type(err).__name__}: {err}"
        if before is not None and _state_bytes(qmodel) != before:
            return {"outcome": "model modified", "detail": f"the quantized model changed although it raised {message[:300]}"}
        missing = [n for n in names if n not in str(err)]
        if "\n" in str(err) or missing:
            return {"outcome": "unnamed error", "detail": (f"does not name {missing}: " if missing else "several lines: ")
                    + message[:400]}
        return {"outcome": "ok", "detail": message[:400]}
    except Exception as err:  # not the documented exception: a raw error from deeper down
        first = (str(err).strip().splitlines() or [""])[0]
        changed = before is not None and _state_bytes(qmodel) != before
        return {"outcome": "traceback", "detail": f"{type(err).__name__} (not {'/'.join(k.__name__ for k in kinds)}), "
                f"{len(str(err).strip().splitlines())} lines: {first[:250]}"
                + ("; the quantized model was left half-loaded" if changed else "")}
    return {"outcome": "silent wrong", "detail": f"no {'/'.join(k.__name__ for k in kinds)} raised"}


def _state_bytes(qmodel) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"q": {k: v for k, v in qmodel.state_dict().items()}, "mode": getattr(qmodel, "_mode", None)}, buf)
    return buf.getvalue()


def child_A18(folder: Path) -> dict:
    import torch
    from torch import nn

    from hqbench.quant import prepare, quantize

    torch.manual_seed(0)
    relu, leaky = _small(nn.ReLU), _small(lambda: nn.LeakyReLU(0.1))
    leaky.load_state_dict(relu.state_dict())
    calib = _calib()
    state = quantize(relu, calib, "B").quant_state_dict()
    twin = prepare(leaky, calib[0], "B")
    return _expect_raise(lambda: twin.load_quant_state_dict(state), (ValueError,), ["point '"], twin)


def child_A21(folder: Path) -> dict:
    import torch

    from hqbench.quant import prepare, quantize

    torch.manual_seed(0)
    narrow, wide = _small(width=8), _small(width=16)
    calib = _calib()
    state = quantize(narrow, calib, "B").quant_state_dict()
    twin = prepare(wide, calib[0], "B")
    return _expect_raise(lambda: twin.load_quant_state_dict(state), (ValueError,), ["layer '0'"], twin)


def child_A21b(folder: Path) -> dict:
    import torch

    from hqbench.quant import prepare, quantize

    torch.manual_seed(0)
    model = _small()
    calib = _calib()
    state = quantize(model, calib, "B").quant_state_dict()
    name = sorted(state["points"])[-1]
    point = state["points"][name]
    for key, value in list(point.items()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            point[key] = value.reshape(-1).repeat(3)  # three values where one (or a channel vector) was
    target = prepare(model, calib[0], "B")
    return _expect_raise(lambda: target.load_quant_state_dict(state), (ValueError,), [name], target)


def child_A21c(folder: Path) -> dict:
    import torch

    from hqbench.quant import Recipe, prepare, quantize

    torch.manual_seed(0)
    model = _small()
    calib = _calib()
    state = quantize(model, calib, "B", recipe=Recipe(bias_correction=True)).quant_state_dict()
    layer = sorted(state["bias_shift"])[0]
    state["bias_shift"][layer] = state["bias_shift"][layer][:-1]
    target = prepare(model, calib[0], "B", recipe=Recipe(bias_correction=True))
    return _expect_raise(lambda: target.load_quant_state_dict(state), (ValueError,), [layer], target)


def _bad_scale(value: float) -> dict:
    import torch

    from hqbench.quant import prepare, quantize

    torch.manual_seed(0)
    model = _small()
    calib = _calib()
    state = quantize(model, calib, "B").quant_state_dict()
    name = sorted(state["points"])[0]
    state["points"][name]["scale"] = torch.full_like(state["points"][name]["scale"], value)
    target = prepare(model, calib[0], "B")
    return _expect_raise(lambda: target.load_quant_state_dict(state), (ValueError,), [name], target)


def child_C14(folder: Path) -> dict:
    return _bad_scale(float("nan"))


def child_C14b(folder: Path) -> dict:
    return _bad_scale(-0.5)


def child_C11b(folder: Path) -> dict:
    from hqbench.quant import Recipe

    try:
        recipe = Recipe(bias_correction="false")
    except (ValueError, TypeError) as err:
        if "\n" in str(err) or "bias_correction" not in str(err):
            return {"outcome": "unnamed error", "detail": f"{type(err).__name__}: {err}"[:400]}
        return {"outcome": "ok", "detail": f"{type(err).__name__}: {err}"[:400]}
    return {"outcome": "silent wrong", "detail": f"accepted; bias_correction={recipe.bias_correction!r}"}


def _unchanged_after(model, x, call, kinds: tuple, names: list[str]) -> dict:
    """``call()`` must raise one of ``kinds`` (message naming ``names``) and leave ``model`` as it was."""
    before = _snapshot(model, x)
    try:
        call()
    except kinds as err:
        message = f"{type(err).__name__}: {err}"
        after = _snapshot(model, x)
        diff = _differences(before, after)
        if diff:
            return {"outcome": "model modified", "detail": f"after {message[:150]}: {'; '.join(diff)[:300]}"}
        missing = [n for n in names if n not in str(err)]
        if missing or "\n" in str(err):
            return {"outcome": "unnamed error", "detail": f"does not name {missing}: {message[:300]}"}
        shown = message if str(err) else f"{type(err).__name__} propagated"
        return {"outcome": "ok", "detail": f"{shown[:250]}; weights, module types, hooks, training flags and outputs unchanged"}
    return {"outcome": "silent wrong", "detail": f"no {'/'.join(k.__name__ for k in kinds)} raised"}


def child_A25(folder: Path) -> dict:
    import torch
    from torch import nn

    from hqbench.quant import quantize

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
            self.branch = nn.Conv2d(8, 8, 3, padding=1)
            self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)
            self.threshold = 0.0

        def forward(self, x):
            x = self.act(self.stem(x))
            if x.mean() > self.threshold:  # data-dependent: the recorded example does not take it
                x = self.act(self.branch(x))
            return self.head(self.pool(x).flatten(1))

    torch.manual_seed(0)
    model = Branchy().eval()
    quiet, loud = 0.01 * torch.randn(4, 3, 16, 16), 20 * torch.randn(4, 3, 16, 16).abs()
    with torch.no_grad():
        low, high = (float(model.act(model.stem(b)).mean()) for b in (quiet, loud))
    if not low < high:
        return {"outcome": "traceback", "detail": f"harness: could not separate the batches ({low} vs {high})"}
    model.threshold = (low + high) / 2
    calib = [quiet, loud, quiet]
    return _unchanged_after(model, quiet, lambda: quantize(model, calib, "B", inplace=True), (RuntimeError,), ["branch"])


def _demo_model():
    from hqbench.models import create_model

    model, _ = create_model("mobilenet_v2_fmnist")
    return model.eval()


def child_A37(folder: Path) -> dict:
    import torch

    from hqbench.quant import quantize

    torch.manual_seed(0)
    model = _demo_model()
    calib = _calib(3, (4, 3, 32, 32))
    calib[1] = torch.full_like(calib[1], float("nan"))
    return _unchanged_after(model, calib[0], lambda: quantize(model, calib, "B", inplace=True), (ValueError,), ["'"])


class _InterruptingLoader:
    """Re-iterable batches; the ``at``-th batch handed out (counting over every pass) raises KeyboardInterrupt."""

    def __init__(self, batches, at: int):
        self.batches, self.at, self.handed, self.raised = batches, at, 0, False

    def __iter__(self):
        for b in self.batches:
            self.handed += 1
            if self.handed == self.at:
                self.raised = True
                raise KeyboardInterrupt
            yield b


def _interrupted(method: str, recipe) -> dict:
    import torch

    from hqbench.quant import quantize

    torch.manual_seed(0)
    model = _demo_model()
    batches = _calib(3, (4, 3, 32, 32))
    # handed out: 1 for the example, 3 in the first pass, then the 2nd of the next pass (D's second
    # pass, or the batches AdaRound collects)
    loader = _InterruptingLoader(batches, at=6)
    verdict = _unchanged_after(model, batches[0], lambda: quantize(model, loader, method, recipe=recipe, inplace=True),
                               (KeyboardInterrupt,), [])
    if not loader.raised:
        return {"outcome": "traceback", "detail": f"harness: the loader handed out only {loader.handed} batches"}
    return verdict


def child_C21(folder: Path) -> dict:
    return _interrupted("D", None)


def child_C21b(folder: Path) -> dict:
    from hqbench.quant import Recipe

    return _interrupted("B", Recipe(weight_bits=4, weight_rounding="adaround", adaround={"iters": 10}))


def child_D08b_read(folder: Path) -> dict:
    import numpy as np
    from PIL import Image

    from hqbench.data.images import convert_image, read_image

    path = Path(folder) / "grey16.png"
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(path)  # 128 * 257: mid-grey at 16 bits
    raw = read_image(path)
    rgb = np.asarray(read_image(path, "RGB"))
    grey = np.asarray(convert_image(Image.open(path), "L", path))
    values = sorted({int(rgb.min()), int(rgb.max()), int(grey.min()), int(grey.max())})
    if values != [128]:
        return {"outcome": "silent wrong", "detail": f"mode {raw.mode} 32896 read as {values}, not 128"}
    return {"outcome": "ok", "detail": f"mode {raw.mode} value 32896 -> {values[0]} (RGB and L)"}


def child_W17_timm_file(folder: Path) -> dict:
    import timm
    import torch

    # A 5-class head is a 5-class model (built so, then refused by the 10-class data's check); a stem
    # conv of another shape is a file that does not fit the architecture.
    state = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5).state_dict()
    state["conv_stem.weight"] = state["conv_stem.weight"][:8]
    torch.save(state, Path(folder) / "timm_truncated.pt")
    return {"outcome": "ok", "detail": "written"}


def child_TMP30(folder: Path) -> dict:
    from hqbench.reporting.files import read_results, write_all
    from hqbench.reporting.results import ResultRow

    folder = Path(folder)
    rows = [ResultRow("classification", "mobilenet_v2_fmnist", "kill test", "B", "top1", 50.0 + i / 100, 2000, 64, i,
                      0.1, 0.1, "0..255", "fake", extra={"outcomes": "n:2000:" + "A" * 400, "note": "x" * 200})
            for i in range(600)]
    path = folder / "r.json"
    write_all(rows, path)
    rng = random.Random(32)
    kills, orphaned, most, broken = 0, 0, 0, []
    for i in range(30):
        pid = os.fork()
        if pid == 0:  # the writer: rewrites the three files until it is killed
            try:
                while True:
                    write_all(rows, path)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.05, 0.8))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        left = len(list(folder.glob(".*.tmp")))  # the killed writer's; the next writer removes them first
        orphaned += bool(left)
        most = max(most, left)
        try:  # whatever moment it died, each file is the previous whole one or the new whole one
            if len(read_results(path)) != len(rows):
                broken.append(f"kill {i}: {path.name} holds {len(read_results(path))} rows")
            if len(path.with_suffix(".csv").read_text().splitlines()) != len(rows) + 1:
                broken.append(f"kill {i}: r.csv is partial")
            if "n_eval" not in path.with_suffix(".md").read_text().splitlines()[-1]:
                broken.append(f"kill {i}: r.md is partial")
        except (OSError, ValueError) as err:
            broken.append(f"kill {i}: {err}")
    before = sorted(p.name for p in folder.glob(".*.tmp"))
    write_all(rows, path)  # the next write of the same files, by a live process
    after = sorted(p.name for p in folder.glob(".*.tmp"))
    if broken:
        return {"outcome": "half-written", "detail": "; ".join(broken[:3])}
    if after:
        return {"outcome": "half-written", "detail": f"{len(after)} .tmp left after the next write: {after[:2]}"}
    return {"outcome": "ok", "detail": f"{kills} SIGKILLs: {orphaned} left a .tmp, never more than {most} at once "
            f"(each removed by the next writer); {len(before)} before the last write, 0 after; .json/.csv/.md whole "
            "after every kill"}


CHILDREN = {name[len("child_"):].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("child_")}
CHILDREN.update({k.replace("-", "_"): v for k, v in list(CHILDREN.items())})


def child_main(name: str, folder: str) -> int:
    os.chdir(folder)
    result = CHILDREN[name](Path(folder))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- driver
def portable(text: str, folder: Path) -> str:
    """``text`` with the case's temporary folder as ``$TMP`` and the checkout as ``$REPO``."""
    return text.replace(str(folder), "$TMP").replace(str(ROOT), "$REPO")


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()[:16]


def environment() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "git_commit": commit + (" (with uncommitted changes)" if dirty else ""), "user_is_root": os.geteuid() == 0}


def markdown(results: list[CaseResult], env: dict) -> str:
    lines = [f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores), torch {env['torch']}, "
             f"commit {env['git_commit']}; {sum(r.seconds for r in results):.0f} s in all.", "",
             "| Case | Input | Expected | Outcome | s | What happened |", "|---|---|---|---|---:|---|"]
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.id} | {r.title.replace('|', '/')} | {r.expected} | **{r.outcome}** | {r.seconds:.0f} | {detail} |")
    for label, part in (("issue 32's cases", [r for r in results if r.id not in EXTRA]),
                        ("extra cases", [r for r in results if r.id in EXTRA])):
        if part:
            counts = {o: sum(r.outcome == o for r in part) for o in OUTCOMES}
            lines.append(f"{'' if label.startswith('extra') else chr(10)}Totals, {label}: "
                         + ", ".join(f"{o} {n}" for o, n in counts.items() if n or o == "ok") + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bad_input_cases.json", help="write the cases here as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the cases as a Markdown table (docs/ROBUSTNESS.md's)")
    parser.add_argument("--only", help="comma-separated case ids (e.g. R14,F13)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per subprocess (default 120)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (their path is printed)")
    parser.add_argument("--child", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from hqbench.paths import atomic_write, refuse_existing

    refuse_existing(args.out, *([args.markdown] if args.markdown else []), hint="name a new --out / --markdown")
    if args.child:
        return child_main(*args.child)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    ids = [c[0] for c in CASES]
    chosen = [s.strip() for s in args.only.split(",")] if args.only else ids
    unknown = [c for c in chosen if c not in ids]
    if unknown:
        parser.error(f"unknown case ids {unknown}; valid: {', '.join(ids)}")
    guarded = {name: tree_digest(ROOT / name) for name in ("checkpoints", "tasks")}
    base = Path(tempfile.mkdtemp(prefix="hqbench-bad-input-"))
    results: list[CaseResult] = []
    try:
        for cid, title, expected, fn in CASES:
            if cid not in chosen:
                continue
            folder = base / cid
            folder.mkdir()
            ctx = Ctx(folder, args.timeout)
            start = time.monotonic()
            try:
                verdict = fn(ctx)
            except Exception as err:  # the harness itself broke: say so, never count it as ok
                verdict = Verdict("traceback", f"harness error: {type(err).__name__}: {err} "
                                  f"({traceback.format_exc().strip().splitlines()[-3].strip()})")
            seconds = time.monotonic() - start
            results.append(CaseResult(cid, title, expected, verdict.outcome, portable(verdict.detail, folder),
                                      round(seconds, 1), [portable(c, folder) for c in ctx.commands]))
            style = "green" if verdict.outcome == "ok" else "red"
            console.print(f"[{style}]{cid:>9}[/] {verdict.outcome:<14} {seconds:5.1f}s  {results[-1].detail[:150]}",
                          highlight=False, soft_wrap=True)
    finally:
        if args.keep:
            console.print(f"temporary folders kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    changed = [name for name, digest in guarded.items() if tree_digest(ROOT / name) != digest]
    env = environment()
    table = Table(title=f"issue 32 bad-input cases ({env['date']})", show_lines=False)
    for col in ("Case", "Input", "Outcome", "s", "What happened"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.id, r.title, f"[{'green' if r.outcome == 'ok' else 'red'}]{r.outcome}[/]", f"{r.seconds:.0f}",
                      r.detail[:160])
    console.print(table)
    counts = {o: sum(r.outcome == o for r in results if r.id not in EXTRA) for o in OUTCOMES}
    extra_counts = {o: sum(r.outcome == o for r in results if r.id in EXTRA) for o in OUTCOMES}
    console.print("issue 32's cases: " + "  ".join(f"{o}: {n}" for o, n in counts.items()), highlight=False)
    if any(extra_counts.values()):
        console.print("extra cases: " + "  ".join(f"{o}: {n}" for o, n in extra_counts.items()), highlight=False)
    if changed:
        console.print(f"[red]the repository's {', '.join(changed)} changed during the run (another writer?)[/]")
    out = Path(args.out)
    payload = {"environment": env, "counts": counts, "extra_counts": extra_counts, "extra_cases": sorted(EXTRA),
               "repo_folders_changed": changed, "cases": [asdict(r) | {"extra": r.id in EXTRA} for r in results]}
    text = json.dumps(payload, indent=1, ensure_ascii=False) + "\n"
    atomic_write(out, lambda f: f.write(text), replace=False)
    if args.markdown:
        table = markdown(results, env)
        atomic_write(args.markdown, lambda f: f.write(table), replace=False)
    console.print(f"cases in {out}" + (f", Markdown table in {args.markdown}" if args.markdown else ""), highlight=False)
    return 0 if all(r.outcome == "ok" for r in results if r.id not in EXTRA) else 1


if __name__ == "__main__":
    sys.exit(main())
