"""Issue 32, I07 and item 5: image sizes come from the files, never from what an annotation declares;
detection data from any COCO file pair or from ultralytics' data.yaml layout, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hqbench.cli import main
from hqbench.data.sar import SARShipDataModule, write_yolo_dataset
from hqbench.reporting import read_results
from tests.test_sar import SYNTHETIC, _make_layout, _oracle_map

SMALL = ["method=fp32", "data.calib_size=2", "data.batch_size=2"]


# ------------------------------------------------------------------ I07: declared sizes are checked
def test_declared_size_that_disagrees_with_the_file_is_an_error(tmp_path):
    """100000x100000 declared for a 420x317 file passed every box check and scored mAP50 0.00."""
    root = _make_layout(tmp_path / "sar", {"train2017": SYNTHETIC["train2017"],
                                          "test2017": [("g.jpg", (420, 317), [[10, 10, 50, 40]])]})
    ann = root / "annotations" / "test2017.json"
    coco = json.loads(ann.read_text())
    coco["images"][0].update(width=100000, height=100000)
    ann.write_text(json.dumps(coco))
    with pytest.raises(ValueError) as info:
        SARShipDataModule(root, imgsz=64, calib_size=1).setup()
    text = str(info.value)
    assert str(ann) in text and "g.jpg" in text and "100000x100000" in text and "420x317" in text and "\n" not in text


def test_declared_size_error_reaches_the_command_line_as_one_line(tmp_path, capsys):
    root = _make_layout(tmp_path / "sar")
    ann = root / "annotations" / "train2017.json"
    coco = json.loads(ann.read_text())
    coco["images"][1]["width"] = 181  # b.jpg is 180x260
    ann.write_text(json.dumps(coco))
    assert main(["test", "task=detection", "model=yolov3_tiny_sar", f"data.root={root}", *SMALL]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "declares b.jpg as 181x260" in errors[0] and "is 180x260" in errors[0]


def test_matching_declared_sizes_still_load(tmp_path):
    SARShipDataModule(_make_layout(tmp_path / "sar"), imgsz=64, calib_size=1).setup()


# ------------------------------------------------------------------ a COCO file pair, anywhere
def _coco_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """SYNTHETIC's two splits as my_train.json / my_test.json beside a pictures/ folder (no HRSID names)."""
    root = _make_layout(tmp_path / "hrsid")
    data = tmp_path / "mine"
    (data / "labels").mkdir(parents=True)
    (root / "JPEGImages").rename(data / "pictures")
    for split, name in (("train2017", "my_train"), ("test2017", "my_test")):
        (root / "annotations" / f"{split}.json").rename(data / "labels" / f"{name}.json")
    return data / "labels" / "my_train.json", data / "labels" / "my_test.json", data / "pictures"


def test_any_coco_file_pair_gives_the_hrsid_samples(tmp_path):
    hrsid = SARShipDataModule(_make_layout(tmp_path / "ref"), imgsz=128, batch_size=2, calib_size=2)
    train, test, images = _coco_pair(tmp_path)
    pair = SARShipDataModule(None, train=train, test=test, images=images, imgsz=128, batch_size=2, calib_size=2)
    pair.setup(), hrsid.setup()
    strip = lambda samples: [(s.path.name, s.boxes, s.labels) for s in samples]  # noqa: E731
    assert strip(pair._eval_samples()) == strip(hrsid._eval_samples())
    assert strip(pair._calib_samples()) == strip(hrsid._calib_samples()) and pair.classes == ["ship"]
    assert _oracle_map(pair)["test/mAP50"] == pytest.approx(1.0)


def test_coco_pair_images_default_to_the_jsons_folder(tmp_path):
    train, test, images = _coco_pair(tmp_path)
    for p in images.iterdir():
        p.rename(train.parent / p.name)
    dm = SARShipDataModule(None, train=train, test=test, imgsz=64, calib_size=1)
    assert [p.name for p in dm.eval_files] == ["d.jpg", "e.jpg", "f.jpg"]


def test_half_a_pair_or_a_pair_beside_a_root_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data.train and data.test name a COCO file pair; give both"):
        SARShipDataModule(None, train=tmp_path / "a.json")
    with pytest.raises(ValueError, match="data.root=/d and data.train/data.test are alternatives"):
        SARShipDataModule("/d", train=tmp_path / "a.json", test=tmp_path / "b.json")


def test_coco_pair_from_the_command_line(tmp_path, monkeypatch, capsys):
    """`data.train=... data.test=... data.images=...` wins over $HQBENCH_DATA, and the row names the test file."""
    monkeypatch.setenv("HQBENCH_DATA", str(tmp_path / "elsewhere"))
    train, test, images = _coco_pair(tmp_path)
    out = tmp_path / "rows.json"
    assert main(["test", "task=detection", "model=yolov3_tiny_sar", f"data.train={train}", f"data.test={test}",
                 f"data.images={images}", f"out={out}", *SMALL]) == 0, capsys.readouterr().out
    (row,) = read_results(out)
    assert row.n_eval == 3 and row.dataset.endswith("my_test.json") and 0.0 <= row.value <= 100.0


# ------------------------------------------------------------------ ultralytics' data.yaml
def test_data_yaml_reads_what_write_yolo_dataset_wrote(tmp_path):
    """HRSID -> ultralytics' layout -> back: the same images and boxes (to the labels' 6 decimals)."""
    root = _make_layout(tmp_path / "sar")
    yaml = write_yolo_dataset(root, tmp_path / "yolo")
    ref = SARShipDataModule(root, imgsz=128, batch_size=2, calib_size=2)
    dm = SARShipDataModule(yaml, imgsz=128, batch_size=2, calib_size=2)
    ref.setup(), dm.setup()
    assert [p.name for p in dm.eval_files] == [p.name for p in ref.eval_files] and dm.classes == ["ship"]
    for got, want in zip(dm._eval_samples(), ref._eval_samples()):
        assert got.labels == want.labels
        assert all(abs(a - b) < 0.01 for g, w in zip(got.boxes, want.boxes) for a, b in zip(g, w))
    assert _oracle_map(dm)["test/mAP50"] == pytest.approx(1.0)


def _yolo_tree(root: Path, yaml_text: str, labels: dict[str, str]) -> Path:
    """images/{train,val}/*.png (64x48) and labels/{train,val}/*.txt under ``root``, and its data.yaml."""
    for name, text in labels.items():
        image = root / "images" / f"{name}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (30, 30, 30)).save(image)
        if text is not None:
            label = root / "labels" / f"{name}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    (root / "data.yaml").write_text(yaml_text)
    return root / "data.yaml"


YAML = "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: ship\n  1: boat\n"
LABELS = {"train/a": "0 0.5 0.5 0.25 0.5\n", "train/b": None, "val/c": "1 0.25 0.25 0.5 0.5\n0 0.5 0.5 0.1 0.1\n",
          "val/d": "0 0.1 0.2 0.3 0.2 0.3 0.4\n", "val/e": "0 0.5 0.5 0.25 0.5\n0 0.5 0.5 0.25 0.5\n"}


def test_data_yaml_labels_become_pixel_boxes(tmp_path):
    dm = SARShipDataModule(_yolo_tree(tmp_path / "y", YAML, LABELS), imgsz=64, calib_size=2)
    dm.setup()
    samples = {s.path.stem: s for s in dm._eval_samples()}
    assert dm.classes == ["ship", "boat"] and sorted(samples) == ["c", "d", "e"]  # val: (no test: given)
    assert samples["c"].labels == (1, 0) and samples["c"].boxes[0] == (0.0, 0.0, 32.0, 24.0)
    x, y, w, h = samples["d"].boxes[0]  # a polygon (0.1,0.2) (0.3,0.2) (0.3,0.4): its extent
    assert (round(x, 4), round(y, 4), round(w, 4), round(h, 4)) == (6.4, 9.6, 12.8, 9.6)
    assert len(samples["e"].boxes) == 1  # a duplicate line is dropped, as ultralytics does
    assert sorted(p.stem for p in dm.train_files) == ["a", "b"]  # b has no label file: a background image


def test_data_yaml_test_split_wins_over_val(tmp_path):
    labels = {**LABELS, "test/f": "0 0.5 0.5 0.5 0.5\n"}
    dm = SARShipDataModule(_yolo_tree(tmp_path / "y", YAML + "test: images/test\n", labels), imgsz=64, calib_size=1)
    assert [p.stem for p in dm.eval_files] == ["f"]


@pytest.mark.parametrize("line, message", [
    ("2 0.5 0.5 0.1 0.1", r"line 1 has class 2; the data file names 2 classes"),
    ("0 0.5 0.5 1.5 0.1", r"line 1 has box 0.5 0.5 1.5 0.1; expected cx cy w h normalised"),
    ("0 0.5 0.5 0.1", r"line 1 is '0 0.5 0.5 0.1'; expected class cx cy w h"),
    ("ship 0.5 0.5 0.1 0.1", r"line 1 is 'ship 0.5 0.5 0.1 0.1'; expected numbers"),
])
def test_bad_label_line_names_file_and_line(tmp_path, line, message):
    yaml = _yolo_tree(tmp_path / "y", YAML, {**LABELS, "val/c": line + "\n"})
    with pytest.raises(ValueError, match=message) as info:
        SARShipDataModule(yaml, imgsz=64, calib_size=1).setup()
    assert "labels/val/c.txt" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("train: images/train\nnames: [ship]\n", r"has no 'val'"),
    ("train: images/train\nval: images/nope\nnames: [ship]\n", r"val: images/nope .* does not exist"),
    ("train: images/train\nval: images/val\n", r"has no names: and nc: None"),
    ("train: [unclosed\n", r"is not valid YAML"),
])
def test_bad_data_yaml_is_one_line_naming_it(tmp_path, text, message):
    yaml = _yolo_tree(tmp_path / "y", text, LABELS)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        SARShipDataModule(yaml, imgsz=64, calib_size=1).setup()
    assert str(yaml) in str(info.value) and "\n" not in str(info.value)


def test_data_yaml_from_the_command_line(tmp_path, capsys):
    one_class = f"path: {tmp_path / 'y'}\ntrain: images/train\nval: images/val\nnames: [ship]\n"  # the detector's one
    yaml = _yolo_tree(tmp_path / "y", one_class, {**LABELS, "val/c": "0 0.25 0.25 0.5 0.5\n"})
    out = tmp_path / "rows.json"
    assert main(["test", "task=detection", "model=yolov3_tiny_sar", f"data.root={yaml}", f"out={out}", *SMALL]) == 0, \
        capsys.readouterr().out
    (row,) = read_results(out)
    assert row.n_eval == 3 and row.dataset.endswith("data.yaml")
