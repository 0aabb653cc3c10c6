"""Issue 32, D08b and the decompression bomb: every image mode reaches the network as the RGB (or L)
the transforms expect, through one conversion; a too-large file is one line naming it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hqbench.data.imagenet import ImageNetDataModule
from hqbench.data.images import ImageFileError, convert_image, image_size, read_image
from hqbench.data.sar import SARShipDataModule
from hqbench.models import ModelCard

# Raw pixels out: mean 0, std 1, so a batch holds the converted values / 255.
RAW = ModelCard("raw", input_size=8, resize=8, mean=(0.0,) * 3, std=(1.0,) * 3, num_classes=1)
RAW_GREY = ModelCard("raw-grey", input_size=8, resize=8, mean=(0.0,), std=(1.0,), num_classes=1, channels=1)


def _sixteen_bit(value: int) -> Image.Image:
    return Image.fromarray(np.full((8, 8), value, dtype=np.uint16))  # mode I;16, as a 16-bit PNG decodes


def _transparent_palette() -> Image.Image:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0] + [0, 0, 0] * 255)  # index 0 is red ...
    img.info["transparency"] = 0  # ... and fully transparent
    return img


# mode -> (image, the 8-bit grey/RGB value every pixel must come out as)
MODES = {
    "I;16": (_sixteen_bit(40000), 156),  # 40000 / 257 = 155.6, not clipped to 255
    "I": (Image.fromarray(np.full((8, 8), 65535, dtype=np.int32)), 255),
    "F": (Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)), 128),  # [0, 1] floats
    "F 0..255": (Image.fromarray(np.full((8, 8), 200.0, dtype=np.float32)), 200),
    "LA": (Image.new("LA", (8, 8), (0, 0)), 255),  # transparent black over white
    "RGBA": (Image.new("RGBA", (8, 8), (0, 0, 0, 0)), 255),
    "P+transparency": (_transparent_palette(), 255),
    "CMYK": (Image.new("CMYK", (8, 8), (0, 0, 0, 0)), 255),
    "1": (Image.new("1", (8, 8), 1), 255),
}


@pytest.mark.parametrize("name", list(MODES))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_mode_converts_to_the_value_it_holds(name, mode):
    img, value = MODES[name]
    out = convert_image(img, mode, "x.png")
    assert out.mode == mode and np.asarray(out).min() == np.asarray(out).max() == value


def test_half_transparency_blends_with_white():
    out = np.asarray(convert_image(Image.new("LA", (2, 2), (0, 128)), "RGB"))
    assert abs(int(out[0, 0, 0]) - 127) <= 1


@pytest.mark.parametrize("img, message", [
    (Image.fromarray(np.full((2, 2), 70000, dtype=np.int32)), r"mode I values span 70000..70000, outside 0..65535"),
    (Image.fromarray(np.full((2, 2), -3.0, dtype=np.float32)), r"mode F values span -3..-3, outside 0..1"),
])
def test_a_mode_of_unknown_scale_is_one_line_naming_the_file(img, message):
    with pytest.raises(ValueError, match=message) as info:
        convert_image(img, "RGB", "/data/odd.tif")
    assert "/data/odd.tif" in str(info.value) and "\n" not in str(info.value)


def _imagefolder(root: Path, images: dict[str, Image.Image]) -> Path:
    root.mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text("a the only class\n")  # so the code before issue 32 reads it too
    for split in ("train", "val"):
        for name, img in images.items():
            (root / split / "a").mkdir(parents=True, exist_ok=True)
            img.save(root / split / "a" / name)
    return root


def _first_images(dm) -> torch.Tensor:
    dm.setup()
    return next(iter(dm.test_dataloader()))[0]


def test_16_bit_png_is_scaled_not_white_in_a_classification_batch(tmp_path):
    """A 16-bit PNG read as 99.6 % white: Pillow's convert clips I;16 at 255."""
    ramp = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))  # 0 .. 63000
    root = _imagefolder(tmp_path / "f", {"ramp.png": ramp, "flat.png": _sixteen_bit(40000)})
    assert Image.open(root / "val" / "a" / "ramp.png").mode == "I;16"
    dm = ImageNetDataModule(root, card=RAW, batch_size=2, calib_size=1)
    flat, ramp_out = _first_images(dm)  # sorted: flat.png, ramp.png
    assert torch.allclose(flat, torch.full_like(flat, 156 / 255))
    expected = torch.from_numpy(np.rint(np.arange(64).reshape(8, 8) * 1000 / 257) / 255).float()
    assert torch.allclose(ramp_out[0], expected, atol=1e-6) and ramp_out.mean() < 0.5


@pytest.mark.parametrize("card, channels", [(RAW, 3), (RAW_GREY, 1)])
def test_transparency_is_white_in_a_classification_batch(tmp_path, card, channels):
    root = _imagefolder(tmp_path / "f", {"la.png": Image.new("LA", (8, 8), (0, 0)), "p.png": _transparent_palette()})
    images = _first_images(ImageNetDataModule(root, card=card, batch_size=2, calib_size=1))
    assert images.shape[1] == channels and torch.allclose(images, torch.ones_like(images))


def test_16_bit_png_is_scaled_in_a_detection_batch(tmp_path):
    """The letterbox uses the same conversion: SAR scenes saved as 16-bit PNG keep their contrast."""
    import json

    root = tmp_path / "sar"
    (root / "JPEGImages").mkdir(parents=True), (root / "annotations").mkdir()
    _sixteen_bit(40000).resize((64, 64)).save(root / "JPEGImages" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "ship"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10]}]}
    for split in ("train2017", "test2017"):
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    images = _first_images(SARShipDataModule(root, imgsz=64, calib_size=1))
    assert torch.allclose(images, torch.full_like(images, 156 / 255))


# ------------------------------------------------------------------ a decompression bomb
def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG claiming ``width`` x ``height``: enough for Image.open, which checks the size before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _assert_bomb_message(text: str, path: Path) -> None:
    assert "\n" not in text and str(path) in text, text
    assert "900,000,000 pixels (900.0 megapixels)" in text and "limit of 178,956,970 pixels" in text, text


def test_900_megapixel_png_is_one_line_naming_file_size_and_limit(tmp_path):
    path = _png_header(tmp_path / "huge.png", 30000, 30000)
    for read in (read_image, image_size):
        with pytest.raises(ValueError) as info:
            read(path)
        _assert_bomb_message(str(info.value), path)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's limit is kept, not lifted


@pytest.mark.parametrize("workers", [0, 1])
def test_900_megapixel_png_in_a_loader_is_one_line_even_from_a_worker(tmp_path, workers):
    """torch re-raises a worker's error with the whole traceback as its message; it stays one line."""
    root = _imagefolder(tmp_path / "f", {"ok.png": Image.new("RGB", (8, 8))})
    path = _png_header(root / "val" / "a" / "zz_huge.png", 30000, 30000)
    dm = ImageNetDataModule(root, card=RAW, batch_size=2, calib_size=1, num_workers=workers)
    with pytest.raises(ValueError) as info:
        _first_images(dm)
    _assert_bomb_message(str(info.value), path)
    assert isinstance(info.value, ImageFileError)
