"""NNI 3.0's own post-training quantizer, ``nni.compression.quantization.PtqQuantizer``.

NNI 3.0 runs against torch 2.14 for this quantizer (checked: import, compress and forward). It
pins ``filelock<3.12`` and ``typeguard<4.1.3``, so it is installed without its dependencies::

    pip install --no-deps nni==3.0 colorama json_tricks schema 'typeguard>=3,<4.1.3'

(those four are what ``nni.compression`` imports; NNI's experiment-server dependencies are not
needed here).

The config is the one NNI's own example ``examples/compression/quantization/ptq_example.py``
uses, applied to every ``Conv2d`` and ``Linear``: ``target_names=['_input_', 'weight',
'_output_']``, ``quant_dtype='int8'``, ``quant_scheme='affine'``, ``granularity='default'``
(per tensor for a quantizer). NNI's int8 is ``-127..127``; affine ranges come from the min/max
(forced to include 0) that ``PtqQuantizer`` tracks over the calibration forward passes; the
quantized model is NNI's own wrapped module with ``clamp_round`` fake-quant (simulation in torch
float arithmetic). BatchNorm is not folded (the example leaves ``fuse_names`` unset); residual
additions and other functional ops are not quantized, since NNI wraps modules only.

Per-tensor weights are what this config means, and they are what makes NNI's column collapse on
MobileNetV2-TFLite (0 % top-1 on 300 ImageNet images; quantizing only the weights already gives 0 %,
per-output-channel weights ``granularity='out_channel'`` give float accuracy): BN-folded depthwise
kernels whose channels differ by orders of magnitude, the failure Nagel et al. (2019, "Data-Free
Quantization") report for per-layer INT8 MobileNetV2 (0.11 %). It is NNI's example recipe, measured.

Calibration: ``PtqQuantizer.compress`` calls the evaluator's training function, which here runs
hqbench's calibration batches once in eval mode under ``no_grad`` (no optimizer step); no
evaluating function is given, so no other data is seen.
"""

from __future__ import annotations

import logging

import torch

from . import PeerResult, PeerUnsupported
from ._common import as_input_list, float_copy, timed, version_of

logger = logging.getLogger(__name__)

LAYER_TYPES = ["Conv2d", "Linear"]


def nni_ptq(model, calib_batches, example_inputs, *, weight_bits: int = 8, act_bits: int = 8) -> PeerResult:
    for what, bits in (("weight", weight_bits), ("activation", act_bits)):
        if not 2 <= bits <= 16:
            raise PeerUnsupported(f"NNI's int{bits} quant_dtype is outside 2..16 bits for {what}s")
    nni_log = logging.getLogger("nni")
    level = nni_log.level
    nni_log.setLevel(logging.ERROR)
    try:
        import nni
        from nni.compression.quantization import PtqQuantizer
        from nni.compression.utils import TorchEvaluator
    finally:
        nni_log.setLevel(level)
    # NNI imports pytorch_lightning, which gives its logger an INFO handler: keep Lightning's banners quiet.
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    batches = as_input_list(calib_batches)
    net = float_copy(model)  # NNI wraps modules in place
    seen = {"batches": 0, "checksum": 0.0}

    def calibrate(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.eval()
        with torch.no_grad():
            for x in batches:
                model(x)
                seen["batches"] += 1
                seen["checksum"] += float(x.double().sum())

    def training_step(batch, model):  # required by TorchEvaluator; never called by calibrate()
        raise RuntimeError("hqbench's NNI calibration does not train")

    common = {"op_types": LAYER_TYPES, "quant_scheme": "affine", "granularity": "default"}
    config = [{**common, "target_names": ["_input_", "_output_"], "quant_dtype": f"int{act_bits}"},
              {**common, "target_names": ["weight"], "quant_dtype": f"int{weight_bits}"}]
    optimizer = nni.trace(torch.optim.SGD)(net.parameters(), lr=0.0)  # TorchEvaluator requires a traced optimizer
    evaluator = TorchEvaluator(calibrate, optimizer, training_step)
    nni_log.setLevel(logging.ERROR)  # "Did not pass evaluation_func": on purpose, see the module docstring
    try:
        with timed(logger, f"NNI: PtqQuantizer.compress (calibration on {len(batches)} batches, wrapping)"):
            quantized, _ = PtqQuantizer(net, config, evaluator).compress(None, 1)
    finally:
        nni_log.setLevel(level)
    quantized.eval()

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return quantized(x.detach().to("cpu", torch.float32))

    qa, qw = 2 ** (act_bits - 1) - 1, 2 ** (weight_bits - 1) - 1
    settings = {"quantizer": "PtqQuantizer", "config": config, "is_bias_correction": False,
                "activations": f"int{act_bits} -{qa}..{qa} affine per-tensor at Conv2d/Linear inputs and outputs",
                "weights": f"int{weight_bits} -{qw}..{qw} affine per-tensor", "fuse_names": None,
                "source": "NNI 3.0 examples/compression/quantization/ptq_example.py config, on all Conv2d/Linear"}
    record = {"version": version_of("nni"), "settings": settings,
              "measured_on": "NNI fake-quant in torch (clamp_round, simulation)",
              "calib_batches": seen["batches"], "calib_checksum": seen["checksum"]}
    return PeerResult(forward, record, f"int{act_bits} -{qa}..{qa} affine (NNI)")
