"""Reading requirements.lock (the output of uv pip compile, bash .ci/lock): the one parser of its pins, for
.ci/conda_pins.py, .ci/lock_diff.py and tests/test_dependencies.py. Standard library only: .ci/lock runs it with the
system's python3."""

import re
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
_PIN = re.compile(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)\s*(?:;(.*))?$")


def normal(name: str) -> str:
    """A package name as PEP 503 normalises it (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(python_3_11_only: bool = False) -> dict[str, set[str]]:
    """Package (normalised) -> the versions the lock pins, one per Python-version fork; with ``python_3_11_only``,
    only the pin that Python 3.11 installs (a line without a marker, or one for Pythons below 3.12 or a later one)."""
    pins: dict[str, set[str]] = {}
    for line in LOCK.read_text().splitlines():
        match = _PIN.match(line)
        if match and not (python_3_11_only and match.group(3) and not re.search(r"<\s*'3\.1[2-9]'", match.group(3))):
            pins.setdefault(normal(match.group(1)), set()).add(match.group(2))
    return pins
