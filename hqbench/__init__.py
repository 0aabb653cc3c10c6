"""hqbench: a benchmark suite and library for hybrid asymmetric post-training INT8 quantization.

``hqbench.quant`` is the Lightning-free core; Lightning pieces live in ``hqbench.tasks`` and
``hqbench.callbacks``. Heavy submodules are imported lazily so ``import hqbench`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "quantize": ("hqbench.quant", "quantize"),
    "prepare": ("hqbench.quant", "prepare"),
    "Recipe": ("hqbench.quant", "Recipe"),
    "QuantizationCallback": ("hqbench.callbacks.quantization", "QuantizationCallback"),
    "QATCallback": ("hqbench.callbacks.qat", "QATCallback"),
    "create_model": ("hqbench.models", "create_model"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'hqbench' has no attribute {name!r}")
