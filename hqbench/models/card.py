"""ModelCard: the input contract that travels with a model's weights.

Preprocessing differs per weight source (torchvision, TFLite, Caffe-style); keeping it on the card
means data code never branches on the model's name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCard:
    """What a model expects and where its weights came from.

    Attributes:
        name: registry name, e.g. ``"mobilenet_v2_tflite"``.
        input_size: square side in pixels fed to the network.
        resize: short side an image is resized to before the centre crop of ``input_size``.
        mean: per-channel mean subtracted from RGB values scaled to [0, 1].
        std: per-channel divisor applied after the mean.
        num_classes: logits the model returns (after any label mapping done inside the model).
        weights: where the weights were loaded from (a path or a description), for reports.
        interpolation: resize interpolation, ``"bilinear"`` or ``"bicubic"``.
        channels: 3 for RGB, 1 for greyscale inputs.
        classes: class names in output order, where the weights' source names them (a detector's
            yaml ``names:``); empty when it does not. A task checks them against the data's.
    """

    name: str
    input_size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    weights: str | None = None
    interpolation: str = "bilinear"
    channels: int = 3
    classes: tuple[str, ...] = ()
