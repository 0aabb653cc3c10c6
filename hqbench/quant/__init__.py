"""hqbench.quant — hybrid asymmetric INT8 post-training quantization in plain PyTorch.

No Lightning, no ultralytics: this package is the core every task and callback uses.

The method is the project's reconstruction of Wei, Ma & Yang, "Activation Redistribution Based
Hybrid Asymmetric Quantization Method of Neural Networks" (CMES 138(1), 2024), whose full text is
not available; only its abstract and released README are. From the abstract: the method "takes
data distribution into consideration", aims to "resolve the contradiction between the quantization
accuracy and the ease of implementation" on integer-only hardware, and to "balance the trade-off
between clipping range and quantization resolution". The reconstruction:

* BatchNorm folded into the preceding conv; weights int8 symmetric per output channel.
* Activations stored per tensor where an integer accelerator stores them, on a grid chosen by the
  producer: unsigned 0..255 after ReLU-like layers, shifted-asymmetric -128..127 otherwise, where
  the zero point is a *redistribution shift* folded into biases (see :mod:`.integer`).
* Clip ranges from calibrators A (moving min/max), B (min/max), C (torch's histogram search) or
  D (Activation Redistribution: expected clip+round error minimised on a histogram).

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
>>> calib = [torch.randn(2, 3, 8, 8) for _ in range(3)]
>>> qnet = quantize(net, calib, method="D")
>>> qnet(torch.randn(1, 3, 8, 8)).shape
torch.Size([1, 4, 6, 6])
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .adaround import check_adaround_options
from .bits import check_bits, format_bit_widths, parse_bit_widths
from .calibrators import canonical_name, create_calibrator, list_calibrators, register_calibrator
from .grid import TORCH_X86_ACT_GRID, QuantGrid, range_to_qparams
from .model import KEEP_8BIT, WEIGHT_ROUNDINGS, QuantizedModel, check_weight_rounding, default_input_fn


def _example_from(data: Iterable, input_fn: Callable) -> tuple:
    for batch in data:
        return input_fn(batch)
    raise ValueError("calibration data is empty: no batch was seen")


def prepare(model: nn.Module, example_inputs: tuple | torch.Tensor, method: str = "D", *, inplace: bool = False,
            act_bits: int = 8, weight_bits: int = 8, weight_per_channel: bool = True,
            float_scopes: tuple[str, ...] = (), act_grid: QuantGrid | None = None,
            keep_8bit: tuple[str, ...] | str = (), weight_range: str = "minmax") -> QuantizedModel:
    """Fold BN and attach (uncalibrated) quantizers; no data is observed yet.

    Use this with :meth:`QuantizedModel.load_quant_state_dict` to restore saved qparams without
    recalibrating. ``act_grid`` stores every activation on one grid instead of the hybrid
    scheme's per-producer choice (e.g. :data:`TORCH_X86_ACT_GRID`, torch's default).

    Args:
        act_bits, weight_bits: 2..16. Unsigned grids keep all ``2**act_bits`` levels.
        keep_8bit: ``("first", "last")`` (or ``"first,last"``) keeps the first and last compute
            layers' weights, and the activations they read and write, at 8 bits.
        weight_range: ``"minmax"`` (max |w| per channel) or ``"mse"`` (least-squared-error clip).

    Raises:
        ValueError: a bad width, ``keep_8bit`` entry or ``weight_range``, in one line.
    """
    check_bits(act_bits, "act_bits")
    check_bits(weight_bits, "weight_bits")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not inplace:
        model = copy.deepcopy(model)
    return QuantizedModel(model.eval(), example_inputs, method, act_bits=act_bits, weight_bits=weight_bits,
                          weight_per_channel=weight_per_channel, float_scopes=float_scopes, act_grid=act_grid,
                          keep_8bit=keep_8bit, weight_range=weight_range)


def quantize(model: nn.Module, calib_data: Iterable | Callable[[nn.Module], None], method: str = "D", *,
             num_batches: int | None = None, seed: int | None = None, inplace: bool = False,
             example_inputs: tuple | None = None, input_fn: Callable[[Any], tuple] = default_input_fn,
             act_bits: int = 8, weight_bits: int = 8, weight_per_channel: bool = True,
             float_scopes: tuple[str, ...] = (), keep_8bit: tuple[str, ...] | str = (), weight_range: str = "minmax",
             bias_correction: bool = False, weight_rounding: str = "nearest",
             adaround: Mapping[str, Any] | None = None) -> QuantizedModel:
    """Prepare, calibrate and freeze ``model``; returns a fake-quant :class:`QuantizedModel`.

    Args:
        model: any eager PyTorch model (no tracing needed).
        calib_data: a re-iterable of batches, or a ``forward_loop(model)`` callable (then also
            pass ``example_inputs``).
        method: ``"A"``-``"D"`` or a registered calibrator name (:func:`list_calibrators`).
        num_batches: batches per calibration pass (all when None).
        seed: seeds torch's RNG first, for loaders that shuffle.
        act_bits, weight_bits, keep_8bit, weight_range: see :func:`prepare`.
        bias_correction: subtract the per-channel output-mean shift that quantization causes,
            measured on the calibration data (:mod:`hqbench.quant.bias_correction`).
        weight_rounding: ``"nearest"`` or ``"adaround"`` (:mod:`hqbench.quant.adaround`; runs
            before bias correction).
        adaround: AdaRound's settings where they differ from its CPU defaults, e.g.
            ``{"iters": 10000, "lr": 1e-3}`` (AIMET's, for a GPU) or ``{"granularity": "block"}``
            (BRECQ's block reconstruction); see :func:`hqbench.quant.adaround.adaround_weights`.
    """
    check_weight_rounding(weight_rounding)  # fail on a bad setting or name before any work
    adaround = check_adaround_options(adaround, weight_rounding)
    canonical_name(method)
    if seed is not None:
        torch.manual_seed(seed)
    if example_inputs is None:
        if callable(calib_data) and not hasattr(calib_data, "__iter__"):
            raise ValueError("a forward_loop callable needs example_inputs= to record the graph")
        example_inputs = _example_from(calib_data, input_fn)
    qmodel = prepare(model, example_inputs, method, inplace=inplace, act_bits=act_bits, weight_bits=weight_bits,
                     weight_per_channel=weight_per_channel, float_scopes=float_scopes, keep_8bit=keep_8bit,
                     weight_range=weight_range)
    qmodel.calibrate(calib_data, num_batches=num_batches, input_fn=input_fn)
    return qmodel.fit_weights(calib_data, weight_rounding=weight_rounding, bias_correction=bias_correction,
                              num_batches=num_batches, input_fn=input_fn, adaround=adaround)


__all__ = [
    "KEEP_8BIT", "TORCH_X86_ACT_GRID", "WEIGHT_ROUNDINGS", "QuantGrid", "QuantizedModel", "canonical_name", "check_bits",
    "create_calibrator", "format_bit_widths", "list_calibrators", "parse_bit_widths", "prepare", "quantize",
    "range_to_qparams", "register_calibrator",
]
