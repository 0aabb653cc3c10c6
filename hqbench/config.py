"""Compose ``tasks/<task>.yaml`` with key=value overrides through Hydra's compose API.

hqbench owns argv, cwd and outputs: no ``@hydra.main``. The YAML configs are the top-level
``tasks/`` folder (classification.yaml, detection.yaml, paper.yaml and the ``model/``, ``data/``,
``quant/``, ``run/`` and ``trainer/`` groups), which a wheel ships as ``hqbench.configs``
(:func:`hqbench.paths.configs_dir`); ``HQBENCH_TASKS`` points at another folder of the same layout.

A ``_target_`` makes Hydra import and call what it names, so a config folder from elsewhere could
run any code through one. hqbench's own folder is trusted as its code is; with ``HQBENCH_TASKS``,
every ``_target_`` of a composed config must name a class of the packages hqbench runs anyway
(:data:`TRUSTED_TARGETS`; never a function, which like ``torch.hub.load`` may run a file's code),
checked before anything is instantiated. ``HQBENCH_TRUST_TARGETS=1``
lifts that for a folder the user trusts: an environment variable, so no config can lift it.
"""

from __future__ import annotations

import os
import re

from omegaconf import DictConfig

from .paths import configs_dir

# The design card's top-level ``tasks/`` (YAML only) in a checkout; a wheel carries the same files
# as the package ``hqbench.configs`` (pyproject maps the folder), so ``hqbench`` runs from both.
TASKS_DIR = configs_dir()
# The groups every task file composes; ``--help`` prints them after the task's own file.
SHARED_GROUPS = ("quant", "run", "trainer")


def model_sources(overrides: list[str]) -> list[str]:
    """``model=PREFIX:SPEC`` (``tflite:PATH``, ``torchvision:NAME``, ``timm:NAME``, ``ultralytics:YAML``)
    -> the ``model/source_PREFIX`` option where the config folder has one (it picks the source's data:
    a detector's), else ``model/source``, with ``model.name=PREFIX:SPEC``: a source prefix is not a
    config group."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "model" and ":" in value:
            own = f"source_{value.split(':', 1)[0]}"
            option = own if (TASKS_DIR / "model" / f"{own}.yaml").is_file() else "source"
            out += [f"model={option}", f"model.name='{value}'"]
        else:
            out.append(o)
    return out


def quote_list(override: str) -> str:
    """``method=A,B`` -> ``method=[A,B]``: a comma list is a value here, not a Hydra sweep."""
    m = re.fullmatch(r"([\w.]+)=([^\[\]{}'\"]*,[^\[\]{}'\"]*)", override)
    return f"{m.group(1)}=[{m.group(2)}]" if m else override


# Packages a ``_target_`` may name (hqbench's tasks and data, Lightning's loggers and callbacks,
# torch and torchmetrics objects, Hydra's launcher plugins); in the ``hydra`` node a sweep
# instantiates, Hydra's own core plugins (its basic launcher and sweeper) too.
TRUSTED_TARGETS = ("hqbench.", "lightning.", "lightning.pytorch.", "torch.", "torchmetrics.", "hydra_plugins.")
_HYDRA_TARGETS = TRUSTED_TARGETS + ("hydra._internal.core_plugins.",)
TRUST_ENV = "HQBENCH_TRUST_TARGETS"


def _targets(node, path: str = ""):
    """``(key path, value)`` of every ``_target_`` in a plain container, lists included."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        if key == "_target_":
            yield where, value
        else:
            yield from _targets(value, where)


def _origin(target: str) -> str | None:
    """The module the class named by ``target`` lives in (``torch.os.system`` is posix's, not torch's),
    or None when it is not a class: a function such as ``torch.hub.load`` or ``torch.load`` can run
    a file's code, and a config only needs classes (datamodules, tasks, loggers, callbacks)."""
    from hydra.utils import get_object

    obj = get_object(target)  # imports only the modules the name spells, under a trusted prefix
    return obj.__module__ if isinstance(obj, type) else None


def _trust_all() -> bool:
    """hqbench's own config folder (no ``HQBENCH_TASKS``) or ``HQBENCH_TRUST_TARGETS=1``: no check."""
    return not os.environ.get("HQBENCH_TASKS", "").strip() or os.environ.get(TRUST_ENV, "").strip() == "1"


def check_targets(cfg: DictConfig, prefixes: tuple[str, ...] = TRUSTED_TARGETS) -> None:
    """Refuse a ``_target_`` anywhere in ``cfg`` outside ``prefixes`` (a folder from ``HQBENCH_TASKS``),
    before anything instantiates it.

    Raises:
        ValueError: one line naming the key path, the target and the opt-out.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if _trust_all():
        return
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. ${hydra:...} outside a job: an interpolated target stays raw, refused
        plain = OmegaConf.to_container(cfg, resolve=False)
    allowed = ", ".join(p.rstrip(".") for p in prefixes)
    for where, target in _targets(plain):
        origin = target if isinstance(target, str) and target.startswith(prefixes) else None
        if origin is not None:
            try:
                origin = _origin(target)
            except Exception as err:  # Hydra's import error, in one line
                raise ValueError(f"{where}={target} cannot be imported ({str(err).strip().splitlines()[0]})") from None
        if origin is None or not f"{origin}.".startswith(prefixes):
            trusted_name = isinstance(target, str) and target.startswith(prefixes)
            where_from = f" (it is {origin}'s)" if origin else " (not a class of those packages)" if trusted_name else ""
            raise ValueError(f"{where}={target}{where_from} is outside the packages a config from HQBENCH_TASKS may name "
                             f"({allowed}), and Hydra would import and call it; if you trust {TASKS_DIR}, "
                             f"set {TRUST_ENV}=1")


def check_hydra_targets(task: str, overrides: list[str]) -> None:
    """:func:`check_targets` on the ``hydra`` node a ``-m`` sweep instantiates (launcher, sweeper, callbacks)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    if _trust_all():
        return
    with initialize_config_dir(config_dir=str(TASKS_DIR), version_base=None):
        cfg = hydra_compose(config_name=task, overrides=overrides, return_hydra_config=True)
    check_targets(DictConfig({"hydra": cfg.hydra}), _HYDRA_TARGETS)


def list_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml") if p.stem != "paper")


# Keys whose default is null, and the type a value given for them must have. Every other key is
# typed by its default in the YAML (an int stays an int, a flag a bool, text text).
NULLABLE_TYPES = {"out": str, "demo_model": str, "model.weights": str, "data.root": str, "data.eval_limit": int,
                  "data.train_limit": int, "train.checkpoint": str, "train.hours": float, "train.work_dir": str}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def _hydra_compose(task: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(TASKS_DIR), version_base=None):
        return hydra_compose(config_name=task, overrides=overrides)


def _group_choices(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0] in ("model", "data")]


def _unknown_key(task: str, overrides: list[str], key: str) -> str:
    """One line naming an unknown key and the keys valid at its level."""
    from omegaconf import DictConfig as _Dict, OmegaConf

    base = _hydra_compose(task, _group_choices(overrides))
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(base, parent) if parent else base
    valid = sorted(k for k in node.keys() if k != "defaults") if isinstance(node, _Dict) else []
    where = f"under {parent}" if parent else "at the top level"
    return (f"unknown key {key!r}; valid {where}: {', '.join(map(str, valid))} "
            f"(+{key}=VALUE adds a new key, e.g. for trainer.*)")


def _check_types(task: str, overrides: list[str], cfg: DictConfig) -> None:
    """Every overridden key must have its default's type (or NULLABLE_TYPES'); text keys take numbers as text."""
    from omegaconf import OmegaConf

    base = None
    for o in overrides:
        key, eq, _ = o.lstrip("+~").partition("=")
        if not eq or key in ("model", "data") or o.startswith(("+", "~")):
            continue
        if base is None:
            base = _hydra_compose(task, _group_choices(overrides))
        default = OmegaConf.select(base, key, default=None)
        expected = NULLABLE_TYPES.get(key) if default is None else type(default)
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(default, DictConfig) and not isinstance(value, DictConfig):  # export=DIR would drop export.*
            first = next(iter(default.keys()), "KEY")
            raise ValueError(f"{key} is a group of settings ({', '.join(map(str, default.keys()))}), not a value; "
                             f"set one of them, e.g. {key}.{first}={o.partition('=')[2]}")
        if expected not in _TYPE_WORDS or value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if expected is str and number:
            OmegaConf.update(cfg, key, str(o.partition("=")[2]), merge=False)  # a file named 1 is a path
        elif not _has_type(value, expected):
            raise ValueError(f"{key} must be {_TYPE_WORDS[expected]}, got {value!r}")


def _has_type(value: object, expected: type) -> bool:
    """bool is not an int here, and an int is a float."""
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def compose(task: str, overrides: list[str] = ()) -> DictConfig:
    """The task's config with overrides applied.

    Raises:
        ValueError: unknown task (valid ones listed) or a bad override (Hydra's message, with the key).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if task not in list_tasks():
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(list_tasks())} (configs in {TASKS_DIR})")
    for o in overrides:  # a config group takes one choice: `model=a,b` would silently keep only b
        key, _, value = o.lstrip("+~").partition("=")
        if key in ("model", "data") and "," in value:
            raise ValueError(f"{key}= takes one choice, got {value!r}; sweep with -m (hqbench test -m {key}={value}) "
                             f"or run one command per {key}")
    overrides = [quote_list(o) for o in model_sources(list(overrides))]
    try:
        cfg = _hydra_compose(task, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        unknown = re.search(r"Could not override '([^']+)'", str(err))
        if unknown and unknown.group(1) not in ("model", "data"):
            raise ValueError(_unknown_key(task, overrides, unknown.group(1))) from None
        raise ValueError(f"bad override for task {task!r}: {err}") from err
    _check_types(task, overrides, cfg)
    check_targets(cfg)  # before anything instantiates one
    if isinstance(cfg.get("method"), str):
        cfg.method = [cfg.method]
    return cfg
