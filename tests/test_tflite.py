"""Tests for the TFLite MobileNetV2 loader (hqbench.models.tflite)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from hqbench.models.tflite import build_mobilenet_v2_tflite

_WEIGHTS = "weights/tf2_mobilenet_v2_1.0_224_ptq.tflite"


def _data_root() -> Path:
    """Return $HQBENCH_DATA if it holds the TFLite file, else skip the test."""
    root = os.environ.get("HQBENCH_DATA")
    if not root:
        pytest.skip("HQBENCH_DATA is not set; it must point at a folder with " + _WEIGHTS)
    if not (Path(root) / _WEIGHTS).is_file():
        pytest.skip(f"{Path(root) / _WEIGHTS} not found")
    return Path(root)


def test_missing_file_raises_with_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tflite"
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        build_mobilenet_v2_tflite(missing)


def test_non_tflite_file_raises_value_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tflite"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="TFLite"):
        build_mobilenet_v2_tflite(bogus)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_model_shape_structure_and_accuracy() -> None:
    from PIL import Image
    from torchvision import transforms as T

    root = _data_root()
    torch.set_num_threads(2)
    model = build_mobilenet_v2_tflite(root / _WEIGHTS)

    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    traced = torch.fx.symbolic_trace(model)
    assert traced(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)

    val = root / "imagenet" / "val"
    if not val.is_dir():
        pytest.skip(f"{val} not found")
    # Class index = line number in LOC_synset_mapping.txt, not the order of folders present.
    mapping = root / "imagenet" / "LOC_synset_mapping.txt"
    wnid_to_idx = {line.split()[0]: i for i, line in enumerate(mapping.read_text().splitlines())}
    files = sorted(val.glob("*/*.JPEG"))[::50][:16]  # spread over many classes
    assert files, f"no JPEGs under {val}"
    pre = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize([0.5] * 3, [0.5] * 3)])
    x = torch.stack([pre(Image.open(f).convert("RGB")) for f in files])
    y = torch.tensor([wnid_to_idx[f.parent.name] for f in files])
    with torch.inference_mode():
        top1 = (model(x).argmax(1) == y).float().mean().item()
    assert top1 >= 0.5, f"top-1 {top1:.2%} on {len(files)} val images"
