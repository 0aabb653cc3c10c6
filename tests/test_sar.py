"""SAR ship data (HRSID layout), DetectionTask's NMS and mAP plumbing, and layout errors."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.ops import box_convert

from hqbench.cli import main
from hqbench.data.sar import PAD_VALUE, SARShipDataModule, write_yolo_dataset
from hqbench.tasks.detection import DetectionTask, head_scope, nms
from hqbench.reporting import pairwise_table, read_results

# Synthetic images: (file, size, COCO boxes xywh), deliberately not square.
SYNTHETIC = {
    "train2017": [("a.jpg", (300, 200), [[20, 30, 40, 20], [200, 100, 30, 60]]),
                  ("b.jpg", (180, 260), [[10, 10, 50, 50]]), ("c.jpg", (256, 256), [[100, 120, 12, 8]])],
    "test2017": [("d.jpg", (320, 180), [[40, 50, 60, 30], [250, 20, 20, 40]]),
                 ("e.jpg", (150, 300), [[30, 200, 40, 60]]), ("f.jpg", (200, 200), [[0, 0, 200, 200]])],
}


def _make_layout(root: Path, splits: dict = SYNTHETIC) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "annotations").mkdir()
    image_id = ann_id = 0
    for split, images in splits.items():
        coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "ship"}]}
        for name, (w, h), boxes in images:
            image_id += 1
            Image.new("RGB", (w, h), (20, 20, 20)).save(root / "JPEGImages" / name)
            coco["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
            for box in boxes:
                ann_id += 1
                coco["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": box,
                                            "area": box[2] * box[3], "iscrowd": 0})
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return root


@pytest.fixture
def sar_root() -> Path:
    root = Path(os.environ.get("HQBENCH_DATA", ".")) / "sar-ships"
    if not os.environ.get("HQBENCH_DATA") or not (root / "annotations" / "test2017.json").is_file():
        pytest.skip("HQBENCH_DATA is unset or holds no sar-ships/: real-data test not run")
    return root


class _Oracle(nn.Module):
    """Returns the ground truth of each coming batch as YOLO-layout predictions (score 1)."""

    def __init__(self, loader):
        super().__init__()
        self.queue = []
        for _, targets in loader:
            k = max(len(t["boxes"]) for t in targets)
            out = torch.zeros(len(targets), 5, k)
            for i, t in enumerate(targets):
                out[i, :4, : len(t["boxes"])] = box_convert(t["boxes"], "xyxy", "cxcywh").T
                out[i, 4, : len(t["boxes"])] = 1.0
            self.queue.append(out)

    def forward(self, x):
        return self.queue.pop(0), {}  # ultralytics' eval layout: (predictions, raw head outputs)


def _oracle_map(dm: SARShipDataModule) -> dict:
    task = DetectionTask(_Oracle(dm.test_dataloader()))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    return trainer.test(task, datamodule=dm, verbose=False)[0]


def test_ground_truth_as_predictions_gives_map_1(tmp_path):
    dm = SARShipDataModule(_make_layout(tmp_path / "sar"), imgsz=128, batch_size=2, calib_size=2)
    result = _oracle_map(dm)
    assert result["test/mAP50"] == pytest.approx(1.0) and result["test/mAP50_95"] == pytest.approx(1.0)


@pytest.mark.realdata
def test_ground_truth_as_predictions_on_shared_images(sar_root):
    result = _oracle_map(SARShipDataModule(sar_root, eval_limit=6, batch_size=3, calib_size=2))
    assert result["test/mAP50"] == pytest.approx(1.0) and result["test/mAP50_95"] == pytest.approx(1.0)


@pytest.mark.realdata
def test_datamodule_on_shared_images(sar_root):
    dm = SARShipDataModule(sar_root, eval_limit=5, calib_size=4, batch_size=2, imgsz=512)
    dm.setup()
    assert dm.classes == ["ship"] and len(dm.eval_files) == 5 and len(dm.calibration_files) == 4
    assert dm.eval_files[0].name == "000005.jpg"
    train = json.loads((sar_root / "annotations" / "train2017.json").read_text())
    assert {p.name for p in dm.calibration_files} <= {im["file_name"] for im in train["images"]}
    again = SARShipDataModule(sar_root, calib_size=4, seed=0)
    other = SARShipDataModule(sar_root, calib_size=4, seed=1)
    assert again.calibration_files == dm.calibration_files != other.calibration_files
    images, targets = next(iter(dm.test_dataloader()))
    assert images.shape == (2, 3, 512, 512) and 0 <= images.min() and images.max() <= 1
    assert len(targets) == 2 and all((t["labels"] == 0).all() for t in targets)
    # 000005.jpg is 420x317 with one ship at xywh (167, 166, 64, 38): scale 512/420, centred vertically.
    scale = 512 / 420
    pad_y = (512 - round(317 * scale)) // 2
    expected = torch.tensor([[167 * scale, 166 * scale + pad_y, 231 * scale, 204 * scale + pad_y]])
    torch.testing.assert_close(targets[0]["boxes"], expected)
    torch.testing.assert_close(images[0, :, 0, 0], torch.full((3,), PAD_VALUE / 255))  # letterbox padding
    calib_images, _ = next(iter(dm.calibration_dataloader()))
    assert calib_images.shape == (2, 3, 512, 512)


def test_letterbox_targets_stay_inside_the_square(tmp_path):
    dm = SARShipDataModule(_make_layout(tmp_path / "sar"), imgsz=96, batch_size=3, calib_size=3)
    for images, targets in dm.test_dataloader():
        assert images.shape[1:] == (3, 96, 96)
        for t in targets:
            assert (t["boxes"] >= 0).all() and (t["boxes"] <= 96 + 1e-4).all()
    # f.jpg's box is the whole (square) image: it becomes the whole letterboxed square.
    torch.testing.assert_close(targets[-1]["boxes"], torch.tensor([[0.0, 0.0, 96.0, 96.0]]))


def test_nms_keeps_the_best_of_overlapping_boxes():
    preds = torch.tensor([[[50.0, 51.0, 10.0], [50.0, 50.0, 10.0], [20.0, 20.0, 4.0], [20.0, 20.0, 4.0],
                           [0.9, 0.8, 0.0005]]])  # two overlapping boxes and one below conf_thres
    (det,) = nms(preds)
    assert det["scores"].tolist() == pytest.approx([0.9]) and det["labels"].tolist() == [0]
    torch.testing.assert_close(det["boxes"], torch.tensor([[40.0, 40.0, 60.0, 60.0]]))


def test_head_scope_names_the_detect_layer():
    from hqbench.models.yolo import build_yolov3_tiny

    assert DetectionTask(build_yolov3_tiny(nc=1)).float_scopes == ("model.model.20",)
    with pytest.raises(ValueError, match="cannot find the detection head of Linear"):
        head_scope(nn.Linear(2, 2))


def test_write_yolo_dataset_mirrors_outside_the_root(tmp_path):
    root = _make_layout(tmp_path / "sar")
    yaml = write_yolo_dataset(root, tmp_path / "yolo")
    assert "train: images/train" in yaml.read_text() and "0: ship" in yaml.read_text()
    assert (tmp_path / "yolo" / "images" / "test" / "d.jpg").resolve() == (root / "JPEGImages" / "d.jpg").resolve()
    lines = (tmp_path / "yolo" / "labels" / "test" / "d.txt").read_text().split("\n")
    assert lines[0] == "0 0.218750 0.361111 0.187500 0.166667"  # (40 + 30) / 320, (50 + 15) / 180, 60/320, 30/180
    with pytest.raises(ValueError, match="inside the data root"):
        write_yolo_dataset(root, root / "labels")


# ------------------------------------------------------------------ errors on a bad layout
def _broken(tmp_path: Path, edit) -> Path:
    root = _make_layout(tmp_path / "sar")
    path = root / "annotations" / "test2017.json"
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    return root


def _first_batch(root: Path, **kwargs):
    return next(iter(SARShipDataModule(root, imgsz=64, **kwargs).test_dataloader()))


def test_missing_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"SAR data root {tmp_path / 'nope'} does not exist"):
        _first_batch(tmp_path / "nope")


def test_missing_annotation_file_names_path_and_layout(tmp_path):
    root = _make_layout(tmp_path / "sar")
    (root / "annotations" / "test2017.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"test2017.json does not exist; expected the HRSID layout"):
        _first_batch(root)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("categories"), r"has no list 'categories'; a COCO file needs images, annotations, categories"),
    (lambda c: c["annotations"][0].pop("bbox"), r"annotations\[0\] lacks \['bbox'\]"),
    (lambda c: c["images"][0].pop("file_name"), r"images\[0\] lacks \['file_name'\]"),
    (lambda c: c["annotations"][0].update(category_id=7), r"has category_id 7; categories are \[1\]"),
    (lambda c: c["annotations"][0].update(image_id=999), r"names unknown image_id 999"),
])
def test_bad_json_names_the_key(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        _first_batch(_broken(tmp_path, edit))


def test_missing_image_is_named(tmp_path):
    root = _make_layout(tmp_path / "sar")
    (root / "JPEGImages" / "e.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"e.jpg, listed in .*test2017.json, does not exist"):
        _first_batch(root)


def test_bad_sizes_are_rejected(tmp_path):
    root = _make_layout(tmp_path / "sar")
    with pytest.raises(ValueError, match="calib_size=10 but .*train2017.json lists only 3 images"):
        SARShipDataModule(root, calib_size=10).setup()
    with pytest.raises(ValueError, match="eval_limit must be a positive integer"):
        SARShipDataModule(root, eval_limit=0)


def test_trained_detector_finds_ships_in_fp32_and_int8(sar_root, tmp_path):
    """The committed SSDD checkpoint through `hqbench test task=detection` on 16 shared test images."""
    out = tmp_path / "sar.json"
    assert main(["test", "task=detection", f"data.root={sar_root}", "data.eval_limit=16", "data.calib_size=8",
                 "method=fp32,pytorch,D", f"out={out}"]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert rows["fp32"]["value"] > 70 and rows["D"]["value"] > 60 and rows["pytorch"]["act_range"] == "0..127"
    # mAP50 recomputed from each image's matches is the row's torchmetrics value, and the rows'
    # replicates on shared resamples give a paired bootstrap test between methods.
    for r in rows.values():
        assert r["bootstrap"]["observed"] == pytest.approx(r["value"], abs=1e-4) and r["bootstrap"]["n"] == 16
    pairs = pairwise_table(read_results(out))
    assert [(p["a"], p["b"], p["test"], p["n"]) for p in pairs] == [("pytorch", "D", "paired bootstrap", 16)]
    assert 0 < pairs[0]["p"] <= 1


# ------------------------------------------------------------------ every annotation entry is checked on load
def _box(value):
    return lambda c: c["annotations"][0].update(bbox=value)


@pytest.mark.parametrize("edit, message", [
    (_box([300, 50, 60, 30]), r"annotations\[0\] \(id 5\) has bbox \[300, 50, 60, 30\], outside its 320x180"),
    (_box([-20, 50, 60, 30]), r"annotations\[0\] \(id 5\) has bbox \[-20, 50, 60, 30\], outside"),
    (_box([40, 50, -60, 30]), r"has bbox \[40, 50, -60, 30\]: width and height must be positive"),
    (_box([40, 50, 60, 0]), r"has bbox \[40, 50, 60, 0\]: width and height must be positive"),
    (_box([40, float("nan"), 60, 30]), r"has bbox \[40, nan, 60, 30\]; expected \[x, y, width, height\], four"),
    (_box([40, 50, float("inf"), 30]), r"has bbox \[40, 50, inf, 30\]; expected"),
    (_box([40, "50", 60, 30]), r"has bbox \[40, '50', 60, 30\]; expected"),
    (_box([40, 50, 60]), r"has bbox \[40, 50, 60\]; expected"),
    (_box(None), r"has bbox None; expected"),
    (lambda c: c["annotations"][0].update(iscrowd="yes"), r"annotations\[0\] \(id 5\) has iscrowd 'yes'"),
    (lambda c: c["annotations"][0].pop("image_id"), r"annotations\[0\] lacks \['image_id'\]"),
    (lambda c: c["annotations"][0].update(image_id="4"), r"annotations\[0\] \(id 5\) names unknown image_id '4'"),
    (lambda c: c["images"][1].update(id=4), r"images\[1\] repeats id 4"),
    (lambda c: c["images"][0].update(id="4"), r"images\[0\] has id '4'; ids are integers"),
    (lambda c: c["images"][0].update(width="wide"), r"images\[0\] \(id 4\) has width/height \('wide', 180\)"),
    (lambda c: c["images"][0].update(file_name="../../etc/passwd"),
     r"images\[0\] \(id 4\) has file_name '../../etc/passwd'"),
    (lambda c: c["annotations"].__setitem__(0, 7), r"annotations\[0\] is 7, not an object"),
    (lambda c: c["images"][0].update(file_name="gone.jpg"),
     r"gone.jpg, listed in .*test2017.json, does not exist \(images\[0\], id 4\)"),
])
def test_bad_annotation_names_file_entry_and_value(tmp_path, edit, message):
    """A ValueError naming test2017.json, the first bad entry (index, id) and its value; NaN and
    inf arrive through JSON's NaN/Infinity literals, which Python's json accepts."""
    pattern = message if "listed in" in message else r"test2017.json.*" + message
    with pytest.raises(ValueError, match=pattern):
        SARShipDataModule(_broken(tmp_path, edit), imgsz=64).setup()


def test_box_sizes_come_from_the_image_when_the_entry_has_none(tmp_path):
    def edit(c):
        for im in c["images"]:
            im.pop("width"), im.pop("height")
        c["annotations"][0]["bbox"] = [300, 50, 60, 30]  # d.jpg is 320x180 on disk
    with pytest.raises(ValueError, match=r"outside its 320x180 image"):
        SARShipDataModule(_broken(tmp_path, edit), imgsz=64).setup()


def test_a_box_on_the_edge_is_accepted(tmp_path):
    """Labelling tools may pass the edge by a rounding pixel: d.jpg is 320x180, the box ends at 320.5, 180.5."""
    root = _broken(tmp_path, _box([260, 150, 60.5, 30.5]))
    SARShipDataModule(root, imgsz=64, calib_size=1).setup()


@pytest.mark.parametrize("limit", [None, 1])
def test_test_split_without_boxes_is_an_error_not_a_sentinel(tmp_path, limit):
    """No boxes to find makes mAP undefined (torchmetrics' -1, printed -100.00): refuse, naming the file."""
    def edit(c):  # none at all, or (limit 1) none among the evaluated images: d.jpg keeps none
        c["annotations"] = [] if limit is None else [a for a in c["annotations"] if a["image_id"] != 4]
    root = _broken(tmp_path, edit)
    with pytest.raises(ValueError, match=r"test2017.json hold no \(non-crowd\) boxes, so mAP50 is undefined"):
        SARShipDataModule(root, imgsz=64, eval_limit=limit, calib_size=1).setup()


def test_only_crowd_boxes_count_as_none(tmp_path):
    root = _broken(tmp_path, lambda c: [a.update(iscrowd=1) for a in c["annotations"]])
    with pytest.raises(ValueError, match="hold no"):
        _first_batch(root, calib_size=1)


def test_damaged_sar_image_is_named(tmp_path):
    root = _make_layout(tmp_path / "sar")
    bad = root / "JPEGImages" / "d.jpg"
    Image.effect_noise((320, 180), 60).convert("RGB").save(bad)
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(ValueError, match=rf"image {bad} is damaged or truncated"):
        _first_batch(root, calib_size=1)


@pytest.mark.skipif(any(importlib.util.find_spec(m) for m in ("pi_heif", "pillow_heif")),
                    reason="a HEIF plugin is installed here, so no plugin is missing")
def test_image_needing_a_missing_plugin_says_what_to_install(tmp_path, no_network):
    """HEIC is read only through an optional plugin (pillow-heif, or pi-heif, which ultralytics' patched
    Image.open tries to import once ultralytics is loaded); neither is installed here."""
    def edit(c):
        c["images"][0]["file_name"] = "d.heic"
    root = _broken(tmp_path, edit)
    (root / "JPEGImages" / "d.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    with pytest.raises(ValueError, match=r"d.heic: Pillow cannot read .heic files here; it needs the optional pi-heif"):
        _first_batch(root, calib_size=1)
    assert no_network == []  # ultralytics' hook must not try to fetch the plugin


def test_missing_codec_is_named(tmp_path, monkeypatch):
    """A format Pillow knows but whose codec this build lacks ("decoder jpeg2k not available")."""
    root = _make_layout(tmp_path / "sar")

    def no_codec(self):
        raise OSError("decoder jpeg2k not available")
    monkeypatch.setattr(Image.Image, "load", no_codec)
    with pytest.raises(ValueError, match=r"d.jpg: this Pillow lacks an optional codec \(decoder jpeg2k not"):
        _first_batch(root, calib_size=1)
