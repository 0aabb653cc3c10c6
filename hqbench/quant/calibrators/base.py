"""The calibrator contract: observe float activations, then choose one clipping range.

Calibrators only pick ``[lo, hi]``; :func:`hqbench.quant.grid.range_to_qparams` maps every range onto
its grid, so methods differ in nothing else. Statistics are buffers, so ``state_dict`` carries them,
and each class declares beside them how they merge across processes (:class:`MergeRule`, read by
:mod:`hqbench.quant.distributed`; torchmetrics' ``add_state(..., dist_reduce_fx=...)`` idea).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import torch
from torch import nn

from ..grid import QuantGrid

MIN, MAX, SUM = "min", "max", "sum"


@dataclass(frozen=True)
class MergeRule:
    """How one calibrator class's statistics merge across DDP ranks after each calibration pass.

    Attributes:
        reduce: ``{pass_index: {buffer: "min" | "max" | "sum"}}``, an all_reduce each; exact for
            min/max ranges and for histograms on fixed bins.
        replay: the statistics depend on batch order (a moving average): every rank's per-batch
            ranges are gathered and replayed in the global batch order (exact).
        replicate: the statistics cannot merge shards exactly: every rank observes every batch (no
            speed-up) and the ranks are checked to hold the same statistics.
    """

    reduce: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    replay: bool = False
    replicate: bool = False

    def __post_init__(self) -> None:
        bad = sorted({op for ops in self.reduce.values() for op in ops.values()} - {MIN, MAX, SUM})
        if bad:
            raise ValueError(f"merge rule: unknown reduction {bad[0]!r}; valid: {MIN}, {MAX}, {SUM}")

    def buffers(self) -> set[str]:
        return {name for ops in self.reduce.values() for name in ops}


RANGE = {"min_val": MIN, "max_val": MAX}
_HISTC_EXACT = 2**24  # torch.histc counts in float32: exact integers up to here per bin and call


def histogram_counts(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """float64 counts of ``x`` in ``bins`` equal bins over ``[lo, hi]`` (values outside are ignored;
    ``hi`` falls in the last bin), on ``x``'s device: ``torch.histc``'s counts, exact at any size.

    ``torch.histc`` has no deterministic CUDA kernel, so with ``torch.use_deterministic_algorithms``
    on (``trainer.deterministic=true``) a CUDA tensor is binned by histc's own formula and counted
    with ``torch.bincount``, which is deterministic without weights.
    """
    x = x.detach().reshape(-1)
    if x.is_cuda and torch.are_deterministic_algorithms_enabled():
        return bincount_histogram(x, bins, lo, hi)
    counts = torch.zeros(bins, dtype=torch.float64, device=x.device)
    for start in range(0, x.numel(), _HISTC_EXACT):
        counts += torch.histc(x[start:start + _HISTC_EXACT], bins, lo, hi).double()
    return counts


def bincount_histogram(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """``torch.histc``'s counts by its own formula, ``int((x - lo) * bins / (hi - lo))`` in ``x``'s
    dtype, counted by ``torch.bincount`` (deterministic on CUDA); equal to histc on the CPU
    (tests/quant/test_devices.py)."""
    lo_t, hi_t = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in (lo, hi))
    inside = x[(x >= lo_t) & (x <= hi_t)]
    index = ((inside - lo_t) * bins / (hi_t - lo_t)).long().clamp_(max=bins - 1)
    return torch.bincount(index, minlength=bins).double()


def histogram_quantile(counts: torch.Tensor, lo: float, hi: float, q: float) -> float:
    """The ``q`` quantile of the values a histogram on equal bins over ``[lo, hi]`` holds, linear
    inside its bin (so within one bin width of the exact one).

    Value ``j`` of the ``n`` sorted ones fills the cumulative count ``(j, j + 1]``; like
    ``torch.quantile`` the quantile is at rank ``q * (n - 1)``, here the middle of its count.
    """
    bins = len(counts)
    cdf = torch.cumsum(counts, 0)
    target = q * (float(cdf[-1]) - 1.0) + 0.5
    k = min(int(torch.searchsorted(cdf, torch.tensor([target], dtype=cdf.dtype, device=cdf.device))), bins - 1)
    below = float(cdf[k - 1]) if k > 0 else 0.0
    inside = float(counts[k])
    frac = (target - below) / inside if inside > 0 else 1.0
    return lo + (k + min(max(frac, 0.0), 1.0)) * (hi - lo) / bins


class Calibrator(nn.Module):
    """Base class. Subclasses implement :meth:`observe` and :meth:`compute_range`.

    ``num_passes`` is how many sweeps over the calibration data the method needs; the driver calls
    :meth:`begin_pass` before each one. ``merge_rule`` says how its buffers merge across processes;
    each class declares its own (a subclass may keep other state), and a class without one
    calibrates on one process only.
    """

    num_passes: int = 1
    merge_rule: ClassVar[MergeRule | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.current_pass = 0

    def begin_pass(self, index: int) -> None:
        self.current_pass = index

    def observe(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def has_data(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class _MinMaxState(Calibrator):
    """Shared buffers for calibrators that track a running min and max.

    Subclasses implement :meth:`observe_range`, which the quantizer calls directly with the
    ``torch.aminmax(x)`` it has already computed (its finiteness check), saving a reduction.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def has_data(self) -> bool:
        return bool(torch.isfinite(self.min_val) and torch.isfinite(self.max_val))

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach())
        self.observe_range(x, lo, hi)

    def observe_range(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def widen(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Grow ``[min_val, max_val]`` to hold ``[lo, hi]``."""
        self.min_val.copy_(torch.minimum(self.min_val, lo))
        self.max_val.copy_(torch.maximum(self.max_val, hi))

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val.clone(), self.max_val.clone()


class RangeThenHistogram(_MinMaxState):
    """Two passes: the tensor's range, then a histogram on fixed bins over it.

    Fixed bins are what lets histograms from several processes merge by a sum
    (:mod:`hqbench.quant.distributed`). Subclasses fill ``histogram`` in :meth:`observe_histogram`
    and choose the range in :meth:`compute_range`.
    """

    num_passes = 2
    merge_rule = MergeRule(reduce={0: RANGE, 1: {"histogram": SUM}})

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        if int(bins) < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = int(bins)
        self.register_buffer("histogram", torch.zeros(self.bins, dtype=torch.float64))

    def observe_range(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.current_pass == 0:
            self.widen(lo, hi)
        else:
            self.observe_histogram(x.detach())

    def observe_histogram(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_range(self, grid: QuantGrid) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
