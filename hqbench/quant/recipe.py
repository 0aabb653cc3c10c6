"""The quantization recipe: every setting that changes a quantized number, as one frozen value.

torch.ao's ``QuantizationSpec`` is the model: a frozen dataclass, checked once in ``__post_init__``
and passed whole. :func:`hqbench.quant.prepare`, :func:`hqbench.quant.quantize`,
:class:`~hqbench.quant.model.QuantizedModel` and ``QuantizationCallback`` take a :class:`Recipe`;
the runner builds one per table cell from the config; a result row records
:meth:`Recipe.to_options` (only what differs from the defaults), which :meth:`Recipe.from_options`
reads back, so the rows written before the recipe existed keep their keys.

>>> r = Recipe(weight_bits=4, keep_8bit="first,last", adaround=AdaRoundSettings(iters=2000),
...            weight_rounding="adaround")
>>> r.to_options()
{'weight_rounding': 'adaround', 'adaround': 'iters=2000', 'keep_8bit': 'first+last'}
>>> Recipe.from_options(4, 8, r.to_options()) == r
True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .bits import check_bits, format_bit_widths
from .profiles import PAPER, get_profile
from .weights import WEIGHT_METHODS as WEIGHT_RANGES

WEIGHT_ROUNDINGS = ("nearest", "adaround")
MIXED_SEARCHES = ("single", "greedy")  # hqbench.quant.sensitivity.promote
MIXED_CRITERIA = ("sqnr", "kl")
KEEP_8BIT = ("first", "last")  # layers the low-bit literature keeps at 8 bits: first conv, classifier
GRANULARITIES = ("layer", "block")
DEFAULT_PRECISION = "32-true"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_pair(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 and all(_is_number(b) and b > 0 for b in v)


# Each AdaRound setting: what a valid value is, how it reads in an error, and its normal form.
_ADAROUND_CHECKS: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], Any]]] = {
    "iters": (lambda v: _is_int(v) and v >= 1, "a positive integer", int),
    "reg": (lambda v: _is_number(v) and v >= 0, "a number >= 0", float),
    "beta": (_is_pair, "two positive numbers [start, end]", lambda v: (float(v[0]), float(v[1]))),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer", int),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number", float),
    "warm_start": (lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1)", float),
    "window": (lambda v: v is None or _is_int(v) and v >= 1, "a positive integer or null", lambda v: v),
    "seed": (lambda v: _is_int(v) and v >= 0, "a non-negative integer", int),
    "activation_loss": (lambda v: isinstance(v, bool), "true or false", bool),
    "granularity": (lambda v: v in GRANULARITIES, " or ".join(GRANULARITIES), str),
    "learn_scale": (lambda v: isinstance(v, bool), "true or false", bool),
    "learn_bias": (lambda v: isinstance(v, bool), "true or false", bool),
}


@dataclass(frozen=True)
class AdaRoundSettings:
    """AdaRound's optimisation (:func:`hqbench.quant.adaround.adaround_weights`); defaults sized for a CPU.

    Attributes:
        iters: Adam steps a layer (or block). AIMET's GPU recipe: 10000 at ``lr=1e-3``.
        reg, beta: the rounding regulariser's weight and its annealed exponent ``(start, end)``.
        batch_size: samples (images, or rows for a Linear) a step.
        lr, warm_start: the learning rate, and the fraction of steps without the regulariser.
        window: a conv's loss on one random ``window x window`` patch of its output a step; None: whole maps.
        seed: the steps' sample draws.
        activation_loss: the error after the layer's activation (ReLU6 ...), as the paper; False: raw output.
        granularity: ``"layer"`` (AdaRound) or ``"block"`` (BRECQ's block reconstruction).
        learn_scale, learn_bias: learn each layer's per-channel weight scale (and its bias) with the rounding.
    """

    iters: int = 1000
    reg: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    batch_size: int = 32
    lr: float = 1e-2
    warm_start: float = 0.2
    window: int | None = 16
    seed: int = 0
    activation_loss: bool = True
    granularity: str = "layer"
    learn_scale: bool = False
    learn_bias: bool = False

    def __post_init__(self) -> None:
        for key, (valid, what, normal) in _ADAROUND_CHECKS.items():
            value = getattr(self, key)
            if not valid(value):
                raise ValueError(f"adaround.{key} must be {what}, got {value!r}")
            object.__setattr__(self, key, normal(value))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> "AdaRoundSettings":
        """Settings from ``adaround.KEY=VALUE`` keys (a dict or a config node); unknown keys are refused."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(ADAROUND_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown AdaRound setting {unknown[0]!r}; valid: {', '.join(ADAROUND_DEFAULTS)}")
        return cls(**options)

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults (what a row records)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v != ADAROUND_DEFAULTS[k]}

    def to_text(self) -> str:
        """``"iters=2000,lr=0.001"``: the changed settings in the form a result row records."""
        def text(v: Any) -> str:
            if v is None or isinstance(v, bool):
                return "null" if v is None else str(v).lower()
            return "/".join(map(str, v)) if isinstance(v, tuple) else str(v)
        return ",".join(f"{k}={text(v)}" for k, v in sorted(self.changed().items()))

    @classmethod
    def from_text(cls, text: str) -> "AdaRoundSettings":
        """The inverse of :meth:`to_text`."""
        def value(key: str, raw: str) -> Any:
            if raw in ("null", "true", "false"):
                return {"null": None, "true": True, "false": False}[raw]
            if "/" in raw:
                return tuple(float(p) for p in raw.split("/"))
            if key == "granularity":
                return raw
            number = float(raw)
            return int(number) if isinstance(ADAROUND_DEFAULTS.get(key), int) or key == "window" else number
        pairs = [item.partition("=") for item in text.split(",") if item]
        return cls.from_mapping({k: value(k, v) for k, _, v in pairs})


#: AdaRound's settings and their defaults: the ``adaround.KEY=VALUE`` keys a task config lists.
ADAROUND_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(AdaRoundSettings)}


def _keep_8bit(keep: object) -> tuple[str, ...]:
    """``"first,last"`` / ``["first"]`` / ``"first+last"`` / ``()`` -> a tuple of KEEP_8BIT names."""
    if keep is None or keep == "" or keep == "none":
        return ()
    items = keep.replace("+", ",").split(",") if isinstance(keep, str) else list(keep)
    bad = [k for k in items if k not in KEEP_8BIT]
    if bad:
        raise ValueError(f"keep_8bit: unknown {bad}; valid: {', '.join(KEEP_8BIT)} (comma-separated), or none")
    return tuple(k for k in KEEP_8BIT if k in items)


def _mixed_budget(budget: object) -> int | float | None:
    """``mixed_budget``: a count of points (an integer >= 0) or a share of them (a float in [0, 1]);
    0 promotes nothing, so it is the recipe without it (None)."""
    if budget is None or budget == "none":
        return None
    if isinstance(budget, str):
        try:
            budget = float(budget) if any(c in budget for c in ".eE") else int(budget)
        except ValueError:
            raise ValueError(f"mixed_budget must be a count of points or a share in [0, 1], got {budget!r}") from None
    if _is_int(budget) and budget >= 0:
        return budget or None
    if isinstance(budget, float) and 0.0 <= budget <= 1.0:
        return budget or None
    raise ValueError(f"mixed_budget must be a count of points (an integer >= 0) or a share in [0, 1] "
                     f"(a float), got {budget!r}")


def _choice(key: str, value: object, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
    return str(value)


@dataclass(frozen=True)
class Recipe:
    """How a model is quantized, apart from the calibrator (the method) and the engine.

    Attributes:
        weight_bits, act_bits: 2..16. Unsigned grids keep all ``2**act_bits`` levels.
        keep_8bit: ``("first", "last")`` (or ``"first,last"``) keeps the first and last compute
            layers' weights, and the activations they read and write, at 8 bits. At widths of 8 and
            more there is nothing to keep: such a recipe runs, and keys its row, as without it.
        weight_range: ``"minmax"`` (max |w| per channel) or ``"mse"`` (least-squared-error clip).
        weight_per_channel: per-output-channel weight scales (False: one per tensor).
        weight_rounding: ``"nearest"`` or ``"adaround"`` (:mod:`hqbench.quant.adaround`).
        bias_correction: subtract the per-channel output-mean shift that quantization causes,
            measured on the calibration data (after AdaRound).
        adaround: AdaRound's settings; other than the defaults only with ``weight_rounding="adaround"``.
        precision: the Trainer precision the torch network runs in (``"64-true"``: fake-quant sums
            exactly, as integer kernels do); recorded in rows, applied by the Trainer.
        point_bits: activation bits per quantization point, overriding ``act_bits`` there
            (``{"features.3": 8}``; mixed precision). Names are checked against the model by
            :class:`~hqbench.quant.model.QuantizedModel`.
        mixed_budget: mixed precision chosen by sensitivity: after calibration, this many activation
            points (an integer) or this share of them (a float in [0, 1], rounded down) are promoted
            to 8 bits, the ones whose restoration to 8 bits gains the most output SQNR on the
            calibration data (:func:`hqbench.quant.sensitivity.promote`), beyond any ``keep_8bit``
            keeps. The chosen points end up in ``point_bits``. Like ``keep_8bit``, it keys a row only
            below 8-bit activations. None (or 0): none.
        mixed_samples: rank the points on the first this many calibration samples (None: all of them);
            the ranking costs one forward over them per point.
        mixed_search: ``"single"`` (the top of one ranking) or ``"greedy"`` (one point at a time,
            the rest ranked again after each promotion: a ranking per promoted point).
        mixed_criterion: what ranks the points: ``"sqnr"`` (the output's SQNR against float) or
            ``"kl"`` (a classifier's softmax KL divergence from float).
        profile: a deployment profile (:mod:`hqbench.quant.profiles`): the target's constraints on
            every point's grid and on the weight scales. None (or ``"paper"``): the paper's hybrid scheme.

    Raises:
        ValueError: one line naming the bad setting, at construction.
    """

    weight_bits: int = 8
    act_bits: int = 8
    keep_8bit: tuple[str, ...] = ()
    weight_range: str = "minmax"
    weight_per_channel: bool = True
    weight_rounding: str = "nearest"
    bias_correction: bool = False
    adaround: AdaRoundSettings = field(default_factory=AdaRoundSettings)
    precision: str = DEFAULT_PRECISION
    point_bits: tuple[tuple[str, int], ...] = ()
    mixed_budget: int | float | None = None
    mixed_samples: int | None = None
    mixed_search: str = "single"
    mixed_criterion: str = "sqnr"
    profile: str | None = None

    def __post_init__(self) -> None:
        put = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731  (frozen: normalise once)
        put("weight_bits", check_bits(self.weight_bits, "weight_bits"))
        put("act_bits", check_bits(self.act_bits, "act_bits"))
        put("keep_8bit", _keep_8bit(self.keep_8bit))
        put("weight_range", _choice("weight_range", self.weight_range, WEIGHT_RANGES))
        put("weight_rounding", _choice("weight_rounding", self.weight_rounding, WEIGHT_ROUNDINGS))
        for key in ("bias_correction", "weight_per_channel"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        adaround = self.adaround
        if not isinstance(adaround, AdaRoundSettings):
            adaround = AdaRoundSettings.from_mapping(adaround)
        put("adaround", adaround)
        if adaround.changed() and self.weight_rounding != "adaround":
            raise ValueError(f"AdaRound settings ({adaround.to_text()}) apply to weight_rounding=adaround, "
                             f"not {self.weight_rounding}")
        put("precision", "32-true" if str(self.precision) == "32" else str(self.precision))
        pairs = self.point_bits.items() if isinstance(self.point_bits, Mapping) else self.point_bits
        put("point_bits", tuple(sorted((str(n), check_bits(b, f"point_bits[{n!r}]")) for n, b in pairs)))
        put("mixed_budget", _mixed_budget(self.mixed_budget))
        if self.mixed_samples is not None and not (_is_int(self.mixed_samples) and self.mixed_samples >= 1):
            raise ValueError(f"mixed_samples must be a positive integer or null (all calibration samples), "
                             f"got {self.mixed_samples!r}")
        put("mixed_search", _choice("mixed_search", self.mixed_search, MIXED_SEARCHES))
        put("mixed_criterion", _choice("mixed_criterion", self.mixed_criterion, MIXED_CRITERIA))
        if self.profile is not None and not isinstance(self.profile, str):
            raise ValueError(f"profile must be a name or null, got {self.profile!r}")
        profile = get_profile(self.profile)  # an unknown name fails here
        put("profile", None if profile.name == PAPER else profile.name)
        if profile.pow2 and adaround.learn_scale:
            raise ValueError(f"profile={self.profile} stores power-of-two weight scales; adaround.learn_scale=true "
                             "learns scales that are not: drop one")

    @property
    def bits(self) -> str:
        """``"w8a8"``."""
        return format_bit_widths(self.weight_bits, self.act_bits)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    @property
    def fits_weights(self) -> bool:
        """Whether a weight-side step (AdaRound, bias correction) runs after calibration."""
        return self.weight_rounding != "nearest" or self.bias_correction

    @property
    def promotes(self) -> bool:
        """Whether calibration is followed by a mixed-precision promotion (``mixed_budget``, below 8 bits)."""
        return self.mixed_budget is not None and self.act_bits < 8

    def runs_torch_defaults(self) -> bool:
        """Whether only the widths and the precision differ from the defaults (what torch's own
        recipe, the PyTorch column, can take)."""
        return self == Recipe(self.weight_bits, self.act_bits, precision=self.precision)

    def to_options(self) -> dict[str, str]:
        """The row's ``options``: every setting but the widths that differs from its default, as text."""
        options = {
            "weight_range": self.weight_range if self.weight_range != "minmax" else None,
            "weight_per_channel": None if self.weight_per_channel else "false",
            "weight_rounding": self.weight_rounding if self.weight_rounding != "nearest" else None,
            "adaround": self.adaround.to_text() or None,
            "bias_correction": "true" if self.bias_correction else None,
            "keep_8bit": "+".join(self.keep_8bit) if self.weight_bits < 8 or self.act_bits < 8 else None,
            "point_bits": ",".join(f"{n}={b}" for n, b in self.point_bits) or None,
            "mixed_budget": str(self.mixed_budget) if self.promotes else None,
            "mixed_samples": str(self.mixed_samples) if self.promotes and self.mixed_samples is not None else None,
            "mixed_search": self.mixed_search if self.promotes and self.mixed_search != "single" else None,
            "mixed_criterion": self.mixed_criterion if self.promotes and self.mixed_criterion != "sqnr" else None,
            "profile": self.profile,
            "precision": self.precision if self.precision != DEFAULT_PRECISION else None,
        }
        return {k: v for k, v in options.items() if v}

    @classmethod
    def from_options(cls, weight_bits: int, act_bits: int, options: Mapping[str, str]) -> "Recipe":
        """The recipe a row's widths and ``options`` describe (the inverse of :meth:`to_options`).

        Raises:
            ValueError: an option this recipe does not know (named).
        """
        unknown = sorted(set(options) - set(_OPTION_READERS))
        if unknown:
            raise ValueError(f"unknown recipe option {unknown[0]!r}; valid: {', '.join(_OPTION_READERS)}")
        return cls(weight_bits, act_bits, **{k: _OPTION_READERS[k](v) for k, v in options.items()})


_OPTION_READERS: dict[str, Callable[[str], Any]] = {
    "weight_range": str, "weight_per_channel": lambda v: v != "false", "weight_rounding": str,
    "adaround": AdaRoundSettings.from_text, "bias_correction": lambda v: v == "true", "keep_8bit": str,
    "point_bits": lambda v: tuple((n, int(b)) for n, _, b in (p.rpartition("=") for p in v.split(","))),
    "mixed_budget": _mixed_budget, "mixed_samples": int, "mixed_search": str, "mixed_criterion": str, "profile": str, "precision": str,
}

__all__ = ["ADAROUND_DEFAULTS", "AdaRoundSettings", "KEEP_8BIT", "Recipe", "WEIGHT_RANGES", "WEIGHT_ROUNDINGS"]
