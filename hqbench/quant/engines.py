"""Engine registry: what runs a calibrated model, declared once, beside the calibrator and peer registries.

An engine is a factory ``factory(qmodel, example_inputs) -> callable`` that runs the calibrated
:class:`~hqbench.quant.model.QuantizedModel` instead of torch (called like the model; an optional
``close()`` frees it). ``fake`` has no factory: fake-quant *is* the torch model. The callback, the
runner, the CLI's help and result rows all read this registry, so adding an engine is one
:func:`register_engine` call. It is the one vocabulary of runtimes: peers (other tools' PTQ,
:mod:`hqbench.peers`) name theirs from it too, and a runtime only a peer drives so far is
registered ``peers_only`` (a row can record it; ``engine=`` refuses it). Giving such an entry a
factory later keeps its name, so one name never means two runtimes.

>>> [e.name for e in list_engines()][:3]
['fake', 'int', 'onnxruntime']
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

Factory = Callable[[Any, tuple], Callable]


@dataclass(frozen=True)
class EngineEntry:
    """One registered engine.

    ``factory`` is a callable or ``"module:attribute"`` (imported on first use, so an engine whose
    runtime is an optional extra costs nothing until it runs); ``extra`` names the pyproject extra
    that installs its runtime; ``runs_on``: the device it computes on whatever the model's (None: the
    model's own; rows record it); ``peers_only``: only peers' rows run on it (hqbench has no factory yet).
    """

    name: str
    factory: Factory | str | None
    description: str
    extra: str | None = None
    runs_on: str | None = None
    peers_only: bool = False


_ENGINES: dict[str, EngineEntry] = {}
FLOAT = "float"  # what FP32 rows record: no engine quantized them


def register_engine(name: str, factory: Factory | str | None, *, description: str, extra: str | None = None,
                    runs_on: str | None = None, peers_only: bool = False) -> EngineEntry:
    """Register an engine under ``name``; returns the entry.

    Raises:
        ValueError: the name is taken (engines and ``float``).
    """
    if name in _ENGINES or name == FLOAT:
        raise ValueError(f"engine {name!r} is already registered")
    if peers_only and factory is not None:
        raise ValueError(f"engine {name!r}: a peers-only engine has no factory")
    entry = EngineEntry(name, factory, description, extra, runs_on, peers_only)
    _ENGINES[name] = entry
    return entry


def engine_entry(name: str) -> EngineEntry:
    """The entry of an engine hqbench's methods can run on.

    Raises:
        ValueError: unknown or peers-only engine, the valid ones listed.
    """
    entry = _ENGINES.get(name)
    if entry is None or entry.peers_only:
        why = "runs only peers' rows so far" if entry else "is unknown"
        raise ValueError(f"engine {name!r} {why}; valid: {', '.join(e.name for e in list_engines())}")
    return entry


def list_engines(*, peers_only: bool = False) -> list[EngineEntry]:
    """The engines hqbench's methods run on (``peers_only=True``: the runtimes only peers drive), in
    registration order."""
    return [e for e in _ENGINES.values() if e.peers_only == peers_only]


def row_engines() -> tuple[str, ...]:
    """Every ``engine`` a result row may record: ``float`` (FP32) and every registered runtime."""
    return (FLOAT, *_ENGINES)


def create_engine(name: str, qmodel, example_inputs: tuple) -> Callable:
    """The callable that runs ``qmodel`` on engine ``name`` (for ``fake``: ``qmodel`` itself)."""
    factory = engine_entry(name).factory
    if factory is None:
        return qmodel
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = importlib.import_module(module)
        for part in attribute.split("."):
            factory = getattr(factory, part)
    return factory(qmodel, example_inputs)


register_engine("fake", None, description="fake-quant in torch (float arithmetic on the integer grid)")
register_engine("int", "hqbench.quant.integer:IntegerExecutor.from_model",
                description="hqbench's integer-only reference executor")
register_engine("onnxruntime", "hqbench.quant.onnx_engine:OnnxRuntimeEngine", extra="onnx", runs_on="cpu",
                description="ONNX QDQ export run by ONNX Runtime's CPU int8 kernels (uint8 weights where u8s8 saturates)")
register_engine("openvino", "hqbench.quant.openvino_engine:OpenVinoEngine", extra="openvino", runs_on="cpu",
                description="ONNX QDQ export compiled by OpenVINO's CPU plugin (int8 kernels)")
register_engine("torch-reference", None, peers_only=True,
                description="torch's reference quantize/dequantize model (simulation in float kernels)")

__all__ = ["FLOAT", "EngineEntry", "create_engine", "engine_entry", "list_engines", "register_engine", "row_engines"]
