"""What the CPU offers int8 kernels: the byte dot-product instructions, read from ``/proc/cpuinfo``.

Fused int8 kernels on x86 without VNNI multiply u8 x s8 pairs with ``vpmaddubsw``, which adds two
products into a saturating int16: 255 * 127 * 2 = 64770 > 32767, so a layer's sums can clip and
its output leaves fake-quant's (issue 29 measured 90.6 % Top-1 agreement on an AMD Zen 1). With
VNNI (``vpdpbusd``, 32-bit sums) or AMX the same kernels are exact. Engines record this in the row
and pick an exact path where the CPU has no such instruction (see
:func:`hqbench.quant.onnx_engine.weight_container_for`).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# x86 flags with 32-bit-accumulating u8 x s8 dot products; aarch64's SDOT/UDOT and I8MM
EXACT_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


@functools.lru_cache(maxsize=1)
def cpu_features(cpuinfo: str | None = None) -> dict:
    """``{"model": ..., "arch": ..., "int8_dot": [flags], "saturating_u8s8": bool}``.

    ``saturating_u8s8`` is True on an x86 CPU whose flags show none of :data:`EXACT_DOT_FLAGS`
    (its u8s8 int8 kernels sum pairs in int16). Unknown (no ``/proc/cpuinfo``): False, recorded so.
    """
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    arch = platform.machine()
    dots = [f for f in EXACT_DOT_FLAGS if f in flags]
    x86 = arch in ("x86_64", "AMD64", "i686") or "sse2" in flags
    return {"model": model or platform.processor() or "unknown", "arch": arch, "int8_dot": dots,
            "saturating_u8s8": bool(flags) and x86 and not dots, "known": bool(flags)}


def describe() -> str:
    """One line for a row: ``"Intel(R) Xeon(R) ...; int8 dot: avx512_vnni, amx_int8"``."""
    f = cpu_features()
    if not f["known"]:
        return f"{f['model']}; int8 instructions unknown (no /proc/cpuinfo)"
    dots = ", ".join(f["int8_dot"]) or "none (u8s8 pairs sum in saturating int16)"
    return f"{f['model']}; int8 dot: {dots}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


__all__ = ["EXACT_DOT_FLAGS", "cpu_features", "describe"]
