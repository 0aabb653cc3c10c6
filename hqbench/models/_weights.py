"""Reading weight files, shared by every model module; nothing here downloads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

RANDOM = "random"  # model.weights=random: the architecture, untrained
CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"  # weights the project trained
LIGHTNING_PREFIX = "model."  # hqbench's LightningModules keep the network in their ``model`` attribute


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a plain ``torch.save`` file or a Lightning checkpoint (``model.`` stripped).

    Raises:
        ValueError: unreadable file, not a mapping, or a Lightning checkpoint of another layout.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; say which file broke
        raise ValueError(f"could not read weights file {path}: {err}") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # Lightning checkpoint
        sd = obj["state_dict"]
        foreign = sorted(k for k in sd if not k.startswith(LIGHTNING_PREFIX))
        if foreign:
            raise ValueError(
                f"Lightning checkpoint {path}: expected every state_dict key to start with "
                f"{LIGHTNING_PREFIX!r}, found e.g. {foreign[:3]}"
            )
        return {k[len(LIGHTNING_PREFIX):]: v for k, v in sd.items()}
    return dict(obj)
