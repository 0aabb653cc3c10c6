"""QuantizationCallback inside a LightningModule hqbench did not write."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hqbench.callbacks import QuantizationCallback
from hqbench.quant import Recipe


class UserModule(L.LightningModule):
    """A user's own module: its forward takes a keyword argument, its network is not called model."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
        self.correct = 0
        self.seen = 0

    def forward(self, x, temperature: float = 1.0):
        return self.backbone(x) / temperature

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x, temperature=2.0)
        self.correct += int((logits.argmax(1) == y).sum())
        self.seen += len(y)
        self.log("acc", self.correct / self.seen)


class CountingLoader:
    def __init__(self, loader):
        self.loader, self.batches = loader, 0

    def __iter__(self):
        for batch in self.loader:
            self.batches += 1
            yield batch


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (64,), generator=g)
    x = torch.randn(64, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _trainer(callbacks, **kwargs):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks, **kwargs)


def test_callback_quantizes_then_restores_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    module = UserModule().eval()
    float_state = {k: v.clone() for k, v in module.state_dict().items()}
    calib = CountingLoader(_data(1))
    callback = QuantizationCallback("D", calib_dataloader=calib)
    trainer = _trainer([callback])
    trainer.test(module, _data(2), verbose=False)
    assert calib.batches == 4  # loaded once and kept, so D's two passes see the same batches
    assert callback.summary["act_range"] == "-128..127 & 0..255"
    assert list(callback.summary["float_ops"]) == [":div0"]  # the temperature division runs in float, and says so
    # The float model is back: same weights, BN restored, no hooks left behind.
    assert isinstance(module.backbone[1], nn.BatchNorm2d)
    for k, v in module.state_dict().items():
        assert torch.equal(v, float_state[k]), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    # Calibrated ranges travel in the checkpoint; the model's state_dict stays float.
    ckpt = tmp_path / "q.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    assert not any("quantizers" in k for k in saved["state_dict"])
    assert callback.state_key in saved["callbacks"]
    # Test from the checkpoint: ranges are restored, the calibration data is only peeked at once.
    calib_again = CountingLoader(_data(1))
    restored = QuantizationCallback("D", calib_dataloader=calib_again)
    fresh = UserModule()
    module.correct = module.seen = 0
    out_a = trainer.test(module, _data(2), verbose=False)[0]["acc"]
    out_b = _trainer([restored]).test(fresh, _data(2), ckpt_path=ckpt, verbose=False)[0]["acc"]
    assert calib_again.batches == 1
    assert out_a == out_b


class PositionalModule(UserModule):
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.correct += int((self(x).argmax(1) == y).sum())
        self.seen += len(y)
        self.log("acc", self.correct / self.seen)


def test_fp32_and_quantized_in_one_process_agree_closely():
    torch.manual_seed(0)
    module = PositionalModule().eval()
    fp32 = _trainer([]).test(module, _data(2), verbose=False)[0]["acc"]
    module.correct = module.seen = 0
    int8 = _trainer([QuantizationCallback("B", calib_dataloader=_data(1), engine="int")]).test(
        module, _data(2), verbose=False)[0]["acc"]
    assert abs(fp32 - int8) <= 0.1


@pytest.mark.parametrize("agreement", [False, True], ids=["alone", "agreement"])
@pytest.mark.parametrize("engine", ["int", "onnxruntime"])
def test_engines_replace_the_torch_forward_instead_of_running_after_it(engine, agreement):
    """Under a non-torch engine the torch network does not run at test time (it would double the
    cost), unless agreement is measured: then it runs once a batch, as the fake-quant reference,
    and the callback reports the engine's distance from it. Afterwards the module's own forward is back."""
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    module = PositionalModule().eval()
    calls = []
    module.backbone[-1].register_forward_hook(lambda *a: calls.append(1))
    callback = QuantizationCallback("B", calib_dataloader=_data(1), engine=engine, agreement=agreement)

    class Count(L.Callback):
        def on_test_batch_start(self, *args):
            calls.clear()

        def on_test_batch_end(self, *args):
            assert len(calls) == int(agreement), "the torch network ran under a non-torch engine"

    acc = _trainer([callback, Count()]).test(module, _data(2), verbose=False)[0]["acc"]
    assert 0 <= acc <= 1 and "forward" not in module.__dict__
    if agreement:
        measured = callback.agreement
        assert measured["rows"] == 64 and measured["top1_agree"] >= 90
        # forward divides the logits by a temperature after the last activation point: off any grid,
        # so they are compared in absolute terms only
        assert measured["within_1_lsb"] is None and measured["max_abs_diff"] < 1
        assert callback.engine_record["all_int8"], callback.engine_record
    else:
        assert callback.agreement is None
    module(torch.randn(2, 1, 8, 8))
    assert calls  # the float network is back in charge


def test_integer_engine_refuses_forward_keywords_instead_of_dropping_them():
    """forward(x, temperature=2.0) under engine=int: the replayed graph cannot take it; say so."""
    torch.manual_seed(0)
    module = UserModule().eval()
    callback = QuantizationCallback("B", calib_dataloader=_data(1), engine="int")
    with pytest.raises(NotImplementedError, match="temperature"):
        _trainer([callback]).test(module, _data(2), verbose=False)
    assert isinstance(module.backbone[1], nn.BatchNorm2d)  # restored after the failure
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_failed_calibration_restores_the_float_model():
    """A failure inside calibration (NaN activations) must not leave BN folded or hooks attached."""
    torch.manual_seed(0)
    module = UserModule().eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    bad = DataLoader(TensorDataset(torch.full((8, 1, 8, 8), float("nan")), torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="non-finite"):
        _trainer([QuantizationCallback("D", calib_dataloader=bad)]).test(module, _data(2), verbose=False)
    assert isinstance(module.backbone[1], nn.BatchNorm2d)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
    module(torch.randn(2, 1, 8, 8))  # a plain forward works again


class FitModule(PositionalModule):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_validation_during_fit_recalibrates_unless_frozen(recalibrate):
    """Weights change between validations: by default each validation calibrates afresh."""
    torch.manual_seed(0)
    callback = QuantizationCallback("B", calib_dataloader=_data(1), recalibrate=recalibrate)
    ranges = []

    class Spy(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            logits = list(callback._saved_state["points"].values())[-1]  # the last layer's output range
            ranges.append(logits["clip"].clone())

    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[callback, Spy()])
    module = FitModule()
    trainer.fit(module, _data(3), _data(4))
    assert len(ranges) == 3
    if recalibrate:
        assert not any(torch.equal(ranges[0], r) for r in ranges[1:])
    else:
        assert all(torch.equal(ranges[0], r) for r in ranges[1:])


def test_callback_runs_at_low_bit_widths_and_records_them():
    torch.manual_seed(0)
    module = PositionalModule().eval()
    callback = QuantizationCallback("D", calib_dataloader=_data(1), recipe=Recipe(weight_bits=4, act_bits=4))
    _trainer([callback]).test(module, _data(2), verbose=False)
    assert callback.summary["act_range"] == "-8..7 & 0..15"
    assert callback.summary["weights"].startswith("int4")
    # This net has two compute layers, the first and the last: keeping both leaves nothing below 8 bits.
    kept = QuantizationCallback("D", Recipe(weight_bits=4, act_bits=4, keep_8bit="first,last"),
                                calib_dataloader=_data(1))
    _trainer([kept]).test(module, _data(2), verbose=False)
    assert kept.summary["act_range"] == "-128..127 & 0..255"
    for bad in (dict(act_bits=0), dict(weight_bits=17), dict(act_bits=2.5), dict(keep_8bit="middle")):
        with pytest.raises(ValueError):
            QuantizationCallback("D", Recipe(**bad))


def test_failure_after_quant_mode_restores_inside_lightning(monkeypatch):
    """The engine fails after BN was folded and weights quantized (inside Lightning's inference mode):
    on_exception still gives the float model back."""
    import hqbench.quant.onnx_engine as onnx_engine

    def broken(*args, **kwargs):
        raise RuntimeError("export failed")

    monkeypatch.setattr(onnx_engine, "OnnxRuntimeEngine", broken)
    torch.manual_seed(0)
    module = PositionalModule().eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(RuntimeError, match="export failed"):
        _trainer([QuantizationCallback("B", calib_dataloader=_data(1), engine="onnxruntime")]).test(
            module, _data(2), verbose=False)
    assert isinstance(module.backbone[1], nn.BatchNorm2d)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k
    module(torch.randn(2, 1, 8, 8))


def test_detection_runs_on_onnxruntime_close_to_fake_quant(tmp_path):
    """The detector exports as QDQ with its box decoding in float, and ONNX Runtime's int8 kernels
    score within 0.5 mAP50 of fake-quant (it was refused while int32 biases could overflow)."""
    pytest.importorskip("onnxruntime")
    import json

    from hqbench.cli import main

    out = tmp_path / "det.json"
    for engine in ("fake", "onnxruntime"):
        assert main(["test", "task=detection", "data=synthetic_sar", "method=D",
                     f"engine={engine}", f"out={out}"]) == 0
    rows = {r["engine"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"fake", "onnxruntime"}
    assert abs(rows["fake"]["value"] - rows["onnxruntime"]["value"]) <= 0.5


def test_detection_runs_on_the_integer_executor_close_to_fake_quant(tmp_path):
    """engine=int replays the detector, its float box decoding included (chunk and meshgrid, whose
    consumers each take one element; a reshape holding the recorded batch size, run in chunks of
    it), every conv on integers, within 0.5 mAP50 of fake-quant on the same scenes."""
    import json

    from hqbench.cli import main

    out = tmp_path / "det.json"
    assert main(["test", "task=detection", "data=synthetic_sar", "method=D", "engine=fake,int",
                 "data.eval_limit=24", f"out={out}"]) == 0
    rows = {r["engine"]: r for r in json.loads(out.read_text())}
    assert rows["int"]["all_int8"] and rows["int"]["int8_layers"] == "24/24"
    assert abs(rows["fake"]["value"] - rows["int"]["value"]) <= 0.5


@pytest.mark.parametrize("granularity, learn", [("layer", {}), ("block", {}),
                                               ("layer", {"learn_scale": True, "learn_bias": True})])
def test_adaround_runs_inside_lightnings_test_loop(monkeypatch, granularity, learn):
    """AdaRound needs autograd; Lightning tests in inference mode. The callback path must still work,
    with the callback's AdaRound settings, at both granularities, for a bias-free conv whose folded
    BN gives it a bias made in inference mode."""
    import hqbench.quant

    seen, original = [], hqbench.quant.adaround_weights

    def spy(qmodel, batches, input_fn, settings):
        seen.append(settings.changed())
        return original(qmodel, batches, input_fn, settings)

    monkeypatch.setattr(hqbench.quant, "adaround_weights", spy)  # where fit_weights looks it up
    torch.manual_seed(0)
    module = PositionalModule().eval()
    module.backbone[0] = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    settings = {"iters": 50, "lr": 0.01, "granularity": granularity, **learn}
    recipe = Recipe(weight_bits=3, weight_rounding="adaround", adaround=settings)
    callback = QuantizationCallback("D", recipe, calib_dataloader=_data(1))
    acc = _trainer([callback]).test(module, _data(2), verbose=False)[0]["acc"]
    assert 0.0 <= acc <= 1.0 and callback._saved_state["rounded_weights"]
    assert bool(callback._saved_state["learned_scales"]) == bool(learn)
    # what differs from the defaults reaches AdaRound
    assert seen == [{"iters": 50, **learn} if granularity == "layer" else {"iters": 50, "granularity": "block"}]
    assert isinstance(module.backbone[1], nn.BatchNorm2d)  # restored afterwards


class LogitRecorder(PositionalModule):
    def __init__(self):
        super().__init__()
        self.logits = []

    def test_step(self, batch, batch_idx):
        self.logits.append(self(batch[0]))


@pytest.mark.parametrize("precision", ["32-true", "64-true"])
def test_integer_engine_in_place_of_forward_matches_fake_quant(precision):
    """The integer executor replays the graph where the quantization hooks are live (in place of the
    root's forward); none of them may touch its integers. Logits stay within 1 LSB of fake-quant,
    and are equal to it when the trainer runs in float64 (exact sums: the same values rounded)."""
    torch.manual_seed(0)
    module = LogitRecorder().eval()
    logits = {}
    for engine in ("fake", "int"):
        module.logits = []
        callback = QuantizationCallback("B", calib_dataloader=_data(1), engine=engine)

        class Step(L.Callback):
            def on_test_batch_end(self, *args):
                logits["lsb"] = float(callback.qmodel.quantizer(callback.qmodel.plan.chains[
                    callback.qmodel.plan.compute[-1]][0]).scale)

        _trainer([callback, Step()], precision=precision).test(module, _data(2), verbose=False)
        logits[engine] = torch.cat(module.logits)
    assert (logits["fake"] - logits["int"]).abs().max() <= 1.01 * logits["lsb"]
    if precision == "64-true":
        assert logits["fake"].dtype == torch.float64
        lsb = torch.tensor(logits["lsb"], dtype=torch.float64)
        assert torch.equal(torch.round(logits["fake"] / lsb), torch.round(logits["int"] / lsb))


def test_fit_logs_quantized_validation_under_its_own_names_and_calibration_to_the_logger(tmp_path):
    """issue 32: inside fit, val_* used to silently become the quantized model's numbers. They now
    carry the callback's suffix; calibration seconds and ranges reach any Lightning logger (CSV here)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    callback = QuantizationCallback("B", calib_dataloader=_data(1))
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=CSVLogger(tmp_path, name="run"),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[callback])
    trainer.fit(FitModule(), _data(3), _data(4))
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    columns = set(rows[0])
    assert "val_loss_quant" in columns and "val_loss" not in columns
    assert "quant/calib_seconds" in columns
    points = {c.split("/")[1] for c in columns if c.startswith("quant/") and c.endswith("/lo")}
    assert points == set(callback.summary["points"])
    assert sum(bool(r["quant/calib_seconds"]) for r in rows) == 2  # one calibration per validation
    plain = FitModule()
    assert "log" not in plain.__dict__
    metrics = trainer.test(plain, _data(2), verbose=False)  # test keeps the module's own names
    assert "log" not in plain.__dict__ and not any(k.endswith("_quant") for k in metrics[0])
