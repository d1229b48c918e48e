"""The study's known errors, and the one place that turns them into a one-line message.

A known error is a problem a user can fix: a bad parameter, a missing or damaged input, a model
that cannot be found. Each stage's ``main`` runs under :func:`run_main`, which prints such an
error as one line (``error: <stage>: <message>``) and exits with status 2. Anything else is a bug
and keeps its traceback. Set ``INFLECTION_LAYERS_TRACEBACK=1`` to see the traceback of a known
error too.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

TRACEBACK_ENV = "INFLECTION_LAYERS_TRACEBACK"
EXIT_KNOWN = 2


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


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's ``main``: known errors become one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except StudyError as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        stage = os.path.basename(sys.argv[0]).removesuffix(".py") if sys.argv and sys.argv[0] else "stage"
        print(f"error: {stage}: {e} (set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_KNOWN)
