"""Calibration across processes (Lightning's DDP): merge calibrator statistics after every pass, by rule.

Each rank observes its share of the calibration batches (rank ``r`` of ``W`` takes global batches
``r, r + W, ...``); after every pass, :func:`sync_pass` merges every quantizer's statistics across
ranks so all ranks freeze the same qparams. The rules are declared on the calibrator classes
themselves (:class:`~hqbench.quant.calibrators.base.MergeRule`, beside the buffers they reduce:
torchmetrics' ``add_state(dist_reduce_fx=...)`` idea); this module only carries them out:

- ``reduce``: an all_reduce (MIN, MAX or SUM) per buffer and pass, all buffers of one op in one
  collective. B's range (MIN/MAX), the two-pass histograms of D, percentile, entropy and mse (the
  range on pass 0, so pass 1 bins over the common range; then SUM on fixed bins). Exact.
- ``replay`` (A's moving average): the EMA "across ranks" is the EMA over the global batch
  sequence, global batch ``i`` observed by rank ``i % W``. Each rank records its per-batch
  ``(min, max)``; they are all_gathered, interleaved into the global order and the EMA is replayed
  with the class's own update on every rank. Equal, bit for bit, to one process over the same
  batches in the same order (also with uneven shares).
- ``replicate`` (C, torch's ``HistogramObserver``): not sharded. Every rank observes every
  calibration batch (:func:`shard_batches`), so every rank holds one process's histogram and
  freezes its qparams exactly; a check after each pass refuses ranks whose statistics differ.
  C gains no speed from more processes.

A calibrator class that declares no rule is refused with an error naming it ("run calibration on
one process").

Why C is not sharded: HistogramObserver re-scales its bins whenever a batch widens the range, so the
histogram it ends with depends on the range *before* each batch, i.e. on other ranks' earlier
batches; one process already gets a different histogram if it sees the same batches in another
order. Merging shards exactly would need every rank to know the global running range before each
batch (a collective inside every quantizer's hook, per batch, in lock step) or every batch's raw
activations. Torch's own re-binning of the rank histograms onto the union range (tried before) is
close but not equal (3 % of the counts on tests/test_ddp.py's batches), and "close" is not the
same qparams.

A needs per-batch records, which a rank's EMA has lost: :func:`recording` (a context manager
around the calibration) wraps the calibrators' ``observe``/``observe_range`` for its duration and
numbers batches with a forward pre-hook on the model; no calibrator file is changed. It yields the
``on_pass_end`` callback for :meth:`QuantizedModel.calibrate`, which calls :func:`sync_pass`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from .calibrators import Calibrator
from .calibrators.base import MAX, MIN, SUM, MergeRule

_OPS = {MIN: "MIN", MAX: "MAX", SUM: "SUM"}


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_distributed() -> bool:
    """Whether a process group of more than one rank is running (calibration must merge)."""
    return _world() > 1


def _comm_device(fallback: torch.device) -> torch.device:
    """gloo reduces CPU tensors; nccl CUDA ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if fallback.type != "cpu" else fallback


def _gather_padded(rows: torch.Tensor) -> list[torch.Tensor]:
    """all_gather of ``(n_r, k)`` float64 tensors whose ``n_r`` differ per rank; rank order."""
    world = dist.get_world_size()
    device = _comm_device(rows.device)
    rows = rows.to(device)
    n = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    most = int(max(int(c) for c in counts))
    padded = torch.full((most, rows.shape[1]), float("nan"), dtype=rows.dtype, device=device)
    padded[:rows.shape[0]] = rows
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[:int(c)] for o, c in zip(out, counts)]


# ------------------------------------------------------------------ A: replay of the global EMA
class _Recorder:
    """Per-batch ``(min, max)`` of one calibrator, numbered by the model's forward calls."""

    def __init__(self, counter: list[int]) -> None:
        self.counter = counter  # shared: [local batch index of the running forward]
        self.rows: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.inside = False

    def add(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.rows.append((self.counter[0], lo.detach().clone(), hi.detach().clone()))


_RECORDERS: dict[int, _Recorder] = {}  # id(calibrator) -> recorder, while recording() is active


def _replay_moving(calibrators: list[Calibrator], pass_index: int) -> None:
    """Gather every rank's per-batch ranges, interleave (global batch ``k * W + r``), replay the EMA."""
    world = dist.get_world_size()
    rows = []
    for qi, cal in enumerate(calibrators):
        rec = _RECORDERS.get(id(cal))
        if rec is None:
            raise RuntimeError(f"calibrator {type(cal).__name__} merges by replaying per-batch ranges; wrap the "
                               "calibration in hqbench.quant.distributed.recording(qmodel)")
        for seq, (k, lo, hi) in enumerate(rec.rows):
            rows.append(torch.tensor([qi, k, seq, float(lo), float(hi)], dtype=torch.float64))
    local = torch.stack(rows) if rows else torch.zeros((0, 5), dtype=torch.float64)
    gathered = _gather_padded(local)
    per_q: dict[int, list[tuple[int, int, int, float, float]]] = {i: [] for i in range(len(calibrators))}
    for r, block in enumerate(gathered):
        for qi, k, seq, lo, hi in block.cpu().tolist():
            # global batch index k*W + r; several observes of one batch keep their order (seq)
            per_q[int(qi)].append((int(k) * world + r, int(seq), r, lo, hi))
    for qi, cal in enumerate(calibrators):
        cls = type(cal)
        # float64 holds float32 exactly: the replayed (lo, hi) are the observed ones, bit for bit
        dtype, device = cal.min_val.dtype, cal.min_val.device
        cal.min_val.fill_(float("inf"))
        cal.max_val.fill_(float("-inf"))
        _RECORDERS[id(cal)].rows.clear()
        for _, _, _, lo, hi in sorted(per_q[qi]):
            lo_t, hi_t = torch.tensor(lo, dtype=dtype, device=device), torch.tensor(hi, dtype=dtype, device=device)
            cls.observe_range(cal, torch.stack([lo_t, hi_t]), lo_t, hi_t)  # the class's own update, unwrapped


# ------------------------------------------------------------ C: every rank observes every batch
def _check_replicated(calibrators: list[Calibrator], pass_index: int) -> None:
    """C is not sharded (see the module docstring): every rank must hold the same statistics."""
    for cal in calibrators:
        obs = cal.observer
        state = torch.cat([obs.min_val.reshape(1).double(), obs.max_val.reshape(1).double(), obs.histogram.double()])
        gathered = _gather_padded(state.reshape(1, -1))
        if any(g.shape != gathered[0].shape or not torch.equal(g.nan_to_num(), gathered[0].nan_to_num())
               for g in gathered[1:]):
            raise RuntimeError(f"calibrator {type(cal).__name__} cannot merge shards exactly (torch's HistogramObserver "
                               "re-bins as batches arrive): every rank must observe every calibration batch; "
                               "hqbench.quant.distributed.shard_batches() keeps them all for it")


def _class_key(cal: Calibrator) -> str:
    cls = type(cal)
    return f"{cls.__module__}.{cls.__qualname__}"


def rule_for(cal: Calibrator) -> MergeRule:
    """The merge rule ``cal``'s class declares itself (``merge_rule`` in the class body: a subclass
    may keep other state, so an inherited rule does not count).

    Raises:
        NotImplementedError: the class declares no rule, or names a buffer it does not have.
    """
    rule = type(cal).__dict__.get("merge_rule")
    if rule is None:
        raise NotImplementedError(f"calibrator {type(cal).__name__} ({_class_key(cal)}) declares no merge_rule "
                                  "(hqbench.quant.calibrators.base.MergeRule); run calibration on one process")
    missing = sorted(rule.buffers() - dict(cal.named_buffers()).keys())
    if missing:
        raise NotImplementedError(f"calibrator {type(cal).__name__}: its merge_rule reduces {missing[0]!r}, "
                                  "which is not one of its buffers")
    return rule


def _custom_merge(rule: MergeRule) -> Callable | None:
    return _replay_moving if rule.replay else _check_replicated if rule.replicate else None


def shard_batches(qmodel, batches: list, rank: int, world: int) -> list:
    """Rank ``rank`` of ``world``'s calibration batches: ``rank, rank + world, ...`` when every
    calibrator's rule merges shards, otherwise all of them (C; and one process)."""
    if world <= 1 or len(batches) < world or any(rule_for(q.calibrator).replicate for q in qmodel.quantizers.values()):
        return list(batches)
    return list(batches[rank::world])


def check_mergeable(qmodel) -> None:
    """Raise before any work if a quantizer's calibrator has no merge rule."""
    for q in qmodel.quantizers.values():
        rule_for(q.calibrator)


def _check_same_layout(qmodel) -> None:
    """All ranks must hold the same quantizers with the same calibrators, or the reductions mix layers."""
    mine = [(q.name, _class_key(q.calibrator)) for q in qmodel.quantizers.values()]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if any(other != mine for other in everyone):
        raise RuntimeError("ranks hold different quantized layers or calibrators; cannot merge calibration")


@torch.no_grad()
def sync_pass(qmodel, pass_index: int) -> None:
    """Merge every quantizer's calibrator statistics of pass ``pass_index`` across all ranks.

    A no-op without a process group of more than one rank. Every rank must call it, after the
    same pass, with the same quantized model.

    Raises:
        NotImplementedError: a calibrator without a merge rule (named).
    """
    if not is_distributed():
        return
    cals = [q.calibrator for q in qmodel.quantizers.values()]
    rules = [rule_for(c) for c in cals]
    if pass_index == 0:
        _check_same_layout(qmodel)
    # Buffers to all_reduce, one flat tensor per op (a few collectives in all, not one per layer).
    by_op: dict[str, list[torch.Tensor]] = {}
    for cal, rule in zip(cals, rules):
        for name, op in rule.reduce.get(pass_index, {}).items():
            by_op.setdefault(op, []).append(getattr(cal, name))
    for op, bufs in by_op.items():
        device = _comm_device(bufs[0].device)
        flat = torch.cat([b.reshape(-1).to(device=device, dtype=torch.float64) for b in bufs])
        dist.all_reduce(flat, op=getattr(dist.ReduceOp, _OPS[op]))
        offset = 0
        for b in bufs:
            n = b.numel()
            b.copy_(flat[offset:offset + n].reshape(b.shape).to(b))
            offset += n
    groups: dict[Callable, list[Calibrator]] = {}
    for cal, rule in zip(cals, rules):
        merge = _custom_merge(rule)
        if merge is not None:
            groups.setdefault(merge, []).append(cal)
    for merge in sorted(groups, key=lambda f: f.__name__):  # the same collective order on every rank
        merge(groups[merge], pass_index)


@contextlib.contextmanager
def recording(qmodel) -> Iterator[Callable[[int], None]]:
    """Record what merge rules need during calibration; yields the ``on_pass_end`` callback.

    Wraps, for its duration only, the ``observe``/``observe_range`` of every calibrator whose rule
    replays per-batch ranges (A), and numbers the model's forward calls (one per batch). Outside a
    process group it records nothing and the callback does nothing.

    Raises:
        NotImplementedError: a calibrator without a merge rule (named), before any batch is seen.
    """
    if not is_distributed():
        yield lambda index: None
        return
    check_mergeable(qmodel)
    counter = [-1]
    pre = qmodel.model.register_forward_pre_hook(lambda module, args: counter.__setitem__(0, counter[0] + 1),
                                                 prepend=True)  # before any hook that observes the input
    wrapped = []
    for q in qmodel.quantizers.values():
        cal = q.calibrator
        if not rule_for(cal).replay:
            continue
        rec = _RECORDERS[id(cal)] = _Recorder(counter)
        cls = type(cal)

        def observe(x, cal=cal, cls=cls, rec=rec):
            lo, hi = torch.aminmax(x.detach())
            rec.add(lo, hi)
            rec.inside = True  # the class's observe may call observe_range: record the batch once
            try:
                cls.observe(cal, x)
            finally:
                rec.inside = False

        def observe_range(x, lo, hi, cal=cal, cls=cls, rec=rec):
            if not rec.inside:
                rec.add(lo, hi)
            cls.observe_range(cal, x, lo, hi)

        cal.observe = observe
        if hasattr(cls, "observe_range"):
            cal.observe_range = observe_range
        wrapped.append(cal)

    def on_pass_end(index: int) -> None:
        sync_pass(qmodel, index)
        counter[0] = -1  # the next pass numbers its batches from 0 again

    try:
        yield on_pass_end
    finally:
        pre.remove()
        for cal in wrapped:
            cal.__dict__.pop("observe", None)
            cal.__dict__.pop("observe_range", None)
            _RECORDERS.pop(id(cal), None)
