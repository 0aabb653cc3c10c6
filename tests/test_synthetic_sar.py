"""The synthetic SAR scene generator: HRSID's layout, determinism, physics sanity, safe writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hqbench.data.sar import SARShipDataModule
from hqbench.data.synthetic_sar import SceneConfig, SyntheticSARDataModule, generate_sar_scenes, render_scene


def _read(root):
    anns = {s: json.loads((root / "annotations" / f"{s}.json").read_text()) for s in ("train2017", "test2017")}
    images = {p.name: np.array(Image.open(p)) for p in sorted((root / "JPEGImages").iterdir())}
    return anns, images


def test_same_seed_same_scenes_and_a_larger_set_extends_a_smaller_one(tmp_path):
    a = generate_sar_scenes(tmp_path / "a", num_train=3, num_test=2, seed=5)
    b = generate_sar_scenes(tmp_path / "b", num_train=5, num_test=2, seed=5)
    c = generate_sar_scenes(tmp_path / "c", num_train=3, num_test=2, seed=6)
    anns_a, images_a = _read(a)
    anns_b, images_b = _read(b)
    for name, image in images_a.items():
        assert np.array_equal(image, images_b[name]), name
    boxes = [[a["bbox"] for a in anns["test2017"]["annotations"]] for anns in (anns_a, anns_b)]
    assert boxes[0] == boxes[1]
    assert not np.array_equal(images_a["train_5_00000.jpg"], _read(c)[1]["train_6_00000.jpg"])


def test_hrsid_layout_reads_back_with_boxes_inside_the_scene(tmp_path):
    cfg = SceneConfig(size=192)
    root = generate_sar_scenes(tmp_path / "sar", num_train=6, num_test=4, seed=1, config=cfg)
    dm = SARShipDataModule(root, imgsz=192, calib_size=6)
    dm.setup()
    assert len(dm.eval_files) == 4 and dm.classes == ["ship"]
    test = json.loads((root / "annotations" / "test2017.json").read_text())
    assert {im["width"] for im in test["images"]} == {192}
    counts = [sum(a["image_id"] == im["id"] for a in test["annotations"]) for im in test["images"]]
    assert all(cfg.ships[0] - 1 <= n <= cfg.ships[1] for n in counts) and sum(counts) > 0
    for image, target in (dm.test_dataloader().dataset[i] for i in range(4)):
        boxes = target["boxes"]
        assert image.shape == (3, 192, 192)
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 192


def test_ships_are_bright_against_speckled_clutter():
    rng = np.random.default_rng(0)
    image, ships = render_scene(rng, SceneConfig(size=256, land_probability=0.0, ships=(3, 3)))
    assert len(ships) >= 2
    sea = image.astype(float)
    for ship in ships:
        x, y, w, h = (int(round(v)) for v in ship["bbox"])
        inside = sea[y:y + h + 1, x:x + w + 1]
        assert inside.max() > np.percentile(sea, 99.5)  # the hull's scatterers stand out
    assert 0.2 < sea.std() / sea.mean() < 1.5  # speckle: a strongly fluctuating, not flat, background


def test_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path):
    root = tmp_path / "sar"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_sar_scenes(root, num_train=1, num_test=1)
    assert (root / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="num_train=0, num_test=0"):
        generate_sar_scenes(tmp_path / "none", num_train=0, num_test=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sar"]  # no temporary folder left


def test_datamodule_generates_its_scenes_once(tmp_path):
    dm = SyntheticSARDataModule(tmp_path / "gen", num_train=4, num_test=3, calib_size=2, size=128, imgsz=128)
    dm.setup()
    stamp = (tmp_path / "gen" / "annotations" / "test2017.json").stat().st_mtime_ns
    again = SyntheticSARDataModule(tmp_path / "gen", num_train=4, num_test=3, calib_size=2, size=128, imgsz=128)
    again.setup()
    assert (tmp_path / "gen" / "annotations" / "test2017.json").stat().st_mtime_ns == stamp
    assert again.eval_files == dm.eval_files and len(dm.calibration_files) == 2
    assert "synthetic SAR" in dm.source
