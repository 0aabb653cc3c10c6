"""Evaluation preprocessing derived from a ModelCard, so data code never branches on model names."""

from __future__ import annotations

from functools import partial

from torchvision import transforms as T

from hqbench.data.images import convert_image
from hqbench.models.card import ModelCard

_INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}


def build_transform(card: ModelCard) -> T.Compose:
    """Resize the short side, centre-crop, scale to [0, 1] and normalise as ``card`` says.

    Args:
        card: the model's input contract.

    Returns:
        A transform taking a PIL image to a ``(card.channels, input_size, input_size)`` tensor.

    Raises:
        ValueError: on an unknown ``card.interpolation``, a channel count other than 1 or 3, or
            mean/std lengths that differ from ``card.channels``.

    Example:
        >>> card = ModelCard("m", input_size=8, resize=10, mean=(0.5,) * 3, std=(0.5,) * 3,
        ...                  num_classes=10)
        >>> from PIL import Image
        >>> build_transform(card)(Image.new("RGB", (20, 12))).shape
        torch.Size([3, 8, 8])
    """
    if card.interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"ModelCard {card.name!r}: unknown interpolation {card.interpolation!r}; "
            f"valid: {', '.join(_INTERPOLATIONS)}"
        )
    if card.channels not in (1, 3):
        raise ValueError(f"ModelCard {card.name!r}: channels must be 1 or 3, got {card.channels}")
    if len(card.mean) != card.channels or len(card.std) != card.channels:
        raise ValueError(
            f"ModelCard {card.name!r}: mean {card.mean} and std {card.std} need "
            f"{card.channels} values (channels={card.channels})"
        )
    # Converting to a fixed mode first means greyscale JPEGs (ImageNet has some), CMYK, 16-bit and
    # transparent files all reach the network with the channel count the card promises. A partial of a
    # module-level function (not a lambda) pickles into DataLoader worker processes.
    return T.Compose([
        T.Lambda(partial(convert_image, mode=channel_mode(card))),
        T.Resize(card.resize, interpolation=_INTERPOLATIONS[card.interpolation]),
        T.CenterCrop(card.input_size),
        T.ToTensor(),
        T.Normalize(card.mean, card.std),
    ])


def channel_mode(card: ModelCard) -> str:
    """The PIL mode images are converted to for ``card``: "L" for greyscale models, else "RGB"."""
    return "L" if card.channels == 1 else "RGB"
