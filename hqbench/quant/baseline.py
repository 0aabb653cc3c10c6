"""The "PyTorch" column: PyTorch's own default post-training quantization, run by torch.ao itself.

``torch.ao`` FX graph mode with ``get_default_qconfig_mapping("x86")``: per-channel symmetric int8
weights and a ``HistogramObserver`` with ``reduce_range=True`` on activations (7-bit, 0..127).
The model is evaluated as torch's *reference* quantized model (quantize/dequantize around float
kernels), i.e. torch's own fake-INT8, comparable with hqbench's fake-quant columns.

Other widths keep torch's default recipe and change only the integer ranges of its observers:
activations ``HistogramObserver(quint8, quant_min=0, quant_max=2**(a-1)-1)`` (the default's
reduce_range, one bit below ``a``: 0..127 at a=8), weights ``PerChannelMinMaxObserver(qint8,
per_channel_symmetric, quant_min=-2**(w-1), quant_max=2**(w-1)-1)``. Ops with fixed qparams
(sigmoid, tanh, ...) keep torch's own. At w8a8 this is exactly ``get_default_qconfig_mapping("x86")``.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .grid import TORCH_X86_ACT_GRID, QuantGrid


def torch_act_grid(act_bits: int = 8) -> QuantGrid:
    """torch's default activation grid at ``act_bits``: unsigned, one bit below (reduce_range)."""
    if act_bits < 3 or act_bits > 8:
        raise ValueError(f"the pytorch baseline runs activations at 3..8 bits (quint8, reduce_range), got {act_bits}")
    return TORCH_X86_ACT_GRID if act_bits == 8 else QuantGrid(act_bits - 1, signed=False)


def _qconfig_mapping(weight_bits: int, act_bits: int):
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    mapping = get_default_qconfig_mapping("x86")
    if (weight_bits, act_bits) == (8, 8):
        return mapping
    if weight_bits > 8:
        raise ValueError(f"the pytorch baseline stores weights as qint8: weight bits <= 8, got {weight_bits}")
    grid = torch_act_grid(act_bits)
    custom = QConfig(
        activation=HistogramObserver.with_args(dtype=torch.quint8, quant_min=grid.qmin, quant_max=grid.qmax),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                  quant_min=-(2 ** (weight_bits - 1)), quant_max=2 ** (weight_bits - 1) - 1))
    default = mapping.global_qconfig
    mapping.set_global(custom)
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):
        if qconfig is default:
            mapping.set_object_type(kind, custom)
    return mapping


@torch.no_grad()
def torch_ao_ptq(model: nn.Module, calib_data: Iterable, example_inputs: tuple,
                 input_fn: Callable[[Any], tuple], num_batches: int | None = None, *, weight_bits: int = 8,
                 act_bits: int = 8) -> nn.Module:
    """Prepare with torch.ao's x86 defaults, calibrate, and return the reference quantized model.

    Raises:
        ValueError: the model cannot be traced by torch.fx (say which), or the data is empty.
    """
    import copy

    from torch.ao.quantization.quantize_fx import convert_to_reference_fx, prepare_fx

    mapping = _qconfig_mapping(weight_bits, act_bits)
    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():  # torch's own x86 defaults trip its reduce_range deprecation notice
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max", category=UserWarning)
        try:
            prepared = prepare_fx(model, mapping, example_inputs)
        except Exception as err:  # torch.fx raises many types; the user needs the model name and why
            raise ValueError(f"torch.fx cannot trace {type(model).__name__} for the PyTorch baseline: {err}") from err
        seen = 0
        for batch in itertools.islice(calib_data, num_batches):
            prepared(*input_fn(batch))
            seen += 1
        if seen == 0:
            raise ValueError("calibration data is empty: no batch was seen")
        return convert_to_reference_fx(prepared).eval()
