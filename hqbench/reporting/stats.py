"""Uncertainty of benchmark numbers: per-image outcomes, bootstrap intervals, paired tests.

At 8 bits the calibration methods often sit a handful of images apart, so a bare "best" mark
says little. These helpers answer the two questions a results table must: how wide is a cell's
sampling interval over the evaluation images, and is one method's lead over another larger than
chance on *the same* images (paired tests, which are far more sensitive than comparing
intervals). Per-image outcomes travel inside result rows as compact strings
(:func:`hqbench.evidence.encode_outcomes`), so tables can be recomputed from a results file
alone. Metrics that do not split per image (mAP) travel as :class:`~hqbench.evidence.Replicates`
on shared bootstrap resamples instead, and :func:`paired_pvalue` picks the test that fits the
evidence. The encodings live below the tasks, in :mod:`hqbench.evidence`, which makes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from hqbench.evidence import Replicates, _as_bool

def bootstrap_ci(
    correct: Any, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0, method: str = "BCa"
) -> tuple[float, float]:
    """Bootstrap interval of the accuracy over evaluation images, in percent.

    Resamples images with replacement (vectorised: 1300 images x 2000 resamples in a few
    milliseconds). BCa corrects the skew of accuracies near 0 or 100 %; ``method="percentile"``
    is the plain alternative. All-correct or all-wrong outcomes have no spread: the interval
    collapses to the accuracy itself.

    Raises:
        ValueError: On an empty outcome vector.
    """
    arr = _as_bool(correct)
    if arr.size == 0:
        raise ValueError("bootstrap_ci: no outcomes (empty vector)")
    if arr.all() or not arr.any():
        acc = 100.0 * float(arr.mean())
        return acc, acc
    res = stats.bootstrap(
        (arr.astype(np.float64),), np.mean, n_resamples=n_resamples, confidence_level=confidence,
        method=method, vectorized=True, rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return 100.0 * float(lo), 100.0 * float(hi)


def _pair(a_correct: Any, b_correct: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_bool(a_correct, "a_correct"), _as_bool(b_correct, "b_correct")
    if a.size != b.size:
        raise ValueError(f"paired outcomes differ in length ({a.size} vs {b.size}): not the same images")
    return a, b


def discordant_counts(a_correct: Any, b_correct: Any) -> tuple[int, int]:
    """``(images a gets right and b wrong, images b gets right and a wrong)`` on the same images.

    Raises:
        ValueError: If the vectors differ in length.
    """
    a, b = _pair(a_correct, b_correct)
    return int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))


def mcnemar_exact(a_correct: Any, b_correct: Any) -> float:
    """Two-sided exact McNemar p-value that two methods differ on the same images.

    Only the discordant images count (right for one method, wrong for the other); under the
    null each is equally likely to go either way, hence a binomial test at 1/2.

    Raises:
        ValueError: If the vectors differ in length (they must be the same images, same order).
    """
    n_ab, n_ba = discordant_counts(a_correct, b_correct)
    if n_ab + n_ba == 0:
        return 1.0
    return min(1.0, float(stats.binomtest(n_ab, n_ab + n_ba, 0.5).pvalue))


def paired_replicates_pvalue(a: Replicates, b: Replicates) -> float:
    """Two-sided paired bootstrap p-value of ``a.observed - b.observed`` from replicates on shared resamples.

    The bootstrap distribution of the difference, centred on the observed one, stands in for the
    null: ``p = (1 + #{|d* - d| >= |d|}) / (1 + B)`` (Efron & Tibshirani, ch. 16).

    Raises:
        ValueError: If the two were not drawn on the same resamples (n, seed or count differ).
    """
    if (a.n, a.seed, a.values.size) != (b.n, b.seed, b.values.size):
        raise ValueError(f"replicates are not paired: {a.values.size} resamples of {a.n} images (seed {a.seed}) "
                         f"vs {b.values.size} of {b.n} (seed {b.seed})")
    observed = a.observed - b.observed
    diffs = a.values - b.values
    extreme = np.count_nonzero(np.abs(diffs - observed) >= abs(observed) - 1e-9)
    return float((1 + extreme) / (1 + diffs.size))


def pairing_key(evidence: Any) -> tuple:
    """Two pieces of evidence can be tested against each other exactly when their keys are equal."""
    if isinstance(evidence, Replicates):
        return ("replicates", evidence.n, evidence.seed, evidence.values.size)
    return ("outcomes", _as_bool(evidence).size)


def paired_difference_ci(a: Any, b: Any, confidence: float = 0.95, n_resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of ``metric(a) - metric(b)`` on the same images, in points.

    Per-image outcomes are resampled in pairs (scipy's paired BCa bootstrap), so what both methods
    get right or wrong together does not widen it; :class:`Replicates` give the percentile interval
    of their differences on the shared resamples. "Within X of FP32" is decided by this interval,
    not by the difference alone.

    Raises:
        ValueError: the two are not on the same images (or resamples).
    """
    if isinstance(a, Replicates) or isinstance(b, Replicates):
        if not (isinstance(a, Replicates) and isinstance(b, Replicates)) or pairing_key(a) != pairing_key(b):
            raise ValueError("paired_difference_ci: the two were not measured on the same resamples")
        return Replicates(a.observed - b.observed, a.values - b.values, a.n, a.seed).ci(confidence)
    x, y = _pair(a, b)
    d = x.astype(np.float64) - y.astype(np.float64)
    if (d == d[0]).all():  # no discordant images, or all the same way: no spread
        return 100.0 * float(d.mean()), 100.0 * float(d.mean())
    res = stats.bootstrap((x.astype(np.float64), y.astype(np.float64)), lambda u, v, axis: np.mean(u - v, axis=axis),
                          paired=True, vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                          method="BCa", rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return 100.0 * float(lo), 100.0 * float(hi)


def paired_pvalue(a: Any, b: Any) -> float:
    """The paired test of two methods on the same images: exact McNemar on per-image outcomes,
    the paired bootstrap on :class:`Replicates` (metrics such as mAP that do not split per image)."""
    if isinstance(a, Replicates) and isinstance(b, Replicates):
        return paired_replicates_pvalue(a, b)
    return mcnemar_exact(a, b)


def paired_comparison(a: Any, b: Any) -> dict | None:
    """``a`` against ``b`` on the same images: ``{"diff", "ci", "p"}`` (points, the paired interval,
    the paired test), or None when either is missing or they were not measured on the same images."""
    if a is None or b is None or pairing_key(a) != pairing_key(b):
        return None
    return {"diff": evidence_value(a) - evidence_value(b), "ci": paired_difference_ci(a, b), "p": paired_pvalue(a, b)}


def evidence_value(evidence: Any) -> float:
    """The metric the evidence gives on the full image set, in percent."""
    if isinstance(evidence, Replicates):
        return evidence.observed
    arr = _as_bool(evidence)
    return 100.0 * float(arr.mean()) if arr.size else float("nan")


def rank_cells(
    cells: Mapping[str, Any], alpha: float = 0.05, scores: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Rank the quantised cells of one table line and test the leader against the others.

    Args:
        cells: Method -> per-image outcomes, or :class:`Replicates`, all on the same images. On
            equal accuracy the method listed first wins, so pass them in column order.
        alpha: Significance level of the paired tests (:func:`paired_pvalue`).
        scores: Optional method -> value to rank by instead of the outcomes' accuracy, e.g.
            the mean over several calibration draws when ``cells`` holds one draw each.

    Returns:
        ``best`` (highest accuracy), ``runner_up`` (second, or None with one cell),
        ``accuracy`` (method -> %), ``pvalues`` (method -> paired p against ``best``, best
        excluded), ``significant`` (best beats the runner-up, p < alpha), ``tied`` (best first,
        then every method not significantly different from it, by accuracy) and ``alpha``.
        ``tied == [best]`` means the best beats *every* other cell; this can be False even when
        ``significant`` is True (a lower cell with few discordant images). No correction for
        multiple comparisons: with few methods per line the tests are reported, not combined.

    Raises:
        ValueError: On no cells, or cells of different lengths (naming the two methods).
    """
    if not cells:
        raise ValueError("rank_cells: no cells to rank")
    arrays = {m: v if isinstance(v, Replicates) else _as_bool(v, m) for m, v in cells.items()}
    first = next(iter(arrays))
    for m, v in arrays.items():
        if pairing_key(v) != pairing_key(arrays[first]):
            raise ValueError(f"rank_cells: {m!r} is not paired with {first!r}: "
                             f"{pairing_key(v)} vs {pairing_key(arrays[first])}")
    accuracy = {m: evidence_value(v) for m, v in arrays.items()}
    rank_by = accuracy if scores is None else {m: float(scores[m]) for m in arrays}
    order = sorted(arrays, key=lambda m: -rank_by[m])  # stable: column order breaks ties
    best = order[0]
    pvalues = {m: paired_pvalue(arrays[best], arrays[m]) for m in order[1:]}
    runner_up = order[1] if len(order) > 1 else None
    return {
        "best": best,
        "runner_up": runner_up,
        "accuracy": accuracy,
        "pvalues": pvalues,
        "significant": runner_up is not None and pvalues[runner_up] < alpha,
        "tied": [best, *(m for m in order[1:] if pvalues[m] >= alpha)],
        "alpha": alpha,
    }


def draw_summary(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1) over calibration draws.

    One draw has no spread to estimate, so its std is ``None`` (not 0, which would claim
    certainty); tables then show the plain value.

    Raises:
        ValueError: On no values.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("draw_summary: no values")
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)
