"""Evaluation preprocessing derived from a ModelCard, so data code never branches on model names."""

from __future__ import annotations

from torchvision import transforms as T

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
    # Decoding to a fixed mode first means greyscale JPEGs (ImageNet has some) and CMYK files all
    # reach the network with the channel count the card promises.
    mode = T.Grayscale(num_output_channels=1) if card.channels == 1 else T.Lambda(_to_rgb)
    return T.Compose([
        mode,
        T.Resize(card.resize, interpolation=_INTERPOLATIONS[card.interpolation]),
        T.CenterCrop(card.input_size),
        T.ToTensor(),
        T.Normalize(card.mean, card.std),
    ])


def _to_rgb(img):
    # A named function (not a lambda) so the transform pickles into DataLoader worker processes.
    return img.convert("RGB")
