"""The saved calibration state (``QuantizedModel.quant_state_dict``): its versions, and the checks
that keep a state from loading into a model it was not made for.

v1: ``{"version", "method", "act_bits", "weight_per_channel", "points": {name: tensors}}``.
v2: adds ``weight_bits``, ``keep_8bit``, ``weight_range``, ``bias_shift`` and ``rounded_weights``
    (``{layer: tensor}``); v1 loads as w8, nothing kept at 8 bits, round-to-nearest.
v3: adds ``learned_scales`` (``{layer: weight scale}`` AdaRound's learn_scale chose); v2 loads with
    none. A v3 state may hold ``point_bits`` (``[[point, bits], ...]``, mixed precision).
v4: adds ``signature``: each point's producer and grid and each quantized layer's kind and weight
    shape, so a state made for another graph with the same layer names (a ReLU model's, loaded into
    a LeakyReLU one) is refused. v1–v3 states load with a warning that their graph is unchecked.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

STATE_VERSION = 4
SETTINGS = ("version", "method", "act_bits", "weight_bits", "weight_per_channel", "keep_8bit", "weight_range",
            "point_bits")


def upgrade(state: dict) -> dict:
    """``state`` in the current version's layout (older versions filled with what they meant)."""
    if not isinstance(state, dict):
        raise ValueError(f"calibrated state must be a dict saved by quant_state_dict(), got {type(state).__name__}")
    if state.get("version") == 1:  # v1 states were all w8 with nothing kept at 8 bits
        state = {**state, "version": 2, "weight_bits": 8, "keep_8bit": [], "weight_range": "minmax",
                 "bias_shift": {}, "rounded_weights": {}}
    if state.get("version") == 2:  # v2 states had no learnt scales
        state = {**state, "version": 3, "learned_scales": {}}
    if state.get("version") == 3:
        warnings.warn("calibrated state saved by an older hqbench (version 3) holds no graph signature: "
                      "its points' producers, grids and weight shapes are not checked against this model",
                      stacklevel=3)
        state = {**state, "version": STATE_VERSION, "signature": None}
    return {"point_bits": [], **state}


def problems(state: dict, mine: dict, weights: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` (upgraded) from this model's ``mine``; ``weights``: each quantized
    layer's weight. Empty when it loads."""
    found = [f"{k}: saved {state.get(k)!r}, model {mine[k]!r}" for k in SETTINGS if state.get(k) != mine[k]]
    saved, have = set(state.get("points", {})), set(mine["points"])
    if saved - have:
        found.append(f"layers only in the saved state: {sorted(saved - have)[:10]}")
    if have - saved:
        found.append(f"layers missing from the saved state: {sorted(have - saved)[:10]}")
    bad = [n for n, p in state.get("points", {}).items()  # a NaN or non-positive scale quantizes silently wrong
           if "scale" in p and not bool(torch.isfinite(p["scale"]).all() and (p["scale"] > 0).all())]
    if bad:
        found.append(f"point {bad[0]!r} has a scale that is not a finite positive number")
    found += _point_tensor_problems(state.get("points", {}), mine["points"])
    if state.get("signature") is not None:
        found += _signature_problems(state["signature"], mine["signature"])
    found += _shape_problems(state, weights)
    return found


def _point_tensor_problems(saved: Any, mine: dict) -> list[str]:
    """Each point's tensors (qparams, calibrator buffers) with the names and shapes this model's
    quantizers hold, checked before any is loaded (a wrong shape is otherwise torch's multi-line
    error halfway through, with the earlier points already loaded)."""
    if not isinstance(saved, dict):
        return [f"points: expected a dict of point name -> tensors, got {type(saved).__name__}"]
    found = []
    for name, tensors in mine.items():
        theirs = saved.get(name)
        if not isinstance(theirs, dict):
            continue  # a missing point is reported with the layer names
        for key, tensor in tensors.items():
            other = theirs.get(key)
            if not isinstance(other, torch.Tensor):
                found.append(f"point {name!r}: {key} is {'missing' if other is None else type(other).__name__}")
            elif other.shape != tensor.shape:
                found.append(f"point {name!r}: {key} has shape {tuple(other.shape)}, the model's {tuple(tensor.shape)}")
    return found[:5]


def _signature_problems(saved: Any, mine: dict) -> list[str]:
    if not isinstance(saved, dict):
        return [f"signature: expected a dict, got {type(saved).__name__}"]
    found = []
    for part, what in (("points", "producer and grid"), ("layers", "kind and weight shape")):
        theirs = saved.get(part, {})
        for name, sig in mine[part].items():
            if name in theirs and list(theirs[name]) != list(sig):
                found.append(f"{part[:-1]} {name!r}: saved {what} {list(theirs[name])}, model {list(sig)}")
    return found[:5]


def _shape_problems(state: dict, weights: dict[str, torch.Tensor]) -> list[str]:
    """Per-layer tensors this model's layers cannot take (a raw broadcasting error later otherwise):
    rounded weights have the weight's shape, learnt scales and bias shifts one value per output channel."""
    found = []
    for part in ("rounded_weights", "learned_scales", "bias_shift"):
        for name, tensor in state.get(part, {}).items():
            weight = weights.get(name)
            if weight is None:
                found.append(f"{part}: {name!r} is not a quantized layer of this model")
            elif (tensor.shape != weight.shape) if part == "rounded_weights" else tensor.numel() != weight.shape[0]:
                found.append(f"{part}: {name!r} has shape {tuple(tensor.shape)}, the layer's weight {tuple(weight.shape)}")
    return found[:5]
