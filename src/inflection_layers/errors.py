"""The study's known errors, and how every stage starts and ends: :func:`run_main`.

A known error is a problem a user can fix: a bad parameter, a missing or damaged input, a model that cannot be
found, an output folder that cannot be written. :func:`run_main` prints such an error as one line (``error:
<stage>: <message>``) and exits with status 2; anything else is a bug and keeps its traceback. Set
``INFLECTION_LAYERS_TRACEBACK=1`` to see the traceback of a known error too.

An interrupted stage ends cleanly: SIGTERM and SIGINT raise :class:`Interrupted` in the stage, so every
``atomic_path`` removes its temporary folder on the way out, and one line says how to resume. A stage also ends
when the `dvc` process that started it dies (a watchdog thread polls it, and the kernel's parent-death signal
covers a direct parent), so no orphan moves outputs into place that dvc.lock does not record.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

TRACEBACK_ENV = "INFLECTION_LAYERS_TRACEBACK"
EXIT_KNOWN = 2
WATCH_SECONDS = 1.0  # how often a stage checks that its dvc process is alive
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class StudyError(Exception):
    """A problem the user can fix; its message is one complete sentence naming what is wrong."""


class ParamError(StudyError, ValueError):
    """A parameter is unknown, missing, of the wrong type or out of range."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}")
        self.key = key


class DataError(StudyError, ValueError):
    """A data file is missing, malformed, truncated or not the known version."""


class InputError(StudyError, ValueError):
    """An input written by an earlier stage is missing or damaged."""


class ModelError(StudyError, RuntimeError):
    """A model cannot be found, assembled or loaded, or its weights are damaged."""


class OutputError(StudyError, OSError):
    """An output folder cannot be written."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached the stage, or the dvc process that started it died."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stage_label(argv: list[str] | None = None) -> str:
    """The stage as dvc.yaml names it, from the command line: ``finetune_peft@rt-over-42``, ``source@over-42``."""
    argv = sys.argv if argv is None else argv
    name = Path(argv[0]).stem if argv and argv[0] else "stage"
    name = name if name != "__main__" else Path(argv[0]).parent.name

    def value(flag: str) -> str | None:
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else None

    if value("--kind") not in (None, "plain"):  # finetune --kind peft is the stage finetune_peft
        name += f"_{value('--kind')}"
    item = value("--group") or ("-".join(v for v in (value("--regime"), value("--seed")) if v) or None)
    return f"{name}@{item}" if item else name


def _ancestors(pid: int) -> list[int]:
    """The process ids above `pid`, nearest first, from /proc (empty where /proc is not available)."""
    out = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        while pid > 1:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent's pid
            out.append(pid)
    return out


def _is_dvc(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:2]) or b"dvc" in argv[1:3]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def watch_dvc(interval: float = WATCH_SECONDS) -> int | None:
    """Stop this process (SIGTERM to itself) when the dvc process above it dies; returns that pid, or None when no
    dvc process started this one. The kernel's parent-death signal also covers the direct parent."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    dvc = next((p for p in _ancestors(os.getpid()) if _is_dvc(p)), None)
    if dvc is None:
        return None

    def watch() -> None:
        while _alive(dvc):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-dvc", daemon=True).start()
    return dvc


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's ``main``: known errors become one line on stderr and exit status 2; an interruption (SIGTERM,
    SIGINT, the dvc process gone) unwinds the stage, so its temporary folders are removed, and says how to resume."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    label = stage_label()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)
    watch_dvc()
    try:
        main()
    except Interrupted as e:
        print(
            f"interrupted: stage {label} ({e}); nothing half-written is left: rerun `dvc repro` to resume",
            file=sys.stderr,
        )
        sys.exit(128 + e.signum)
    except StudyError as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {label}: {e} (set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_KNOWN)
