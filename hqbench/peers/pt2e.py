"""torch's PT2E post-training quantization with the x86 Inductor quantizer's default config.

torch 2.14 no longer ships ``torch.ao.quantization.quantize_pt2e``; the flow lives in ``torchao``
(``torchao.quantization.pt2e``). The recipe of torch's PT2E tutorial for x86 CPUs::

    exported = torch.export.export(model, example, dynamic_shapes=batch axis dynamic).module()
    prepared = prepare_pt2e(exported, X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config()))
    for x in calibration batches: prepared(x)
    quantized = convert_pt2e(prepared)

The default config: int8 weights symmetric per output channel (PerChannelMinMaxObserver), uint8
activations affine per tensor with a HistogramObserver, no reduce_range. The number here is that
converted model run eagerly, i.e. torch's reference quantize/dequantize ops around float kernels
(simulation), not ``torch.compile``'s lowered int8 kernels.
"""

from __future__ import annotations

import logging

import torch
from torch.utils._pytree import tree_map

from . import PeerResult
from ._common import as_input_list, float_copy, only_8bit, timed, version_of

logger = logging.getLogger(__name__)


def _imports():
    # torchao logs a torch._pytree deprecation warning on import; it is not about this run.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    finally:
        pytree_log.setLevel(level)
    return convert_pt2e, prepare_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


@torch.no_grad()
def pt2e_x86(model, calib_batches, example_inputs, *, weight_bits: int = 8, act_bits: int = 8) -> PeerResult:
    only_8bit("PT2E's X86InductorQuantizer default config", weight_bits, act_bits)
    convert_pt2e, prepare_pt2e, X86InductorQuantizer, default_config = _imports()
    batches = as_input_list(calib_batches)
    net = float_copy(model)
    example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    example = example.detach().to("cpu", torch.float32)
    with timed(logger, "PT2E: torch.export.export"):
        exported = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
    with timed(logger, "PT2E: prepare_pt2e (X86InductorQuantizer)"):
        prepared = prepare_pt2e(exported, X86InductorQuantizer().set_global(default_config()))
    served, checksum = 0, 0.0
    with timed(logger, f"PT2E: calibration on {len(batches)} batches"):
        for x in batches:
            prepared(x)
            served += 1
            checksum += float(x.double().sum())
    with timed(logger, "PT2E: convert_pt2e"):
        quantized = convert_pt2e(prepared)

    size = example.shape[0]

    @torch.no_grad()
    def forward(x: torch.Tensor):
        x = x.detach().to("cpu", torch.float32)
        try:
            return quantized(x)
        except AssertionError:  # torch.export kept the batch static (a detector's head): pad to it
            chunks = []
            for start in range(0, x.shape[0], size):
                part = x[start:start + size]
                padded = torch.cat([part, part[-1:].expand(size - len(part), *part.shape[1:])]) if len(part) < size else part
                chunks.append(tree_map(lambda t: t[:len(part)] if isinstance(t, torch.Tensor) else t, quantized(padded)))
            return tree_map(lambda *parts: torch.cat(parts) if isinstance(parts[0], torch.Tensor) else parts[0], *chunks)

    settings = {"quantizer": "X86InductorQuantizer", "config": "get_default_x86_inductor_quantization_config()",
                "weights": "int8 symmetric per-channel (PerChannelMinMaxObserver)",
                "activations": "uint8 affine per-tensor (HistogramObserver, reduce_range=False)",
                "export": "torch.export.export, batch axis Dim.AUTO", "convert": "convert_pt2e (fold_quantize=True)"}
    record = {"version": version_of("torch", "torchao"), "settings": settings,
              "measured_on": "torch reference Q/DQ (simulation): convert_pt2e graph run eagerly",
              "calib_batches": served, "calib_checksum": checksum}
    return PeerResult(forward, record, "uint8 0..255 (PT2E x86 default)")
