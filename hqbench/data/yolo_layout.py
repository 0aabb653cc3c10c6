"""Detection data in ultralytics' layout: a ``data.yaml`` naming image folders, YOLO label files beside them.

::

    path: /data/ships     # dataset root; relative: to the yaml's folder; absent: the yaml's folder
    train: images/train   # under path: a folder (searched recursively), a .txt list of images, or a list of those
    val: images/val
    test: images/test     # optional; evaluation reads test when the yaml names one, else val
    names: {0: ship}      # or a list; or nc: N (names class_0...)

The label file of ``.../images/<x>/<name>.jpg`` is ``.../labels/<x>/<name>.txt`` (the last ``images``
folder becomes ``labels``), one object a line: ``class cx cy w h`` normalised to [0, 1], or ``class x1
y1 x2 y2 ...`` (a polygon, boxed by its extent). An image without a label file has no objects. The
checks are ultralytics' own (coordinates within 1 % of [0, 1], integer classes below ``nc``,
duplicate lines dropped), so a dataset ultralytics validates on reads the same here.
ultralytics resolves a relative ``path`` against the working folder or its datasets folder; here it
is the yaml's folder, so a run does not depend on where it starts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from hqbench.data.coco import Sample
from hqbench.data.images import image_size

# ultralytics' IMG_FORMATS: the files it takes as images from a folder.
IMAGE_SUFFIXES = {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"}
SLACK = 0.01  # ultralytics accepts normalised coordinates up to 1.01 and centres down to -0.01


def read_data_yaml(path: Path) -> dict:
    """The parsed ``data.yaml``, its ``names`` a list in class order and ``path`` resolved.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not YAML, not a mapping, no ``train``/``val``, or no usable ``names``/``nc``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"ultralytics data file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"ultralytics data file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"ultralytics data file {path} holds {type(data).__name__}, not a mapping of keys")
    missing = [k for k in ("train", "val") if not data.get(k)]
    if missing:
        raise ValueError(f"ultralytics data file {path} has no {' or '.join(map(repr, missing))}; "
                         "it needs train:, val: (and optionally test:) image folders and names:")
    data["names"] = _names(data, path)
    root = Path(str(data.get("path") or "")).expanduser()
    data["path"] = root if root.is_absolute() else (path.parent / root).resolve()
    return data


def _names(data: dict, path: Path) -> list[str]:
    names, nc = data.get("names"), data.get("nc")
    if names is None:
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
            raise ValueError(f"ultralytics data file {path} has no names: and nc: {nc!r} is not a positive integer")
        return [f"class_{i}" for i in range(nc)]
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"ultralytics data file {path}: names: must be a list or a mapping index: name, got {names!r}")
    try:
        keyed = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        raise ValueError(f"ultralytics data file {path}: names: keys must be class indices, "
                         f"got {list(names)}") from None
    if sorted(keyed) != list(range(len(keyed))):
        raise ValueError(f"ultralytics data file {path}: names: indices must be 0..{len(keyed) - 1}, "
                         f"got {sorted(keyed)}")
    if nc is not None and nc != len(keyed):
        raise ValueError(f"ultralytics data file {path}: names: lists {len(keyed)} classes but nc: is {nc!r}")
    return [keyed[i] for i in range(len(keyed))]


def image_files(data: dict, key: str, yaml_path: Path) -> list[Path]:
    """The images ``data[key]`` names (folders searched recursively, ``.txt`` lists read), sorted.

    Raises:
        FileNotFoundError: an entry that does not exist, or no images at all, naming the yaml and key.
    """
    entries = data[key] if isinstance(data[key], list) else [data[key]]
    files: list[Path] = []
    for entry in entries:
        p = data["path"] / str(entry)
        if not p.exists() and str(entry).startswith("../"):  # ultralytics' allowance for YOLOv5 yamls
            p = data["path"] / str(entry)[3:]
        if p.is_dir():
            files += [f for f in p.rglob("*.*") if f.suffix[1:].lower() in IMAGE_SUFFIXES and f.is_file()]
        elif p.is_file():  # a list of images, one a line, relative to the list's folder
            lines = p.read_text(encoding="utf-8-sig").splitlines()
            # normpath, not resolve: a symlinked image keeps its own path, so its label is found beside it
            files += [Path(os.path.normpath(p.parent / line.strip())) for line in lines if line.strip()]
        else:
            raise FileNotFoundError(f"ultralytics data file {yaml_path}: {key}: {entry} ({p}) does not exist")
    images = sorted({f for f in files if f.suffix[1:].lower() in IMAGE_SUFFIXES}, key=str)
    if not images:
        raise FileNotFoundError(f"ultralytics data file {yaml_path}: {key}: {data[key]} holds no images "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    last = max((i for i, part in enumerate(parts[:-1]) if part == "images"), default=None)
    if last is not None:
        parts[last] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_labels(label: Path, image: Path, nc: int) -> tuple[list[tuple[float, float, float, float]], list[int]]:
    """Boxes (xywh in the image's pixels, clipped to it) and classes of ``label``; none if it is absent.

    Raises:
        ValueError: a line that is not ``class cx cy w h`` (or a polygon), a class outside 0..nc-1, or
            coordinates outside [0, 1]; naming the file, the line and the value.
    """
    if not label.is_file():
        return [], []
    width, height = image_size(image)
    rows: dict[tuple[float, ...], str] = {}  # insertion-ordered: duplicate lines dropped, as ultralytics does
    for n, line in enumerate(label.read_text().splitlines(), 1):
        if line.strip():
            rows.setdefault(_parse(line, f"YOLO label file {label} line {n}", nc), f"YOLO label file {label} line {n}")
    boxes, classes = [], []
    for (c, cx, cy, w, h), where in rows.items():
        # Clipped to the image, as ultralytics does: the part past the edge holds no pixels.
        x0, y0 = max(0.0, (cx - w / 2) * width), max(0.0, (cy - h / 2) * height)
        x1, y1 = min(float(width), (cx + w / 2) * width), min(float(height), (cy + h / 2) * height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{where} has box {cx:g} {cy:g} {w:g} {h:g}, outside its {width}x{height} image {image}")
        boxes.append((x0, y0, x1 - x0, y1 - y0))
        classes.append(int(c))
    return boxes, classes


def _parse(line: str, where: str, nc: int) -> tuple[float, ...]:
    try:
        values = [float(v) for v in line.split()]
    except ValueError:
        raise ValueError(f"{where} is {line.strip()!r}; expected numbers: class cx cy w h") from None
    if len(values) > 6 and len(values) % 2 == 1:  # a polygon: its extent is the box
        xs, ys = values[1::2], values[2::2]
        values = [values[0], (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
    if len(values) != 5 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where} is {line.strip()!r}; expected class cx cy w h (normalised) or class x1 y1 x2 y2 ...")
    c, cx, cy, w, h = values
    if c % 1 or not 0 <= c < nc:
        raise ValueError(f"{where} has class {c:g}; the data file names {nc} classes (0..{nc - 1})")
    if max(cx, cy, w, h) > 1 + SLACK or min(cx, cy) < -SLACK or min(w, h) <= 0:
        raise ValueError(f"{where} has box {cx:g} {cy:g} {w:g} {h:g}; expected cx cy w h normalised to [0, 1], "
                         "w and h positive")
    return c, cx, cy, w, h


def read_yolo_split(yaml_path: Path, split: str) -> tuple[list[Sample], list[str], str]:
    """Samples (sorted by path), class names and the key read for ``split``: ``"train"``, or ``"test"``
    (the yaml's ``test:``, else its ``val:``).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_data_yaml`, :func:`image_files`, :func:`read_labels`.
    """
    data = read_data_yaml(yaml_path)
    key = "train" if split == "train" else "test" if data.get("test") else "val"
    samples = []
    for i, image in enumerate(image_files(data, key, yaml_path)):
        boxes, classes = read_labels(label_path(image), image, len(data["names"]))
        samples.append(Sample(image, i, tuple(boxes), tuple(classes), (0,) * len(classes)))
    return samples, data["names"], key
