"""The one base of every failure wbc expects (bad settings, data, files, models, registry states).

Each layer raises its own subclass with a one-line message that names the file, field or setting and
says what to do; the command line catches :class:`WBCError` alone and prints that line.
"""

from __future__ import annotations


class WBCError(Exception):
    """An expected failure; ``str(error)`` is the whole message a user reads."""

    exit_code = 1
    """The process status the command line ends with."""
