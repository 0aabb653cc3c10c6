"""QuantTraining, without Lightning: gradients through the fake-quant, the trained state in the model's
own layout, and the finished model equal to the one that trained."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hqbench.quant import Recipe, prepare
from hqbench.quant.qat import QuantTraining

from .conftest import ResidualNet, make_dataset

W4A4 = Recipe(act_bits=4, weight_bits=4)


def _train(qmodel, training: QuantTraining, steps: int = 16) -> None:
    model = qmodel.model
    params = list({id(p): p for p in list(model.parameters()) + training.parameters}.values())
    opt = torch.optim.Adam(params, lr=1e-3)
    x, y = make_dataset(64 * steps, seed=1)
    model.train()
    for i in range(0, len(x), 64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
        opt.step()
    model.eval()


@pytest.fixture
def calibrated(trained_net):
    x, _ = make_dataset(256, seed=3)
    batches = [x[i:i + 64] for i in range(0, 256, 64)]
    return prepare(copy.deepcopy(trained_net[0]), (batches[0],), "D", W4A4).calibrate(batches), batches


def test_every_layer_and_every_scale_gets_a_gradient(calibrated):
    qmodel, batches = calibrated
    training = QuantTraining(qmodel)
    x, y = make_dataset(64, seed=1)
    nn.functional.cross_entropy(qmodel(x), y).backward()
    assert qmodel.model.stem[0].weight.grad.abs().sum() > 0  # through every rounding
    assert len(training.parameters) == 6 + len(qmodel.quantizers)  # weight and point scales (the convs have biases)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in training.parameters)


def test_the_finished_model_is_the_one_that_trained_and_reloads_from_the_float_layout(calibrated):
    qmodel, batches = calibrated
    training = QuantTraining(qmodel)
    _train(qmodel, training)
    xt, _ = make_dataset(128, seed=2)
    with torch.no_grad():
        while_training = qmodel(xt)
    weights, state = training.float_state_dict(), training.quant_state_dict()
    training.finish()
    with torch.no_grad():
        finished = qmodel(xt)
    torch.testing.assert_close(finished, while_training, rtol=0, atol=1e-5)  # int32 biases trained as used

    fresh = ResidualNet()
    fresh.load_state_dict(weights)  # strict: BN modules back, holding the trained bias
    reloaded = prepare(fresh.eval(), (batches[0],), "D", W4A4)
    reloaded.load_quant_state_dict(state)
    with torch.no_grad():
        assert torch.equal(reloaded(xt), finished)


def test_weight_side_methods_are_refused_rather_than_overwritten(trained_net):
    x, _ = make_dataset(64, seed=3)
    qmodel = prepare(copy.deepcopy(trained_net[0]), (x,), "B", Recipe(act_bits=4, bias_correction=True)).calibrate([x])
    with pytest.raises(ValueError, match="bias_correction"):
        QuantTraining(qmodel)
