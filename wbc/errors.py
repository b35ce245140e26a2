"""The one base of every failure wbc expects (bad settings, data, files, models, registry states), and the
one-line reading of a tracking server's refused login or permission (:func:`server_refusal`) and of an MLflow store or
server of another version than the client's (:func:`version_skew`).

Each layer raises its own subclass with a one-line message that names the file, field or setting and
says what to do; the command line catches :class:`WBCError` alone and prints that line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


class WBCError(Exception):
    """An expected failure; ``str(error)`` is the whole message a user reads."""

    exit_code = 1
    """The process status the command line ends with."""


# A tracking server that checks logins (``mlflow server --app-name basic-auth``) refuses with HTTP 401 or 403; clients
# log in with MLflow's own variables.
USERNAME_VARIABLE = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"
_ENDPOINT = re.compile(r"endpoint (\S+)")
_WHAT = {
    "model-versions/create": "register versions of this model",
    "registered-models/alias": "move this model's aliases (@champion ...)",
    "model-versions/set-tag": "tag this model's versions",
    "registered-models/create": "create registered models",
    "runs/create": "create runs in this experiment",
    "experiments/create": "create experiments",
}


def server_refusal(error: BaseException) -> str | None:
    """The one-line explanation of an MLflow client error that is a refused login (HTTP 401) or a refused permission
    (HTTP 403); None for any other error."""
    code = getattr(error, "error_code", None)
    if code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return None
    import mlflow

    server = mlflow.get_tracking_uri()
    user = os.environ.get(USERNAME_VARIABLE)
    if code == "UNAUTHENTICATED":
        if not user or not os.environ.get(PASSWORD_VARIABLE):
            missing = " and ".join(v for v in (USERNAME_VARIABLE, PASSWORD_VARIABLE) if not os.environ.get(v))
            return f"the tracking server {server} needs a login: set {missing} to your account on it"
        return (f"the tracking server {server} refused the login of {user!r}: check {PASSWORD_VARIABLE} (and "
                f"{USERNAME_VARIABLE}), or ask its admin to create the account")
    found = _ENDPOINT.search(str(error))
    endpoint = found[1] if found else ""
    what = next((text for key, text in _WHAT.items() if key in endpoint), "do this")
    return (f"the tracking server {server} refused: user {user!r} has no permission to {what}"
            f"{f' ({endpoint})' if endpoint else ''}; nothing was changed by this request; ask the server's admin "
            "for the permission, or have an admin run it")


_SCHEMA = re.compile(r"out-of-date database schema \(found version (\w+), but expected (\w+)\)")


def _mlflow_knows_revision(revision: str) -> bool:
    """Whether the installed MLflow's migrations hold the store schema ``revision`` (its files are named by it)."""
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    folders = [Path(location) / "store" / "db_migrations" / "versions" for location in spec.submodule_search_locations]
    return any(any(folder.glob(f"{revision}_*.py")) for folder in folders)


def _server_version(uri: str) -> str | None:
    """What an MLflow tracking server at ``uri`` says its version is (``GET /version``), or None."""
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/version", timeout=5) as answer:  # noqa: S310 (the user's URI)
            return answer.read(64).decode("utf-8", "replace").strip() or None
    except (OSError, ValueError):
        return None


def version_skew(error: BaseException) -> str | None:
    """The one-line explanation of an MLflow client error that comes from a store or a tracking server of another
    MLflow version than the client's, naming both and the fix; None for any other error.

    Two cases: a database store whose schema differs from the one this MLflow expects (made or upgraded by a newer
    MLflow, or older and not yet upgraded: MLflow's "out-of-date database schema"), and a tracking server that answers
    a request with "endpoint not found" while it runs another MLflow version (``GET /version``)."""
    import mlflow

    client = mlflow.__version__
    uri = mlflow.get_tracking_uri()
    found = _SCHEMA.search(str(error))
    if found:
        store, expected = found.groups()
        if _mlflow_knows_revision(store):
            return (f"the tracking store {uri} was made by an older MLflow (schema {store}) than this client, MLflow "
                    f"{client} (schema {expected}): back the store up, then run 'mlflow db upgrade {uri}' (older "
                    "clients then can no longer open it), or use an MLflow of the version that made it")
        return (f"the tracking store {uri} was made or upgraded by a newer MLflow (schema {store}) than this client, "
                f"MLflow {client}, which expects schema {expected}: install the MLflow that made it (wbc's range is in "
                "pyproject.toml; pip install -c requirements.lock -e . gives the tested one), or use a store of this "
                "MLflow's own; MLflow cannot downgrade a store")
    if getattr(error, "error_code", None) == "ENDPOINT_NOT_FOUND" or "ENDPOINT_NOT_FOUND" in str(error):
        if uri.startswith(("http://", "https://")):
            server = _server_version(uri)
            if server and server != client:
                return (f"the tracking server {uri} runs MLflow {server} and this client MLflow {client}, and the "
                        "server does not know this request: install the server's MLflow here "
                        f"(pip install 'mlflow=={server}'), or have the server upgraded")
    return None
