"""PeerCallback: test a LightningModule through another tool's post-training quantization.

Like the ``"pytorch"`` baseline of :class:`~hqbench.callbacks.QuantizationCallback`, it replaces
``pl_module.<submodule>`` while the stage runs with a module calling the peer's forward (ONNX
Runtime, OpenVINO, torch's PT2E reference model, NNI's wrapped model) and puts the float network
back when the stage ends or fails. The peer is calibrated on exactly the batches the datamodule's
``calibration_dataloader()`` yields (the same seeded draw hqbench's own methods use).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import lightning as L
import torch
from torch import nn
from torch.utils._pytree import tree_map

from ._stages import EvaluationStageCallback
from ..peers import PeerResult, check_installed, create_peer, peer_entry
from ..quant.forward import default_input_fn


class PeerModule(nn.Module):
    """An ``nn.Module`` whose forward is the peer's: inputs go to the CPU, outputs come back to their device."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], name: str):
        super().__init__()
        self._peer_forward, self.peer = forward, name

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if args or kwargs:
            raise NotImplementedError(f"peer {self.peer} runs the network on one positional input tensor")
        out = self._peer_forward(x.detach().cpu())  # one tensor, or several (a detector's head)
        return tree_map(lambda t: t.to(x.device) if isinstance(t, torch.Tensor) else t, out)


class PeerCallback(EvaluationStageCallback):
    """Quantize with a registered peer for test/validate/predict, then restore the float network.

    Args:
        peer: a name from :func:`hqbench.peers.list_peers` (``"ort-minmax"``, ``"pt2e-x86"``, ...).
        calib_dataloader: calibration batches; defaults to ``trainer.datamodule.calibration_dataloader()``.
        num_batches: calibration batches (all when None).
        input_fn: maps a batch to the network's positional inputs; the peer gets the first one.
        submodule: attribute holding the network.
        weight_bits, act_bits: widths asked of the peer; it raises
            :class:`~hqbench.peers.PeerUnsupported` when it has none such.
        float_scopes: module names (relative to the LightningModule, as for QuantizationCallback)
            whose own ops should stay float, e.g. a detector's box decoding; a peer registered
            with ``float_scopes=True`` keeps them float (ONNX Runtime), the others' rows say that
            their recipe quantized them.

    After a stage, ``calib_seconds`` (building the peer: export, calibration, conversion, session),
    ``summary`` (``act_range``, ``float_ops``) and ``record`` (version, settings, measured-on engine,
    calibration batches and their checksum) describe the run.
    """

    def __init__(self, peer: str, calib_dataloader: Iterable | None = None, num_batches: int | None = None,
                 input_fn: Callable[[Any], tuple] = default_input_fn, submodule: str = "model",
                 weight_bits: int = 8, act_bits: int = 8, float_scopes: tuple[str, ...] = ()):
        self.entry = peer_entry(peer)
        check_installed(peer)  # one line naming the extra, before any work
        self.peer, self.calib_dataloader, self.num_batches = peer, calib_dataloader, num_batches
        self.input_fn, self.submodule = input_fn, submodule
        self.weight_bits, self.act_bits = int(weight_bits), int(act_bits)
        self.float_scopes = tuple(float_scopes)
        self.calib_seconds = 0.0
        self.summary: dict | None = None
        self.record: dict = {}
        self.result: PeerResult | None = None
        self._undo: list[Callable[[], None]] = []

    def calibration_inputs(self, trainer: L.Trainer) -> list[torch.Tensor]:
        """The first positional input of every calibration batch, on the CPU, in loader order."""
        return self._calibration_batches(trainer, self.num_batches,
                                         lambda batch: self.input_fn(batch)[0].detach().cpu())

    def _activate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._undo:
            return
        network = getattr(pl_module, self.submodule, None)
        if network is None:
            raise ValueError(f"peer {self.peer} needs the network at pl_module.{self.submodule}; pass submodule=")
        start = time.perf_counter()
        inputs = self.calibration_inputs(trainer)
        factory = create_peer(self.peer)
        was_training = network.training
        try:
            # the peer exports pl_module.<submodule>: scopes relative to it
            scopes = tuple(s.removeprefix(f"{self.submodule}.") for s in self.float_scopes)
            kept = scopes and self.entry.float_scopes
            result = factory(network, inputs, (inputs[0],), weight_bits=self.weight_bits, act_bits=self.act_bits,
                             **({"float_scopes": scopes} if kept else {}))
        finally:
            network.train(was_training)
        if scopes and not kept:  # said in the row, as the tool's other settings are
            result.record.setdefault("settings", {})["float_scopes"] = (
                f"{', '.join(scopes)}: quantized by the tool's own recipe (no float scope applied)")
        self.result = result
        setattr(pl_module, self.submodule, PeerModule(result.forward, self.peer))
        self._undo.append(lambda: setattr(pl_module, self.submodule, network))
        self._undo.append(result.close)
        self.record = {"peer": self.peer, **result.record}
        self.summary = {"act_range": result.act_range, "float_ops": ()}
        self.calib_seconds = time.perf_counter() - start

    def _restore(self) -> None:
        while self._undo:
            self._undo.pop()()
        self.result = None
