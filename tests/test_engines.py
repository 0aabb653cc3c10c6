"""The engine registry: every registered engine runs the callback, and an engine added from outside
hqbench is one factory plus one register_engine call, after which the callback, the runner and the
CLI take it."""

import json

import pytest
import torch

from hqbench.cli import main, usage
from hqbench.quant import engines
from hqbench.quant.engines import create_engine, engine_entry, list_engines, register_engine, row_engines
from hqbench.quant.integer import IntegerExecutor

from .test_callbacks import PositionalModule, _data, _trainer


class CountingEngine:
    """A user's engine: the integer executor behind a call counter, with a close() to free it."""

    def __init__(self, qmodel, example_inputs):
        self.inner, self.calls, self.closed = IntegerExecutor(qmodel), 0, False
        CountingEngine.last = self

    def __call__(self, *inputs):
        self.calls += 1
        return self.inner(*inputs)

    def close(self):
        self.closed = True


@pytest.fixture
def counting_engine():
    register_engine("counting", CountingEngine, description="the integer executor, counted (a test's own)")
    yield "counting"
    engines._ENGINES.pop("counting")


def test_the_registry_refuses_what_is_taken_or_peers_only():
    with pytest.raises(ValueError, match="'int' is already registered"):
        register_engine("int", CountingEngine, description="again")
    with pytest.raises(ValueError, match="'float' is already registered"):
        register_engine("float", CountingEngine, description="FP32's")
    with pytest.raises(ValueError, match="engine 'torch-reference' runs only peers' rows so far; valid: fake, int"):
        engine_entry("torch-reference")
    with pytest.raises(ValueError, match="engine 'tpu' is unknown; valid: fake, int, onnxruntime"):
        engine_entry("tpu")
    assert set(row_engines()) >= {"float", *(e.name for e in list_engines()), "openvino", "torch-reference"}


@pytest.mark.parametrize("name", [e.name for e in list_engines()])
def test_every_registered_engine_runs_the_callback_within_a_step_of_fake_quant(name):
    if (extra := engine_entry(name).extra) is not None:
        pytest.importorskip({"onnx": "onnxruntime"}.get(extra, extra))
    from hqbench.callbacks import QuantizationCallback
    from hqbench.quant import prepare

    torch.manual_seed(0)
    module = PositionalModule().eval()
    callback = QuantizationCallback("B", calib_dataloader=_data(1), engine=name)
    acc = _trainer([callback]).test(module, _data(2), verbose=False)[0]["acc"]
    assert 0.0 <= acc <= 1.0 and "forward" not in module.__dict__  # the module's own forward is back
    qmodel = prepare(module, next(iter(_data(1)))[0], "B").calibrate(_data(1))
    x = next(iter(_data(2)))[0]
    engine = create_engine(name, qmodel, (x,))
    with torch.no_grad():
        fake, out = qmodel(x), engine(x)
    getattr(engine, "close", lambda: None)()
    qmodel.remove()
    assert (fake.argmax(1) == out.argmax(1)).float().mean() >= 0.9


def test_an_engine_from_outside_runs_through_the_callback(counting_engine):
    from hqbench.callbacks import QuantizationCallback

    torch.manual_seed(0)
    module = PositionalModule().eval()
    callback = QuantizationCallback("B", calib_dataloader=_data(1), engine=counting_engine)
    acc = _trainer([callback]).test(module, _data(2), verbose=False)[0]["acc"]
    assert 0.0 <= acc <= 1.0
    assert CountingEngine.last.calls == 4 and CountingEngine.last.closed  # 4 test batches, then freed
    assert "forward" not in module.__dict__


@pytest.mark.slow
def test_an_engine_from_outside_runs_through_the_cli(counting_engine, no_data, tmp_path):
    assert "counting" in usage()
    out = tmp_path / "rows.json"
    assert main(["test", "method=fp32,B", "engine=counting", "data.eval_limit=32", "data.calib_size=16",
                 f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["engine"]) for r in rows] == [("fp32", "float"), ("B", "counting")]
    assert [r["device"] for r in rows] == ["cpu", "cpu"]  # where each number was computed


@pytest.mark.slow
def test_engines_in_one_run_share_one_calibration_and_report_their_agreement(no_data, tmp_path, capsys):
    """issue 29: engine=fake,onnxruntime runs each cell on each engine from the same qparams (the
    second loads the first's quant state), records what the engine ran in int8 and its distance
    from fake-quant, and prints the agreement table with McNemar on the same images."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "rows.json"
    assert main(["test", "method=B", "engine=fake,onnxruntime", "data.eval_limit=64", "data.calib_size=32",
                 f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["engine"]) for r in rows] == [("B", "fake"), ("B", "onnxruntime")]
    fake, ort = rows
    assert "earlier engine" in ort["calibration"] and ort["act_range"] == fake["act_range"]
    assert ort["engine_version"].startswith("onnxruntime ") and ort["int8_layers"].split("/")[0] == ort["int8_layers"].split("/")[1]
    assert ort["agreement"]["rows"] == 64 and ort["agreement"]["top1_agree"] >= 95
    assert "agreement" not in fake and "engine_version" not in fake
    printed = capsys.readouterr().out
    assert "Engines against fake-quant" in printed and "onnxruntime" in printed
