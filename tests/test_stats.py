"""Per-image outcomes, bootstrap intervals and paired significance tests."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from hqbench.evidence import Replicates, decode_outcomes, encode_outcomes
from hqbench.reporting.stats import bootstrap_ci, draw_summary, mcnemar_exact, paired_difference_ci, rank_cells


def _outcomes(n: int, n_right: int, seed: int = 0) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).choice(n, n_right, replace=False)] = True
    return out


# --- outcome strings ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1300])
def test_outcomes_round_trip(n):
    correct = np.random.default_rng(n).random(n) < 0.7
    s = encode_outcomes(correct)
    assert s.startswith(f"n:{n}:") and s.isascii()
    back = decode_outcomes(s)
    assert back.dtype == bool and back.tolist() == correct.tolist()


def test_outcomes_accept_lists_and_tensors():
    assert encode_outcomes([True, False, True]) == "n:3:oA=="
    assert encode_outcomes(torch.tensor([1, 0, 1])) == "n:3:oA=="
    assert encode_outcomes(torch.tensor([True, False, True])) == "n:3:oA=="
    assert len(encode_outcomes(np.ones(1300, bool))) < 240  # compact enough for a JSON row


@pytest.mark.parametrize(
    "bad",
    ["", "oA==", "n:3", "n:x:oA==", "n:3:!!!!", "n:30:oA==", "n:3:oA==:", None],
)
def test_malformed_outcomes_raise(bad):
    with pytest.raises(ValueError, match="malformed outcomes string"):
        decode_outcomes(bad)


def test_non_binary_outcomes_rejected():
    with pytest.raises(ValueError, match="bool or 0/1"):
        encode_outcomes([0.5, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        encode_outcomes(np.ones((2, 2), bool))


# --- bootstrap interval ------------------------------------------------------------------------


def test_bootstrap_ci_brackets_accuracy_and_is_fast():
    correct = _outcomes(1300, 1023)  # 78.69 %
    start = time.perf_counter()
    lo, hi = bootstrap_ci(correct)
    assert time.perf_counter() - start < 1.0
    assert lo < 78.69 < hi
    # Binomial standard error ~1.14 points: the 95 % interval is about +-2.2 points.
    assert 3.5 < hi - lo < 5.5
    assert bootstrap_ci(correct) == (lo, hi)  # seeded
    plo, phi = bootstrap_ci(correct, method="percentile")
    assert abs(plo - lo) < 0.5 and abs(phi - hi) < 0.5


def test_bootstrap_ci_degenerate_and_empty():
    assert bootstrap_ci(np.ones(50, bool)) == (100.0, 100.0)
    assert bootstrap_ci(np.zeros(50, bool)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])


# --- McNemar -----------------------------------------------------------------------------------


def test_mcnemar_equal_vectors_and_known_value():
    a = _outcomes(200, 150)
    assert mcnemar_exact(a, a) == 1.0
    # 10 discordant images, all for a: p = 2 * 0.5**10.
    b = a.copy()
    b[np.flatnonzero(a)[:10]] = False
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(b, a) == pytest.approx(2 * 0.5**10)


def test_mcnemar_balanced_discordance_is_not_significant():
    a = np.array([True] * 5 + [False] * 5 + [True] * 90)
    b = np.array([False] * 5 + [True] * 5 + [True] * 90)
    assert mcnemar_exact(a, b) == 1.0


def test_mcnemar_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True, False], [True])


# --- ranking one table line --------------------------------------------------------------------


def test_rank_cells_clear_winner():
    base = _outcomes(1000, 700)
    winner = base.copy()
    winner[np.flatnonzero(~base)[:60]] = True  # +6 points, all discordant in its favour
    r = rank_cells({"A": base, "B": base.copy(), "D": winner})
    assert r["best"] == "D" and r["runner_up"] in {"A", "B"}
    assert r["significant"] and r["tied"] == ["D"]
    assert r["accuracy"]["D"] == pytest.approx(76.0)
    assert set(r["pvalues"]) == {"A", "B"} and max(r["pvalues"].values()) < 1e-10


def test_rank_cells_tie_of_three():
    base = _outcomes(1000, 780)
    wrong, right = np.flatnonzero(~base), np.flatnonzero(base)
    a, b, c, d = base.copy(), base.copy(), base.copy(), base.copy()
    b[wrong[:2]] = True  # +2 images
    c[wrong[2:5]] = True
    c[right[:2]] = False  # +1 image net, 5 discordant
    d[right[:40]] = False  # -40 images: clearly worse
    r = rank_cells({"A": a, "B": b, "C": c, "D": d})
    assert r["best"] == "B" and r["runner_up"] == "C"
    assert not r["significant"]
    assert r["tied"] == ["B", "C", "A"]
    assert r["pvalues"]["D"] < 0.05


def test_rank_cells_equal_accuracy_first_listed_wins():
    a = np.array([True, False] * 50)
    b = ~a  # same accuracy, every image discordant
    r = rank_cells({"C": a, "A": b})
    assert r["best"] == "C" and r["pvalues"] == {"A": 1.0}
    assert r["tied"] == ["C", "A"] and not r["significant"]


def test_rank_cells_single_and_errors():
    r = rank_cells({"D": [True, False]})
    assert r["best"] == "D" and r["runner_up"] is None and r["tied"] == ["D"] and not r["significant"]
    with pytest.raises(ValueError, match="no cells"):
        rank_cells({})
    with pytest.raises(ValueError, match="'B' is not paired with 'A'"):
        rank_cells({"A": [True, False], "B": [True]})


# --- calibration draws -------------------------------------------------------------------------


def test_draw_summary():
    mean, std = draw_summary([78.0, 79.0, 80.0])
    assert mean == pytest.approx(79.0) and std == pytest.approx(1.0)  # sample std, ddof=1
    assert draw_summary([78.5]) == (78.5, None)
    with pytest.raises(ValueError, match="no values"):
        draw_summary([])


def test_paired_difference_ci_is_narrow_for_shared_images_and_checks_pairing():
    a = _outcomes(1300, 1027)
    b = a.copy()
    b[np.flatnonzero(a)[:13]] = False  # 13 images lost: -1.0 point
    lo, hi = paired_difference_ci(b, a)
    assert lo < -1.0 < hi <= 0.0 and hi - lo < 1.5  # unpaired intervals of each are ~4.4 points wide
    assert paired_difference_ci(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        paired_difference_ci(a, a[:-1])
    rep = Replicates(80.0, np.array([79.0, 80.0, 81.0, 80.5]), n=100, seed=0)
    worse = Replicates(78.0, rep.values - np.array([1.0, 2.0, 3.0, 2.0]), n=100, seed=0)
    lo, hi = paired_difference_ci(worse, rep)
    assert -3.0 <= lo < hi <= -1.0
    with pytest.raises(ValueError, match="same resamples"):
        paired_difference_ci(worse, Replicates(80.0, rep.values, n=100, seed=1))
