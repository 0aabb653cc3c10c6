"""NNCF's post-training quantization (``nncf.quantize``) of the OpenVINO model, run by OpenVINO's CPU plugin.

The recipe of NNCF's OpenVINO PTQ guide: read the model into OpenVINO (here the same float ONNX
export the ORT peers quantize: torch's TorchScript exporter, opset 17, dynamic batch), wrap the
calibration data in ``nncf.Dataset`` and call ``nncf.quantize`` with its defaults: preset
PERFORMANCE (symmetric int8 weights per output channel, symmetric int8/uint8 activations per
tensor), MinMax range estimation with NNCF's default statistics, FastBiasCorrection on,
``subset_size`` set to the number of calibration batches (NNCF counts dataset items, here batches),
so every hqbench batch is used once.
The quantized model is compiled for OpenVINO's ``CPU`` device, which runs int8 kernels.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
import torch

from . import PeerResult
from ._common import as_input_list, export_float_onnx, float_copy, only_8bit, timed, version_of

logger = logging.getLogger(__name__)


def nncf_ptq(model, calib_batches, example_inputs, *, weight_bits: int = 8, act_bits: int = 8) -> PeerResult:
    only_8bit("nncf.quantize (preset PERFORMANCE, int8)", weight_bits, act_bits)
    batches = as_input_list(calib_batches)
    net = float_copy(model)
    example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    with tempfile.TemporaryDirectory(prefix="hqbench-nncf-") as tmp, \
            timed(logger, "NNCF: float ONNX export and ov.convert_model"):
        onnx_path = export_float_onnx(net, example.detach().cpu().float(), Path(tmp) / "float.onnx")
        ov_model = ov.convert_model(str(onnx_path))
    seen = {"batches": 0, "checksum": 0.0}

    def transform(batch: torch.Tensor) -> np.ndarray:
        array = batch.numpy()
        seen["batches"] += 1
        seen["checksum"] += float(array.astype(np.float64).sum())
        return array

    n_images = sum(int(b.shape[0]) for b in batches)
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with timed(logger, f"NNCF: nncf.quantize (calibration on {len(batches)} batches, {n_images} images)"):
            quantized = nncf.quantize(ov_model, nncf.Dataset(batches, transform), subset_size=len(batches))
    finally:
        nncf_log.setLevel(level)
    with timed(logger, "NNCF: compile_model for OpenVINO CPU"):
        compiled = ov.Core().compile_model(quantized, "CPU")
    output = compiled.output(0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(np.array(compiled(feed)[output]))

    settings = {"preset": "PERFORMANCE (default)", "target_device": "ANY (default)", "subset_size": f"{len(batches)} batches ({n_images} images)",
                "fast_bias_correction": True, "model_type": None, "source": "ONNX export opset 17 -> ov.convert_model"}
    record = {"version": version_of("nncf", "openvino"), "settings": settings,
              "measured_on": "OpenVINO CPU plugin int8 kernels",
              "calib_batches": seen["batches"], "calib_checksum": seen["checksum"]}
    return PeerResult(forward, record, "int8/uint8 per-tensor (NNCF PERFORMANCE)")
