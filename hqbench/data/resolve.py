"""Where a run's data comes from, and the datamodule built on it: one place for both.

``data.root`` first, then ``$HQBENCH_DATA/<location.subdir>``, then the embedded copy, each declared
in the data YAML (``location``); the datamodule is the YAML's ``_target_``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def resolve_data_root(data_cfg: DictConfig) -> str | None:
    """Configured ``data.root`` first, then ``$HQBENCH_DATA/<location.subdir>``, then the embedded
    copy (None) when ``location.embedded``; both declared in the data YAML.

    Raises:
        FileNotFoundError: nothing configured and the data has no embedded copy.
    """
    if data_cfg.root:
        return str(Path(data_cfg.root).expanduser())
    location = data_cfg.get("location") or {}
    subdir, env = location.get("subdir"), os.environ.get("HQBENCH_DATA")
    if env and subdir and (Path(env).expanduser() / subdir).is_dir():
        return str(Path(env).expanduser() / subdir)
    if location.get("embedded", False):
        return None
    kind = data_cfg._target_.rsplit(".", 1)[-1]
    raise FileNotFoundError(f"no data for {kind}: pass data.root=PATH or set HQBENCH_DATA to a folder "
                            f"holding {subdir or '?'}/; without data, `hqbench test task=classification` "
                            "(or task=detection) with no model= or data= runs the embedded demo")


def build_data(cfg: DictConfig, card, seed: int | None = None):
    """The configured datamodule with its root resolved, set up; and a description of its source.

    ``seed`` (default ``cfg.seed``) draws the calibration images; the evaluation images do not depend on it.
    """
    root = resolve_data_root(cfg.data)
    datamodule = OmegaConf.masked_copy(cfg.data, [k for k in cfg.data if k != "location"])  # hqbench's key, not the class's
    try:
        dm = instantiate(datamodule, root=root, card=card, seed=cfg.seed if seed is None else seed)
    except InstantiationException as err:  # Hydra wraps the datamodule's own one-line error: unwrap it
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise err.__cause__ from None
        raise
    dm.setup("test")
    return dm, getattr(dm, "source", None) or str(root)


__all__ = ["build_data", "resolve_data_root"]
