"""The result row contract: :class:`ResultRow`, one run's number and everything that keys it.

Its files (JSON, CSV, Markdown) are :mod:`hqbench.reporting.files`; this module imports no renderer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from hqbench.methods import FP32, row_method
from hqbench.quant.engines import row_engines
FLOAT_BITS = 32  # what an fp32 row records as its weight and activation bits


@dataclass
class ResultRow:
    """One (task, model, method) run.

    ``value`` is in percent. ``act_range`` is the activation integer range as printed in the
    paper, e.g. ``"0..255"`` or ``"mixed: 0..255 & -128..127"`` (``"float"`` for FP32).
    ``weight_bits``/``act_bits`` are 32 for FP32. ``options`` holds the run-level settings that
    change the number besides the method (``weight_range``, ``bias_correction``, ``keep_8bit``),
    only where they differ from the defaults. ``weights_digest`` identifies the float weights
    (:func:`hqbench.models.state_digest`); ``""`` in rows written before it was recorded. ``extra`` holds optional entries (top5, weights
    path, per-image outcomes, provenance); they are serialised as top-level keys next to the
    fields, so names may not clash with them.

    Raises:
        ValueError: On an unknown task, method or engine (the message lists valid ones) or an
            ``extra`` key that clashes with a field name.

    >>> row = ResultRow("classification", "vgg16", "imagenet", "D", "top1", 71.2, 50000, 1000,
    ...                 0, 3.5, 120.0, "mixed: 0..255 & -128..127", "fake", extra={"top5": 90.1})
    >>> row.key[:6], row.bits, row.to_dict()["top5"]
    (('classification', 'vgg16', '', 'imagenet', 'D', 'fake'), 'w8a8', 90.1)
    """

    task: str
    model: str
    dataset: str
    method: str
    metric: str
    value: float
    n_eval: int
    n_calib: int
    seed: int
    calib_seconds: float
    eval_seconds: float
    act_range: str
    engine: str
    weight_bits: int = 8
    act_bits: int = 8
    weights_digest: str = ""
    options: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task.isidentifier():  # a task config's name (classification, ...)
            raise ValueError(f"task must be a task config's name, got {self.task!r}")
        if row_method(self.method) != self.method:
            raise ValueError(f"method {self.method!r} is spelled {row_method(self.method)!r} in result rows")
        _check_choice("engine", self.engine, row_engines())
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a mapping of option name to value, got {self.options!r}")
        self.options = {str(k): str(v) for k, v in sorted(self.options.items())}
        clash = sorted(set(self.extra) & {*FIELD_TYPES, "options", "extra"})
        if clash:
            raise ValueError(f"extra keys {clash} clash with ResultRow field names; rename them")

    @property
    def bits(self) -> str:
        """``"w8a8"``, or ``"float"`` for an FP32 row."""
        return "float" if self.method == FP32 else f"w{self.weight_bits}a{self.act_bits}"

    @property
    def key(self) -> tuple:
        """Identity of a run: everything that changes its number (task, model and its weights' digest,
        data, method, engine, seed, image counts, bit widths, options). Rows with equal keys replace
        each other."""
        return (self.task, self.model, self.weights_digest, self.dataset, self.method, self.engine, self.seed,
                self.n_eval, self.n_calib, self.weight_bits, self.act_bits, tuple(self.options.items()))

    def to_dict(self) -> dict[str, Any]:
        """Flat dict: the fields in declaration order, then the ``extra`` entries."""
        out: dict[str, Any] = {name: getattr(self, name) for name in FIELD_TYPES}
        out["options"] = dict(self.options)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> ResultRow:
        """Inverse of :meth:`to_dict`; keys that are not fields go to ``extra``.

        Args:
            data: A flat row dict.
            source: Where the dict came from, used as the prefix of error messages.

        Raises:
            ValueError: Naming ``source`` and the key, on missing keys, wrong types or values.
        """
        if "weight_bits" not in data or "act_bits" not in data:  # files written before bit widths were recorded
            bits = FLOAT_BITS if data.get("method") == FP32 else 8
            data = {"weight_bits": bits, "act_bits": bits, **data}
        if "weights_digest" not in data:  # rows written before the weights were digested (see runner._resumable)
            data = {**data, "weights_digest": ""}
        missing = [k for k in FIELD_TYPES if k not in data]
        if missing:
            raise ValueError(f"{source}: missing key {', '.join(map(repr, missing))}")
        kwargs: dict[str, Any] = {}
        for name, typ in FIELD_TYPES.items():
            raw = data[name]
            number = isinstance(raw, (int, float)) and not isinstance(raw, bool)
            if not (isinstance(raw, str) if typ is str else number and (typ is float or float(raw).is_integer())):
                raise ValueError(f"{source}: key {name!r} must be {typ.__name__}, got {raw!r}")
            kwargs[name] = typ(raw)
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError(f"{source}: key 'options' must be an object, got {options!r}")
        extra = {k: v for k, v in data.items() if k not in FIELD_TYPES and k != "options"}
        try:
            return cls(**kwargs, options=options, extra=extra)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


FIELD_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float}[f.type] for f in fields(ResultRow) if f.name not in ("extra", "options")
}


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
