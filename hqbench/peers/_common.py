"""Helpers the peers share: a float ONNX export, a version string, input checks, and timed log records."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import io
import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from . import PeerUnsupported

OPSET = 17


@contextlib.contextmanager
def timed(log: logging.Logger, what: str):
    """Log ``what`` at INFO as it starts and, with its seconds, as it ends (a failure logs no end)."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", what, time.perf_counter() - start)


def version_of(*packages: str) -> str:
    """``"onnxruntime 1.32.0"`` (several packages joined by ``", "``)."""
    out = []
    for p in packages:
        try:
            out.append(f"{p} {importlib.metadata.version(p)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{p} ?")
    return ", ".join(out)


def float_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy on the CPU: peers never touch the caller's network."""
    return copy.deepcopy(model).cpu().eval()


def as_input_list(calib_batches) -> list[torch.Tensor]:
    batches = [b.detach().to("cpu", torch.float32).contiguous() for b in calib_batches]
    if not batches:
        raise ValueError("calibration data is empty: no batch was seen")
    return batches


def export_float_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = OPSET) -> Path:
    """The float model as ONNX: torch's TorchScript exporter (dynamo=False), dynamic batch axis."""
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    path.write_bytes(buffer.getvalue())
    return path


def only_8bit(tool: str, weight_bits: int, act_bits: int, weights: tuple[int, ...] = (8,),
              acts: tuple[int, ...] = (8,)) -> None:
    """Raise :class:`PeerUnsupported` unless the tool's recipe has these widths."""
    if weight_bits not in weights:
        raise PeerUnsupported(f"{tool} has no {weight_bits}-bit weights (it offers {', '.join(map(str, weights))})")
    if act_bits not in acts:
        raise PeerUnsupported(f"{tool} has no {act_bits}-bit activations (it offers {', '.join(map(str, acts))})")
