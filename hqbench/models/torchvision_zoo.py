"""torchvision ImageNet classifiers (googlenet, mobilenet_v2, vgg16) loaded from local files only.

Weights come from ``weights=PATH`` (a torchvision state dict, or a Lightning checkpoint whose
``state_dict`` keys start with ``model.``) or from torch's hub cache, where torchvision itself would
have put them. Nothing is downloaded: a missing file raises with the exact path and source URL.
``weights="random"`` builds the architecture untrained (tests, smoke runs).

A state dict whose classifier has another number of outputs than ImageNet's 1000 (a model
fine-tuned on 10 classes) builds the architecture with that many: the count is read from the file,
so ``model=torchvision:resnet18 model.weights=my10.pt`` needs no other key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from hqbench.models._registry import register_model, register_source
from hqbench.models._weights import RANDOM, read_state_dict
from hqbench.models.card import ModelCard

# torchvision's GoogLeNet checkpoint still carries the two training-only auxiliary heads.
_GOOGLENET_AUX = ("aux1.", "aux2.")


def hub_checkpoint_path(weights_enum: Enum) -> Path:
    """Where torchvision would cache ``weights_enum``'s file: ``<hub dir>/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum.url)


def _card(name: str, weights_enum: Enum, source: str, imagenet_norm: bool = True,
          num_classes: int | None = None) -> ModelCard:
    # Read resize/crop/mean/std from torchvision's own preset so the card cannot drift from it.
    t = weights_enum.transforms()
    mean, std = (tuple(t.mean), tuple(t.std)) if imagenet_norm else ((0.5,) * 3, (0.5,) * 3)
    return ModelCard(
        name=name, input_size=t.crop_size[0], resize=t.resize_size[0], mean=mean, std=std,
        num_classes=num_classes or len(weights_enum.meta["categories"]), weights=source,
        interpolation=t.interpolation.value,
    )


def _resolve_file(name: str, weights: str | None, weights_enum: Enum) -> Path:
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weights file {path} does not exist")
        return path
    path = hub_checkpoint_path(weights_enum)
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: no weights given and {path} is missing. hqbench never downloads; put "
            f"{weights_enum.url} at {path}, or pass model.weights=PATH "
            f"(a torchvision state dict or a Lightning checkpoint)."
        )
    return path


def head_classes(state: dict, model: nn.Module) -> int | None:
    """The class count of ``state`` when it differs from ``model``'s only in the classifier's outputs.

    Those are the tensors whose first dimension differs and whose others agree (``fc.weight`` and
    ``fc.bias``, or an auxiliary head's too), all with one new count; ``None`` when nothing or
    something else differs (a loading error then names the keys).
    """
    own = model.state_dict()
    differ = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    counts = {int(state[k].shape[0]) for k in differ if state[k].ndim >= 1}
    if not differ or len(counts) != 1 or any(state[k].shape[1:] != own[k].shape[1:] for k in differ):
        return None
    return counts.pop()


def _build(
    name: str,
    weights: str | None,
    weights_enum: Enum,
    make: Callable[..., nn.Module],
    ignore_prefixes: tuple[str, ...] = (),
    imagenet_norm: bool = True,
) -> tuple[nn.Module, ModelCard]:
    if weights == RANDOM:
        return make(), _card(name, weights_enum, RANDOM, imagenet_norm)
    path = _resolve_file(name, weights, weights_enum)
    state = read_state_dict(path)  # before building: a bad file fails fast, without VGG's init
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        num_classes = head_classes(state, make())
    model = make(num_classes=num_classes) if num_classes else make()
    own = model.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} (model: {tuple(own[k].shape)})" for k in state
             if k in own and state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"{name}: weights file {path} does not fit the architecture; tensors of another shape: "
                         f"{', '.join(wrong[:3])}")
    # Non-strict only so the listed prefixes may be absent from the model; anything else must match.
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith(ignore_prefixes)]
    if missing or unexpected:
        raise ValueError(
            f"{name}: weights file {path} does not fit the architecture; "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    return model, _card(name, weights_enum, str(path), imagenet_norm, num_classes)


@register_model("googlenet")
def googlenet(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """GoogLeNet (Inception v1), torchvision ``IMAGENET1K_V1`` weights.

    Built with ``aux_logits=False`` so eval returns a plain logits tensor (no
    ``GoogLeNetOutputs``) and the auxiliary heads are not quantized; their keys in the checkpoint
    are skipped, which is the only reason loading is non-strict. ``transform_input=False`` keeps
    the input affine out of the graph: these weights (ported from TensorFlow) expect
    ``(x - 0.5) / 0.5``, which torchvision gets by re-normalising ImageNet-normalised input inside
    ``forward``. The card asks for mean = std = 0.5 instead: numerically the same model.
    """
    make = lambda **kw: tvm.googlenet(  # noqa: E731
        weights=None, aux_logits=False, transform_input=False, init_weights=False, **kw
    )
    return _build("googlenet", weights, tvm.GoogLeNet_Weights.IMAGENET1K_V1, make,
                  ignore_prefixes=_GOOGLENET_AUX, imagenet_norm=False)


@register_model("mobilenet_v2")
def mobilenet_v2(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """MobileNetV2 1.0, torchvision ``IMAGENET1K_V1`` weights (the resize-256 recipe)."""
    return _build("mobilenet_v2", weights, tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
                  lambda **kw: tvm.mobilenet_v2(weights=None, **kw))


@register_model("vgg16")
def vgg16(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """VGG-16 without BatchNorm, torchvision ``IMAGENET1K_V1`` weights."""
    return _build("vgg16", weights, tvm.VGG16_Weights.IMAGENET1K_V1,
                  lambda **kw: tvm.vgg16(weights=None, **kw))


@register_source("torchvision")
def torchvision_source(spec: str, weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """``torchvision:NAME``: any torchvision classifier, e.g. ``torchvision:resnet18``, with its weights
    from ``model.weights=PATH`` or torch's hub cache (never downloaded) and the preprocessing of
    torchvision's default weights for it (read from its metadata). A classifier head of another size
    in the file (e.g. 10 classes) builds the architecture with that many outputs.
    """
    classifiers = tvm.list_models(module=tvm)
    if spec not in classifiers:
        raise ValueError(f"torchvision:{spec} is not a torchvision classifier; e.g. "
                         f"{', '.join(n for n in classifiers if n.startswith(('resnet', 'mobilenet', 'efficientnet_b')))}")
    weights_enum = tvm.get_model_weights(spec).DEFAULT
    return _build(f"torchvision:{spec}", weights, weights_enum, lambda **kw: tvm.get_model(spec, weights=None, **kw))
