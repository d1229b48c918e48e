"""Crash-safe writing of stage outputs: write into a temporary sibling, then rename into place.

A stage killed half-way (SIGKILL, out of memory, a lost machine) leaves at the output path either
nothing or the previous complete output, never a partial file or folder that DVC would take as
done. What it leaves beside it is a hidden sibling ``.<name>.tmp<pid>-<random>/``, which DVC does not
track (it is not the declared path); the next write of the same path deletes such leftovers of
writers that are no longer alive.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inflection_layers.errors import InputError, OutputError

logger = logging.getLogger(__name__)


def stage_args(description: str, options: dict[str, str]) -> argparse.Namespace:
    """The command line dvc.yaml gives a stage. Each option ``name: help`` is a required path ``--name``,
    except: a name ending in ``*`` takes one or more paths, in ``?`` is an optional path; ``group`` is a
    :class:`~inflection_layers.cells.Group` given by its name (e.g. rt-over-42), ``regime`` a regime name, ``seed`` an
    integer and ``kind`` a finetune stage's kind (plain, peft, tau)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    from inflection_layers.cells import Group

    kinds = {
        "group": {"required": True, "type": Group.parse},
        "regime": {"required": True, "choices": ("under", "over")},
        "seed": {"required": True, "type": int},
        "kind": {"required": True, "choices": ("plain", "peft", "tau")},
    }
    for name, help_text in options.items():
        flag = "--" + name.rstrip("*?").replace("_", "-")
        kw = kinds.get(name) or {
            "type": Path,
            "required": not name.endswith("?"),
            "nargs": "+" if name.endswith("*") else None,
        }
        parser.add_argument(flag, help=help_text, **{k: v for k, v in kw.items() if v is not None})
    return parser.parse_args()


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
        shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() and not sibling.is_symlink() else sibling.unlink(
            missing_ok=True
        )
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        work = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(path)}{os.getpid()}-", dir=path.parent))
    except OSError as e:
        raise unwritable(path, e) from e
    target = work / path.name
    if is_dir:
        target.mkdir()
    try:
        yield target
        try:
            if is_dir and (path.exists() or path.is_symlink()):
                os.replace(
                    path, work / f"{path.name}.old"
                )  # rename, not rmtree: a kill here leaves nothing half-deleted
            os.replace(target, path)
        except OSError as e:
            raise unwritable(path, e) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unwritable(path: Path, e: OSError) -> OutputError:
    """The one-line error for an output that cannot be written: which folder, and the system's reason."""
    where = path.parent if path.parent != Path() else Path.cwd()
    return OutputError(
        f"cannot write {path} into the folder {where}: {e.strerror or e} (check its permissions and free space)"
    )


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index), atomically: the format of DVC plot data."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def writer_of(path: str | Path, lock: str | Path = "dvc.lock") -> str | None:
    """The stage of dvc.lock whose outputs hold `path` (a file, or a file inside an output folder); None if unknown."""
    try:
        import yaml

        stages = (yaml.safe_load(Path(lock).read_text()) or {}).get("stages", {})
    except (OSError, ValueError):
        return None
    target = Path(path).as_posix()
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            o = str(out.get("path", "")).rstrip("/")
            if target == o or target.startswith(o + "/"):
                return name
    return None


def damaged(path: Path, what: str, detail: str) -> InputError:
    stage = writer_of(path)
    rerun = f"rerun `dvc repro -f {stage}`" if stage else "rerun the stage that writes it"
    return InputError(
        f"{path}: {what} ({detail}); it is written by {f'stage {stage}' if stage else 'an earlier stage'}: {rerun}"
    )


def _missing(path: Path) -> InputError:
    stage = writer_of(path)
    return InputError(
        f"{path}: missing; it is written by "
        + (f"stage {stage}: run `dvc repro {stage}`" if stage else "an earlier stage: run `dvc repro`")
    )


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet artifact; a missing, truncated or corrupt file is an InputError naming it and its stage."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated files
        raise damaged(path, "truncated or corrupt parquet file", f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    if columns is not None and not set(columns) <= set(df.columns):
        raise damaged(path, "unexpected columns", f"expected {columns}, found {list(df.columns)}")
    return df


def read_csv(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a CSV artifact (tidy tables, DVC plot data), with the same checks as :func:`read_parquet`."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):  # every CSV this study writes ends with a newline: a cut file does not
        raise damaged(path, "truncated CSV file", f"its last line ends without a newline after {len(raw):,} bytes")
    try:
        df = pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise damaged(path, "truncated or corrupt CSV file", f"{type(e).__name__}: {str(e).splitlines()[0]}") from e
    if columns is not None and not set(columns) <= set(df.columns):
        raise damaged(path, "unexpected columns", f"expected {columns}, found {list(df.columns)}")
    return df


def read_json(path: str | Path) -> Any:
    """Read a JSON artifact; a missing, truncated or corrupt file is an InputError naming it and its stage."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(path, "truncated or corrupt JSON file", str(e)) from e


def read_npy(path: str | Path) -> np.ndarray:
    """Read a saved array (no pickles), with the same checks as :func:`read_json`."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise damaged(
            path, "truncated or corrupt array file", str(e).splitlines()[0] if str(e) else type(e).__name__
        ) from e
