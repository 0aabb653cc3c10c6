"""Which activation point hurts: per-point sensitivity of a calibrated
:class:`~hqbench.quant.model.QuantizedModel`, and mixed precision chosen from it.

Two directions, each one forward pass over the batches per point (plus one for the float
reference and one for the starting model):

* ``reverse`` (AIMET's way): everything quantized, one point restored to ``restore_bits`` (8) or to
  float; a point's ``gain_db`` is how much output SQNR its restoration wins back.
* ``one_at_a_time``: everything float (weights too), one point quantized; a point's ``gain_db`` is
  the output SQNR it costs (float's is infinite, so the gain is the negated SQNR of that model).

Either way the ranking is by the error of the model's *output* against the float model's, most
sensitive first: its SQNR (``criterion="sqnr"``, task-free: logits or raw detector heads), or, for a
classifier's logits, the mean KL divergence of the quantized softmax from the float one
(``"kl"``): SQNR weighs all 1000 logits alike, KL the few classes that decide the Top-1 (a 4-bit
logit grid ties them, which costs Top-1 far more than SQNR). A task's per-sample score
(``score_fn``, e.g. Top-1 correct) is recorded for each point on the same samples, so a report can
put a paired interval on the metric's change (:mod:`hqbench.reporting.sensitivity`).

A point's bits change by :meth:`QuantizedModel.set_point_bits`, from the statistics its calibrator
kept: no pass over the calibration data is made again, and the model's qparams are exactly as
before afterwards (checked by the tests).

:func:`promote` is the mixed-precision step: the ``reverse`` ranking at 8 bits, and the top of it
promoted under a budget (a count or a share of the points). ``search="single"`` takes the top of one
ranking (each point's gain measured with every other point at the low width); ``"greedy"`` promotes
one point at a time and ranks the rest again with it promoted, so a point that only helps beside
another is found (a full ranking per promoted point).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch.utils._pytree import tree_map

from .fake import OFF, QUANT
from .layer_report import _cosine, _db, _leaves
from .recipe import MIXED_CRITERIA, MIXED_SEARCHES

DIRECTIONS = ("reverse", "one_at_a_time")


@dataclass
class SensitivityReport:
    """What :func:`sensitivity` measured; ``points`` in execution order.

    ``reference`` is the model every point's change starts from (all quantized for ``reverse``,
    all float for ``one_at_a_time``): its output SQNR against float and its per-sample scores.
    A point's row: ``name``, ``index`` (execution order), ``producer``, ``bits`` (its width in the
    model), ``sqnr_db`` (output SQNR with that point changed), ``gain_db`` (see the module), ``cosine``,
    ``kl`` (mean KL divergence of the softmax from float's; None unless the output is one 2-D
    tensor of logits), ``gain_kl`` (the KL the change removes; ``one_at_a_time``: the KL it adds),
    ``outcomes`` (per-sample scores, or None) and ``skipped`` (why it was not changed, or None).
    ``criterion`` ranks them: ``gain_db`` (``"sqnr"``) or ``gain_kl`` (``"kl"``).
    """

    direction: str
    restore_bits: int | None
    method: str
    weight_bits: int
    act_bits: int
    samples: int
    passes: int = 0
    seconds: float = 0.0  # the whole ranking
    float_seconds: float = 0.0  # its one float pass over the samples: the unit of its cost
    reference: dict = field(default_factory=dict)
    points: list[dict] = field(default_factory=list)
    criterion: str = "sqnr"

    def ranked(self) -> list[dict]:
        """The changed points, most sensitive first (largest gain by the criterion); skipped ones are left out."""
        key = _GAIN[self.criterion]
        changed = [p for p in self.points if p["skipped"] is None]
        return sorted(changed, key=lambda p: (-p[key] if p[key] is not None else math.inf, p["index"]))

    def to_dict(self) -> dict:
        return asdict(self)


class _OutputError:
    """Running sums of the output against the float reference's, and the per-sample scores."""

    def __init__(self):
        self.signal = self.noise = self.quant_sq = 0.0
        self.kl_sum, self.kl_samples, self.logits = 0.0, 0, True
        self.scores: list[torch.Tensor] = []

    def add(self, ref: list[torch.Tensor], out: Any, score: torch.Tensor | None) -> None:
        leaves = _leaves(out)
        for r, o in zip(ref, leaves):
            r64, o64 = r.double(), o.detach().double()
            self.signal += float(r64.square().sum())
            self.noise += float((o64 - r64).square().sum())
            self.quant_sq += float(o64.square().sum())
        self.logits = self.logits and len(leaves) == 1 and leaves[0].dim() == 2
        if self.logits:  # KL(float softmax || quantized softmax), summed over the samples
            log_ref, log_out = ref[0].double().log_softmax(1), leaves[0].detach().double().log_softmax(1)
            self.kl_sum += float((log_ref.exp() * (log_ref - log_out)).sum())
            self.kl_samples += len(log_ref)
        if score is not None:
            self.scores.append(score.detach().reshape(-1).cpu())

    def row(self) -> dict:
        outcomes = torch.cat(self.scores).tolist() if self.scores else None
        return {"sqnr_db": _db(self.signal, self.noise),
                "cosine": _cosine((self.signal + self.quant_sq - self.noise) / 2, self.signal, self.quant_sq),
                "kl": self.kl_sum / self.kl_samples if self.logits and self.kl_samples else None,
                "outcomes": outcomes}


def _forward_all(qmodel, batches, input_fn, score_fn, error: _OutputError, refs: list | None) -> list:
    """One forward over ``batches`` into ``error``; without ``refs`` (the float pass) it returns
    every batch's output tensors, as the reference of the other passes."""
    outs = []
    for i, batch in enumerate(batches):
        out = qmodel.model(*input_fn(batch))
        if refs is None:
            outs.append([t.detach().clone() for t in _leaves(out)])
        error.add(outs[-1] if refs is None else refs[i], out, None if score_fn is None else score_fn(batch, out))
    return outs


@contextlib.contextmanager
def _changed(qmodel, q, direction: str, restore_bits: int | None, recipe):
    """Point ``q`` changed as ``direction`` says for the forwards inside, and put back after."""
    if direction == "one_at_a_time":  # float model, this one point quantized
        q.mode = QUANT
        try:
            yield
        finally:
            q.mode = OFF
    elif restore_bits is None:  # quantized model, this one point float
        q.mode = OFF
        try:
            yield
        finally:
            q.mode = QUANT
    else:  # quantized model, this one point re-frozen at restore_bits
        qmodel.set_point_bits({**dict(recipe.point_bits), q.name: restore_bits})
        try:
            yield
        finally:
            qmodel.set_point_bits(dict(recipe.point_bits))


_GAIN = {"sqnr": "gain_db", "kl": "gain_kl"}  # the row field each criterion ranks by
_MEASURED = ("sqnr_db", "gain_db", "cosine", "kl", "gain_kl", "outcomes")  # a point's row: None until measured


def _gain_kl(direction: str, reference_kl: float | None, point_kl: float | None) -> float | None:
    if point_kl is None or reference_kl is None:
        return None
    return point_kl if direction == "one_at_a_time" else reference_kl - point_kl  # float's KL is 0


def _gain(direction: str, reference_db: float | None, point_db: float | None) -> float | None:
    if point_db is None:
        return None
    if direction == "one_at_a_time":  # the float model's SQNR is infinite: what this point alone costs
        return -point_db
    if reference_db is None:
        return None
    if math.isinf(point_db) or math.isinf(reference_db):
        return math.inf if point_db > reference_db else 0.0 if point_db == reference_db else -math.inf
    return point_db - reference_db


@contextlib.contextmanager
def _left_as_found(qmodel):
    """The model in eval mode inside; its mode, quantizer modes, point widths and train/eval state
    as they were afterwards, also on error."""
    mode, training, recipe = qmodel.mode, qmodel.model.training, qmodel.recipe
    modes = {q: q.mode for q in qmodel.quantizers.values()}
    qmodel.model.eval()
    try:
        yield
    finally:
        if qmodel.recipe != recipe:
            qmodel.set_point_bits(dict(recipe.point_bits))
        qmodel.set_mode(mode)
        for q, m in modes.items():
            q.mode = m
        qmodel.model.train(training)


@torch.no_grad()
def sensitivity(qmodel, batches: Iterable, input_fn: Callable[[Any], tuple], direction: str = "reverse",
                restore_bits: int | None = 8, score_fn: Callable[[Any, Any], torch.Tensor | None] | None = None,
                on_point: Callable[[int, int], None] | None = None, criterion: str = "sqnr") -> SensitivityReport:
    """Rank the activation points of calibrated ``qmodel`` by how much each one changes its output.

    Args:
        batches: the samples (a re-iterable, e.g. a list of calibration batches): one forward over
            them per point, two more for the references.
        direction: ``"reverse"`` or ``"one_at_a_time"`` (see the module).
        restore_bits: ``reverse`` only: the width a point is restored to; None restores it to float.
            A point already at least this wide is skipped.
        score_fn: ``score_fn(batch, output)``: a per-sample score of the task's metric (a 1-D
            tensor, e.g. Top-1 correct), recorded per point; None records none.
        on_point: called as ``on_point(done, total)`` after each point (progress bars).
        criterion: what ranks the points: ``"sqnr"`` or ``"kl"`` (see the module).

    The model's mode, qparams, recipe and train/eval state are as before afterwards, also on error.

    Raises:
        ValueError: an unknown direction or criterion, no batch, or ``"kl"`` on a model whose output
            is not one 2-D tensor of logits.
        RuntimeError: the model was never calibrated, or (``restore_bits``) a point's calibrator
            holds no statistics (the state was loaded, not calibrated).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown sensitivity direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    if criterion not in MIXED_CRITERIA:
        raise ValueError(f"unknown sensitivity criterion {criterion!r}; valid: {', '.join(MIXED_CRITERIA)}")
    batches = batches if isinstance(batches, (list, tuple)) else list(batches)
    if not batches:
        raise ValueError("sensitivity: no batch was given")
    start, recipe = time.perf_counter(), qmodel.recipe
    order = {name: i for i, name in enumerate(qmodel.plan.points)}  # the recorded graph's execution order
    quantizers = sorted(qmodel.quantizers.values(), key=lambda q: order[q.name])
    reverse = direction == "reverse"

    def forward_all(error: _OutputError, refs: list | None) -> list:
        return _forward_all(qmodel, batches, input_fn, score_fn, error, refs)
    points, passes = [], 0
    with _left_as_found(qmodel):
        qmodel.set_mode("float")
        reference = _OutputError()
        float_start = time.perf_counter()
        refs = forward_all(reference, None)
        samples = sum(len(r[0]) for r in refs) if refs and refs[0] else len(batches)
        float_seconds = time.perf_counter() - float_start
        passes += 1
        if reverse:
            qmodel.set_mode(QUANT)
            reference = _OutputError()
            forward_all(reference, refs)
            passes += 1
        ref_row = reference.row()
        if criterion == "kl" and ref_row["kl"] is None:
            raise ValueError("criterion kl ranks by the softmax of a classifier's logits; this model's output "
                             "is not one 2-D tensor (a detector's heads): use criterion sqnr")
        for done, q in enumerate(quantizers, 1):
            row = {"name": q.name, "index": done - 1, "producer": qmodel.plan.points[q.name].producer,
                   "bits": q.grid.bits, **dict.fromkeys(_MEASURED), "skipped": None}
            if reverse and restore_bits is not None and q.grid.bits >= restore_bits:
                row["skipped"] = f"already {q.grid.bits} bits"
            else:
                error = _OutputError()
                with _changed(qmodel, q, direction, restore_bits, recipe):
                    forward_all(error, refs)
                passes += 1
                row.update(error.row())
                row.update(gain_db=_gain(direction, ref_row["sqnr_db"], row["sqnr_db"]),
                           gain_kl=_gain_kl(direction, ref_row["kl"], row["kl"]))
            points.append(row)
            if on_point is not None:
                on_point(done, len(quantizers))
    return SensitivityReport(direction, restore_bits if reverse else None, qmodel.method, qmodel.weight_bits,
                             qmodel.act_bits, samples, passes, round(time.perf_counter() - start, 2),
                             round(float_seconds, 3), ref_row, points, criterion)


def first_samples(batches: list, count: int | None, input_fn: Callable[[Any], tuple]) -> list:
    """The batches that hold the first ``count`` samples (the last one cut to fit); all when None."""
    if count is None:
        return list(batches)
    kept, seen = [], 0
    for batch in batches:
        if seen >= count:
            break
        size = int(input_fn(batch)[0].shape[0])
        take = min(size, count - seen)
        kept.append(batch if take == size else tree_map(lambda t: t[:take] if isinstance(t, torch.Tensor) else t, batch))
        seen += take
    return kept


def budget_points(budget: int | float | None, total: int) -> int:
    """How many points a budget promotes: a count as given (at most ``total``), a share of ``total``
    rounded down (``0.1`` of 64 points: 6, so the share is never exceeded)."""
    if budget is None:
        return 0
    if isinstance(budget, float):
        return int(math.floor(budget * total + 1e-9))
    return min(int(budget), total)


@dataclass
class Promotion:
    """What :func:`promote` chose: the points promoted (most sensitive first), the budget's count and
    the ranking it chose from (names, most sensitive first; pass it back to skip the measurement)."""

    promoted: list[str]
    budget: int
    ranking: list[str]
    report: SensitivityReport | None = None


def promote(qmodel, batches: Iterable, input_fn: Callable[[Any], tuple], budget: int | float | None,
            bits: int = 8, ranking: list[str] | None = None, search: str = "single", criterion: str = "sqnr",
            on_point: Callable[[int, int], None] | None = None) -> Promotion:
    """Mixed precision: promote the ``budget`` most sensitive points of calibrated ``qmodel`` to ``bits``.

    ``search="single"``: the top of :func:`sensitivity`'s ``reverse`` ranking at ``bits`` over
    ``batches``. ``"greedy"``: one point at a time, the best of a ``reverse`` ranking measured with
    the points chosen so far promoted (``budget`` rankings in all). ``ranking``, an earlier
    :class:`Promotion`'s (the same model, calibration, widths and search), skips the measurement: a
    greedy ranking is the order of its promotions, so a shorter one is continued, not re-measured.
    ``criterion`` (``"sqnr"`` or ``"kl"``) is what the rankings measure (:func:`sensitivity`). Only
    points whose restoration gains by it are promoted, so fewer than the budget may be. The promoted points are added to the recipe's ``point_bits`` (:meth:`QuantizedModel.set_point_bits`),
    which its quant state, the integer executor and the ONNX export all take.
    """
    if search not in MIXED_SEARCHES:
        raise ValueError(f"unknown mixed-precision search {search!r}; valid: {', '.join(MIXED_SEARCHES)}")
    count = budget_points(budget, len(qmodel.plan.points))
    report = None
    if count and ranking is None and search == "single":
        report = sensitivity(qmodel, batches, input_fn, "reverse", restore_bits=bits, on_point=on_point,
                             criterion=criterion)
        ranking = _gaining(report)
    ranking = list(ranking or [])
    promoted = ranking[:count]
    _promote(qmodel, promoted, bits)
    if search == "greedy":
        while len(promoted) < count:
            report = sensitivity(qmodel, batches, input_fn, "reverse", restore_bits=bits, on_point=on_point,
                             criterion=criterion)
            best = _gaining(report)[:1]
            if not best:  # no point left whose restoration helps
                break
            promoted += best
            _promote(qmodel, best, bits)
        ranking = promoted if len(promoted) >= len(ranking) else ranking
    return Promotion(promoted, count, ranking, report)


def _gaining(report: SensitivityReport) -> list[str]:
    """The points whose restoration gains by the report's criterion, most first."""
    key = _GAIN[report.criterion]
    return [p["name"] for p in report.ranked() if p[key] is not None and p[key] > 0]


def _promote(qmodel, names: list[str], bits: int) -> None:
    if names:
        qmodel.set_point_bits({**dict(qmodel.recipe.point_bits), **dict.fromkeys(names, bits)})
