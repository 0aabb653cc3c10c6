"""issue 30: per-point sensitivity (both directions) and mixed precision promoted from it, on the
tiny ResidualNet: each figure checked against a model built to match it."""

from __future__ import annotations

import math

import pytest
import torch

from hqbench.quant import Recipe, prepare, quantize
from hqbench.quant import sensitivity as sensitivity_module
from hqbench.quant.recipe import MIXED_CRITERIA
from hqbench.quant.sensitivity import budget_points, promote, sensitivity

from .conftest import make_dataset


def _batches():
    x, y = make_dataset(192, seed=3)
    return list(zip(x.split(64), y.split(64)))


def _input(batch):
    return (batch[0],)


def _correct(batch, out):
    return (out.argmax(1) == batch[1]).float()


def _output_sqnr(qmodel, batches) -> float:
    """Output SQNR of ``qmodel``'s quant mode against its float mode, computed directly."""
    signal = noise = 0.0
    with torch.no_grad():
        for x, _ in batches:
            qmodel.set_mode("float")
            ref = qmodel(x).double()
            qmodel.set_mode("quant")
            out = qmodel(x).double()
            signal += float(ref.square().sum())
            noise += float((out - ref).square().sum())
    return 10 * math.log10(signal / noise)


def test_set_point_bits_gives_the_qparams_of_a_model_built_with_them(trained_net):
    net, _ = trained_net
    batches = _batches()
    calib = [x for x, _ in batches]
    qmodel = quantize(net, calib, method="D", recipe=Recipe(act_bits=4))
    name = list(qmodel.plan.points)[3]
    qmodel.set_point_bits({name: 8})
    mixed = dict(qmodel.quant_state_dict()["points"])
    qmodel.remove()
    built = quantize(net, calib, method="D", recipe=Recipe(act_bits=4, point_bits={name: 8}))
    assert built.quant_state_dict()["point_bits"] == [[name, 8]]
    for point, buffers in built.quant_state_dict()["points"].items():
        for key in ("scale", "zero_point", "clip"):
            assert torch.equal(buffers[key], mixed[point][key]), (point, key)
    assert built.quantizer(name).grid.bits == 8 and built.quantizer(list(built.plan.points)[0]).grid.bits == 4


def test_sensitivity_leaves_the_model_exactly_as_it_was(trained_net):
    net, _ = trained_net
    batches = _batches()
    qmodel = quantize(net, [x for x, _ in batches], method="D", recipe=Recipe(act_bits=4))
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    with torch.no_grad():
        out_before = qmodel(batches[0][0])
    for direction, bits in (("reverse", 8), ("reverse", None), ("one_at_a_time", None)):
        report = sensitivity(qmodel, batches, _input, direction, restore_bits=bits, score_fn=_correct)
        assert report.passes == len(qmodel.quantizers) + (2 if direction == "reverse" else 1)
        assert report.samples == 192 and len(report.reference["outcomes"]) == 192
    after = qmodel.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert qmodel._mode == "quant" and qmodel.recipe == Recipe(act_bits=4)
    assert {q.mode for q in qmodel.quantizers.values()} == {"quant"}
    with torch.no_grad():
        assert torch.equal(qmodel(batches[0][0]), out_before)


def test_each_points_figure_is_the_output_sqnr_of_the_model_it_describes(trained_net):
    """reverse at 8 bits: the SQNR a model built with that one point at 8 bits has; one at a time:
    the SQNR of the float model with only that point quantized."""
    net, _ = trained_net
    batches = _batches()
    calib = [x for x, _ in batches]
    qmodel = quantize(net, calib, method="B", recipe=Recipe(act_bits=4))
    base = _output_sqnr(qmodel, batches)
    reverse = sensitivity(qmodel, batches, _input, "reverse")
    single = sensitivity(qmodel, batches, _input, "one_at_a_time")
    assert reverse.reference["sqnr_db"] == pytest.approx(base, abs=1e-6)
    assert single.reference["sqnr_db"] == math.inf
    names = [p["name"] for p in reverse.points]
    assert names == list(qmodel.plan.points) == [p["name"] for p in single.points]
    qmodel.remove()
    for row in reverse.points[::3]:
        alone = quantize(net, calib, method="B", recipe=Recipe(act_bits=4, point_bits={row["name"]: 8}))
        assert row["sqnr_db"] == pytest.approx(_output_sqnr(alone, batches), abs=1e-6), row["name"]
        assert row["gain_db"] == pytest.approx(row["sqnr_db"] - base, abs=1e-6)
        alone.remove()
    for row in single.points[::3]:
        one = quantize(net, calib, method="B", recipe=Recipe(act_bits=4))
        one.set_mode("float")
        one.quantizer(row["name"]).mode = "quant"
        signal = noise = 0.0
        with torch.no_grad():
            for x, _ in batches:
                ref = net(x).double()  # BN folding changes no float value beyond rounding
                out = one(x).double()
                signal += float(ref.square().sum())
                noise += float((out - ref).square().sum())
        assert row["sqnr_db"] == pytest.approx(10 * math.log10(signal / noise), abs=1e-3), row["name"]
        assert row["gain_db"] == -row["sqnr_db"]
        one.remove()
    ranked = reverse.ranked()
    assert [p["gain_db"] for p in ranked] == sorted((p["gain_db"] for p in ranked), reverse=True)


def _output_kl(qmodel, batches) -> float:
    """Mean KL(float softmax || quantized softmax) of ``qmodel``, computed directly."""
    total, n = 0.0, 0
    with torch.no_grad():
        for x, _ in batches:
            qmodel.set_mode("float")
            p = torch.softmax(qmodel(x).double(), 1)
            qmodel.set_mode("quant")
            q = torch.softmax(qmodel(x).double(), 1)
            total += float((p * (p.log() - q.log())).sum())
            n += len(x)
    return total / n


def test_the_kl_criterion_ranks_by_the_softmax_divergence_the_point_removes(trained_net):
    """criterion=kl: each point's kl is the KL divergence of a model built with that point at 8 bits,
    gain_kl what it removes from the all-quantized model's, and the ranking and promotion follow it."""
    net, _ = trained_net
    batches = _batches()
    calib = [x for x, _ in batches]
    qmodel = quantize(net, calib, method="B", recipe=Recipe(act_bits=4))
    base = _output_kl(qmodel, batches)
    report = sensitivity(qmodel, batches, _input, "reverse", criterion="kl")
    assert report.reference["kl"] == pytest.approx(base, rel=1e-6) and base > 0
    row = report.points[len(report.points) // 2]
    alone = quantize(net, calib, method="B", recipe=Recipe(act_bits=4, point_bits={row["name"]: 8}))
    assert row["kl"] == pytest.approx(_output_kl(alone, batches), rel=1e-6)
    assert row["gain_kl"] == pytest.approx(base - row["kl"], rel=1e-6, abs=1e-12)
    alone.remove()
    ranked = report.ranked()
    assert [p["gain_kl"] for p in ranked] == sorted((p["gain_kl"] for p in ranked), reverse=True)
    promotion = promote(qmodel, batches, _input, 2, criterion="kl")
    assert promotion.promoted == [p["name"] for p in ranked if p["gain_kl"] > 0][:2]
    qmodel.remove()
    with pytest.raises(ValueError, match="unknown sensitivity criterion 'l2'"):
        sensitivity(qmodel, batches, _input, criterion="l2")
    assert set(sensitivity_module._GAIN) == set(MIXED_CRITERIA)  # every criterion the recipe accepts ranks by a field
    r = Recipe(act_bits=4, mixed_budget=2, mixed_criterion="kl")
    assert r.to_options() == {"mixed_budget": "2", "mixed_criterion": "kl"} and Recipe.from_options(8, 4, r.to_options()) == r


def test_the_kl_criterion_refuses_a_model_without_logits(trained_net):
    """A detector's heads (here: two outputs) have no softmax to compare: a one-line error."""
    net, _ = trained_net

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net(x)
            return out, out * 2

    calib = [x for x, _ in _batches()]
    qmodel = quantize(TwoHeads(), calib, method="B", recipe=Recipe(act_bits=4))
    with pytest.raises(ValueError, match="criterion kl ranks by the softmax of a classifier's logits"):
        sensitivity(qmodel, calib, lambda x: (x,), criterion="kl")
    assert sensitivity(qmodel, calib, lambda x: (x,)).points  # sqnr takes any output
    qmodel.remove()


def test_a_point_already_at_the_restored_width_is_skipped(trained_net):
    net, _ = trained_net
    batches = _batches()
    qmodel = quantize(net, [x for x, _ in batches], method="B", recipe=Recipe(act_bits=4, keep_8bit="first,last"))
    report = sensitivity(qmodel, batches, _input, "reverse")
    kept = [p for p in report.points if p["bits"] == 8]
    assert kept and all(p["skipped"] == "already 8 bits" and p["sqnr_db"] is None for p in kept)
    assert all(p["name"] not in {k["name"] for k in kept} for p in report.ranked())


@pytest.mark.parametrize("budget, total, count", [(None, 64, 0), (4, 64, 4), (0.1, 64, 6), (0.05, 64, 3),
                                                  (100, 9, 9), (1.0, 9, 9), (0.5, 9, 4)])
def test_a_budget_is_a_count_or_a_share_rounded_down(budget, total, count):
    assert budget_points(budget, total) == count


def test_promote_takes_the_top_of_the_ranking_and_the_state_keeps_it(trained_net):
    net, _ = trained_net
    batches = _batches()
    calib = [x for x, _ in batches]
    qmodel = quantize(net, calib, method="D", recipe=Recipe(act_bits=4, mixed_budget=3))
    promotion = promote(qmodel, calib, lambda x: (x,), 3)
    gains = {p["name"]: p["gain_db"] for p in promotion.report.points}
    assert promotion.budget == 3 and promotion.promoted == promotion.ranking[:3]
    assert all(gains[n] > 0 for n in promotion.ranking)  # a point whose restoration does not help is never promoted
    assert sorted(gains, key=lambda n: -gains[n])[:3] == promotion.promoted
    state = qmodel.quant_state_dict()
    assert sorted(n for n, _ in state["point_bits"]) == sorted(promotion.promoted)
    with torch.no_grad():
        out = qmodel(calib[0])
    qmodel.remove()
    # a fresh model with the state's point_bits loads the state and gives the same outputs
    fresh = prepare(net, calib[0], "D", Recipe(act_bits=4, point_bits=[tuple(p) for p in state["point_bits"]]))
    fresh.load_quant_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(calib[0]), out)
    # a ranking given back is used as is, without measuring
    fresh.remove()
    again = quantize(net, calib, method="D", recipe=Recipe(act_bits=4))
    reused = promote(again, calib, lambda x: (x,), 2, ranking=promotion.ranking)
    assert reused.report is None and reused.promoted == promotion.ranking[:2]


def test_greedy_promotes_the_best_of_a_ranking_remeasured_after_each_promotion(trained_net):
    """mixed.search=greedy: each promoted point is the best one with the earlier ones promoted, so
    its first point is the single ranking's first and every later one was measured beside them."""
    net, _ = trained_net
    calib = [x for x, _ in _batches()]
    qmodel = quantize(net, calib, method="D", recipe=Recipe(act_bits=4))
    greedy = promote(qmodel, calib, lambda x: (x,), 3, search="greedy")
    assert greedy.budget == 3 and len(greedy.promoted) == 3 and greedy.ranking == greedy.promoted
    after = {p["name"] for p in greedy.report.points if p["skipped"] is not None}
    assert set(greedy.promoted[:2]) <= after  # the last ranking ran with the first two at 8 bits
    assert greedy.report.ranked()[0]["name"] == greedy.promoted[-1]
    assert sorted(dict(qmodel.recipe.point_bits)) == sorted(greedy.promoted)
    qmodel.remove()
    single = quantize(net, calib, method="D", recipe=Recipe(act_bits=4))
    assert promote(single, calib, lambda x: (x,), 1).promoted == greedy.promoted[:1]
    single.remove()
    # a shorter greedy ranking given back is continued (one ranking more), a longer one cut
    again = quantize(net, calib, method="D", recipe=Recipe(act_bits=4))
    more = promote(again, calib, lambda x: (x,), 3, ranking=greedy.promoted[:2], search="greedy")
    assert more.promoted == greedy.promoted and more.report is not None
    again.remove()
    fewer = quantize(net, calib, method="D", recipe=Recipe(act_bits=4))
    cut = promote(fewer, calib, lambda x: (x,), 1, ranking=greedy.promoted, search="greedy")
    assert cut.report is None and cut.promoted == greedy.promoted[:1] and cut.ranking == greedy.promoted
    with pytest.raises(ValueError, match="unknown mixed-precision search 'best'"):
        promote(fewer, calib, lambda x: (x,), 1, search="best")
    with pytest.raises(ValueError, match="mixed_search"):
        Recipe(act_bits=4, mixed_search="best")
    r = Recipe(act_bits=4, mixed_budget=2, mixed_search="greedy")
    assert r.to_options() == {"mixed_budget": "2", "mixed_search": "greedy"} and Recipe.from_options(8, 4, r.to_options()) == r


@pytest.mark.parametrize("budget", [-1, 1.5, "many", True])
def test_a_bad_budget_is_one_line(budget):
    with pytest.raises(ValueError, match="mixed_budget must be a count of points"):
        Recipe(act_bits=4, mixed_budget=budget)


def test_the_budget_keys_a_row_below_8_bit_activations_only():
    assert Recipe(act_bits=4, mixed_budget=0.1).to_options() == {"mixed_budget": "0.1"}
    assert Recipe(act_bits=4, mixed_budget=0).to_options() == {} and Recipe(act_bits=4, mixed_budget=0).mixed_budget is None
    assert Recipe(act_bits=8, mixed_budget=4).to_options() == {} and not Recipe(act_bits=8, mixed_budget=4).promotes
    r = Recipe(act_bits=4, mixed_budget=4)
    assert Recipe.from_options(8, 4, r.to_options()) == r and r.promotes
