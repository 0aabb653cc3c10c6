"""ONNX Runtime's own static post-training quantization (``onnxruntime.quantization.quantize_static``).

The recipe a user of ONNX Runtime follows: export the float model to ONNX (torch's TorchScript
exporter, opset 17, dynamic batch), ``quant_pre_process`` (shape inference and graph optimization,
as ORT's quantization guide recommends before quantizing), then ``quantize_static`` with

* ``quant_format=QDQ``, ``per_channel=True``, ``reduce_range=False``,
* weights ``QInt8`` (symmetric per output channel: ORT's ``WeightSymmetric`` default for int8),
  or ``QInt4`` at ``weight_bits=4`` (ORT converts the model to opset 21 for 4-bit Q/DQ),
* activations ``QUInt8`` (asymmetric: ORT's ``ActivationSymmetric=False`` default),
* ``calibrate_method`` MinMax, Entropy (ORT defaults: 128 bins, 128 quantized bins) or Percentile
  (ORT defaults: 2048 bins, 99.999),

fed by a ``CalibrationDataReader`` over exactly hqbench's calibration images, one image per call
(see :class:`BatchReader`). The result is run by an ONNX Runtime CPU session with every graph optimization on, so ORT
fuses the Q/DQ pairs into its int8 kernels.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from . import PeerResult, PeerUnsupported
from ._common import OPSET, as_input_list, export_float_onnx, float_copy, timed, version_of

logger = logging.getLogger(__name__)

WEIGHT_TYPES = {8: QuantType.QInt8, 4: QuantType.QInt4}
ACT_TYPES = {8: QuantType.QUInt8}
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}


class BatchReader(CalibrationDataReader):
    """Hands ORT's calibrator hqbench's calibration images, one per ``get_next``, and counts what it served.

    One image per call, as ORT's own quantization examples feed their readers: ORT's histogram
    calibrators (Entropy, Percentile) stack what every call returned and fail on batches of unequal
    size (hqbench's last batch is usually smaller). MinMax gives the same ranges either way.
    ``served_batches`` counts a hqbench batch once all its images were served.
    """

    def __init__(self, input_name: str, batches: list[torch.Tensor]):
        self.input_name, self.batches = input_name, batches
        self.served_images, self.served_batches, self.checksum = 0, 0, 0.0
        self._it = self._images()

    def _images(self):
        for batch in self.batches:
            for i in range(len(batch)):
                yield batch[i:i + 1].numpy(), i == len(batch) - 1

    def get_next(self):
        item = next(self._it, None)
        if item is None:
            return None
        array, last_of_batch = item
        self.served_images += 1
        self.served_batches += int(last_of_batch)
        self.checksum += float(array.astype(np.float64).sum())
        return {self.input_name: array}

    def rewind(self):
        self._it = self._images()


def _excluded_nodes(path: Path, float_scopes: tuple[str, ...]) -> list[str]:
    """ONNX nodes of the float scopes (e.g. a detector's box decoding) that stay float, as hqbench
    keeps them: every op of the scope except convolutions and their activations. The TorchScript
    exporter names a node ``/<module path>/...``, e.g. ``/model.20/Concat``."""
    import onnx

    prefixes = tuple(f"/{scope}/" for scope in float_scopes)
    return [n.name for n in onnx.load(str(path)).graph.node
            if n.name.startswith(prefixes) and n.op_type != "Conv" and "/act/" not in n.name]


def _quantize(method: str, model, calib_batches, example_inputs, *, weight_bits: int = 8, act_bits: int = 8,
              threads: int | None = None, float_scopes: tuple[str, ...] = ()) -> PeerResult:
    if weight_bits not in WEIGHT_TYPES:
        raise PeerUnsupported(f"onnxruntime quantize_static has no {weight_bits}-bit weight type "
                              f"(its QuantType offers 4, 8 and 16 bits; hqbench runs ORT's 4 and 8)")
    if act_bits not in ACT_TYPES:
        raise PeerUnsupported(f"{act_bits}-bit activations: hqbench runs ONNX Runtime's activations as QUInt8 "
                              "(8-bit) only, the type its int8 CPU kernels fuse")
    batches = as_input_list(calib_batches)
    net = float_copy(model)
    example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    tmp = tempfile.TemporaryDirectory(prefix="hqbench-ort-ptq-")
    folder = Path(tmp.name)
    with timed(logger, f"ORT {method}: float ONNX export (opset {OPSET})"):
        float_path = export_float_onnx(net, example.detach().cpu().float(), folder / "float.onnx")
    pre_path, pre = folder / "pre.onnx", "quant_pre_process"
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # ORT's symbolic shape inference writes sym_shape_infer_temp.onnx and a <uuid>.data into the
        # working folder (seen with the detector): run it inside our temporary folder
        with contextlib.chdir(folder), timed(logger, f"ORT {method}: quant_pre_process"):
            quant_pre_process(str(float_path), str(pre_path))
    except Exception as err:  # ORT's pre-processing is advisory; quantize the plain export and say so
        pre_path, pre = float_path, f"quant_pre_process failed ({type(err).__name__}: {str(err)[:120]}); skipped"
        logger.info("ORT %s: %s", method, pre)
    reader = BatchReader("input", batches)
    extra = {}
    if method == "entropy":
        extra = {"CalibNumBins": 128, "CalibNumQuantizedBins": 128}  # ORT's defaults, stated
    elif method == "percentile":
        extra = {"CalibNumBins": 2048, "CalibPercentile": 99.999}
    out_path = folder / "int8.onnx"
    excluded = _excluded_nodes(pre_path, tuple(float_scopes))
    images = sum(len(b) for b in batches)
    with timed(logger, f"ORT {method}: quantize_static (calibration on {images} images, QDQ conversion)"):
        quantize_static(str(pre_path), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=False, activation_type=ACT_TYPES[act_bits], weight_type=WEIGHT_TYPES[weight_bits],
                        calibrate_method=METHODS[method], extra_options=extra, nodes_to_exclude=excluded)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    with timed(logger, f"ORT {method}: InferenceSession (ORT_ENABLE_ALL)"):
        session = ort.InferenceSession(str(out_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {input_name: feed})[0])

    settings = {"quant_format": "QDQ", "per_channel": True, "reduce_range": False,
                "weight_type": WEIGHT_TYPES[weight_bits].name, "activation_type": ACT_TYPES[act_bits].name,
                "calibrate_method": METHODS[method].name, "extra_options": extra, "opset": OPSET,
                "calibration_feed": f"{reader.served_images} images, one per get_next",
                "export": "torch.onnx.export(dynamo=False)", "pre_process": pre}
    if float_scopes:
        settings["nodes_to_exclude"] = f"{len(excluded)} nodes of {', '.join(float_scopes)} (kept float, as hqbench)"
    if weight_bits == 4:
        settings["qdq_domain"] = "com.microsoft (ORT's choice for 4-bit Q/DQ below opset 21)"
    measured = ("onnxruntime CPU int8 kernels (QDQ, ORT_ENABLE_ALL)" if weight_bits == 8 else
                "onnxruntime CPU, 4-bit weights through com.microsoft DequantizeLinear (QDQ, ORT_ENABLE_ALL)")
    record = {"version": version_of("onnxruntime", "onnx"), "settings": settings, "measured_on": measured,
              "calib_batches": reader.served_batches, "calib_images": reader.served_images,
              "calib_checksum": reader.checksum}
    return PeerResult(forward, record, "uint8 0..255 (ORT QDQ)", close=tmp.cleanup)


def ort_minmax(model, calib_batches, example_inputs, **kw) -> PeerResult:
    return _quantize("minmax", model, calib_batches, example_inputs, **kw)


def ort_entropy(model, calib_batches, example_inputs, **kw) -> PeerResult:
    return _quantize("entropy", model, calib_batches, example_inputs, **kw)


def ort_percentile(model, calib_batches, example_inputs, **kw) -> PeerResult:
    return _quantize("percentile", model, calib_batches, example_inputs, **kw)
