"""Crash-safe writing of stage outputs: write into a temporary sibling, then rename into place.

A stage killed half-way (SIGKILL, out of memory, a lost machine) leaves at the output path either
nothing or the previous complete output, never a partial file or folder that DVC would take as
done. What it leaves beside it is a hidden sibling ``.<name>.tmp<pid>-<random>/``, which DVC does not
track (it is not the declared path); the next write of the same path deletes such leftovers of
writers that are no longer alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)


def temp_prefix(path: str | Path) -> str:
    """The name prefix of `path`'s temporary siblings: ``.<name>.tmp`` (then the writer's pid, ``-``, random)."""
    return f".{Path(path).name}.tmp"


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary siblings of `path` left by killed writers; those of live processes stay.

    Returns the removed paths. A sibling without a pid in its name (older format) counts as stale.
    """
    path = Path(path)
    prefix = temp_prefix(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for sibling in path.parent.iterdir():
        if not sibling.name.startswith(prefix):
            continue
        pid = sibling.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or _alive(int(pid))):
            continue
        shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() and not sibling.is_symlink() else sibling.unlink(missing_ok=True)
        removed.append(sibling)
    if removed:
        logger.info("removed %d leftover temporary sibling(s) of %s from an interrupted run", len(removed), path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on success rename it onto `path`.

    With `is_dir` the yielded path is an empty folder. On an exception nothing at `path` changes.
    An existing output is first renamed away, then the new one renamed in (never deleted in place),
    so `path` holds the old complete output, nothing, or the new complete output at every instant.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    work = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(path)}{os.getpid()}-", dir=path.parent))
    target = work / path.name
    if is_dir:
        target.mkdir()
    try:
        yield target
        if is_dir and (path.exists() or path.is_symlink()):
            os.replace(path, work / f"{path.name}.old")  # rename, not rmtree: a kill here leaves nothing half-deleted
        os.replace(target, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    """Write a DataFrame as parquet (no index), atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index), atomically: the format of DVC plot data."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a prepared split, with a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro prepare` first")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated files
        raise ValueError(f"{path}: truncated or corrupt parquet file ({type(e).__name__}: {e}); rerun the stage that writes it") from e
    if columns is not None and not set(columns) <= set(df.columns):
        raise ValueError(f"{path}: expected columns {columns}, found {list(df.columns)}")
    return df


def read_json(path: str | Path) -> Any:
    """Read a JSON artifact, with an error naming the file when it is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; rerun the stage that writes it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: truncated or corrupt JSON file ({e}); rerun the stage that writes it") from e


def cell_dirs(roots: list[Path], cells: list[tuple[str, str, int]], files: list[str]) -> list[Path]:
    """The folders <root>/<regime>-<seed>/<strategy> of `cells` (each in one of `roots`), after checking each holds `files`.

    `finetune` writes the plain strategies under models/finetune, `finetune_lora` the LoRA ones under
    models/finetune_lora; this finds a cell in whichever root holds it.
    """
    dirs = []
    for r, s, seed in cells:
        found = [Path(root) / f"{r}-{seed}" / s for root in roots if (Path(root) / f"{r}-{seed}" / s).is_dir()]
        d = found[0] if found else Path(roots[0]) / f"{r}-{seed}" / s
        for name in files:
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name}: missing; run `dvc repro finetune finetune_lora` first")
        dirs.append(d)
    return dirs
