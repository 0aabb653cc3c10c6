"""Bit widths: the one check every entry point uses, and the ``w8a8`` spelling rows and configs use."""

from __future__ import annotations

import re

MIN_BITS, MAX_BITS = 2, 16  # 1 bit has no symmetric weight grid; above 16 the int32 accumulator overflows


def check_bits(value: object, name: str = "bits") -> int:
    """``value`` as an int in 2..16, or a one-line ValueError naming ``name``.

    >>> check_bits(4, "act_bits")
    4
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer in {MIN_BITS}..{MAX_BITS}, got {value!r}")
    if not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(f"{name} must be an integer in {MIN_BITS}..{MAX_BITS}, got {value!r}")
    return value


def parse_bit_widths(spec: object) -> tuple[int, int]:
    """``"w4a8"`` -> ``(4, 8)`` (weight bits, activation bits).

    >>> parse_bit_widths("w8a6")
    (8, 6)
    """
    m = re.fullmatch(r"w(\d+)a(\d+)", str(spec).strip().lower())
    if m is None:
        raise ValueError(f"bits must look like w8a8 (weight and activation bits), got {spec!r}")
    return check_bits(int(m.group(1)), f"weight bits in {spec!r}"), check_bits(int(m.group(2)), f"activation bits in {spec!r}")


def format_bit_widths(weight_bits: int, act_bits: int) -> str:
    return f"w{weight_bits}a{act_bits}"
