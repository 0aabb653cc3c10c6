"""Reading weight files, shared by every model module; nothing here downloads."""

from __future__ import annotations

import os
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


def project_checkpoint(name: str, weights: str | None, train_hint: str) -> Path | None:
    """The weights file a project-trained model loads: ``weights``, else ``checkpoints/<name>.pt``;
    ``None`` for ``weights="random"``.

    Raises:
        FileNotFoundError: the file is missing; the message names it and ``train_hint`` (how to make it).
    """
    if weights == RANDOM:
        return None
    path = Path(weights).expanduser() if weights else CHECKPOINTS / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{name}: weights file {path} does not exist (train it with `{train_hint}`, "
                                "or pass model.weights=PATH)")
    return path


def write_half_state_dict(state: Mapping[str, torch.Tensor], out: Path) -> Path:
    """Save ``state`` with floating tensors in float16, atomically: a crash never leaves a
    half-written file under the final name."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp)
    os.replace(tmp, out)
    return out
