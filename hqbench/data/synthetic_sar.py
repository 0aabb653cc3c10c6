"""Seeded synthetic SAR ship scenes written in HRSID's release layout.

Each scene is built in linear intensity, the way SAR images form:

- **sea clutter**: K-distributed intensity, the product of a spatially correlated Gamma texture
  (shape ``nu``; small ``nu`` = spiky sea) and per-pixel Gamma speckle (``looks``);
- **land** (some scenes): a region behind a ragged coastline, brighter and with heavier texture,
  with point scatterers (buildings) and straight bright **harbour** piers reaching into the sea;
- **ships**: rotated hulls of realistic length (a few to tens of pixels, 3-7 times as long as
  wide) and any orientation, 8-25 dB above the local clutter, with bright point scatterers along
  the keel and faint azimuth/range sidelobes on the strongest; speckled like everything else.

Amplitude (the square root of intensity) is scaled to 8 bits and saved as greyscale JPEG.
Boxes are the axis-aligned extent of each hull (HRSID's ``bbox``), with its rotated rectangle
as ``segmentation``. The same ``seed`` gives the same scenes; scene ``i`` depends only on
``(seed, split, i)``, so a larger set extends a smaller one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hqbench.data.sar import SPLITS, SARShipDataModule
from hqbench.models.card import ModelCard
from hqbench.paths import cache_dir


@dataclass(frozen=True)
class SceneConfig:
    """Scene statistics; lengths are in pixels of a ``size`` x ``size`` image."""

    size: int = 256
    ships: tuple[int, int] = (1, 8)  # ships per scene, inclusive
    ship_length: tuple[float, float] = (10.0, 48.0)  # log-uniform
    aspect: tuple[float, float] = (3.0, 7.0)  # length / width
    ship_to_clutter_db: tuple[float, float] = (8.0, 25.0)
    land_probability: float = 0.35
    looks: tuple[int, int] = (1, 4)
    texture_nu: tuple[float, float] = (1.5, 12.0)  # K-distribution shape of the sea


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance noise correlated over about ``size / cells`` pixels."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells + 3, cells + 3)).astype(np.float32))
    fine = F.interpolate(coarse, size=(size + 3 * size // cells,) * 2, mode="bicubic", align_corners=False)
    field = fine[0, 0, :size, :size].numpy()
    return (field - field.mean()) / (field.std() + 1e-6)


def _hull(length: float, width: float, theta: float, cx: float, cy: float, size: int):
    """Pixel grid of a window around a ship and the hull's mask there (a pointed, rounded rectangle)."""
    r = int(math.ceil(length / 2 + 3))
    x0, y0 = max(0, int(cx) - r), max(0, int(cy) - r)
    x1, y1 = min(size, int(cx) + r + 1), min(size, int(cy) + r + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u = (xs + 0.5 - cx) * math.cos(theta) + (ys + 0.5 - cy) * math.sin(theta)  # along the keel
    v = -(xs + 0.5 - cx) * math.sin(theta) + (ys + 0.5 - cy) * math.cos(theta)
    taper = np.clip(1.0 - np.maximum(np.abs(u) / (length / 2) - 0.6, 0) / 0.4, 0, 1)  # pointed bow and stern
    mask = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2 * np.maximum(taper, 0.35))
    return (slice(y0, y1), slice(x0, x1)), u, v, mask


def render_scene(rng: np.random.Generator, cfg: SceneConfig) -> tuple[np.ndarray, list[dict]]:
    """One scene: a ``uint8`` image ``(size, size)`` and its ships (``bbox`` xywh, ``segmentation``)."""
    n = cfg.size
    nu = rng.uniform(*cfg.texture_nu)
    texture = rng.gamma(nu, 1.0 / nu, size=(n, n)).astype(np.float32)
    texture *= np.exp(0.25 * _smooth_field(rng, n, 6))  # swell: slow modulation of the sea's mean
    sea_level = rng.uniform(0.6, 1.4)
    intensity = sea_level * texture

    land = np.zeros((n, n), bool)
    if rng.random() < cfg.land_probability:
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) / n - 0.5
        ramp = xs * math.cos(angle) + ys * math.sin(angle)
        land = ramp + 0.08 * _smooth_field(rng, n, 8) > rng.uniform(0.1, 0.35)
        land_nu = rng.uniform(0.6, 1.5)
        clutter = rng.gamma(land_nu, 1.0 / land_nu, size=(n, n)) * np.exp(0.6 * _smooth_field(rng, n, 16))
        intensity = np.where(land, sea_level * rng.uniform(1.5, 4) * clutter, intensity)
        for _ in range(rng.integers(5, 40)):  # buildings: strong point scatterers on land
            y, x = rng.integers(0, n, 2)
            if land[y, x]:
                intensity[max(0, y - 1): y + 2, max(0, x - 1): x + 2] *= rng.uniform(10, 60)
        for _ in range(rng.integers(0, 4)):  # piers from the coast, pointing out to sea
            y, x = rng.integers(0, n, 2)
            if not land[y, x]:
                continue
            direction = angle + math.pi + rng.uniform(-0.3, 0.3)
            steps = np.arange(0, rng.uniform(0.08, 0.25) * n)
            py = np.clip((y + steps * math.sin(direction)).astype(int), 0, n - 1)
            px = np.clip((x + steps * math.cos(direction)).astype(int), 0, n - 1)
            for w in (-1, 0, 1):
                intensity[np.clip(py + w, 0, n - 1), px] = sea_level * rng.uniform(15, 40)

    ships, occupied = [], []
    for _ in range(rng.integers(cfg.ships[0], cfg.ships[1] + 1)):
        length = float(np.exp(rng.uniform(*np.log(cfg.ship_length))))
        width = max(2.0, length / rng.uniform(*cfg.aspect))
        theta = rng.uniform(0, math.pi)
        for _attempt in range(20):  # a free spot at sea, clear of other ships
            cx, cy = rng.uniform(length / 2, n - length / 2, 2)
            if land[int(cy), int(cx)] or any(math.hypot(cx - ox, cy - oy) < (length + ol) / 2 + 2
                                              for ox, oy, ol in occupied):
                continue
            break
        else:
            continue
        window, u, v, mask = _hull(length, width, theta, cx, cy, n)
        if land[window][mask].any():
            continue
        occupied.append((cx, cy, length))
        peak = sea_level * 10 ** (rng.uniform(*cfg.ship_to_clutter_db) / 10)
        keel = np.exp(-(v / (0.35 * width)) ** 2)  # brighter along the keel than at the hull's edges
        hull = np.where(mask, peak * (0.3 + 0.7 * keel), 0.0)
        for su in rng.uniform(-0.45, 0.45, rng.integers(2, 6)) * length:  # superstructure scatterers
            hull += mask * peak * rng.uniform(1, 4) * np.exp(-((u - su) ** 2 + v ** 2) / 2.0)
        patch = intensity[window]
        intensity[window] = np.where(mask, hull, patch)
        if peak > sea_level * 10 ** 2.2:  # sidelobes: a faint cross along range and azimuth
            cross = (np.abs((np.mgrid[window][0] + 0.5) - cy) < 0.8) | (np.abs((np.mgrid[window][1] + 0.5) - cx) < 0.8)
            intensity[window] += np.where(cross & ~mask, peak * 0.01, 0.0)
        corners = [(cx + a * length / 2 * math.cos(theta) - b * width / 2 * math.sin(theta),
                    cy + a * length / 2 * math.sin(theta) + b * width / 2 * math.cos(theta))
                   for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        xs_, ys_ = [min(max(c[0], 0.0), n) for c in corners], [min(max(c[1], 0.0), n) for c in corners]
        box = [min(xs_), min(ys_), max(xs_) - min(xs_), max(ys_) - min(ys_)]
        ships.append({"bbox": [round(b, 2) for b in box], "area": round(box[2] * box[3], 2),
                      "segmentation": [[round(c, 2) for xy in zip(xs_, ys_) for c in xy]]})

    looks = int(rng.integers(cfg.looks[0], cfg.looks[1] + 1))
    intensity = intensity * rng.gamma(looks, 1.0 / looks, size=(n, n))  # multiplicative speckle
    amplitude = np.sqrt(intensity)
    image = np.clip(amplitude * rng.uniform(35, 60), 0, 255).astype(np.uint8)  # sea amplitude ~ 35-60 grey
    return image, ships


def generate_sar_scenes(root: str | Path, num_train: int = 400, num_test: int = 100, seed: int = 0,
                        config: SceneConfig = SceneConfig(), overwrite: bool = False) -> Path:
    """Write ``num_train`` + ``num_test`` scenes under ``root`` in HRSID's layout; returns ``root``.

    ``root/JPEGImages/{train,test}_<seed>_<i>.jpg`` and ``root/annotations/{train2017,test2017}.json``
    (COCO, one category ``ship``). Everything is written to a temporary sibling folder and renamed
    into place at the end, so an interrupted run leaves no half-written dataset.

    Raises:
        FileExistsError: ``root`` exists and is not empty, and ``overwrite`` is False.
        ValueError: a count is negative or both are zero.
    """
    root = Path(root).expanduser()
    if num_train < 0 or num_test < 0 or num_train + num_test == 0:
        raise ValueError(f"need non-negative image counts, not both zero; got num_train={num_train}, "
                         f"num_test={num_test}")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} exists and is not empty; pass overwrite=True or choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (tmp / "JPEGImages").mkdir()
        (tmp / "annotations").mkdir()
        image_id = ann_id = 0
        for split, count in (("train", num_train), ("test", num_test)):
            coco = {"info": {"description": f"hqbench synthetic SAR ships, seed {seed}, {config}"},
                    "images": [], "annotations": [], "categories": [{"id": 1, "name": "ship"}]}
            for i in range(count):
                rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
                image, ships = render_scene(rng, config)
                name = f"{split}_{seed}_{i:05d}.jpg"
                Image.fromarray(image, mode="L").save(tmp / "JPEGImages" / name, quality=95)
                image_id += 1
                coco["images"].append({"id": image_id, "file_name": name, "width": config.size,
                                       "height": config.size})
                for ship in ships:
                    ann_id += 1
                    coco["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": 1,
                                                "iscrowd": 0, **ship})
            (tmp / "annotations" / f"{SPLITS[split]}.json").write_text(json.dumps(coco))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


class SyntheticSARDataModule(SARShipDataModule):
    """:class:`SARShipDataModule` over generated scenes: the embedded detection benchmark.

    With ``root=None`` the scenes are generated once into ``cache_dir("synthetic-sar")/<params>``
    (``~/.cache/hqbench/synthetic-sar``; ``HQBENCH_CACHE`` moves it)
    (a few seconds) and reused; with ``root`` they are generated there if it is empty. Calibration
    images come from the training split, evaluation images from the test split, as for HRSID.

    Args:
        num_train, num_test: scenes per split; scene_seed: the generator's seed; size: scene side.
        Others as :class:`SARShipDataModule`.
    """

    def __init__(self, root: str | Path | None = None, card: ModelCard | None = None, imgsz: int = 256,
                 batch_size: int = 16, num_workers: int = 0, eval_limit: int | None = None, calib_size: int = 64,
                 seed: int = 0, num_train: int = 200, num_test: int = 100, scene_seed: int = 0, size: int = 256):
        self.scenes = dict(num_train=num_train, num_test=num_test, seed=scene_seed, config=SceneConfig(size=size))
        if root is None:
            root = cache_dir("synthetic-sar") / f"seed{scene_seed}-size{size}-train{num_train}-test{num_test}"
        super().__init__(root, card=card, imgsz=imgsz, batch_size=batch_size, num_workers=num_workers,
                         eval_limit=eval_limit, calib_size=calib_size, seed=seed)
        # The scenes are a function of these numbers alone; where they are cached is this machine's business
        # (rows never store a machine's absolute path, and the same scenes elsewhere are the same rows).
        self.source = f"synthetic SAR scenes (seed {scene_seed}, {size}px, {num_train} train / {num_test} test)"

    def _split(self, name: str):
        if not (self.root / "annotations").is_dir():
            generate_sar_scenes(self.root, **self.scenes)
        return super()._split(name)
