"""Crash-safe writing of stage outputs: write to a temporary sibling, then rename into place.

A stage killed half-way leaves only ``*.tmp*`` siblings, never a file or folder DVC would take as done.
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


@contextlib.contextmanager
def atomic_path(path: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path` (replacing it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
    target = tmp if is_dir else tmp / path.name
    try:
        yield target
        if is_dir:
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp, path)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
        raise ValueError(f"{path}: unreadable parquet file ({type(e).__name__}: {e}); rerun the stage that writes it") from e
    if columns is not None and not set(columns) <= set(df.columns):
        raise ValueError(f"{path}: expected columns {columns}, found {list(df.columns)}")
    return df


def cell_dirs(root: Path, cells: list[tuple[str, str, int]], files: list[str]) -> list[Path]:
    """The folders root/<regime>-<strategy>-<seed> of `cells`, after checking each holds `files`."""
    dirs = [Path(root) / f"{r}-{s}-{seed}" for r, s, seed in cells]
    for d in dirs:
        for name in files:
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name}: missing; run `dvc repro finetune finetune_lora` first")
    return dirs
