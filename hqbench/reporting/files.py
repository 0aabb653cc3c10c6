"""Benchmark result files: JSON (the source of truth), CSV and Markdown, written row by row.

Every write goes to a temporary file in the target folder and is moved into place with
``os.replace``, so a crash or a serialisation error mid-write leaves the previous file intact.
:func:`append_row` merges one finished run into the file under an exclusive lock (``<file>.lock``),
so a long benchmark never loses finished rows, several processes can write one file, and a rerun
can skip what the file already holds (:func:`find_row`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

from hqbench.paths import atomic_write
from hqbench.stopping import deferred
from hqbench.reporting.results import FIELD_TYPES, ResultRow
from hqbench.reporting.tables import markdown_table, notes_line

_SUFFIXES = (".json", ".csv", ".md")


def _json_default(obj: object) -> object:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _write_json(f: TextIO, rows: list[ResultRow], path: Path) -> None:
    # One row per line keeps diffs of a growing results file readable.
    f.write("[")
    for i, row in enumerate(rows):
        f.write(",\n  " if i else "\n  ")
        try:
            json.dump(row.to_dict(), f, ensure_ascii=False, default=_json_default)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{path}: row {i} {row.key} cannot be written as JSON: {e}") from e
    f.write("\n]\n" if rows else "]\n")


def _csv_cell(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return ";".join(map(str, value))
    return json.dumps(value, default=_json_default) if isinstance(value, Mapping) else value


def _write_csv(f: TextIO, rows: list[ResultRow]) -> None:
    dicts = [r.to_dict() for r in rows]
    header = list(dict.fromkeys([*FIELD_TYPES, *(k for d in dicts for k in d)]))
    writer = csv.DictWriter(f, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    for d in dicts:
        writer.writerow({k: _csv_cell(v) for k, v in d.items()})


def _markdown(rows: list[ResultRow], title: str | None) -> str:
    head = f"# {title}\n\n" if title else ""
    return f"{head}{markdown_table(rows)}\n\n{notes_line(rows)}\n"


def write_results(rows: Iterable[ResultRow], out_path: str | os.PathLike[str]) -> Path:
    """Write rows as a JSON list of flat row dicts (one per line), atomically.

    Args:
        rows: Result rows.
        out_path: Target file; parent folders are created.

    Returns:
        The path written.

    Raises:
        TypeError: If a row holds a value JSON cannot encode; the previous file is untouched.
    """
    path = Path(out_path)
    rows = list(rows)
    return atomic_write(path, lambda f: _write_json(f, rows, path))


def write_all(
    rows: Iterable[ResultRow], stem_or_path: str | os.PathLike[str], title: str | None = None
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.csv`` and ``<stem>.md``, each atomically.

    Args:
        rows: Result rows.
        stem_or_path: ``out/paper`` or ``out/paper.json`` (``.csv``/``.md`` also accepted).
        title: Optional Markdown heading.

    Returns:
        ``{"json": path, "csv": path, "md": path}``.
    """
    rows = list(rows)
    base = Path(stem_or_path)
    if base.suffix in _SUFFIXES:
        base = base.with_suffix("")
    paths = {ext: base.with_name(f"{base.name}.{ext}") for ext in ("json", "csv", "md")}
    with deferred():  # the three files change together: a SIGTERM waits for the last
        write_results(rows, paths["json"])
        atomic_write(paths["csv"], lambda f: _write_csv(f, rows), newline="")
        atomic_write(paths["md"], lambda f: f.write(_markdown(rows, title)))
    return paths


def read_results(path: str | os.PathLike[str]) -> list[ResultRow]:
    """Read a JSON results file written by :func:`write_results`, rows in file order.

    Args:
        path: The ``.json`` file.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: Naming the file (and row and key) when the content is malformed.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of result rows, got {type(data).__name__}")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: row {i} is {type(item).__name__}, expected an object")
        rows.append(ResultRow.from_dict(item, source=f"{path} row {i}"))
    return rows


def check_out(out_path: str | os.PathLike[str]) -> Path:
    """Refuse an ``out=`` the runner could not merge rows into, before any row is computed.

    The runner writes ``out`` (``.json``, with ``.csv`` and ``.md`` beside it) after each finished
    row; a bad path found then costs that row. Missing parent folders are fine (they are created).
    Nothing is written here.

    Raises:
        ValueError: one line naming ``out=``: a directory, another suffix, a parent that cannot be
            created or written, or an existing file that is not a results file.
    """
    path = Path(out_path)
    where = f"out={out_path}"
    if path.is_dir():
        raise ValueError(f"{where} is a directory; name a results file, e.g. out={path / 'results.json'}")
    if path.suffix != ".json":
        raise ValueError(f"{where}: a results file ends in .json (its .csv and .md are written beside it)")
    folder = path.absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{where}: {existing} is a file, so the folder {folder} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{where}: cannot write in {existing} (permission denied)")
    if not path.exists():
        return path
    if not os.access(path, os.R_OK | os.W_OK):
        raise ValueError(f"{where}: the existing file cannot be read and replaced (permission denied)")
    try:
        read_results(path)
    except UnicodeDecodeError:
        raise ValueError(f"{where} exists but is not a results file: not UTF-8 JSON; name a new file or move it away") from None
    except (OSError, ValueError) as err:
        why = str(err).removeprefix(f"{path}: ")
        raise ValueError(f"{where} exists but is not a results file: {why}; name a new file or move it away") from None
    return path


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], timeout: float = 600.0):
    """Hold an exclusive lock on ``<path>.lock`` (``filelock``; waits up to ``timeout`` seconds).

    Every read-modify-write of a results file happens under it, so concurrent writers (threads,
    processes, Hydra's launcher jobs on one machine) never drop each other's rows. On a shared
    filesystem without reliable locks, give each job its own file (``out=${hydra:runtime.output_dir}/rows.json``)
    and merge them with ``hqbench report``. The lock file is left in place (removing it would race
    with a waiter).
    """
    from filelock import FileLock, Timeout

    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(lock, timeout=timeout):
            yield
    except Timeout:
        raise TimeoutError(f"{lock}: another process has held this results file for {timeout:.0f} s") from None


def append_row(row: ResultRow, out_path: str | os.PathLike[str], *, siblings: bool = False,
               title: str | None = None, replacing: tuple | None = None) -> list[ResultRow]:
    """Merge one finished run into a JSON results file, replacing an earlier run with the same key.

    Safe for concurrent writers (processes or threads): the read-modify-write holds :func:`locked`.

    Args:
        row: The new row; it replaces the row with equal :attr:`ResultRow.key`, in place.
        out_path: The ``.json`` file; created if missing.
        siblings: Also rewrite the ``.csv`` and ``.md`` next to it.
        title: Markdown heading when ``siblings``.
        replacing: The key of the row ``row`` replaces, when it is not ``row.key`` (a row migrated
            to a new key).

    Returns:
        All rows now in the file.
    """
    path = Path(out_path)
    if siblings and path.suffix != ".json":
        raise ValueError(f"{path}: siblings=True needs a .json results path")
    with locked(path):
        rows = read_results(path) if path.exists() else []
        idx = next((i for i, r in enumerate(rows) if r.key == (replacing or row.key)), None)
        if idx is None:
            rows.append(row)
        else:
            rows[idx] = row
        if siblings:
            write_all(rows, path, title=title)
        else:
            write_results(rows, path)
    return rows


def find_row(out_path: str | os.PathLike[str] | None, key: tuple) -> ResultRow | None:
    """The row with ``key`` in a results file, if the file exists and holds one (for resuming)."""
    if not out_path or not Path(out_path).exists():
        return None
    with locked(out_path):
        rows = read_results(out_path)
    return next((r for r in rows if r.key == key), None)
