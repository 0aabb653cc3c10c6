"""Paired evidence: what a task records per row so tables can test two methods on the same images.

Tasks make it (per-image Top-1 outcomes, mAP50 on shared bootstrap resamples), rows carry it as
text, and :mod:`hqbench.reporting.stats` tests it. It sits below both: numpy and torch only.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_PREFIX = "n:"


def _as_bool(correct: Any, name: str = "correct") -> np.ndarray:
    """A 1-D bool array from a list, numpy array or (CPU or GPU) torch tensor."""
    if hasattr(correct, "detach"):  # torch.Tensor, without importing torch here
        correct = correct.detach().cpu().numpy()
    arr = np.asarray(correct)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of per-image outcomes, got shape {arr.shape}")
    if arr.dtype != bool:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name}: per-image outcomes must be bool or 0/1, got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


def encode_outcomes(correct: Sequence[bool] | np.ndarray | Any) -> str:
    """Pack per-image correctness into a short ASCII string for a result row.

    The format is ``"n:<count>:<base64 of np.packbits>"``: about 1/6 of a byte per image
    (1300 images -> 227 characters), JSON- and CSV-safe, and self-checking on decode.

    >>> encode_outcomes([True, False, True])
    'n:3:oA=='
    """
    arr = _as_bool(correct)
    return f"{_PREFIX}{arr.size}:{base64.b64encode(np.packbits(arr).tobytes()).decode('ascii')}"


def decode_outcomes(s: str) -> np.ndarray:
    """Inverse of :func:`encode_outcomes`.

    Raises:
        ValueError: If ``s`` is not such a string (wrong prefix, count, base64 or length).

    >>> decode_outcomes("n:3:oA==").tolist()
    [True, False, True]
    """
    if not isinstance(s, str) or not s.startswith(_PREFIX) or s.count(":") != 2:
        raise ValueError(f"malformed outcomes string {_preview(s)}: expected 'n:<count>:<base64>'")
    count_text, payload = s[len(_PREFIX) :].split(":")
    if not count_text.isdigit():
        raise ValueError(f"malformed outcomes string {_preview(s)}: count {count_text!r} is not an integer")
    n = int(count_text)
    try:
        packed = np.frombuffer(base64.b64decode(payload, validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError):
        raise ValueError(f"malformed outcomes string {_preview(s)}: payload is not base64") from None
    if packed.size != math.ceil(n / 8):
        raise ValueError(
            f"malformed outcomes string {_preview(s)}: {packed.size} bytes cannot hold exactly {n} outcomes"
        )
    return np.unpackbits(packed, count=n).astype(bool)


def _preview(s: object) -> str:
    text = repr(s)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Replicates:
    """A metric on the full image set and on bootstrap resamples of it, in percent (e.g. mAP50).

    Rows of the same images store replicates over the same resamples (fixed by ``n`` and
    ``seed``, see :func:`hqbench.evidence.average_precision.resample_weights`), which makes
    their differences a paired bootstrap.
    """

    observed: float
    values: np.ndarray
    n: int
    seed: int

    def ci(self, confidence: float = 0.95) -> tuple[float, float]:
        """Percentile interval of the replicates."""
        lo, hi = np.percentile(self.values, [50 * (1 - confidence), 50 * (1 + confidence)])
        return float(lo), float(hi)

    def encode(self) -> dict[str, Any]:
        """A JSON-ready dict for a result row (values as base64 float32)."""
        payload = base64.b64encode(np.asarray(self.values, "<f4").tobytes()).decode("ascii")
        return {"observed": round(float(self.observed), 6), "n": self.n, "seed": self.seed, "values": payload}

    @classmethod
    def decode(cls, d: Any) -> Replicates:
        """Inverse of :meth:`encode`; a one-line ValueError on anything else."""
        try:
            values = np.frombuffer(base64.b64decode(d["values"], validate=True), "<f4").astype(np.float64)
            return cls(float(d["observed"]), values, int(d["n"]), int(d["seed"]))
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise ValueError(f"malformed bootstrap replicates {_preview(d)}: expected "
                             "{'observed', 'n', 'seed', 'values' (base64 float32)}") from None


__all__ = ["Replicates", "decode_outcomes", "encode_outcomes"]
