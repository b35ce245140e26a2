"""A store or tracking server of another MLflow version than the client's gets one line naming both and the fix."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.errors import version_skew


def _store_at_schema(path: Path, revision: str) -> str:
    """A SQLite store made by this MLflow in another process (this one caches the stores it has opened), its schema
    revision then set to ``revision``."""
    uri = f"sqlite:///{path}"
    _make_store(uri)
    with sqlite3.connect(path) as database:
        (current,) = database.execute("SELECT version_num FROM alembic_version").fetchone()
        database.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    assert current != revision
    return uri


def _make_store(uri: str) -> None:
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"],
                   check=True, capture_output=True)


def _older_revision() -> str:
    """A schema revision this MLflow knows and that is not its newest: the revision its newest migration follows."""
    import importlib.util
    import re

    folder = Path(importlib.util.find_spec("mlflow").submodule_search_locations[0]) / "store" / "db_migrations" / "versions"
    down = {}
    for migration in folder.glob("*.py"):
        text = migration.read_text()
        revision = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.M)
        parent = re.search(r"^down_revision\s*=\s*['\"](\w+)['\"]", text, re.M)
        if revision and parent:
            down[revision.group(1)] = parent.group(1)
    newest = next(revision for revision in down if revision not in down.values())
    return down[newest]


def _versions(uri: str, monkeypatch) -> object:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return CliRunner().invoke(cli, ["versions"])


def test_a_store_made_by_a_newer_mlflow_names_both_and_refuses_without_a_traceback(tmp_path, monkeypatch):
    uri = _store_at_schema(tmp_path / "newer.db", "ffffffffffff")
    result = _versions(uri, monkeypatch)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert "newer MLflow (schema ffffffffffff)" in line and f"MLflow {mlflow.__version__}" in line
    assert "requirements.lock" in line and "cannot downgrade" in line
    with sqlite3.connect(tmp_path / "newer.db") as database:  # nothing was changed
        assert database.execute("SELECT version_num FROM alembic_version").fetchone() == ("ffffffffffff",)


def test_a_store_of_an_older_mlflow_says_how_to_upgrade_it(tmp_path, monkeypatch):
    older = _older_revision()
    uri = _store_at_schema(tmp_path / "older.db", older)
    result = _versions(uri, monkeypatch)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"older MLflow (schema {older})" in result.output and f"mlflow db upgrade {uri}" in result.output


def test_a_store_this_mlflow_made_is_not_a_skew(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'same.db'}"
    _make_store(uri)
    result = _versions(uri, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "no registered versions" in result.output


class _OtherVersionServer(BaseHTTPRequestHandler):
    """An HTTP listener that answers ``GET /version`` as an MLflow server of another version does."""

    def do_GET(self):  # noqa: N802 - http.server's name
        body = b"9.9.9" if self.path == "/version" else b"<!doctype html><title>404 Not Found</title>"
        self.send_response(200 if self.path == "/version" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def other_version_server():
    server = HTTPServer(("127.0.0.1", 0), _OtherVersionServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_endpoint_a_server_of_another_version_does_not_know_names_both_versions(other_version_server):
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(other_version_server)
    with pytest.raises(MlflowException) as refused:
        mlflow.MlflowClient().search_registered_models()
    line = version_skew(refused.value)
    assert line and "runs MLflow 9.9.9" in line and f"client MLflow {mlflow.__version__}" in line
    assert "pip install 'mlflow==9.9.9'" in line
    assert version_skew(MlflowException("some other failure")) is None
