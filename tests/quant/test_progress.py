"""Issue 32: a long weight-side run shows where it is. The core logs each AdaRound and bias
correction layer at INFO (no handlers of its own, nothing printed) and calls ``on_progress`` per
layer and inside one; progress only observes, so the rounded weights are the same without it. The
peers log their calibration and conversion steps, and the callback's bar takes ``on_progress``."""

from __future__ import annotations

import logging
import re
import sys

import pytest
import torch

from hqbench.quant import Recipe, fit_weights, prepare
from hqbench.quant.adaround import PROGRESS_EVERY

ITERS = 25  # two on_progress calls inside each layer (steps 10 and 20), then its last step


def _calibrated(net, batches, recipe: Recipe):
    qmodel = prepare(net, (batches[0],), "B", recipe)
    qmodel.calibrate(batches)
    return qmodel


def _recipe(granularity: str = "layer", bias_correction: bool = False) -> Recipe:
    return Recipe(weight_bits=4, weight_rounding="adaround", bias_correction=bias_correction,
                  adaround={"iters": ITERS, "granularity": granularity})


def _fit(net, batches, recipe, on_progress=None):
    qmodel = _calibrated(net, batches, recipe)
    return fit_weights(qmodel, batches, on_progress=on_progress)


def _steps(calls: list[tuple[int, int, str]], prefix: str) -> list[tuple[int, int, str]]:
    return [c for c in calls if c[2].startswith(prefix)]


def _check_counts_up(calls: list[tuple[int, int, str]]) -> None:
    done = [d for d, _, _ in calls]
    assert calls and done == sorted(done), done
    assert len({t for _, t, _ in calls}) == 1 and done[-1] == calls[-1][1]  # one total, reached


@pytest.mark.parametrize("granularity", ["layer", "block"])
def test_adaround_progress_counts_up_to_its_total_and_moves_inside_a_layer(trained_net, calib_batches, granularity):
    net, _ = trained_net
    calls: list[tuple[int, int, str]] = []
    qmodel = _fit(net, calib_batches, _recipe(granularity), lambda *c: calls.append(c))
    _check_counts_up(calls)
    compute = qmodel.plan.compute
    assert calls[0][0] == 0 and calls[-1][1] == len(compute) * ITERS
    inside = [d for d, _, _ in calls if d % ITERS]
    assert inside, "no call between the ends of a layer"
    if granularity == "layer":  # every layer is named, and moves every PROGRESS_EVERY steps
        assert {n for n in compute for _, _, w in calls if re.search(rf"AdaRound {re.escape(n)} \(", w)} == set(compute)
        assert len(inside) == len(compute) * ((ITERS - 1) // PROGRESS_EVERY)
    else:
        assert any("+" in w for _, _, w in calls), "no block was reconstructed"


def test_each_step_counts_up_to_its_own_total(trained_net, calib_batches):
    net, _ = trained_net
    calls: list[tuple[int, int, str]] = []
    qmodel = _fit(net, calib_batches, _recipe(bias_correction=True), lambda *c: calls.append(c))
    adaround, bias = _steps(calls, "AdaRound"), _steps(calls, "bias correction")
    assert len(adaround) + len(bias) == len(calls) and calls[:len(adaround)] == adaround  # AdaRound first
    _check_counts_up(adaround)
    _check_counts_up(bias)
    assert bias[-1][1] == len(qmodel.plan.compute) + 1  # the float sweep, then one sweep a layer


def _records(caplog, step: str, name: str, kind: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO
            and r.getMessage().startswith(f"{step} layer {name!r} (") and f" {kind}" in r.getMessage()]


def test_info_logs_one_start_and_one_end_per_layer_naming_it(trained_net, calib_batches, caplog, capsys):
    net, _ = trained_net
    caplog.set_level(logging.INFO, logger="hqbench")
    qmodel = _fit(net, calib_batches, _recipe(bias_correction=True))
    compute = qmodel.plan.compute
    for i, name in enumerate(compute, 1):
        for step in ("AdaRound", "bias correction"):
            starts, ends = _records(caplog, step, name, "starts"), _records(caplog, step, name, "done in")
            assert len(starts) == 1 and len(ends) == 1, (step, name, starts, ends)
            assert f"({i}/{len(compute)})" in starts[0] and re.search(r"done in \d+\.\d+ s", ends[0])
        assert f"{ITERS} steps" in _records(caplog, "AdaRound", name, "starts")[0]
        assert re.search(rf"reconstruction error \S+ at step 1, \S+ at step {ITERS}$", _records(caplog, "AdaRound", name, "done in")[0])
    # the application configures logging: the library adds no handler and prints nothing
    assert all(not logging.getLogger(n).handlers for n in ("hqbench", "hqbench.quant", "hqbench.quant.adaround",
                                                           "hqbench.quant.bias_correction", "hqbench.quant.blocks"))
    assert capsys.readouterr().out == ""


def test_a_block_is_logged_once_naming_its_layers(trained_net, calib_batches, caplog):
    net, _ = trained_net
    caplog.set_level(logging.INFO, logger="hqbench.quant.adaround")
    _fit(net, calib_batches, _recipe("block"))
    blocks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("AdaRound block ")]
    starts = [m for m in blocks if " starts: " in m]
    assert starts and len(starts) == len(blocks) - len(starts)
    assert all(re.search(r"\(layers? \d+(-\d+)?/\d+: '[^']+'(, '[^']+')*\)", m) for m in starts)
    assert any(re.search(r"\(layers \d+-\d+/\d+: '[^']+'(, '[^']+')+\)", m) for m in starts)


def test_progress_and_debug_logs_do_not_change_the_rounded_weights(trained_net, calib_batches, caplog):
    net, _ = trained_net
    recipe = _recipe(bias_correction=True)
    plain = _fit(net, calib_batches, recipe)
    caplog.set_level(logging.DEBUG, logger="hqbench")
    calls: list = []
    watched = _fit(net, calib_batches, recipe, lambda *c: calls.append(c))
    assert calls and any(r.levelno == logging.DEBUG for r in caplog.records)
    for attr in ("rounded_weights", "bias_shift"):
        a, b = getattr(plain, attr), getattr(watched, attr)
        assert a.keys() == b.keys() and a and all(torch.equal(a[n], b[n]) for n in a), attr


def test_the_callback_bar_takes_fit_weights_progress_on_a_terminal(monkeypatch):
    from hqbench.callbacks import quantization

    with quantization._progress("off a terminal", 3) as update:
        assert update is quantization._quiet  # the callback passes no on_progress then
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    with quantization._progress("calibrating", None) as update:
        assert update is not quantization._quiet
        update()  # the calibration's advance
        update(5, 10, "AdaRound stem.0 (1/7)")
        update(10, 10, "AdaRound done")


@pytest.mark.parametrize("name", ["ort-minmax", "pt2e-x86"])
def test_peers_log_their_steps_with_seconds(name, calib_batches, caplog):
    from hqbench.peers import PeerMissing, check_installed, create_peer

    try:
        check_installed(name)
    except PeerMissing as err:
        pytest.skip(str(err))
    from .conftest import ResidualNet

    caplog.set_level(logging.INFO, logger="hqbench.peers")
    net = ResidualNet().eval()
    result = create_peer(name)(net, calib_batches[:2], (calib_batches[0],))
    result.close()
    ends = [r.getMessage() for r in caplog.records if r.name.startswith("hqbench.peers.")
            and re.search(r": done in \d+\.\d s$", r.getMessage())]
    assert len(ends) >= 3 and any("calibration" in m for m in ends), ends
