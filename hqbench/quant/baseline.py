"""The "PyTorch" column: PyTorch's own default post-training quantization, run by torch.ao itself.

``torch.ao`` FX graph mode with ``get_default_qconfig_mapping("x86")``: per-channel symmetric int8
weights and a ``HistogramObserver`` with ``reduce_range=True`` on activations (7-bit, 0..127).
The model is evaluated as torch's *reference* quantized model (quantize/dequantize around float
kernels), i.e. torch's own fake-INT8, comparable with hqbench's fake-quant columns.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .grid import TORCH_X86_ACT_GRID

ACT_RANGE = TORCH_X86_ACT_GRID.describe()  # quint8 with reduce_range=True


@torch.no_grad()
def torch_ao_ptq(model: nn.Module, calib_data: Iterable, example_inputs: tuple,
                 input_fn: Callable[[Any], tuple], num_batches: int | None = None) -> nn.Module:
    """Prepare with torch.ao's x86 defaults, calibrate, and return the reference quantized model.

    Raises:
        ValueError: the model cannot be traced by torch.fx (say which), or the data is empty.
    """
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_to_reference_fx, prepare_fx

    model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():  # torch's own x86 defaults trip its reduce_range deprecation notice
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max", category=UserWarning)
        try:
            prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs)
        except Exception as err:  # torch.fx raises many types; the user needs the model name and why
            raise ValueError(f"torch.fx cannot trace {type(model).__name__} for the PyTorch baseline: {err}") from err
        seen = 0
        for batch in itertools.islice(calib_data, num_batches):
            prepared(*input_fn(batch))
            seen += 1
        if seen == 0:
            raise ValueError("calibration data is empty: no batch was seen")
        return convert_to_reference_fx(prepared).eval()
