"""Open model sources: ``tflite:PATH`` (any supported TFLite classifier) and ``timm:NAME``
(``torchvision:NAME`` lives in ``torchvision_zoo.py``), each from a local file only.

The card (input size, normalisation, classes) is read from the file or the library's metadata, so
nothing has to be registered per model. On the command line: ``model=tflite:/data/model.tflite``
(the ``configs/model/source.yaml`` option), or ``model=tflite model.weights=/data/model.tflite``
(``configs/model/tflite.yaml``).
The builder lives in ``tflite.py`` and is imported inside the factory, so ``import hqbench.models``
does not import the ``tflite`` package.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from hqbench.models._registry import register_model, register_source
from hqbench.models._weights import RANDOM, load_fitting_state, read_state_dict, read_tflite
from hqbench.models.card import ModelCard

TFLITE = "tflite"
SLIM_CROP = 0.875  # TF-slim / Keras ImageNet evaluation: centre crop of 87.5 % of the short side


def tflite_card(model, path: Path) -> ModelCard:
    """The card of a model built by ``build_tflite_classifier``: everything comes from the file."""
    return ModelCard(
        name=f"{TFLITE}:{path.name}", input_size=model.input_size,
        resize=round(model.input_size / SLIM_CROP), mean=model.input_mean, std=model.input_std,
        num_classes=model.num_classes, weights=str(path), interpolation="bilinear",
    )


def load_tflite(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """Build ``path`` with every failure as FileNotFoundError or one ValueError naming the file.

    A TFLite file is a flatbuffer (data only, nothing in it can run); damaged bytes surface as
    assorted low-level errors (struct.error, IndexError...) that would not say which file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{TFLITE}: model file {path} does not exist")
    from hqbench.models.tflite import build_tflite_classifier

    model = read_tflite(path, build_tflite_classifier, TFLITE)
    return model, tflite_card(model, path)


@register_source(TFLITE)
def tflite_source(spec: str, weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """``tflite:PATH``: the file is the model; ``weights`` must be unset (or the same file)."""
    if not spec:
        raise ValueError("tflite: give the file as tflite:PATH, e.g. model.name=tflite:/data/m.tflite")
    if weights is not None and Path(weights).expanduser() != Path(spec).expanduser():
        raise ValueError(f"tflite:{spec} names the model file already; leave model.weights unset "
                         f"(got {weights})")
    return load_tflite(spec)


@register_model(TFLITE)
def tflite_model(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """``model=tflite model.weights=PATH``: the same as ``tflite:PATH``."""
    if weights is None or weights == "random":
        raise ValueError("tflite: no file given; pass model.weights=PATH.tflite "
                         "(or name the model tflite:PATH)")
    return load_tflite(weights)


@register_source("timm")
def timm_source(spec: str, weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """``timm:NAME``: a timm architecture (``pip install 'hqbench[efficientnet]'``) with a local
    weights file (``model.weights=PATH``: a state dict, ``.pt`` or ``.safetensors``; never
    downloaded); the card comes from the model's ``pretrained_cfg`` (input size, crop, mean, std,
    interpolation).
    """
    import timm

    if not timm.list_models(spec):
        raise ValueError(f"timm:{spec} is not a timm architecture (timm.list_models('{spec}') is empty)")
    if weights is None:
        raise ValueError(f"timm:{spec} needs model.weights=PATH (a state dict; hqbench never downloads), "
                         "or model.weights=random for the untrained architecture")
    model = timm.create_model(spec, pretrained=False)
    if weights != RANDOM:
        path = Path(weights).expanduser()
        state = read_state_dict(path)
        head = state.get(f"{model.pretrained_cfg.get('classifier', 'classifier')}.weight")
        if head is not None and head.ndim >= 2 and head.shape[0] != model.num_classes:  # the user's own head size
            model = timm.create_model(spec, pretrained=False, num_classes=int(head.shape[0]))
        load_fitting_state(model, state, f"timm:{spec}", path)
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    card = ModelCard(name=f"timm:{spec}", input_size=size, resize=round(size / float(cfg.get("crop_pct", SLIM_CROP))),
                     mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))), std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
                     num_classes=model.num_classes, weights=str(weights), interpolation=cfg.get("interpolation", "bilinear"))
    return model, card
