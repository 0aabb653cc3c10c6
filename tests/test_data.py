"""ImageNetDataModule on a tiny fake tree; a real-data check behind HQBENCH_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from hqbench.data.imagenet import MAPPING_FILE, ImageNetDataModule
from hqbench.data.transforms import build_transform
from hqbench.models import ModelCard

# Mapping order deliberately differs from sorted folder order: index i is wnid n{999 - i}.
WNIDS = [f"n{999 - i:08d}" for i in range(1000)]
CARD = ModelCard("tiny", input_size=8, resize=10, mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=1000)
TRAIN = {"n00000000": 3, "n00000005": 3, "n00000500": 3, "n00000999": 3}
VAL = {"n00000999": 2, "n00000005": 3}


def _write_images(split: Path, counts: dict[str, int]) -> None:
    for wnid, n in counts.items():
        (split / wnid).mkdir(parents=True)
        for j in range(n):
            mode = "L" if j == 0 else "RGB"  # ImageNet has greyscale JPEGs; they must come out RGB
            Image.new(mode, (14, 11), 100 + j).save(split / wnid / f"{wnid}_{j}.JPEG")


def _dm(root: Path, **kwargs) -> ImageNetDataModule:
    kwargs.setdefault("calib_size", 4)  # the fake train/ holds 12 images; 256 would be refused
    return ImageNetDataModule(root, **kwargs)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    root.mkdir()
    lines = [f"{w} made-up class {i}\n" for i, w in enumerate(WNIDS)]
    (root / MAPPING_FILE).write_text("".join(lines))
    _write_images(root / "train", TRAIN)
    _write_images(root / "val", VAL)
    return root


def test_labels_come_from_mapping_not_folders(fake_root):
    dm = _dm(fake_root, card=CARD, batch_size=4)
    dm.setup("test")
    assert dm.classes == WNIDS
    assert len(dm.eval_files) == 5 and dm.eval_files == sorted(dm.eval_files)
    labels = torch.cat([y for _, y in dm.test_dataloader()])
    assert labels.tolist() == [WNIDS.index(p.parent.name) for p in dm.eval_files]
    assert labels.tolist() == [994] * 3 + [0] * 2


def test_batches_follow_the_card(fake_root):
    dm = _dm(fake_root, batch_size=4)
    dm.set_card(CARD)
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 8, 8) and labels.shape == (4,)
    grey = ModelCard("g", input_size=6, resize=7, mean=(0.5,), std=(0.5,), num_classes=10,
                     channels=1)
    assert build_transform(grey)(Image.new("RGB", (9, 9))).shape == (1, 6, 6)


def test_calibration_is_seeded(fake_root):
    def files(seed):
        return _dm(fake_root, calib_size=5, seed=seed).calibration_files

    chosen = files(0)
    assert chosen == files(0) and chosen != files(1)
    assert len(chosen) == len(set(chosen)) == 5
    assert all(p.parent.parent == fake_root / "train" for p in chosen)


def test_calibration_loader_order_and_labels(fake_root):
    dm = _dm(fake_root, card=CARD, batch_size=2, calib_size=5, seed=3)
    batches = list(dm.calibration_dataloader())
    labels = torch.cat([y for _, y in batches])
    assert [len(y) for _, y in batches] == [2, 2, 1]
    assert labels.tolist() == [WNIDS.index(p.parent.name) for p in dm.calibration_files]


def test_eval_limit_takes_first_sorted(fake_root):
    full = _dm(fake_root).eval_files
    assert _dm(fake_root, eval_limit=2).eval_files == full[:2]
    with pytest.raises(ValueError, match="eval_limit"):
        _dm(fake_root, eval_limit=0)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        _dm(tmp_path / "absent").setup()


def test_missing_mapping_takes_classes_from_train_folders(fake_root):
    """Issue 32, item 4: without the mapping file, classes are train/'s folders, sorted (ImageFolder's order)."""
    (fake_root / MAPPING_FILE).unlink()
    dm = _dm(fake_root)
    dm.setup()
    assert dm.classes == sorted(TRAIN) and dm.num_classes == 4
    assert [label for _, label in dm._eval_samples()] == [1] * 3 + [3] * 2  # n00000005, n00000999


def test_folder_not_in_mapping(fake_root):
    (fake_root / "val" / "n12345678").mkdir()
    with pytest.raises(ValueError, match=r"n12345678.*not a wnid listed in"):
        _dm(fake_root).setup()


def test_empty_train(fake_root):
    for img in (fake_root / "train").rglob("*.JPEG"):
        img.unlink()
    with pytest.raises(ValueError, match=f"no images .* under {fake_root / 'train'}"):
        _dm(fake_root).setup()


def test_calib_size_larger_than_pool(fake_root):
    with pytest.raises(ValueError, match="calib_size=100 but .* holds only 12 images"):
        _dm(fake_root, calib_size=100).setup()


def test_loader_needs_matching_card(fake_root):
    dm = _dm(fake_root)
    with pytest.raises(RuntimeError, match="set_card"):
        dm.test_dataloader()
    dm.set_card(ModelCard("ten", 8, 10, (0.5,) * 3, (0.5,) * 3, num_classes=10))
    with pytest.raises(ValueError, match="10 classes but .* lists 1000"):
        dm.test_dataloader()


@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("HQBENCH_DATA"),
                    reason="HQBENCH_DATA is not set (needs a folder holding imagenet/)")
def test_real_imagenet_first_val_batch():
    root = Path(os.environ["HQBENCH_DATA"]) / "imagenet"
    card = ModelCard("mobilenet_v2", 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1000)
    dm = ImageNetDataModule(root, card=card, batch_size=8, eval_limit=8, calib_size=16)
    dm.setup("test")
    assert len(dm.classes) == 1000
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (8, 3, 224, 224) and images.dtype == torch.float32
    assert labels.tolist() == [dm.classes.index(p.parent.name) for p in dm.eval_files]
    assert dm.calibration_files == ImageNetDataModule(root, calib_size=16).calibration_files


# ------------------------------------------------------------------ bad data.* values and bad image files
@pytest.mark.parametrize("key, value", [
    ("calib_size", 0), ("calib_size", -1), ("calib_size", "abc"), ("calib_size", 2.5), ("calib_size", True),
    ("eval_limit", 0), ("eval_limit", -1), ("eval_limit", "abc"),
    ("batch_size", 0), ("batch_size", -3), ("batch_size", "abc"),
])
@pytest.mark.parametrize("module", ["imagenet", "sar", "fashion_mnist"])
def test_bad_size_keys_name_the_key_and_what_is_valid(tmp_path, module, key, value):
    """Checked when the datamodule is built (Hydra passes ``abc`` through as a string): one line
    naming ``data.<key>``, the value, and what is valid; nothing is read from disk first."""
    from hqbench.data.fashion_mnist import FashionMNISTDataModule
    from hqbench.data.sar import SARShipDataModule

    cls = {"imagenet": ImageNetDataModule, "sar": SARShipDataModule, "fashion_mnist": FashionMNISTDataModule}[module]
    with pytest.raises(ValueError) as info:
        cls(tmp_path / "absent", **{key: value})
    message = str(info.value)
    assert message.startswith(f"data.{key} must be a positive integer") and repr(value) in message
    assert ("or null for all" in message) == (key == "eval_limit") and "\n" not in message


def test_negative_num_workers_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"data.num_workers must be 0 .* got -1"):
        ImageNetDataModule(tmp_path, num_workers=-1)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_is_named(fake_root):
    """PIL decodes lazily and says only 'image file is truncated'; the error must say which file."""
    bad = fake_root / "val" / "n00000005" / "n00000005_1.JPEG"
    Image.effect_noise((64, 64), 50).convert("RGB").save(bad)  # noise: a JPEG long enough to cut mid-scan
    _truncate(bad)
    loader = _dm(fake_root, card=CARD, batch_size=8).test_dataloader()
    with pytest.raises(ValueError, match=rf"image {bad} is damaged or truncated"):
        next(iter(loader))


def test_non_image_file_is_named(fake_root):
    bad = fake_root / "val" / "n00000999" / "n00000999_0.JPEG"
    bad.write_bytes(b"<html>not a jpeg</html>")
    with pytest.raises(ValueError, match=rf"image {bad} is not an image Pillow can identify"):
        next(iter(_dm(fake_root, card=CARD, batch_size=8).test_dataloader()))
