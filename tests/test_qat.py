"""QATCallback inside Lightning: training through the fake-quant, its state in checkpoints, resuming,
testing from a checkpoint, fitting twice, and the Lightning features users combine it with."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from hqbench.callbacks import QATCallback, QuantizationCallback
from hqbench.methods import row_method
from hqbench.quant import Recipe
from hqbench.quant.model import QuantizedModel
from tests.quant.conftest import ResidualNet, make_dataset

W4A4 = Recipe(act_bits=4, weight_bits=4)


class Classifier(L.LightningModule):
    def __init__(self, net=None, lr: float = 1e-3, sgd: bool = False):
        super().__init__()
        self.model = net if net is not None else ResidualNet()
        self.lr, self.sgd = lr, sgd
        self.losses: list[float] = []
        self.correct = self.seen = 0

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def on_test_epoch_start(self):
        self.correct = self.seen = 0

    def test_step(self, batch, batch_idx):
        self.correct += int((self(batch[0]).argmax(1) == batch[1]).sum())
        self.seen += len(batch[1])

    @property
    def accuracy(self) -> float:
        return self.correct / self.seen

    def configure_optimizers(self):
        return (torch.optim.SGD if self.sgd else torch.optim.Adam)(self.parameters(), lr=self.lr)


def _loader(n: int, seed: int, batch_size: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(*make_dataset(n, seed)), batch_size=batch_size)


def _trainer(tmp_path=None, callbacks=(), **kwargs) -> L.Trainer:
    settings = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, enable_checkpointing=False, max_epochs=1)
    if tmp_path is not None:
        settings.update(enable_checkpointing=True, default_root_dir=tmp_path)
    return L.Trainer(callbacks=list(callbacks), **{**settings, **kwargs})


@pytest.fixture(scope="module")
def trained(request):
    from tests.quant.conftest import train_residual_net

    return train_residual_net()[0]


def _module(trained, lr=1e-3) -> Classifier:
    net = ResidualNet()
    net.load_state_dict(trained.state_dict())
    return Classifier(net.train(), lr=lr)


@pytest.fixture
def calibrations(monkeypatch) -> list:
    """Every QuantizedModel.calibrate call from here on."""
    calls, calibrate = [], QuantizedModel.calibrate

    def counted(self, *args, **kwargs):
        calls.append(row_method(self.method))
        return calibrate(self, *args, **kwargs)

    monkeypatch.setattr(QuantizedModel, "calibrate", counted)
    return calls


def test_qat_lifts_a_w4a4_cell_above_its_post_training_start_and_tests_without_recalibrating(trained, calibrations):
    test = _loader(512, seed=2)
    ptq_module = _module(trained)
    _trainer(callbacks=[QuantizationCallback("D", W4A4, calib_dataloader=_loader(256, 1))]).test(
        ptq_module, test, verbose=False)
    module = _module(trained)
    callback = QATCallback("D", W4A4, calib_dataloader=_loader(256, 1))
    trainer = _trainer(callbacks=[callback], max_epochs=2)
    trainer.fit(module, _loader(2048, seed=1))
    assert calibrations == ["D", "D"]  # the post-training cell's, and fit's start: nothing after training
    trainer.test(module, test, verbose=False)
    assert calibrations == ["D", "D"]
    assert callback.steps == 64
    # 512 test images: 4 points is about 4 standard errors of a paired difference here.
    assert module.accuracy > ptq_module.accuracy + 0.04, (ptq_module.accuracy, module.accuracy)
    # After fit the module holds the trained weights in its own layout (BN modules back, no hooks).
    assert isinstance(module.model.stem[1], torch.nn.BatchNorm2d)
    assert not any(m._forward_hooks for m in module.modules())


def test_checkpoint_holds_the_trained_state_and_resuming_continues_exactly(trained, tmp_path):
    train = _loader(1024, seed=1)
    straight = _module(trained)
    _trainer(callbacks=[QATCallback("B", W4A4, calib_dataloader=_loader(128, 1))], max_epochs=2).fit(straight, train)

    first = _module(trained)
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, [QATCallback("B", W4A4, calib_dataloader=_loader(128, 1)), saver], max_epochs=1).fit(first, train)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("QATCallback"))
    assert state["qat"]["steps"] == 16 and state["method"] == "minmax" and state["act_bits"] == 4
    assert set(state["learned_scales"]) == {n for n in ("stem.0", "expand.0", "project.0", "branch_a.0",
                                                                   "branch_b.0", "head")}
    fresh = Classifier(ResidualNet())
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: the model's own layout

    resumed = _module(trained)
    calibration = _loader(128, 1)
    _trainer(tmp_path, [QATCallback("B", W4A4, calib_dataloader=calibration)], max_epochs=2).fit(
        resumed, train, ckpt_path=tmp_path / "last.ckpt")
    assert len(resumed.losses) == 16
    assert resumed.losses == pytest.approx(straight.losses[16:], rel=1e-4, abs=1e-5)
    assert resumed.losses[0] == pytest.approx(straight.losses[16], rel=1e-5)


def test_test_from_a_checkpoint_needs_no_recalibration_and_matches_the_trained_model(trained, tmp_path, calibrations):
    test = _loader(256, seed=2)
    module = _module(trained)
    callback = QATCallback("D", W4A4, calib_dataloader=_loader(128, 1))
    trainer = _trainer(tmp_path, [callback, ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(module, _loader(512, seed=1))
    trainer.test(module, test, verbose=False)
    calibrations.clear()
    again = Classifier(ResidualNet())
    _trainer(callbacks=[QATCallback("D", W4A4, calib_dataloader=_loader(128, 1))]).test(
        again, test, ckpt_path=tmp_path / "last.ckpt", verbose=False)
    assert calibrations == []
    assert again.accuracy == module.accuracy


def test_fit_twice_continues_from_the_first_fits_state(trained, calibrations):
    module = _module(trained)
    callback = QATCallback("B", W4A4, calib_dataloader=_loader(128, 1))
    _trainer(callbacks=[callback]).fit(module, _loader(512, seed=1))
    after_first = {n: p["scale"].clone() for n, p in callback.state_dict()["points"].items()}
    first_losses = list(module.losses)
    _trainer(callbacks=[callback]).fit(module, _loader(512, seed=1))
    assert calibrations == ["B"]
    assert callback.steps == 8  # the second trainer counts its own steps
    second = callback.state_dict()["points"]
    assert any(not torch.equal(after_first[n], second[n]["scale"]) for n in second)
    assert module.losses[8] < first_losses[0]  # it started where the first fit ended, not from the float model


def test_fixed_scales_stay_as_calibrated_while_the_weights_train(trained):
    module = _module(trained)
    callback = QATCallback("B", W4A4, calib_dataloader=_loader(128, 1), learn_scales=False)
    before = module.model.head.weight.detach().clone()
    trainer = _trainer(callbacks=[callback])
    trainer.fit(module, _loader(256, seed=1))
    calibrated = QATCallback("B", W4A4, calib_dataloader=_loader(128, 1))
    _trainer(callbacks=[calibrated]).test(_module(trained), _loader(64, 2), verbose=False)
    for name, point in callback.state_dict()["points"].items():
        assert torch.equal(point["scale"], calibrated.state_dict()["points"][name]["scale"]), name
    assert not torch.equal(module.model.head.weight, before)


def test_gradient_clipping_and_accumulation_reach_the_new_parameters(trained):
    module = _module(trained, lr=1e-2)
    callback = QATCallback("D", W4A4, calib_dataloader=_loader(128, 1))
    _trainer(callbacks=[callback], gradient_clip_val=0.01, accumulate_grad_batches=2).fit(module, _loader(512, seed=1))
    assert callback.steps == 4
    start = QATCallback("D", W4A4, calib_dataloader=_loader(128, 1))
    _trainer(callbacks=[start]).test(_module(trained), _loader(64, 2), verbose=False)
    trained_scales = callback.state_dict()["points"]
    moved = [n for n, p in start.state_dict()["points"].items() if not torch.equal(p["scale"], trained_scales[n]["scale"])]
    assert len(moved) == len(trained_scales)  # every activation scale was in the optimizer


def test_distillation_from_the_float_model_trains_and_logs_its_loss(trained):
    module = _module(trained)
    logged = {}
    callback = QATCallback("D", W4A4, calib_dataloader=_loader(128, 1), distill=1.0, temperature=2.0)

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged[batch_idx] = (float(trainer.callback_metrics["train/distill_kl"]), float(outputs["loss"]))

    _trainer(callbacks=[callback, Spy()]).fit(module, _loader(512, seed=1))
    assert len(logged) == 8
    assert all(kl == pytest.approx(loss) for kl, loss in logged.values())  # distill=1: the loss is the KL alone
    assert logged[7][0] < logged[0][0]
    assert "training_step" not in module.__dict__  # the wrapped step is gone after fit
    assert set(callback.state_dict()["qat"]["teacher"]) == set(trained.state_dict())


@pytest.mark.parametrize("engine", ["int", "onnxruntime"])
def test_the_trained_model_runs_on_the_integer_engines_as_fake_quant_does(trained, engine):
    module = _module(trained)
    callback = QATCallback("D", W4A4, calib_dataloader=_loader(128, 1), engine=engine)
    trainer = _trainer(callbacks=[callback])
    trainer.fit(module, _loader(512, seed=1))
    trainer.test(module, _loader(256, seed=2), verbose=False)
    assert callback.agreement["top1_agree"] >= 95, callback.agreement


def test_settings_qat_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="AdaRound"):
        QATCallback("D", Recipe(act_bits=4, weight_rounding="adaround"))
    with pytest.raises(ValueError, match="distill"):
        QATCallback("D", distill=2.0)
    with pytest.raises(ValueError, match="pytorch"):
        QATCallback("pytorch")
    with pytest.raises(ValueError, match="recalibrates"):
        QATCallback("D", recalibrate=True)


def test_hqbench_train_qat_lifts_the_demos_w4a4_cell_and_its_weights_test_as_a_qat_row(tmp_path, no_data):
    from hqbench.cli import main
    from hqbench.config import compose
    from hqbench.runner import run
    from hqbench.tasks.qat_training import read_qat_state

    out = tmp_path / "qat.pt"
    train = ["train", "task=classification", "model=mobilenet_v2_fmnist", "method=D", "bits=w4a4", "train.qat=true",
             "train.epochs=2", "train.distill=true", "train.lr=0.0005", f"train.checkpoint={out}"]
    assert main(train) == 0
    record = read_qat_state(out).record
    assert record["steps"] == 20 and record["images"] == 1000 and record["method"] == "D"
    cell = ["model=mobilenet_v2_fmnist", "method=D", "bits=w4a4"]
    (ptq,) = run(compose("classification", cell + [f"out={tmp_path / 'ptq.json'}"]))
    (qat,) = run(compose("classification", cell + [f"model.weights={out}", f"out={tmp_path / 'qat.json'}"]))
    assert qat.options["qat"] == "e2-n1000-lr0.0005-distill" and "QAT" in qat.extra["calibration"]
    assert qat.value == pytest.approx(record["value"], abs=1e-6)  # the trained state, not a recalibration
    # 2000 test images: 2 points is several standard errors of the paired difference (measured +3.8).
    assert qat.value > ptq.value + 2.0, (ptq.value, qat.value)
    from hqbench.reporting.qat import qat_markdown, qat_rows

    (item,) = qat_rows([ptq, qat])  # the QAT row against the cell it started from, on the same images
    assert item["vs_start"]["diff"] == pytest.approx(qat.value - ptq.value) and item["vs_start"]["p"] < 0.05
    assert item["vs_best_ptq"]["method"] == "D" and item["vs_best_qat"] is None
    assert "e2-n1000-lr0.0005-distill" in qat_markdown([ptq, qat])
    sizes = {p: p.stat().st_size for p in tmp_path.glob("qat.pt*")}
    assert main(train) != 0  # nothing is replaced
    assert {p: p.stat().st_size for p in tmp_path.glob("qat.pt*")} == sizes


@pytest.mark.parametrize("precision", ["bf16-mixed", "64-true"])
def test_precision_plugins_train_and_test_the_quantized_model(trained, precision):
    module = _module(trained)
    callback = QATCallback("B", W4A4, calib_dataloader=_loader(128, 1))
    trainer = _trainer(callbacks=[callback], precision=precision)
    trainer.fit(module, _loader(512, seed=1))
    assert all(torch.isfinite(torch.tensor(module.losses)))
    assert module.losses[-1] < module.losses[0]
    trainer.test(module, _loader(256, seed=2), verbose=False)
    assert module.accuracy > 0.5
