"""The one base of every failure wbc expects (bad settings, data, files, models, registry states), and the
one-line reading of a tracking server's refused login or permission (:func:`server_refusal`).

Each layer raises its own subclass with a one-line message that names the file, field or setting and
says what to do; the command line catches :class:`WBCError` alone and prints that line.
"""

from __future__ import annotations

import os
import re


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
