"""The Recipe: checked once, frozen, and the same row keys as before it existed."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from hqbench.methods import FP32, is_peer
from hqbench.quant import AdaRoundSettings, Recipe, prepare
from hqbench.reporting import read_results

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p for p in (ROOT / "docs" / "results").glob("*.json")
                   if isinstance(json.loads(p.read_text()), list))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_rows_read_back_into_the_same_options(path):
    """Every committed row's options are a recipe's: read back and written again, the same text, so
    results files written before the recipe still resume and merge."""
    rows = read_results(path)
    assert rows
    for row in rows:
        if row.method == FP32 or is_peer(row.method):
            continue
        # ``qat=`` names the trained weights a row ran (hqbench.tasks.qat_training), not a recipe setting
        options = {k: v for k, v in row.options.items() if k != "qat"}
        recipe = Recipe.from_options(row.weight_bits, row.act_bits, options)
        assert recipe.to_options() == options, (path.name, row.method, row.options)


def test_a_recipe_is_checked_once_and_frozen():
    r = Recipe(weight_bits=4, keep_8bit="first,last", weight_rounding="adaround",
               adaround={"iters": 2000, "granularity": "block"}, precision="64-true")
    assert r.keep_8bit == ("first", "last") and r.adaround == AdaRoundSettings(iters=2000, granularity="block")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.weight_bits = 8
    at_8 = r.replace(weight_bits=8, act_bits=8)  # nothing below 8 bits to keep: the same row as without it
    assert "keep_8bit" not in at_8.to_options() and at_8.replace(weight_bits=4).keep_8bit == ("first", "last")
    assert hash(r) == hash(Recipe.from_options(4, 8, r.to_options()))


@pytest.mark.parametrize("kwargs, words", [
    (dict(weight_bits=1), "weight_bits must be an integer in 2..16"),
    (dict(keep_8bit="middle"), "keep_8bit: unknown ['middle']"),
    (dict(weight_range="max"), "unknown weight_range 'max'; valid: minmax, mse"),
    (dict(weight_rounding="floor"), "unknown weight_rounding 'floor'"),
    (dict(bias_correction="yes"), "bias_correction must be true or false"),
    (dict(adaround={"steps": 1}), "unknown AdaRound setting 'steps'"),
    (dict(adaround={"iters": 5}), "apply to weight_rounding=adaround, not nearest"),
    (dict(point_bits={"x": 1}), "point_bits['x'] must be an integer in 2..16"),
])
def test_bad_settings_are_one_line_errors_at_construction(kwargs, words):
    with pytest.raises(ValueError) as err:
        Recipe(**kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_row_options_are_named():
    with pytest.raises(ValueError, match="unknown recipe option 'colour'"):
        Recipe.from_options(8, 8, {"colour": "red"})


def test_point_bits_set_one_point_and_name_a_missing_one():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    plain = prepare(net, x, "B", Recipe(act_bits=4))
    first = next(iter(plain.plan.points))
    mixed = prepare(net, x, "B", Recipe(act_bits=4, point_bits={first: 8}))
    assert plain.quantizer(first).grid.bits == 4 and mixed.quantizer(first).grid.bits == 8
    others = [p for p in mixed.plan.points if p != first]
    assert others and all(mixed.quantizer(p).grid.bits == 4 for p in others)
    assert Recipe(point_bits={first: 8}).to_options() == {"point_bits": f"{first}=8"}
    with pytest.raises(ValueError, match="point_bits: 'nowhere' is not a quantization point"):
        prepare(net, x, "B", Recipe(point_bits={"nowhere": 8}))
