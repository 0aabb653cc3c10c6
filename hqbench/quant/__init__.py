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
>>> qnet = quantize(net, calib, method="D", recipe=Recipe(act_bits=6))
>>> qnet(torch.randn(1, 3, 8, 8)).shape
torch.Size([1, 4, 6, 6])

Everything but the calibrator is the :class:`Recipe` (:mod:`.recipe`): widths, ``keep_8bit``, the
weight range and rounding, bias correction, AdaRound's settings. The algorithms are functions over
a :class:`QuantizedModel`: :func:`fit_weights` (AdaRound, then bias correction),
:func:`~hqbench.quant.export.export_onnx`, :class:`~hqbench.quant.integer.IntegerExecutor`.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .adaround import adaround_weights
from .bias_correction import correct_bias
from .bits import check_bits, format_bit_widths, parse_bit_widths
from .calibrators import canonical_name, create_calibrator, list_calibrators, register_calibrator
from .grid import TORCH_X86_ACT_GRID, QuantGrid, range_to_qparams
from .forward import default_input_fn
from .model import QuantizedModel
from .recipe import ADAROUND_DEFAULTS, KEEP_8BIT, WEIGHT_ROUNDINGS, AdaRoundSettings, Recipe


def _example_from(data: Iterable, input_fn: Callable) -> tuple:
    for batch in data:
        return input_fn(batch)
    raise ValueError("calibration data is empty: no batch was seen")


def prepare(model: nn.Module, example_inputs: tuple | torch.Tensor, method: str = "D", recipe: Recipe | None = None, *,
            inplace: bool = False, float_scopes: tuple[str, ...] = (), act_grid: QuantGrid | None = None) -> QuantizedModel:
    """Fold BN and attach (uncalibrated) quantizers; no data is observed yet.

    Use this with :meth:`QuantizedModel.load_quant_state_dict` to restore saved qparams without
    recalibrating. ``act_grid`` stores every activation on one grid instead of the hybrid
    scheme's per-producer choice (e.g. :data:`TORCH_X86_ACT_GRID`, torch's default).

    Args:
        method: ``"A"``-``"D"`` or a registered calibrator name (:func:`list_calibrators`).
        recipe: widths, ``keep_8bit``, weight range ... (:class:`Recipe`; None: W8A8 defaults).
        float_scopes: module names whose functional ops stay float (a detector's box decoding).
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not inplace:
        model = copy.deepcopy(model)
    return QuantizedModel(model.eval(), example_inputs, method, recipe, float_scopes=float_scopes, act_grid=act_grid)


def quantize(model: nn.Module, calib_data: Iterable | Callable[[nn.Module], None], method: str = "D",
             recipe: Recipe | None = None, *, num_batches: int | None = None, seed: int | None = None,
             inplace: bool = False, example_inputs: tuple | None = None,
             input_fn: Callable[[Any], tuple] = default_input_fn, float_scopes: tuple[str, ...] = ()) -> QuantizedModel:
    """Prepare, calibrate, fit the weights and freeze ``model``; returns a fake-quant :class:`QuantizedModel`.

    Args:
        model: any eager PyTorch model (no tracing needed).
        calib_data: a re-iterable of batches, or a ``forward_loop(model)`` callable (then also
            pass ``example_inputs``; weight-side methods need batches).
        method: ``"A"``-``"D"`` or a registered calibrator name (:func:`list_calibrators`).
        recipe: see :class:`Recipe` (None: W8A8, round-to-nearest, no bias correction).
        num_batches: batches per calibration pass (all when None).
        seed: seeds torch's RNG first, for loaders that shuffle.
        inplace: quantize ``model`` itself (no copy); on any failure or interrupt it is restored
            (BN unfolded, hooks removed, float weights back) before the exception propagates.
    """
    canonical_name(method)  # fail on a bad name before any work
    if seed is not None:
        torch.manual_seed(seed)
    if example_inputs is None:
        if callable(calib_data) and not hasattr(calib_data, "__iter__"):
            raise ValueError("a forward_loop callable needs example_inputs= to record the graph")
        example_inputs = _example_from(calib_data, input_fn)
    qmodel = prepare(model, example_inputs, method, recipe, inplace=inplace, float_scopes=float_scopes)
    try:
        qmodel.calibrate(calib_data, num_batches=num_batches, input_fn=input_fn)
        return fit_weights(qmodel, calib_data, num_batches=num_batches, input_fn=input_fn)
    except BaseException:  # a NaN batch, a KeyboardInterrupt from the loader: give the user's model back as it was
        qmodel.remove()
        raise


def fit_weights(qmodel: QuantizedModel, data: Iterable, *, num_batches: int | None = None,
                input_fn: Callable[[Any], tuple] = default_input_fn,
                on_progress: Callable[[int, int, str], None] | None = None) -> QuantizedModel:
    """The weight-side steps of ``qmodel.recipe`` after calibration, in their order: AdaRound first
    (it chooses the integers), then bias correction (it measures the shift those integers leave).

    Each step logs its layers at INFO (``logging.getLogger("hqbench.quant")``). ``on_progress(done,
    total, what)`` is called as they run: each step counts ``done`` up from 0 to its own ``total``
    (AdaRound in steps, per layer and every few steps inside one; bias correction in sweeps), and
    ``what`` names the step and the layer. It only observes: the results are the same without it.

    Raises:
        ValueError: a weight-side step is asked for and ``data`` is a ``forward_loop`` callable.
    """
    recipe = qmodel.recipe
    if not recipe.fits_weights:
        return qmodel
    if callable(data) and not hasattr(data, "__iter__"):  # they measure layer by layer over batches
        raise ValueError("weight_rounding=adaround and bias_correction need calibration batches "
                         "(a DataLoader or list), not a forward_loop")
    batches = list(itertools.islice(data, num_batches))
    # passed only when given: a wrapper of a step with the old signature keeps working
    progress = {} if on_progress is None else {"on_progress": on_progress}
    if recipe.weight_rounding == "adaround":
        qmodel.use_weights({}, {}, {})
        rounding = adaround_weights(qmodel, batches, input_fn, recipe.adaround, **progress)
        qmodel.use_weights(rounding.weights, rounding.scales, rounding.bias_shift)
    if recipe.bias_correction:
        correct_bias(qmodel, batches, input_fn, **progress)
    return qmodel


__all__ = [
    "ADAROUND_DEFAULTS", "AdaRoundSettings", "KEEP_8BIT", "TORCH_X86_ACT_GRID", "WEIGHT_ROUNDINGS", "QuantGrid",
    "QuantizedModel", "Recipe", "canonical_name", "check_bits", "create_calibrator", "fit_weights",
    "format_bit_widths", "list_calibrators", "parse_bit_widths", "prepare", "quantize", "range_to_qparams",
    "register_calibrator",
]
