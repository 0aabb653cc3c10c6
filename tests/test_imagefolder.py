"""Issue 32, item 4: a user's 10-class ImageFolder (no LOC_synset_mapping.txt) with a torchvision model
fine-tuned to 10 classes runs `hqbench test` end to end; a model whose outputs do not match the
classes is one line naming the model and both numbers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import models as tvm

from hqbench.cli import main
from hqbench.data.images import read_image
from hqbench.data.transforms import build_transform
from hqbench.models import ModelCard, create_model
from hqbench.reporting import read_results
from hqbench.tasks.classification import ClassificationTask

# Class names whose sorted order (the class index) differs from the order they are listed in.
NAMES = ["zebra", "apple", "mango", "kiwi", "fig", "date", "lime", "pear", "plum", "yam"]
CLASSES = sorted(NAMES)


@pytest.fixture(scope="module")
def resnet10(tmp_path_factory) -> Path:
    """A resnet18 with a 10-class head (seeded random weights), saved as a torchvision state dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_10.pt"
    torch.save(tvm.resnet18(weights=None, num_classes=10).state_dict(), path)
    return path


def _noise(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def _imagefolder(root: Path, weights: Path, correct: int) -> Path:
    """train/<name>/ one image per class; val/: 10 images, the first ``correct`` filed under the class
    the model predicts for them (so FP32 Top-1 is exactly correct/10), the others under another one."""
    for i, name in enumerate(NAMES):
        _noise(root / "train" / name / "t.png", 100 + i)
    model, card = create_model("torchvision:resnet18", weights=str(weights))
    transform = build_transform(card)
    for i in range(10):
        image = _noise(root / "staging" / f"v{i}.png", i)
        with torch.no_grad():
            predicted = int(model(transform(read_image(image, "RGB"))[None]).argmax())
        label = predicted if i < correct else (predicted + 1) % 10
        (root / "val" / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        image.rename(root / "val" / CLASSES[label] / image.name)
    (root / "staging").rmdir()
    return root


def test_torchvision_state_dict_with_a_10_class_head_builds_a_10_class_model(resnet10):
    model, card = create_model("torchvision:resnet18", weights=str(resnet10))
    assert card.num_classes == 10 and model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    assert torch.equal(model.fc.weight, torch.load(resnet10)["fc.weight"])


def test_a_state_dict_of_another_architecture_is_one_line(tmp_path):
    state = tvm.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a greyscale stem
    torch.save(state, tmp_path / "grey.pt")
    with pytest.raises(ValueError, match=r"does not fit the architecture; tensors of another shape: conv1.weight"):
        create_model("torchvision:resnet18", weights=str(tmp_path / "grey.pt"))


def test_imagefolder_with_a_10_class_torchvision_model_end_to_end(tmp_path, resnet10, capsys):
    root = _imagefolder(tmp_path / "fruit", resnet10, correct=7)
    out = tmp_path / "rows.json"
    code = main(["test", "task=classification", "model=torchvision:resnet18", f"model.weights={resnet10}",
                 "data=imagefolder", f"data.root={root}", "data.calib_size=4", "data.num_workers=0",
                 "method=fp32,B", f"out={out}"])
    assert code == 0, capsys.readouterr().out
    rows = {r.method: r for r in read_results(out)}
    assert rows["fp32"].value == pytest.approx(70.0) and rows["fp32"].n_eval == 10
    assert rows["B"].n_calib == 4 and 0.0 <= rows["B"].value <= 100.0


def test_a_1000_class_model_on_10_folders_is_one_line(tmp_path, resnet10, capsys):
    root = _imagefolder(tmp_path / "fruit", resnet10, correct=10)
    assert main(["test", "model=torchvision:resnet18", "model.weights=random", "data=imagefolder",
                 f"data.root={root}", "data.calib_size=2", "method=fp32"]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'torchvision:resnet18' has 1000 classes" in errors[0]
    assert f"class folders of {root / 'train'} lists 10" in errors[0]


def test_data_num_classes_sets_what_the_model_must_output(tmp_path, resnet10, capsys):
    root = _imagefolder(tmp_path / "fruit", resnet10, correct=10)
    twelve = tmp_path / "resnet18_12.pt"
    torch.save(tvm.resnet18(weights=None, num_classes=12).state_dict(), twelve)
    common = ["test", "model=torchvision:resnet18", "data=imagefolder", f"data.root={root}", "data.calib_size=2",
              "data.num_workers=0", "method=fp32"]
    out = [f"out={tmp_path / f'rows{i}.json'}" for i in range(3)]
    assert main([*common, out[0], f"model.weights={twelve}", "data.num_classes=12"]) == 0, capsys.readouterr().out
    assert main([*common, out[1], f"model.weights={twelve}"]) == 1
    assert "has 12 classes but the class folders of" in capsys.readouterr().out
    assert main([*common, out[2], f"model.weights={resnet10}", "data.num_classes=5"]) == 1
    assert "data.num_classes=5 but the class folders of" in capsys.readouterr().out


class _Seven(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :7]


def test_the_task_checks_the_model_outputs_against_the_classes():
    """A card that says 10 classes on a model that returns 7 logits: one line, not torchmetrics' shape error."""
    card = ModelCard("seven", input_size=4, resize=4, mean=(0.5,), std=(0.5,), num_classes=10, channels=1)
    loader = DataLoader(TensorDataset(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 9])), batch_size=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"^model 'seven' outputs 7 classes per image but the data has 10$"):
        trainer.test(ClassificationTask(_Seven(), card), dataloaders=loader, verbose=False)
