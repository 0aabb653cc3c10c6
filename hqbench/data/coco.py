"""Reading a COCO annotation file, and its checks before any of it is used.

A bad box does not fail loudly downstream: torchmetrics scores a NaN, negative or out-of-image box
as a miss, and a split with no boxes at all as mAP -1. So every entry is checked on load, and the
first bad one is reported with the file, its index and id, and the value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

from hqbench.data.images import image_size

KEYS = {"images": ("id", "file_name"), "annotations": ("image_id", "bbox", "category_id"),
        "categories": ("id", "name")}
EDGE_TOLERANCE = 1.0  # pixels a box may pass the image edge: labelling tools round to whole pixels


class MissingImageError(FileNotFoundError, ValueError):
    """An image the annotation file lists is not on disk: a missing file and a bad entry at once."""


@dataclass(frozen=True)
class Sample:
    """One image with its boxes (xywh, original pixels) and labels renumbered 0.."""

    path: Path
    image_id: int
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]
    iscrowd: tuple[int, ...]


def image_dir_of(ann_path: Path, images: str | Path | None = None) -> Path:
    """Where a COCO file's ``file_name`` entries live: ``images`` if given; else HRSID's convention,
    ``<root>/JPEGImages`` for ``<root>/annotations/<name>.json``, when that folder exists; else the json's folder."""
    if images is not None:
        return Path(images).expanduser()
    hrsid = ann_path.parent.parent / "JPEGImages"
    return hrsid if ann_path.parent.name == "annotations" and hrsid.is_dir() else ann_path.parent


def read_coco_file(ann_path: Path, image_dir: Path) -> tuple[list[Sample], list[str]]:
    """Samples (sorted by file name) and class names (in category id order) of any COCO file.

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing.
        ValueError: not JSON, or any bad entry (see :func:`check_coco`), named with the file, its
            index, id and value; a missing image raises ``MissingImageError``, both kinds.
    """
    if not ann_path.is_file():
        raise FileNotFoundError(f"COCO annotation file {ann_path} does not exist")
    try:
        coco = json.loads(ann_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"SAR annotation file {ann_path} is not valid JSON: {err}") from err
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} of {ann_path} does not exist")
    check_coco(coco, ann_path, image_dir)  # every entry, before any is used
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    images = {im["id"]: im for im in coco["images"]}
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for a in coco["annotations"]:
        per_image[a["image_id"]].append(a)
    samples = []
    for image_id, im in images.items():
        anns = per_image[image_id]
        samples.append(Sample(image_dir / im["file_name"], image_id, tuple(tuple(map(float, a["bbox"])) for a in anns),
                              tuple(label_of[a["category_id"]] for a in anns),
                              tuple(int(a.get("iscrowd", 0)) for a in anns)))
    return sorted(samples, key=lambda s: s.path.name), [c["name"] for c in categories]


def check_coco(coco: Any, ann_path: Path, image_dir: Path) -> None:
    """Validate a parsed COCO file whose images live in ``image_dir``.

    Raises:
        ValueError: a missing list or key, a non-integer or repeated id, a bbox that is not four
            finite numbers, has a non-positive width or height or leaves its image, an unknown
            image or category; the message names ``ann_path``, the entry and the value.
        MissingImageError: (a FileNotFoundError and a ValueError) an image file is missing.
    """
    _check_lists(coco, ann_path)
    categories = _ids(coco["categories"], "categories", ann_path)
    sizes = _image_sizes(coco["images"], ann_path, image_dir)
    for k, a in enumerate(coco["annotations"]):
        where = f"SAR annotation file {ann_path}: annotations[{k}] (id {a.get('id')})"
        if not _is_int(a["image_id"]) or a["image_id"] not in sizes:
            raise ValueError(f"{where} names unknown image_id {a['image_id']!r}")
        if not _is_int(a["category_id"]) or a["category_id"] not in categories:
            raise ValueError(f"{where} has category_id {a['category_id']!r}; categories are {sorted(categories)}")
        _check_box(a["bbox"], sizes[a["image_id"]], where)
        if a.get("iscrowd", 0) not in (0, 1) or isinstance(a.get("iscrowd"), float):
            raise ValueError(f"{where} has iscrowd {a['iscrowd']!r}; expected 0 or 1")


def _check_lists(coco: Any, ann_path: Path) -> None:
    for key, fields in KEYS.items():
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise ValueError(f"SAR annotation file {ann_path} has no list {key!r}; "
                             f"a COCO file needs {', '.join(KEYS)}")
        for k, entry in enumerate(coco[key]):
            if not isinstance(entry, dict):
                raise ValueError(f"SAR annotation file {ann_path}: {key}[{k}] is {entry!r}, not an object")
            missing = [f for f in fields if f not in entry]
            if missing:
                raise ValueError(f"SAR annotation file {ann_path}: {key}[{k}] lacks {missing}; "
                                 f"needs {', '.join(fields)}")


def _ids(entries: list[dict], key: str, ann_path: Path) -> set[int]:
    seen: set[int] = set()
    for k, entry in enumerate(entries):
        value = entry["id"]
        if not _is_int(value):
            raise ValueError(f"SAR annotation file {ann_path}: {key}[{k}] has id {value!r}; ids are integers")
        if value in seen:
            raise ValueError(f"SAR annotation file {ann_path}: {key}[{k}] repeats id {value}")
        seen.add(value)
    return seen


def _image_sizes(images: list[dict], ann_path: Path, image_dir: Path) -> dict[int, tuple[float, float]]:
    """``{image id: (width, height)}`` from each file's header (PIL reads it without decoding).

    A declared width/height is never trusted: one that disagrees with the file is an error (a file
    declaring 100000x100000 for 420x317 images passed every box check and scored mAP50 0.00).
    """
    _ids(images, "images", ann_path)
    sizes = {}
    for k, im in enumerate(images):
        where = f"SAR annotation file {ann_path}: images[{k}] (id {im['id']})"
        name = im["file_name"]
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{where} has file_name {name!r}; expected a file name inside {image_dir}")
        path = image_dir / name
        if not path.is_file():
            raise MissingImageError(f"image {path}, listed in {ann_path}, does not exist "
                                    f"(images[{k}], id {im['id']})")
        given = im.get("width"), im.get("height")
        if given != (None, None) and not all(_finite(v) and v > 0 for v in given):
            raise ValueError(f"{where} has width/height {given}; expected positive numbers (or neither key)")
        sizes[im["id"]] = image_size(path)
        if given != (None, None) and tuple(given) != sizes[im["id"]]:
            w, h = sizes[im["id"]]
            raise ValueError(f"{where} declares {name} as {given[0]:g}x{given[1]:g} (width x height) but the file "
                             f"{path} is {w}x{h}; fix the entry's width/height (or drop both keys)")
    return sizes


def _check_box(box: Any, size: tuple[float, float], where: str) -> None:
    if not isinstance(box, list) or len(box) != 4 or not all(_finite(v) for v in box):
        raise ValueError(f"{where} has bbox {box!r}; expected [x, y, width, height], four finite numbers")
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise ValueError(f"{where} has bbox {box!r}: width and height must be positive")
    width, height = size
    if x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + w > width + EDGE_TOLERANCE \
            or y + h > height + EDGE_TOLERANCE:
        raise ValueError(f"{where} has bbox {box!r}, outside its {width:g}x{height:g} image")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    """A real number (not a bool, string or None) that is neither NaN nor infinite."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
