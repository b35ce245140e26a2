"""How a ``wbc`` process ends: with its command's status, after every atexit handler, without the teardown."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import atexit, sys
from wbc._process import run_and_skip_teardown

class WritesWhenFreed:
    def __del__(self, open=open, path=sys.argv[1] + ".freed"):  # module globals may be gone by then
        open(path, "w").write("freed")

def command():
    global kept
    kept = WritesWhenFreed()
    atexit.register(lambda: open(sys.argv[1] + ".atexit", "w").write("ran"))
    print("buffered output", end="")
    ENDING

if sys.argv[2] == "skip":
    run_and_skip_teardown(command)
else:
    command()
"""


def _run(tmp_path, ending: str, how: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    marker = tmp_path / "marker"
    result = subprocess.run([sys.executable, "-c", SCRIPT.replace("ENDING", ending), str(marker), how],
                            capture_output=True, text=True, timeout=60)
    return result, {path.suffix for path in tmp_path.iterdir()}


@pytest.mark.parametrize("ending, status", [("sys.exit()", 0), ("sys.exit(3)", 3), ("sys.exit('bad input')", 1)])
def test_a_command_keeps_its_status_output_and_atexit_handlers_and_skips_the_teardown(tmp_path, ending, status):
    result, written = _run(tmp_path, ending, "skip")
    assert result.returncode == status, result.stderr
    assert result.stdout == "buffered output"
    if status == 1:
        assert result.stderr.strip() == "bad input"
    assert written == {".atexit"}, "atexit handlers ran, the module teardown did not"

    control = tmp_path / "control"
    control.mkdir()
    normal, written_normally = _run(control, ending, "normal")
    assert normal.returncode == status
    assert written_normally == {".atexit", ".freed"}, "without it, the teardown frees (and finalises) everything"


def test_an_unexpected_error_leaves_the_normal_way(tmp_path):
    result, written = _run(tmp_path, "raise RuntimeError('boom')", "skip")
    assert result.returncode == 1 and "RuntimeError: boom" in result.stderr
    assert written == {".atexit", ".freed"}
