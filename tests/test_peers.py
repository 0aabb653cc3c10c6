"""Peers (other tools' own PTQ) are fair by construction: same float network, same calibration batches.

Each available peer is called directly on a tiny conv net trained on a tiny synthetic task with
the calibration batches a seeded draw gives; the tool itself counts and checksums the batches it
consumed (inside ORT's CalibrationDataReader, NNCF's transform, the PT2E/NNI calibration loops),
and its accuracy must stay close to the float net's. Then the callback, the method names and one
CLI run with a peer column.
"""

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hqbench.callbacks import PeerCallback
from hqbench.data.base import seeded_draw
from hqbench.quant.engines import row_engines
from hqbench.methods import column_order, is_peer, list_methods, method_title, row_method
from hqbench.peers import PeerMissing, PeerUnsupported, check_installed, create_peer, list_peers, peer_entry

PEERS = [p.name for p in list_peers()]


def _available(name: str) -> None:
    try:
        check_installed(name)
    except PeerMissing as err:
        pytest.skip(str(err))


def _task(n: int, seed: int):
    """4 classes (3x16x16): a class colour plus a fixed random pattern, under heavy pixel noise."""
    means = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, -1.0, -1.0]]).view(4, 3, 1, 1)
    templates = means + 0.5 * torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    return templates[y] + 2.0 * torch.randn(n, 3, 16, 16, generator=g), y


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                         nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    net = _net()
    x, y = _task(512, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            F.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    net.eval()
    pool, _ = _task(200, seed=2)  # the "training split" calibration images are drawn from
    calib = pool[seeded_draw(len(pool), 48, seed=0)]
    batches = list(calib.split(20))  # what calibration_dataloader() would yield: 20, 20 and a short last 8
    x_test, y_test = _task(400, seed=3)
    with torch.no_grad():
        float_acc = float((net(x_test).argmax(1) == y_test).float().mean())
    assert float_acc > 0.8, "the tiny task must be learnt for the accuracy check to mean anything"
    return net, batches, x_test, y_test, float_acc


def _checksum(batches) -> float:
    return sum(float(b.double().sum()) for b in batches)


@pytest.mark.parametrize("name", PEERS)
def test_peer_sees_exactly_hqbenchs_calibration_batches_and_stays_close_to_float(name, trained):
    _available(name)
    net, batches, x_test, y_test, float_acc = trained
    state = {k: v.clone() for k, v in net.state_dict().items()}
    result = create_peer(name)(net, batches, (batches[0],), weight_bits=8, act_bits=8)
    try:
        rec = result.record
        assert rec["calib_batches"] == len(batches) == 3  # counted where the tool reads them
        assert rec["calib_checksum"] == pytest.approx(_checksum(batches), rel=1e-9, abs=1e-6)
        assert rec.get("calib_images", 48) == 48 == sum(len(b) for b in batches)
        assert rec["version"] and rec["measured_on"] and rec["settings"]
        assert peer_entry(name).engine in row_engines()
        with torch.no_grad():
            logits = result.forward(x_test)
        assert logits.shape == (len(x_test), 4)
        acc = float((logits.argmax(1) == y_test).float().mean())
        assert abs(acc - float_acc) <= 0.05, f"{name}: {acc:.3f} vs float {float_acc:.3f}"
        assert not torch.equal(logits, net(x_test)), f"{name} returned the float logits: nothing was quantized"
    finally:
        result.close()
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items()), "the peer changed the float net"


def test_ort_model_is_qdq_with_per_channel_int8_weights_and_uint8_activations(trained, monkeypatch):
    _available("ort-minmax")
    import onnx
    import onnxruntime.quantization as ortq

    from hqbench.peers import onnxruntime_ptq

    seen = {}
    real = onnxruntime_ptq.quantize_static

    def spy(model_input, model_output, reader, **kw):
        real(model_input, model_output, reader, **kw)
        seen["model"], seen["kw"] = onnx.load(model_output), kw

    monkeypatch.setattr(onnxruntime_ptq, "quantize_static", spy)
    net, batches, *_ = trained
    onnxruntime_ptq.ort_entropy(net, batches, (batches[0],)).close()
    kw = seen["kw"]
    assert kw["quant_format"] == ortq.QuantFormat.QDQ and kw["per_channel"] and not kw["reduce_range"]
    assert kw["activation_type"] == ortq.QuantType.QUInt8 and kw["weight_type"] == ortq.QuantType.QInt8
    assert kw["calibrate_method"] == ortq.CalibrationMethod.Entropy
    ops = [n.op_type for n in seen["model"].graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8


@pytest.mark.parametrize("name,bits", [("ort-minmax", (8, 4)), ("ort-minmax", (2, 8)), ("pt2e-x86", (4, 8)),
                                       ("nncf", (8, 6))])
def test_a_width_the_tool_lacks_raises_with_the_reason(name, bits, trained):
    _available(name)
    net, batches, *_ = trained
    with pytest.raises(PeerUnsupported, match=r"\d-bit"):
        create_peer(name)(net, batches, (batches[0],), weight_bits=bits[0], act_bits=bits[1])


class TinyModule(L.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.model = net
        self.correct = self.seen = 0

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.correct += int((self.model(x).argmax(1) == y).sum())
        self.seen += len(y)
        self.log("acc", self.correct / self.seen)


class CountingLoader:
    def __init__(self, batches):
        self.batches, self.iterated = batches, 0

    def __iter__(self):
        for b in self.batches:
            self.iterated += 1
            yield b


def _trainer(callbacks):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks)


def test_callback_swaps_the_network_while_testing_and_restores_it(trained):
    _available("ort-minmax")
    net, batches, x_test, y_test, float_acc = trained
    loader = CountingLoader([(b, torch.zeros(len(b), dtype=torch.long)) for b in batches])
    module = TinyModule(net)
    cb = PeerCallback("ort-minmax", calib_dataloader=loader)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=100)
    acc = _trainer([cb]).test(module, dataloaders=test, verbose=False)[0]["acc"]
    assert module.model is net and loader.iterated == 3
    assert cb.record["calib_batches"] == 3 and cb.record["calib_checksum"] == pytest.approx(_checksum(batches))
    assert cb.record["peer"] == "ort-minmax" and cb.record["version"].startswith("onnxruntime ")
    assert cb.summary == {"act_range": "uint8 0..255 (ORT QDQ)", "float_ops": ()} and cb.calib_seconds > 0
    assert abs(acc - float_acc) <= 0.05


def test_callback_restores_the_network_when_the_peer_refuses(trained):
    _available("pt2e-x86")
    net, batches, x_test, y_test, _ = trained
    module = TinyModule(net)
    cb = PeerCallback("pt2e-x86", calib_dataloader=[(b, None) for b in batches], weight_bits=4)
    with pytest.raises(PeerUnsupported, match="4-bit weights"):
        _trainer([cb]).test(module, dataloaders=DataLoader(TensorDataset(x_test, y_test), batch_size=100),
                            verbose=False)
    assert module.model is net


def test_peers_are_methods():
    assert is_peer("ort-minmax") and not is_peer("D")
    assert row_method("ort-minmax") == "ort-minmax" and method_title("ort-entropy") == "ORT Entropy"
    assert method_title("pt2e-x86") == "PT2E X86"
    assert column_order(["ort-minmax", "D", "fp32", "pt2e-x86", "pytorch"]) == [
        "fp32", "pytorch", "D", "ort-minmax", "pt2e-x86"]
    assert list_methods()[:6] == ["fp32", "pytorch", "A", "B", "C", "D"] and "ort-percentile" in list_methods()
    assert {"onnxruntime", "openvino", "torch-reference"} <= set(row_engines())


def test_a_missing_tool_is_one_line_naming_the_extra(monkeypatch):
    from hqbench import peers
    from hqbench.config import compose
    from hqbench.runner import plan_cells

    monkeypatch.setitem(peers._REGISTRY, "ghost", peers.PeerEntry(
        "ghost", "hqbench_no_such_module:f", "Ghost", "onnxruntime", {}, ("hqbench_no_such_module",)))
    with pytest.raises(PeerMissing, match=r"^ghost needs `pip install -e '\.\[peers\]'`"):
        plan_cells(compose("classification", ["method=fp32,ghost"]))
    with pytest.raises(PeerMissing, match="ghost needs"):
        PeerCallback("ghost")


def test_the_registry_imports_no_peer_tool():
    code = ("import sys, hqbench.methods as m, hqbench.peers as p; m.list_methods(); m.column_order(['ort-minmax']); "
            "bad = {'onnx', 'onnxruntime', 'nncf', 'openvino', 'torchao', 'nni'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_row_records_the_peer_and_its_version(tmp_path, monkeypatch, capsys):
    _available("ort-minmax")
    import onnxruntime

    from hqbench.cli import main

    monkeypatch.delenv("HQBENCH_DATA", raising=False)
    out = tmp_path / "r.json"
    assert main(["test", "model=mobilenet_v2_fmnist", "data=fashion_mnist", "method=fp32,B,ort-minmax",
                 "data.eval_limit=64", "data.calib_size=32", "bits=w8a8,w8a4", f"out={out}"]) == 0
    assert "ort-minmax w8a4: skipped: 4-bit activations" in capsys.readouterr().out  # a line, not a row
    rows = json.loads(out.read_text())
    assert [(r["method"], r["act_bits"]) for r in rows] == [("fp32", 32), ("B", 8), ("B", 4), ("ort-minmax", 8)]
    fp32, peer = rows[0], rows[-1]
    assert peer["engine"] == "onnxruntime" and peer["n_calib"] == 32 and peer["options"] == {}
    assert peer["peer_version"] == f"onnxruntime {onnxruntime.__version__}, onnx {__import__('onnx').__version__}"
    assert peer["measured_on"].startswith("onnxruntime CPU int8 kernels")
    assert peer["peer_settings"]["activation_type"] == "QUInt8" and peer["calib_batches"] == 1  # batch_size 100
    assert peer["act_range"] == "uint8 0..255 (ORT QDQ)" and peer["float_ops"] == ""
    assert abs(peer["value"] - fp32["value"]) <= 5.0
    assert "ORT MinMax" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_peers_run_the_detector_with_its_decoding_kept_float(tmp_path, monkeypatch):
    """Every peer evaluates the synthetic-SAR detector through the same mAP path. ONNX Runtime keeps
    the head's decoding float (nodes_to_exclude, as hqbench's float scope): quantized with the
    rest, the concatenated boxes (pixels) and scores (0..1) share one uint8 grid and mAP is 0."""
    for name in ("ort-minmax", "pt2e-x86"):
        _available(name)
    from hqbench.cli import main

    monkeypatch.delenv("HQBENCH_DATA", raising=False)
    monkeypatch.setenv("HQBENCH_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # nothing but the results may appear here (ORT's shape inference wrote temp files)
    out = tmp_path / "d.json"
    assert main(["test", "task=detection", "model=yolov3_tiny_synth", "method=fp32,ort-minmax,pt2e-x86",
                 "data.num_test=12", "data.num_train=8", "data.calib_size=8", f"out={out}"]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"fp32", "ort-minmax", "pt2e-x86"} and rows["fp32"]["value"] > 50
    for name in ("ort-minmax", "pt2e-x86"):  # 12 scenes whose last batch (4) is smaller than the others (8)
        assert rows[name]["value"] >= rows["fp32"]["value"] - 15, (name, rows[name]["value"], rows["fp32"]["value"])
    assert "nodes of model.20 (kept float, as hqbench)" in rows["ort-minmax"]["peer_settings"]["nodes_to_exclude"]
    assert "quantized by the tool's own recipe" in rows["pt2e-x86"]["peer_settings"]["float_scopes"]
    assert list(work.iterdir()) == []
