"""Opening image files so that a bad one is named: damaged, truncated, or needing a missing plugin.

PIL reports these as ``UnidentifiedImageError``/``OSError`` without saying which file of thousands
broke, and it decodes lazily, so a truncated JPEG would fail later, inside a DataLoader worker.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats Pillow reads only through a separately installed plugin or an optional codec.
# _HEIF_HOOK: once ultralytics is imported, Image.open answers an unidentified file by importing pi-heif
# (never installing it: hqbench's offline guard turns auto-install off), so a missing plugin is an ImportError.
_HEIF = "pi-heif or pillow-heif plugin"
_OPENJPEG = "Pillow built with OpenJPEG"
_PLUGINS = {".heic": _HEIF, ".heif": _HEIF, ".jp2": _OPENJPEG, ".j2k": _OPENJPEG,
            ".avif": "pillow-avif-plugin (or Pillow>=11.3)", ".webp": "Pillow built with libwebp"}


def read_image(path: str | Path) -> Image.Image:
    """The image at ``path``, fully decoded (``load()``), so every decoding error surfaces here.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is damaged, truncated or in a format this Pillow cannot read; the
            message names the file and, for plugin formats, what to install.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, ImportError):  # ImportError: see _HEIF_HOOK
        raise ValueError(_unreadable(path)) from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises all three for damaged data
        raise ValueError(_damaged(path, err)) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header (no decoding); errors as :func:`read_image`."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, ImportError):  # ImportError: see _HEIF_HOOK
        raise ValueError(_unreadable(path)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(_damaged(path, err)) from None


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
