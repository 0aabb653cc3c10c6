"""``ultralytics:PATH.yaml``: any ultralytics detection architecture, built from its model yaml, with
weights from a plain state dict (``model.weights=STATE.pt``; never a pickled model).

On the command line::

    hqbench test task=detection data=sar model=ultralytics:my-yolov8n.yaml model.weights=yolov8n_state.pt

``PATH`` is a model yaml file, or the bare name of one that ships inside ultralytics (``yolov8n.yaml``
is ``cfg/models/v8/yolov8.yaml`` at scale ``n``, as ultralytics reads it). From the yaml:

- ``nc`` (classes) and, optionally, ``names`` (a list, or ``{0: ship}``); the detection task checks
  them against the data's categories.
- the scale: a ``scale:`` key, else the letter in the file name (``yolov8n`` -> ``n``).
- ``imgsz`` (hqbench's key, ignored by ultralytics): the letterboxed input side; default 640,
  ultralytics' training size. It must be a multiple of the largest stride.

The yaml is data, but ultralytics' builder ``eval``-s its ``activation`` and calls whatever name a
layer row gives from its own module's namespace; so every layer must name a layer class of
``ultralytics.nn.modules``, ``torch.nn`` or ``torchvision.ops`` and the activation must be a
``nn.<Class>(literal args)`` call, checked before anything is built.

Heads with a one-to-one (NMS-free) branch (YOLOv10, YOLO26) are evaluated through their
one-to-many branch, decoded to ``(N, 4 + nc, boxes)`` like ``Detect``, with hqbench's NMS; the
unused branch is dropped after the weights load.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch
from torch import nn

from hqbench.models._registry import register_source
from hqbench.models._weights import RANDOM, read_state_dict
from hqbench.models.card import ModelCard

ULTRALYTICS = "ultralytics"
DEFAULT_IMGSZ = 640  # ultralytics' default training size
HEADS = ("Detect", "v10Detect")  # heads whose eval output is (N, 4 + nc, boxes) once end2end is off
# Layers that would fetch something or need inputs other than an image.
REFUSED_LAYERS = {"TorchVision": "it builds a torchvision network and may download its weights",
                  "WorldDetect": "it needs text embeddings", "YOLOEDetect": "it needs text or visual prompts",
                  "RTDETRDecoder": "it returns a fixed set of boxes, not YOLO's (N, 4 + nc, boxes) for NMS"}


def find_model_yaml(spec: str) -> Path:
    """The yaml ``spec`` names: an existing file, else one of ultralytics' own by its bare name.

    Raises:
        FileNotFoundError: neither (one line naming ``spec``).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix in (".yaml", ".yml"):
        from hqbench.models.yolo import offline_ultralytics

        folder = Path(offline_ultralytics().__file__).parent / "cfg" / "models"
        unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", path.stem) + path.suffix  # yolov8n -> yolov8
        for name in dict.fromkeys((path.name, unified)):
            found = sorted(folder.rglob(name))
            if found:
                return found[0]
    raise FileNotFoundError(f"{ULTRALYTICS}: model yaml {spec} does not exist (nor is it one of the model yamls "
                            "inside the ultralytics package, e.g. yolov8n.yaml)")


def read_model_yaml(path: Path, name: str) -> dict:
    """The yaml's mapping, checked and completed (``scale``), ready for ``DetectionModel``.

    ``name`` is what the user wrote (``yolov8n.yaml``): its scale letter counts, not the file's.

    Raises:
        ValueError: unreadable yaml, not a detection model, a layer or activation hqbench does not
            build, or a bad ``nc``/``names``/``scale``/``imgsz``; one line naming the file and key.
    """
    import yaml

    from hqbench.models.yolo import offline_ultralytics

    offline_ultralytics()  # before the layer check imports ultralytics.nn.tasks
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{ULTRALYTICS}: {path} is not readable YAML ({first})") from None
    where = f"{ULTRALYTICS}: model yaml {path}"
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), list) and spec[k] for k in ("backbone", "head")):
        raise ValueError(f"{where} is not an ultralytics model yaml: it needs backbone: and head: layer lists")
    rows = spec["backbone"] + spec["head"]
    bad = next((i for i, r in enumerate(rows) if not (isinstance(r, list) and len(r) == 4 and isinstance(r[2], str)
                                                       and isinstance(r[3], list))), None)
    if bad is not None:
        raise ValueError(f"{where}: layer {bad} is {rows[bad]!r}, not [from, repeats, module, args]")
    last = rows[-1][2]
    if last in REFUSED_LAYERS:
        raise ValueError(f"{where}: hqbench does not run its {last} head ({REFUSED_LAYERS[last]})")
    if last not in HEADS:
        raise ValueError(f"{where} is not a detection model: its last layer is {last}, not one of {', '.join(HEADS)}")
    for i, row in enumerate(rows):
        _check_layer(row[2], f"{where}: layer {i}")
    if spec.get("activation") is not None:
        _check_activation(spec["activation"], where)
    _check_classes(spec, where)
    if spec.get("ch", spec.get("channels", 3)) != 3:
        raise ValueError(f"{where}: ch/channels must be 3 (the detection data is RGB), got "
                         f"{spec.get('ch', spec.get('channels'))!r}")
    imgsz = spec.get("imgsz", DEFAULT_IMGSZ)
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32:
        raise ValueError(f"{where}: imgsz must be an integer of at least 32 (the input side), got {imgsz!r}")
    scales = spec.get("scales")
    if scales:
        from ultralytics.nn.tasks import guess_model_scale

        scale = spec.get("scale") or guess_model_scale(name)
        if scale not in scales:
            chosen = f"scale {scale!r} is not one of" if scale else "no scale chosen among"
            raise ValueError(f"{where}: {chosen} its scales ({', '.join(map(str, scales))}); name "
                             f"the file with the letter (e.g. yolov8n.yaml) or add scale: {next(iter(scales))}")
        spec["scale"] = scale
    return spec


def _check_layer(module: str, where: str) -> None:
    """``module`` must resolve, as ultralytics' builder resolves it, to an ``nn.Module`` class."""
    import torchvision
    from ultralytics.nn import tasks

    if module in REFUSED_LAYERS:
        raise ValueError(f"{where}: hqbench does not build {module} layers ({REFUSED_LAYERS[module]})")
    if module == "Silence":  # the builder itself swaps YOLOv9's deprecated Silence for nn.Identity
        return
    if module.startswith("nn."):
        obj = getattr(torch.nn, module[3:], None)
    elif module.startswith("torchvision.ops."):
        obj = getattr(torchvision.ops, module[16:], None)
    else:  # layers only: a whole-model class there (DetectionModel...) reads, even downloads, its own config
        obj = vars(tasks).get(module)
        obj = obj if getattr(obj, "__module__", "").startswith("ultralytics.nn.modules.") else None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"{where}: {module!r} is not an ultralytics or torch.nn layer")


def _check_activation(act: object, where: str) -> None:
    """Only ``nn.<Class>(literals)`` or ``torch.nn.<Class>(literals)``: the builder ``eval``-s this string."""
    try:
        call = ast.parse(str(act).strip(), mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError
        names, node = [], call.func
        while isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        names.append(node.id if isinstance(node, ast.Name) else "")
        cls = getattr(torch.nn, names[0], None)
        if names[1:] not in (["nn"], ["nn", "torch"]) or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError
        [ast.literal_eval(a) for a in call.args + [k.value for k in call.keywords]]
    except (ValueError, SyntaxError, TypeError):
        raise ValueError(f"{where}: activation {act!r} is not a torch.nn module call with literal arguments, "
                         "e.g. nn.SiLU() or nn.LeakyReLU(0.1)") from None


def _check_classes(spec: dict, where: str) -> None:
    """``nc`` a positive integer; ``names``, if given, ``nc`` strings (a list or ``{0: name, ...}``), kept as a list."""
    nc = spec.get("nc")
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
        raise ValueError(f"{where}: nc must be a positive integer (the number of classes), got {nc!r}")
    names = spec.get("names")
    if names is None:
        return
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)] if sorted(names) == list(range(len(names))) else None
    if not isinstance(names, list) or len(names) != nc or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: names must be {nc} class names (nc: {nc}), as a list or {{0: name, ...}}, "
                         f"got {spec.get('names')!r}")
    spec["names"] = names


def build_detector(spec: dict, path: Path) -> nn.Module:
    """An ultralytics ``DetectionModel`` of a checked ``spec``, randomly initialised, in eval mode.

    Raises:
        ValueError: the builder failed on the yaml, or ``imgsz`` is not a multiple of its largest stride.
    """
    from hqbench.models.yolo import offline_ultralytics

    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    try:
        model = DetectionModel(dict(spec), nc=spec["nc"], verbose=False)
    except Exception as err:  # noqa: BLE001 - a yaml's wrong channels or arguments surface as assorted errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{ULTRALYTICS}: model yaml {path} does not build ({type(err).__name__}: {first[:200]})") from None
    stride = int(model.stride.max())
    imgsz = spec.get("imgsz", DEFAULT_IMGSZ)
    if imgsz % stride:
        raise ValueError(f"{ULTRALYTICS}: model yaml {path}: imgsz {imgsz} is not a multiple of the model's "
                         f"largest stride {stride}")
    if spec.get("names"):
        model.names = dict(enumerate(spec["names"]))
    return model.eval()


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, owner: str) -> None:
    """``state`` (read from ``path``) into ``model``, every key and shape matching.

    Raises:
        ValueError: the file does not fit, naming the first mismatched key and both shapes.
    """
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # a half-precision save
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or resized):
        model.load_state_dict(state)
        return
    counts = f"{len(resized)} keys of another shape, {len(missing)} missing, {len(unexpected)} not in the model"
    first = next((k for k in expected if k in missing or k in resized), None)
    if first in resized:
        why = (f"key {first!r} has shape {tuple(state[first].shape)} in the file but "
               f"{tuple(expected[first].shape)} in the model")
    elif first is not None:
        why = f"key {first!r} (shape {tuple(expected[first].shape)} in the model) is missing from the file"
    else:
        why = f"key {unexpected[0]!r} (shape {tuple(state[unexpected[0]].shape)} in the file) is not in the model"
    raise ValueError(f"{owner}: weights file {path} does not fit the yaml's architecture: {why} ({counts})")


def _nms_head(model: nn.Module) -> None:
    """Evaluate an end-to-end head through its one-to-many branch; drop the one-to-one branch."""
    head = model.model[-1]
    if getattr(head, "one2one_cv2", None) is None:
        return
    head.end2end = False
    for name in [n for n in head._modules if n.startswith("one2one_")]:
        setattr(head, name, None)


@register_source(ULTRALYTICS)
def ultralytics_source(spec: str, weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """``ultralytics:PATH.yaml`` with ``model.weights=STATE.pt`` (a state dict, ``.pt`` or
    ``.safetensors``, or a Lightning checkpoint) or ``model.weights=random``; see the module docstring.

    Raises:
        FileNotFoundError: the yaml or the weights file is missing.
        ValueError: the yaml is not a detection model hqbench builds, or the weights do not fit it.
    """
    if not spec:
        raise ValueError(f"{ULTRALYTICS}: give the model yaml as {ULTRALYTICS}:PATH.yaml, e.g. "
                         f"model={ULTRALYTICS}:yolov8n.yaml model.weights=STATE.pt")
    owner = f"{ULTRALYTICS}:{spec}"
    if weights is None:
        raise ValueError(f"{owner} needs model.weights=PATH (a state dict: torch.save(model.state_dict(), PATH); "
                         "hqbench never downloads), or model.weights=random for the untrained architecture")
    weights_path = None if weights == RANDOM else Path(weights).expanduser()
    if weights_path is not None and not weights_path.is_file():
        raise FileNotFoundError(f"{owner}: weights file {weights_path} does not exist")
    # Read before ultralytics is imported: only torch's own allow-list applies (a pickled model is refused).
    state = read_state_dict(weights_path) if weights_path is not None else None
    path = find_model_yaml(spec)
    config = read_model_yaml(path, Path(spec).name)
    model = build_detector(config, path)
    if state is not None:
        load_weights(model, state, weights_path, owner)
    _nms_head(model)
    size = config.get("imgsz", DEFAULT_IMGSZ)
    # As the shipped detector: pixels scaled to [0, 1], letterboxed to imgsz (grey 114 padding).
    card = ModelCard(name=f"{ULTRALYTICS}:{Path(spec).name}", input_size=size, resize=size, mean=(0.0,) * 3,
                     std=(1.0,) * 3, num_classes=config["nc"], weights=str(weights_path or RANDOM),
                     classes=tuple(config.get("names") or ()))
    return model.eval(), card
