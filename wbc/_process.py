"""Process set-up before the heavy work starts, and a quick way out after it.

glibc's default malloc returns PyTorch's large per-batch buffers to the OS after every step;
on small VMs the page faults that follow cost more than half the CPU throughput. These
settings keep freed memory in the process. glibc reads them only at start-up, so
:func:`tune_malloc_and_reexec` restarts the current command once with them set.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable

MALLOC_SETTINGS = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "MALLOC_TOP_PAD_": "1000000000",
}
_OPT_OUT = "WBC_NO_MALLOC_TUNING"


_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_MAX_": -4}
"""glibc ``mallopt`` parameter numbers (M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX) for :data:`MALLOC_SETTINGS`."""


def tune_malloc_in_process() -> bool:
    """Apply :data:`MALLOC_SETTINGS` to this running process with glibc's ``mallopt``; False if not glibc.

    For processes that ``wbc`` does not start itself, such as ``mlflow models serve``.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux") or os.environ.get(_OPT_OUT):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(libc.mallopt(_MALLOPT[name], int(value)) == 1 for name, value in MALLOC_SETTINGS.items())
    except (OSError, AttributeError):
        return False


def malloc_tuned() -> bool:
    return all(os.environ.get(name) == value for name, value in MALLOC_SETTINGS.items())


def tune_malloc_and_reexec() -> None:
    """Restart this Python process with :data:`MALLOC_SETTINGS` in its environment (Linux, once).

    Set ``WBC_NO_MALLOC_TUNING=1`` to skip it (for example under a debugger).
    """
    if malloc_tuned() or os.environ.get(_OPT_OUT) or not sys.platform.startswith("linux"):
        return
    environment = {**os.environ, **MALLOC_SETTINGS}
    argv = sys.orig_argv if hasattr(sys, "orig_argv") else [sys.executable, *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, environment)


def run_and_skip_teardown(command: Callable[[], object]) -> None:
    """Run ``command``, which ends by raising SystemExit (as a click command does), then end the process
    without the interpreter's teardown.

    After the command, Python still joins the remaining threads and runs every atexit handler registered
    since (MLflow's and logging's flushes, temporary-directory clean-up); only then does the process
    leave, with ``os._exit`` and the command's status, instead of freeing the modules of torch, Lightning
    and MLflow one by one (about 4 s a command on a 2-core machine). Call it before anything else
    registers an atexit handler: handlers registered earlier would be skipped. Other exceptions leave
    the normal way.
    """
    status: list[int] = []

    def leave() -> None:
        if status:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(status[0])

    atexit.register(leave)  # atexit runs handlers last-registered first, so this one runs last
    try:
        command()
    except SystemExit as exit:
        code = exit.code
        status.append(0 if code is None else code if isinstance(code, int) else 1)
        raise
