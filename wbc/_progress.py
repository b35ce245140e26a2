"""Progress bars that suit where stderr goes: live in a terminal, a line or two in a log."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

LOG_UPDATE_SECONDS = 30
"""In a log, a bar writes at most one update this often (tqdm writes each update as ``\\r``, which a log keeps)."""


TERMINAL_REFRESH_STEPS = 10
LOG_REFRESH_STEPS = 50
"""Training's progress bar (Lightning's, which refreshes every so many steps) updates every
:data:`TERMINAL_REFRESH_STEPS` steps in a terminal and every :data:`LOG_REFRESH_STEPS` in a log (about a minute on a slow
2-core machine)."""


def refresh_steps() -> int:
    """How many training steps between two updates of Lightning's progress bar, for where stderr goes."""
    return TERMINAL_REFRESH_STEPS if stderr_is_terminal() else LOG_REFRESH_STEPS


def stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


def quiet_downloads_in_logs() -> None:
    """Turn MLflow's download bar off (unless the environment sets it) when stderr is not a terminal: in a log it is
    a line per file of a model (80 with its code)."""
    if not stderr_is_terminal():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def progress_bar(iterable, **options) -> tqdm:
    """``tqdm`` over ``iterable`` with ``options``, updating every 0.1 s in a terminal (tqdm's default) and every
    :data:`LOG_UPDATE_SECONDS` otherwise; the final state is always written."""
    return tqdm(iterable, mininterval=0.1 if stderr_is_terminal() else LOG_UPDATE_SECONDS, **options)
