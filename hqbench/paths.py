"""Where hqbench reads and writes outside the package: the checkout, the cache, the checkpoints.

hqbench works the same from a checkout (editable install) and from a wheel. Nothing it generates
goes into the source tree or site-packages: caches live under :func:`cache_dir`. The repository
root is computed here once (:func:`repo_root`); it is ``None`` for an installed wheel.
"""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import IO

from hqbench.stopping import deferred

PACKAGE_DIR = Path(__file__).resolve().parent


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO], None], *, binary: bool = False,
                 newline: str | None = None, replace: bool = True) -> Path:
    """Call ``write(f)`` on a temp file in ``path``'s folder, then move it into place.

    ``replace=False`` never replaces a file: an existing ``path``, even one another process
    created while this one wrote, raises :class:`FileExistsError` naming it (the file is linked
    into place, which fails where a name is taken, instead of renamed over it).

    The same filesystem makes ``os.replace`` atomic: a crash or an error mid-write leaves the
    previous file (or none) under the final name, never half of one; the temp file is removed. A
    SIGTERM or SIGINT waits until the file is in place (:func:`hqbench.stopping.deferred`). Temp
    files are named ``.<name>.<host>-<pid>.<random>.tmp``; those a killed process (SIGKILL) of this
    host left are removed by the next write of the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{socket.gethostname()}-"
    _remove_orphans(path, owner)
    with deferred():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner}{os.getpid()}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb" if binary else "w",
                           **({} if binary else {"encoding": "utf-8", "newline": newline})) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and exports are meant to be shared
            if replace:
                os.replace(tmp, path)
            else:
                _link_new(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return path


def _link_new(tmp: str, path: Path) -> None:
    """Put ``tmp`` under the name ``path`` unless that name is taken."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; name a new file (hqbench never replaces one)") from None
    except OSError:  # a filesystem without hard links: check, then rename (a race window, not a silent one)
        refuse_existing(path)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def refuse_existing(*paths: str | os.PathLike[str], hint: str = "name a new file") -> None:
    """Raise :class:`FileExistsError` naming the first of ``paths`` that exists: checked before a
    long computation whose outputs must not replace a user's files."""
    taken = next((Path(p) for p in paths if Path(p).exists()), None)
    if taken is not None:
        raise FileExistsError(f"{taken} exists; {hint} (hqbench never replaces one)")


def _remove_orphans(path: Path, owner: str) -> None:
    """Delete ``path``'s temp files whose writing process, on this host, no longer exists. Only names
    of this pattern are touched, and other hosts' (a shared filesystem) never."""
    prefix = f".{path.name}.{owner}"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@lru_cache(maxsize=None)
def repo_root() -> Path | None:
    """The hqbench checkout this package runs from, or ``None`` (an installed wheel, an sdist unpacked
    without its checkpoints). A checkout is the package's parent folder holding hqbench's
    ``pyproject.toml`` and either ``.git`` or ``checkpoints/``."""
    root = PACKAGE_DIR.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or not ((root / ".git").exists() or (root / "checkpoints").is_dir()):
        return None
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "hqbench"' in text else None


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().absolute() if value else None


def cache_dir(*parts: str) -> Path:
    """``$HQBENCH_CACHE``, else ``$XDG_CACHE_HOME/hqbench``, else ``~/.cache/hqbench``; joined with
    ``parts``. Read at every call (not at import) and not created: callers make what they write."""
    base = _env_path("HQBENCH_CACHE")
    if base is None:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        # the XDG spec: a relative XDG_CACHE_HOME is invalid and is ignored
        base = (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "hqbench"
    return base.joinpath(*parts)


def checkpoint_dirs() -> list[Path]:
    """Where project-trained checkpoints are looked for, in order: ``$HQBENCH_CHECKPOINTS``, the
    checkout's ``checkpoints/`` (when running from one), ``cache_dir("checkpoints")``, then the demo
    checkpoints a wheel ships as package data (``hqbench/checkpoints/``, mapped from ``checkpoints/``)."""
    dirs = [_env_path("HQBENCH_CHECKPOINTS")]
    root = repo_root()
    dirs.append(root / "checkpoints" if root is not None else None)
    dirs.append(cache_dir("checkpoints"))
    dirs.append(PACKAGE_DIR / "checkpoints" if (PACKAGE_DIR / "checkpoints").is_dir() else None)
    return list(dict.fromkeys(d for d in dirs if d is not None))


def configs_dir() -> Path:
    """The task configs: ``$HQBENCH_TASKS``, else the checkout's top-level ``tasks/`` (when running
    from one, editable installs included), else the copy a wheel ships beside this module as package
    data (``hqbench/configs/``, mapped from ``tasks/`` by pyproject's ``package-dir``)."""
    env = _env_path("HQBENCH_TASKS")
    if env is not None:
        return env
    root = repo_root()
    if root is not None and (root / "tasks").is_dir():
        return root / "tasks"
    return PACKAGE_DIR / "configs"
