"""Compose ``hqbench/configs/<task>.yaml`` with key=value overrides through Hydra's compose API.

hqbench owns argv, cwd and outputs: no ``@hydra.main``. The YAML configs are package data in
``hqbench/configs/`` (classification.yaml, detection.yaml, paper.yaml and the ``model/`` and
``data/`` groups); ``HQBENCH_TASKS`` points at another folder of the same layout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig

# The configs used to sit in a top-level ``tasks/`` folder beside the package (as the design card
# still says). Issue 14: YAML ``tasks/`` next to the ``hqbench/tasks/`` modules confused newcomers,
# and a wheel shipped no configs at all, so ``hqbench`` only worked from a checkout. They are now
# package data (pyproject's [tool.setuptools.package-data]): the same files in a checkout and a wheel.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
TASKS_DIR = Path(os.environ.get("HQBENCH_TASKS") or CONFIGS_DIR).expanduser().absolute()


def _model_sources(overrides: list[str]) -> list[str]:
    """``model=tflite:PATH`` -> ``model=tflite model.weights=PATH``: a source prefix is not a config group."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "model" and ":" in value:
            source, _, path = value.partition(":")
            out += [f"model={source}", f"model.weights={path}"]
        else:
            out.append(o)
    return out


def _quote_lists(override: str) -> str:
    """``method=A,B`` -> ``method=[A,B]``: a comma list is a value here, not a Hydra sweep."""
    m = re.fullmatch(r"([\w.]+)=([^\[\]{}'\"]*,[^\[\]{}'\"]*)", override)
    return f"{m.group(1)}=[{m.group(2)}]" if m else override


def list_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml") if p.stem != "paper")


def compose(task: str, overrides: list[str] = ()) -> DictConfig:
    """The task's config with overrides applied.

    Raises:
        ValueError: unknown task (valid ones listed) or a bad override (Hydra's message, with the key).
    """
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if task not in list_tasks():
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(list_tasks())} (configs in {TASKS_DIR})")
    for o in overrides:  # a config group takes one choice: `model=a,b` would silently keep only b
        key, _, value = o.lstrip("+~").partition("=")
        if key in ("model", "data") and "," in value:
            raise ValueError(f"{key}= takes one choice, got {value!r}; sweep with -m (hqbench test -m {key}={value}) "
                             f"or run one command per {key}")
    try:
        with initialize_config_dir(config_dir=str(TASKS_DIR), version_base=None):
            cfg = hydra_compose(config_name=task, overrides=[_quote_lists(o) for o in _model_sources(list(overrides))])
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"bad override for task {task!r}: {err}") from err
    if isinstance(cfg.get("method"), str):
        cfg.method = [cfg.method]
    return cfg
