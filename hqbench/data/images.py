"""Opening image files so that a bad one is named: damaged, truncated, too large, or needing a missing plugin;
and the one conversion every loader uses to reach the RGB (or greyscale) a model expects.

PIL reports these as ``UnidentifiedImageError``/``OSError`` without saying which file of thousands
broke, and it decodes lazily, so a truncated JPEG would fail later, inside a DataLoader worker.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats Pillow reads only through a separately installed plugin or an optional codec.
# _HEIF_HOOK: once ultralytics is imported, Image.open answers an unidentified file by importing pi-heif
# (never installing it: hqbench's offline guard turns auto-install off), so a missing plugin is an ImportError.
_HEIF = "pi-heif or pillow-heif plugin"
_OPENJPEG = "Pillow built with OpenJPEG"
_PLUGINS = {".heic": _HEIF, ".heif": _HEIF, ".jp2": _OPENJPEG, ".j2k": _OPENJPEG,
            ".avif": "pillow-avif-plugin (or Pillow>=11.3)", ".webp": "Pillow built with libwebp"}
MODES = ("RGB", "L")  # what the transforms feed a network
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
BACKGROUND = (255, 255, 255, 255)  # what transparent pixels show: white, as a viewer draws them


class ImageFileError(ValueError):
    """A bad image file, in one line even when a DataLoader worker re-raises it.

    torch re-raises a worker's exception as ``type(err)("Caught ... Original Traceback ...")``: the
    whole traceback as the message. Its last line holds the original message, which is kept.
    """

    def __init__(self, message: str = ""):
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].partition(": ")[2] or message
        super().__init__(message)


def read_image(path: str | Path, mode: str | None = None) -> Image.Image:
    """The image at ``path``, fully decoded (``load()``), so every decoding error surfaces here;
    converted to ``mode`` ("RGB" or "L", see :func:`convert_image`) when given.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageFileError: (a ValueError) the file is damaged, truncated, over Pillow's decompression-bomb
            limit, in a format this Pillow cannot read, or in a mode that cannot become ``mode``; the
            message names the file and, for plugin formats, what to install.
    """
    path = Path(path)
    with _named(path):
        with Image.open(path) as img:
            img.load()
    return img if mode is None else convert_image(img, mode, path)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header (no decoding); errors as :func:`read_image`."""
    path = Path(path)
    with _named(path):
        with Image.open(path) as img:
            return img.size


class _named:
    """Turns what PIL raises for a bad file into one ImageFileError naming it."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, FileNotFoundError):
            return False
        if isinstance(err, Image.DecompressionBombError):  # Pillow's limit stays; the message says it and the size
            raise ImageFileError(_too_large(self.path, err)) from None
        if isinstance(err, (UnidentifiedImageError, ImportError)):  # ImportError: see _HEIF_HOOK
            raise ImageFileError(_unreadable(self.path)) from None
        if isinstance(err, (OSError, SyntaxError, ValueError)) and not isinstance(err, ImageFileError):
            raise ImageFileError(_damaged(self.path, err)) from None  # PIL raises all three for damaged data
        return False


def convert_image(img: Image.Image, mode: str = "RGB", source: str | Path | None = None) -> Image.Image:
    """``img`` as ``mode`` ("RGB", or "L" for greyscale models), whatever mode the file decoded to.

    Pillow's own ``convert`` clips 16-bit greyscale (``I;16``, ``I``) to 255, so a 16-bit PNG came out
    99.6 % white, and drops alpha, showing whatever colour the encoder left under transparent pixels.
    Here 16-bit values are scaled by 1/257 (65535 -> 255); ``F`` (float) is [0, 1] when no value
    exceeds 1, else 0..255 (Pillow's reading); transparency (``LA``, ``RGBA``, ``P`` with a transparent
    colour) is composited over white; ``1``, ``P``, ``CMYK``, ``YCbCr`` use Pillow's conversion.

    Raises:
        ImageFileError: a 32-bit ``I`` or ``F`` image beyond those ranges (its scale is unknown), or a
            mode Pillow cannot convert; the message names ``source`` and the mode.
    """
    if mode not in MODES:
        raise ValueError(f"convert_image: mode must be one of {MODES}, got {mode!r}")
    if img.mode == mode:
        return img
    where = f"image {source}" if source is not None else "an image"
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        values = np.asarray(img)
        if img.mode == "I":  # 32-bit: PNG and TIFF store 16-bit data in it; more is of unknown scale
            _check_range(values, 65535, where, img.mode)
        # round(v / 257) in integers: 65535 -> 255 exactly, 4x faster than through floats
        img = Image.fromarray(((values.astype(np.uint32) + 128) // 257).astype(np.uint8), mode="L")
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        img = _to_8bit(values, top, where, img.mode)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA:
        img = Image.alpha_composite(Image.new("RGBA", img.size, BACKGROUND), img.convert("RGBA"))
    try:
        return img.convert(mode)
    except ValueError as err:  # e.g. LAB, HSV without a profile
        raise ImageFileError(f"{where}: cannot convert mode {img.mode} to {mode} ({err}); "
                             "save it as an 8-bit RGB or greyscale file") from None


def _to_8bit(values: np.ndarray, top: float, where: str, kind: str) -> Image.Image:
    """Greyscale values on ``0..top`` as an 8-bit L image (rounded); anything outside is an error."""
    _check_range(values, top, where, kind)
    return Image.fromarray(np.rint(values * (255.0 / top)).astype(np.uint8), mode="L")


def _check_range(values: np.ndarray, top: float, where: str, kind: str) -> None:
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= top):
        lo, hi = np.nanmin(values), np.nanmax(values)
        raise ImageFileError(f"{where}: mode {kind} values span {lo:g}..{hi:g}, outside 0..{top:g}, so their "
                             "scale is unknown; save it as an 8- or 16-bit image")


def _too_large(path: Path, err: Exception) -> str:
    # Pillow says "Image size (N pixels) exceeds limit of M pixels, ..."
    numbers = [int(n) for n in re.findall(r"(\d+) pixels", str(err))]
    if len(numbers) != 2:
        return f"image {path} is too large for Pillow ({str(err).strip().splitlines()[0]})"
    size, limit = numbers
    return (f"image {path} has {size:,} pixels ({size / 1e6:.1f} megapixels), over Pillow's decompression-bomb "
            f"limit of {limit:,} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS); downscale or tile the image")


def _unreadable(path: Path) -> str:
    plugin = _PLUGINS.get(path.suffix.lower())
    if plugin:
        return (f"image {path}: Pillow cannot read {path.suffix} files here; it needs the optional {plugin}. "
                "Install it, or convert the images to JPEG/PNG")
    return f"image {path} is not an image Pillow can identify (damaged, empty, or not an image file)"


def _damaged(path: Path, err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "not available" in text:  # e.g. "decoder jpeg2k not available": an optional codec is missing
        return f"image {path}: this Pillow lacks an optional codec ({text}); install a Pillow build with it"
    return f"image {path} is damaged or truncated ({text})"
