"""Peers: the post-training quantizers users would pick instead of hqbench, as columns of the same table.

A peer is another tool's own PTQ recipe (ONNX Runtime's ``quantize_static``, torch's PT2E flow,
NNCF, NNI) run on the same float network and on exactly the calibration batches hqbench drew
(same datamodule, same seed), then evaluated by the same LightningModule on the same images.

A peer factory is called as::

    result = factory(model, calib_batches, example_inputs, weight_bits=8, act_bits=8)

with ``model`` the float ``nn.Module`` (not modified), ``calib_batches`` a list of input tensors
(one per calibration batch, in the datamodule's order), ``example_inputs`` a tuple of positional
inputs. It returns a :class:`PeerResult`: ``forward(x) -> logits`` and what the row records (the
peer's package version, its settings, the engine the number was measured on). A width the tool
cannot run raises :class:`PeerUnsupported` with the reason: the cell is skipped, never faked. A peer
registered with ``float_scopes=True`` also takes ``float_scopes=(module path, ...)``: ops of those
modules it keeps float (a detector's box decoding), as hqbench's own methods do.

This module imports no peer tool: factories are named as ``"module:function"`` strings and imported
by :func:`create_peer`, so listing methods costs nothing and works without the ``peers`` extra.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch

from ..quant.engines import FLOAT, row_engines

EXTRA_HINT = "pip install -e '.[peers]'"


class PeerUnsupported(Exception):
    """The peer tool cannot run this configuration (e.g. a bit width it lacks); the message says why."""


class PeerMissing(ValueError):
    """The peer's package is not installed; the message is the one line that installs it.

    A ``ValueError`` so that the CLI prints it as one line, like any other bad ``method=`` value.
    """


@dataclass
class PeerResult:
    """What a peer hands back: a forward and the row's record.

    ``forward`` takes a float input batch (a CPU tensor) and returns the logits as a torch tensor.
    ``record`` holds at least ``version`` (the tool and its version), ``settings`` and
    ``measured_on`` (the engine, in words), and ``calib_batches``/``calib_checksum``: how many batches
    the tool itself consumed during calibration and the float64 sum of their values, counted where
    the tool reads them (the fairness check). ``act_range`` describes the activation grid for the row.
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    record: dict[str, Any]
    act_range: str
    close: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class PeerEntry:
    name: str
    factory: Union[str, Callable[..., PeerResult]]  # "module:function" (imported lazily) or a callable
    title: str
    engine: str  # the row's engine field: a name in hqbench.quant.engines' registry
    settings: dict
    requires: tuple[str, ...] = ()  # top-level modules the peer imports (checked before any work)
    float_scopes: bool = False  # the factory takes float_scopes= and keeps those ops float


_REGISTRY: dict[str, PeerEntry] = {}


def register_peer(name: str, factory, *, title: str, engine: str, settings: dict,
                  requires: tuple[str, ...] = (), float_scopes: bool = False) -> PeerEntry:
    """Register a peer under ``name`` (a method name in rows and on the command line)."""
    if not name or ":" in name or "," in name:
        raise ValueError(f"bad peer name {name!r}")
    if engine not in row_engines() or engine == FLOAT:
        raise ValueError(f"peer {name!r}: engine {engine!r} is not registered; register it with "
                         "hqbench.quant.engines.register_engine(..., peers_only=True)")
    entry = PeerEntry(name, factory, title, engine, dict(settings), tuple(requires), bool(float_scopes))
    _REGISTRY[name] = entry
    return entry


def list_peers() -> list[PeerEntry]:
    """Registered peers in registration order."""
    return list(_REGISTRY.values())


def is_peer(name: str) -> bool:
    return name in _REGISTRY


def peer_entry(name: str) -> PeerEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown peer {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def check_installed(name: str) -> None:
    """Raise :class:`PeerMissing` (one line) when a module the peer needs is not importable."""
    import importlib.util

    entry = peer_entry(name)
    for module in entry.requires:
        if importlib.util.find_spec(module) is None:
            raise PeerMissing(f"{name} needs `{EXTRA_HINT}` ({module} is not installed)")


def create_peer(name: str) -> Callable[..., PeerResult]:
    """The peer's factory, imported now.

    Raises:
        ValueError: unknown name. PeerMissing: the peer's package is not installed.
    """
    entry = peer_entry(name)
    check_installed(name)
    factory = entry.factory
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as err:
            raise PeerMissing(f"{name} needs `{EXTRA_HINT}` ({err.name} is not installed)") from err
    return factory


_ORT = "onnxruntime quantize_static, QDQ, per-channel int8 weights (symmetric), uint8 activations (asymmetric)"
for _method, _extra in (("minmax", {}), ("entropy", {"num_bins": 128, "num_quantized_bins": 128}),
                        ("percentile", {"num_bins": 2048, "percentile": 99.999})):
    register_peer(f"ort-{_method}", f"hqbench.peers.onnxruntime_ptq:ort_{_method}",
                  title=f"ORT {_method.capitalize() if _method != 'minmax' else 'MinMax'}", engine="onnxruntime",
                  settings={"recipe": _ORT, "calibrate_method": _method, **_extra},
                  requires=("onnx", "onnxruntime"), float_scopes=True)
register_peer("pt2e-x86", "hqbench.peers.pt2e:pt2e_x86", title="PT2E X86", engine="torch-reference",
              settings={"recipe": "torch.export + prepare_pt2e/convert_pt2e, X86InductorQuantizer "
                                  "get_default_x86_inductor_quantization_config()"},
              requires=("torchao",))
register_peer("nncf", "hqbench.peers.nncf_ptq:nncf_ptq", title="NNCF", engine="openvino",
              settings={"recipe": "nncf.quantize on the OpenVINO model (from the ONNX export), preset PERFORMANCE"},
              requires=("nncf", "openvino", "onnx"))
register_peer("nni", "hqbench.peers.nni_ptq:nni_ptq", title="NNI PTQ", engine="fake",
              settings={"recipe": "nni.compression.quantization.PtqQuantizer, int8 affine per-tensor on Conv2d/Linear "
                                  "input, weight and output (NNI 3.0 ptq_example config)"},
              requires=("nni",))

__all__ = ["PeerEntry", "PeerMissing", "PeerResult", "PeerUnsupported", "check_installed", "create_peer", "is_peer",
           "list_peers", "peer_entry", "register_peer"]
