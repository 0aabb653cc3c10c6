"""Histogram maths: the expected quantization error of a clip range, and the search over ranges.

The error is computed exactly for a histogram whose mass is uniform inside each bin: with the grid
``{k*s}`` (zero is always a grid point), the error ``f(x) = |x - Q(x)|**p`` is a sawtooth of
rounding error inside the representable range and a power of the clipping distance outside it. Its
antiderivative ``P`` has a closed form, so a bin ``[a, b]`` holding ``n`` values contributes
``n * (P(b) - P(a)) / (b - a)``: clipping plus rounding, for the levels the grid really has (its
zero-point rounding included). Values exactly zero are counted apart: zero is on every grid.
``p = 2`` is the mean squared error; a larger ``p`` weighs the few large (clipping) errors more.

Used by Activation Redistribution (D); reusable by MSE/percentile calibrators and diagnostics.
"""

from __future__ import annotations

import contextlib

import torch

from .grid import QuantGrid, range_to_qparams


def _sawtooth_primitive(x: torch.Tensor, s: torch.Tensor, p: float) -> torch.Tensor:
    """Antiderivative of |x - round(x/s)*s|**p that is 0 at x = -s/2.

    ``(n*2*half + sign(r)*|r|**(p+1) + half) / (p+1)`` with ``n = floor(x/s + 0.5)``, ``r = x - n*s``,
    computed in place, op for op, so the result is bit-identical to the expression with temporaries.
    """
    n = torch.div(x, s).add_(0.5).floor_()
    r = torch.mul(n, s)
    r = torch.sub(x, r, out=r) if r.shape == x.shape else x - r
    half = (s / 2) ** (p + 1)
    rp = r.abs().pow_(p + 1)
    return n.mul_(2).mul_(half).add_(r.sign_().mul_(rp)).add_(half).div_(p + 1)


def _error_primitive(x: torch.Tensor, s: torch.Tensor, lo_q: torch.Tensor, hi_q: torch.Tensor, p: float) -> torch.Tensor:
    """Antiderivative of the clip+round error |x - Q(x)|**p on the grid with ends ``lo_q``/``hi_q``."""
    a, b = lo_q - s / 2, hi_q + s / 2
    inner = _sawtooth_primitive(torch.clamp(x, a, b), s, p).sub_(_sawtooth_primitive(a, s, p))
    half = (s / 2) ** (p + 1)
    # Beyond the grid's ends: the clipping error, zero inside (as torch.where(.., zeros) gives).
    upper = torch.sub(x, hi_q).clamp_min_(0).pow_(p + 1).sub_(half).div_(p + 1)
    upper = upper.masked_fill_(torch.gt(x, b).logical_not_(), 0.0)
    lower = torch.sub(lo_q, x).clamp_min_(0).pow_(p + 1)
    lower = torch.sub(half, lower, out=lower)
    lower = lower.div_(p + 1)
    lower = lower.masked_fill_(torch.lt(x, a).logical_not_(), 0.0)
    return inner.add_(upper).add_(lower)


def expected_error(
    counts: torch.Tensor, edges: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, grid: QuantGrid, p: float = 2.0
) -> torch.Tensor:
    """Total error ``sum |x - Q(x)|**p`` of quantizing the histogram with clip range(s) ``[lo, hi]``.

    Args:
        counts: ``[B]`` values per bin (exact zeros excluded).
        edges: ``[B + 1]`` bin edges.
        lo, hi: clip ranges; any matching shape ``[K]`` evaluates K candidates at once.
        grid: the integer grid the tensor is stored on.
        p: the error's exponent (2: squared error).

    Returns:
        ``[K]`` summed errors (with ``p=2``, divide by the number of values for the MSE).
    """
    lo = torch.as_tensor(lo, dtype=torch.float64).reshape(-1)
    hi = torch.as_tensor(hi, dtype=torch.float64).reshape(-1)
    e = edges.double()[None, :]
    c = counts.double()[None, :]
    width = (e[:, 1:] - e[:, :-1]).clamp_min(1e-300)
    rows = max(1, _BLOCK // e.shape[1])
    if len(lo) <= rows or p + 1 not in (2.0, 3.0):
        return _block_error(c, e, width, lo, hi, grid, p)
    # Blocks of candidates: every candidate's arithmetic and sum are those of one big block (each row
    # is reduced on its own), but the temporaries stay in cache. One thread: a few thousand small
    # ops cost more in thread hand-offs than they gain, worst of all on a busy machine. Only where
    # x**(p+1) is a product (p = 1, 2): torch's vectorised pow(x, 3.5) and its scalar tail loop
    # differ in the last bit, so for other p the values depend on how the tensor is split.
    with _one_thread():
        return torch.cat([_block_error(c, e, width, lo[i:i + rows], hi[i:i + rows], grid, p)
                          for i in range(0, len(lo), rows)])


_BLOCK = 2**17  # candidates x edges evaluated at once (1 MiB per float64 temporary)


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _block_error(c, e, width, lo, hi, grid, p) -> torch.Tensor:
    scale, zp = range_to_qparams(lo.float(), hi.float(), grid)
    s = scale.double()[:, None]
    zp = zp.double()[:, None]
    lo_q, hi_q = (grid.qmin - zp) * s, (grid.qmax - zp) * s
    prim = _error_primitive(e, s, lo_q, hi_q, p)
    per_bin = torch.sub(prim[:, 1:], prim[:, :-1]).div_(width).mul_(c)
    return per_bin.sum(dim=1)


def _best(counts, edges, lo, hi, grid, p, chunk: int = 2048) -> tuple[float, float, float]:
    errs = torch.cat([expected_error(counts, edges, lo[i:i + chunk], hi[i:i + chunk], grid, p)
                      for i in range(0, len(lo), chunk)])
    k = int(torch.argmin(errs))
    return float(lo[k]), float(hi[k]), float(errs[k])


def search_range(counts: torch.Tensor, edges: torch.Tensor, grid: QuantGrid, steps: int = 256,
                 p: float = 2.0, cover: tuple[float, float] | None = None) -> tuple[float, float]:
    """The clip range with the least expected error ``|x - Q(x)|**p`` for ``grid``.

    A tensor that is one-sided (all values >= 0 or <= 0) gets a 1-D search over its one free end;
    a two-sided tensor a joint search over both ends: a coarse ``steps/4``-squared sweep, then a
    fine sweep around the best coarse cell. Unlike torch's greedy search this never stops at a
    local increase and always uses the grid's true number of levels. With ``cover=(a, b)`` only
    ranges that contain ``[a, b]`` are candidates (each candidate end is pushed out to it).

    >>> counts = torch.ones(100); edges = torch.linspace(0, 1, 101)
    >>> lo, hi = search_range(counts, edges, QuantGrid(signed=False))
    >>> lo, round(hi, 2)
    (0.0, 1.0)
    """
    data_lo, data_hi = float(edges[0]), float(edges[-1])

    def best(c, e, lo, hi, g, p):  # with a cover, each candidate's ends pushed out to contain it
        if cover is not None:
            lo, hi = torch.clamp(lo, max=min(cover[0], 0.0)), torch.clamp(hi, min=max(cover[1], 0.0))
        return _best(c, e, lo, hi, g, p)

    fractions = torch.linspace(1.0 / steps, 1.0, steps, dtype=torch.float64)
    if data_lo >= 0 or data_hi <= 0:
        ends = fractions * (data_hi if data_hi > 0 else data_lo)
        zeros = torch.zeros_like(ends)
        lo, hi = (zeros, ends) if data_hi > 0 else (ends, zeros)
        best_lo, best_hi, _ = best(counts, edges, lo, hi, grid, p)
        return best_lo, best_hi
    n_coarse = max(steps // 8, 4)
    coarse = torch.linspace(1.0 / n_coarse, 1.0, n_coarse, dtype=torch.float64)
    fl, fh = torch.meshgrid(coarse, coarse, indexing="ij")
    # The coarse sweep only has to find the right cell: a 4x coarser histogram is plenty, and 4x faster.
    if len(counts) % 4 == 0:
        coarse_counts, coarse_edges = counts.reshape(-1, 4).sum(dim=1), edges[::4]
    else:
        coarse_counts, coarse_edges = counts, edges
    best_lo, best_hi, _ = best(coarse_counts, coarse_edges, fl.reshape(-1) * data_lo, fh.reshape(-1) * data_hi, grid, p)
    # Refine within one coarse step on each side of the coarse optimum.
    step = 1.0 / n_coarse
    f_lo, f_hi = best_lo / data_lo, best_hi / data_hi
    fine_lo = torch.linspace(max(f_lo - step, step / 8), min(f_lo + step, 1.0), 17, dtype=torch.float64)
    fine_hi = torch.linspace(max(f_hi - step, step / 8), min(f_hi + step, 1.0), 17, dtype=torch.float64)
    gl, gh = torch.meshgrid(fine_lo, fine_hi, indexing="ij")
    best_lo, best_hi, _ = best(counts, edges, gl.reshape(-1) * data_lo, gh.reshape(-1) * data_hi, grid, p)
    return best_lo, best_hi
