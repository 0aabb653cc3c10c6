"""Reading weight files, shared by every model module; nothing here downloads."""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from hqbench.paths import atomic_write, cache_dir, checkpoint_dirs

RANDOM = "random"  # model.weights=random: the architecture, untrained
LIGHTNING_PREFIX = "model."  # hqbench's LightningModules keep the network in their ``model`` attribute


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a plain ``torch.save`` file or a Lightning checkpoint (``model.`` stripped).

    Only ``torch.load(weights_only=True)`` is used: a weights file can never run code here, and a
    full pickled model (an ultralytics ``.pt``, ``torch.save(model)``) is refused, not unpickled.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, a pickled object rather than tensors, not a mapping, or a
            Lightning checkpoint of another layout; one line naming the file.
    """
    if Path(path).suffix == ".safetensors":  # a format that holds tensors only
        return _read_safetensors(Path(path))
    try:
        with warnings.catch_warnings():  # torch warns about a raw pickle's protocol before refusing it
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {path} does not exist") from None
    except Exception as err:  # pickle errors come in many types; say which file broke
        raise ValueError(_refusal(Path(path), err)) from None
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
        obj = {k[len(LIGHTNING_PREFIX):]: v for k, v in sd.items()}
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:  # e.g. {"model": <module>} when some library widened torch's allow-list
        raise ValueError(f"weights file {path} is not a state dict: {not_tensors[0]!r} holds a "
                         f"{type(obj[not_tensors[0]]).__name__}, not a tensor; {CONVERT_HINT}")
    return dict(obj)


TRAINED_STATE_SUFFIX = ".qat.pt"  # beside weights hqbench train fine-tuned quantization-aware


def trained_over(weights: str | None) -> tuple[Path, str | None] | None:
    """For weights ``hqbench train ... train.qat=true`` wrote (a state dict with a ``.qat.pt`` state
    beside it): the file, and the source its architecture was built from (``model.weights`` of the
    training run; None: the model's default). None for any other weights.

    A TFLite model's architecture is its flatbuffer, so fine-tuned weights are a state dict loaded
    over the model built from its own source.
    """
    if weights is None or weights == "random":
        return None
    path = Path(weights).expanduser()
    side = path.with_name(path.name + TRAINED_STATE_SUFFIX)
    if not (path.is_file() and side.is_file()):
        return None
    try:
        record = torch.load(side, map_location="cpu", weights_only=True)["record"]
        return path, record["model_weights"]
    except Exception as err:
        raise ValueError(f"{side}: not a QAT state hqbench train wrote ({type(err).__name__}: {err})") from None


def load_fitting_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], owner: str, path: Path) -> None:
    """Load ``state`` into ``model`` only if every key and shape fits; otherwise nothing is loaded.

    ``nn.Module.load_state_dict`` reports a tensor of another shape (a truncated or re-sized head) as
    a multi-line ``RuntimeError`` after copying whatever did fit; here the check comes first.

    Raises:
        ValueError: one line naming ``owner``, the file and the first mismatched key (with both
            shapes), then the missing and unexpected keys.
    """
    own = model.state_dict()
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        if wrong:
            first = (f"first mismatched key {wrong[0]!r}: shape {tuple(state[wrong[0]].shape)} in the file, "
                     f"{tuple(own[wrong[0]].shape)} in the model")
            if len(wrong) > 1:
                first += f" ({len(wrong)} tensors of another shape)"
        elif missing:
            first = f"first mismatched key {missing[0]!r} (missing from the file)"
        else:
            first = f"first mismatched key {unexpected[0]!r} (not in the model)"
        raise ValueError(f"{owner}: weights file {path} does not fit the architecture; {first}; "
                         f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    model.load_state_dict(state, strict=True)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError:
        raise ValueError(f"weights file {path}: reading .safetensors needs the safetensors package "
                         "(pip install safetensors)") from None
    try:
        return dict(load_file(str(path)))
    except Exception as err:  # a damaged header or buffer: say which file
        raise ValueError(f"weights file {path} is not a readable safetensors file ({err})") from None


CONVERT_HINT = ("save the network's weights with torch.save(model.state_dict(), PATH) "
                "and pass that file")


def _refusal(path: Path, err: Exception) -> str:
    """One line on why ``path`` did not load; names the Python objects a pickle asks for, without running it."""
    foreign = re.findall(r"GLOBAL ([\w.]+)", str(err))  # torch's safe loader names the first it refused
    try:  # a static scan of the pickle's opcodes: nothing in the file is executed
        foreign += torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a torch.save zip (a raw pickle, a truncated or foreign file)
        pass
    foreign = sorted(set(foreign))
    if any(g.startswith("ultralytics.") for g in foreign):
        return (f"weights file {path} is a full ultralytics checkpoint (a pickled model object), which "
                "hqbench does not unpickle because that can run code. If you trust it, convert it once: "
                f"python -c \"import torch; from ultralytics import YOLO; "
                f"torch.save(YOLO('{path}').model.float().state_dict(), 'weights_state.pt')\" "
                "and pass weights_state.pt")
    if foreign:
        return (f"weights file {path} is not a plain state dict: it asks to build Python objects "
                f"({', '.join(foreign[:3])}), which hqbench never unpickles; {CONVERT_HINT}")
    if path.stat().st_size == 0:
        return f"weights file {path} is empty"
    if not zipfile.is_zipfile(path):
        return (f"weights file {path} is not a torch.save checkpoint hqbench can read safely (a raw pickle, "
                f"a damaged file or another format); {CONVERT_HINT}")
    first = (str(err).strip().splitlines() or [""])[0]
    return f"could not read weights file {path}: {type(err).__name__}: {first[:200]}"


def project_checkpoint(name: str, weights: str | None, train_hint: str) -> Path | None:
    """The weights file a project-trained model loads: ``weights``, else ``<name>.pt`` in the first of
    :func:`hqbench.paths.checkpoint_dirs` that holds it (``$HQBENCH_CHECKPOINTS``, the checkout's
    ``checkpoints/``, the cache's ``checkpoints/``); ``None`` for ``weights="random"``.

    Raises:
        FileNotFoundError: the file is missing; the message names every place looked, where the
            file comes from (the repository's ``checkpoints/``) and ``train_hint`` (how to make it).
    """
    if weights == RANDOM:
        return None
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weights file {path} does not exist (train it with `{train_hint}`, "
                                    "or pass model.weights=PATH)")
        return path
    dirs = checkpoint_dirs()
    for folder in dirs:
        if (folder / f"{name}.pt").is_file():
            return folder / f"{name}.pt"
    raise FileNotFoundError(
        f"{name}: checkpoint {name}.pt not found in {', '.join(str(d) for d in dirs)}. It ships in the "
        f"hqbench repository's checkpoints/ folder: copy checkpoints/{name}.pt into {cache_dir('checkpoints')}, or set "
        f"HQBENCH_CHECKPOINTS to a folder holding it (a clone's checkpoints/); or train it with "
        f"`{train_hint}`, or pass model.weights=PATH")


def state_digest(model: torch.nn.Module) -> str:
    """The first 16 hex digits of a SHA-256 over ``model``'s state dict (names, dtypes, shapes, bytes).

    It identifies the weights a row was measured with whatever file format they came from (a
    TFLite graph, a pip package, a seeded random init), and a file edited in place changes it.

    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> _ = b.load_state_dict(a.state_dict()); state_digest(a) == state_digest(b)
    True
    >>> with torch.no_grad(): _ = b.bias.add_(1)
    >>> state_digest(a) == state_digest(b)
    False
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def write_half_state_dict(state: Mapping[str, torch.Tensor], out: Path) -> Path:
    """Save ``state`` with floating tensors in float16, atomically: a crash never leaves a
    half-written file under the final name."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return atomic_write(out, lambda f: torch.save(half, f), binary=True)


def read_tflite(path: Path, build: Callable[[Path], Any], label: str) -> Any:
    """``build(path)`` with every failure as one ValueError naming ``label`` and the file.

    A TFLite file is a flatbuffer (data only, nothing in it can run); damaged bytes surface as
    assorted low-level errors (struct.error, IndexError, UnicodeDecodeError...) that would not say
    which file.
    """
    try:
        return build(path)
    except ValueError as err:
        msg = str(err)
        raise ValueError(msg if str(path) in msg else f"{label}: weights file {path}: {msg}") from None
    except (FileNotFoundError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - see the docstring
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{label}: weights file {path} is not a readable TFLite graph "
                         f"({type(err).__name__}: {first})") from None
