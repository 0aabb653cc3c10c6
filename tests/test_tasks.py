"""ClassificationTask through a real Lightning Trainer on CPU, checked against a manual count."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hqbench.models import ModelCard
from hqbench.tasks.classification import ClassificationTask

CLASSES = 10
CARD = ModelCard("tiny_cnn", input_size=8, resize=8, mean=(0.5,) * 3, std=(0.5,) * 3,
                 num_classes=CLASSES)


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, CLASSES))


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kwargs)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    # 37 images in batches of 8: the last batch is short, so a per-batch mean would be wrong.
    x, y = torch.randn(37, 3, 8, 8, generator=g), torch.randint(0, CLASSES, (37,), generator=g)
    return x, y, DataLoader(TensorDataset(x, y), batch_size=8)


def _manual(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = model.eval()(x)
    top1 = (logits.argmax(1) == y).float().mean().item()
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean().item()
    return top1, top5


def test_test_and_validate_match_manual(data):
    x, y, loader = data
    torch.manual_seed(0)
    task = ClassificationTask(_tiny_cnn(), CARD)
    top1, top5 = _manual(task.model, x, y)
    (test,) = _trainer().test(task, dataloaders=loader)
    assert test["test/top1"] == pytest.approx(top1, abs=1e-6)
    assert test["test/top5"] == pytest.approx(top5, abs=1e-6)
    assert 0.0 <= top1 <= top5 <= 1.0  # logged as fractions, not percent
    (val,) = _trainer().validate(task, dataloaders=loader)
    assert val == {"val/top1": test["test/top1"], "val/top5": test["test/top5"]}


def test_predict_returns_logits(data):
    x, _, loader = data
    task = ClassificationTask(_tiny_cnn(), CARD)
    logits = torch.cat(_trainer().predict(task, dataloaders=loader))
    with torch.no_grad():
        torch.testing.assert_close(logits, task.model.eval()(x))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fit_updates_weights(data, optimizer):
    _, _, loader = data
    task = ClassificationTask(_tiny_cnn(), CARD, lr=0.1, optimizer=optimizer)
    before = task.model[-1].weight.detach().clone()
    _trainer(max_epochs=1, limit_train_batches=2).fit(task, train_dataloaders=loader)
    assert not torch.equal(before, task.model[-1].weight)


def test_checkpoint_keys_are_model_prefixed():
    # create_model reads Lightning checkpoints by stripping "model."; metric state must not leak in.
    task = ClassificationTask(_tiny_cnn(), CARD)
    assert task.state_dict() and all(k.startswith("model.") for k in task.state_dict())


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; valid: sgd, adamw"):
        ClassificationTask(_tiny_cnn(), CARD, optimizer="lbfgs")
