"""Deployment profiles: what a target's integer kernels take, as constraints on the scheme's grids.

The paper's hybrid scheme stores non-negative points unsigned and every other point on a signed
grid with a zero point. Targets constrain that (MQBench's "academic versus deployable" gap): ONNX
Runtime's fast x86 kernels take unsigned activations, OpenVINO's int8 kernels (NNCF's performance
preset) zero-point-free signed ones, integer-only accelerators power-of-two scales, TFLite int8
activations with a zero point. A profile rewrites each point's grid once, before calibration, so
every calibrator searches the grid the target really has. Weights stay int8 symmetric with zero
point 0 (per channel unless ``weight_per_channel=false``) and biases int32 at ``s_in * s_w`` in
every profile; ``integer-pow2`` also rounds weight scales up to powers of two.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .grid import QuantGrid

PAPER = "paper"


@dataclass(frozen=True)
class Profile:
    """One target's constraints.

    Attributes:
        name: what ``profile=`` and the row's ``profile`` option say.
        activations: ``"hybrid"`` (the plan's grids), ``"unsigned"`` (every point 0..2^b-1, a zero
            point where the tensor is signed) or ``"signed"`` (every point -2^(b-1)..2^(b-1)-1).
        symmetric: signed grids have zero point 0.
        pow2: activation and weight scales are powers of two.
        description: one line for ``--help`` and the docs.
    """

    name: str
    activations: str
    symmetric: bool = False
    pow2: bool = False
    description: str = ""

    def grid(self, grid: QuantGrid) -> QuantGrid:
        """``grid`` (the plan's, at its bits) as this target stores it."""
        signed = {"hybrid": grid.signed, "unsigned": False, "signed": True}[self.activations]
        return dataclasses.replace(grid, signed=signed, symmetric=self.symmetric, pow2=self.pow2)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(PAPER, "hybrid", description="the paper's hybrid scheme: unsigned after ReLU-like producers, "
                                        "signed with a zero point elsewhere"),
    Profile("x86-u8s8", "unsigned", description="unsigned asymmetric activations everywhere (ONNX Runtime's "
                                                "fast U8S8 kernels), int8 symmetric per-channel weights"),
    Profile("openvino", "hybrid", symmetric=True, description="zero-point-free activations: unsigned after "
            "ReLU-like producers, symmetric signed elsewhere (NNCF's performance preset)"),
    Profile("integer-pow2", "hybrid", pow2=True, description="the hybrid grids with power-of-two scales for "
            "activations and weights (shifts, the integer-only hardware case)"),
    Profile("tflite-int8", "signed", description="int8 activations with a zero point everywhere, int8 per-channel "
                                                 "weights with zero point 0, int32 biases (TFLite's int8 spec)"),
)}


def get_profile(name: str | None) -> Profile:
    """The profile called ``name`` (None: the paper's).

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    if name is None:
        return PROFILES[PAPER]
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}") from None


__all__ = ["PAPER", "PROFILES", "Profile", "get_profile"]
