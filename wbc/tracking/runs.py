"""MLflow set-up shared by every command: the tracking store, the experiment, run tags and plots."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow

from wbc import defaults
from wbc._io import store_not_created
from wbc.errors import WBCError, version_skew

DEFAULT_EXPERIMENT = defaults.EXPERIMENT
RUN_KIND_TAG = "wbc.kind"
"""Tag that says what a run did: ``train``, ``evaluate``, ``shiftbench``, ``compare``."""
BENCHMARK_TAG = "wbc.shiftbench"
"""Tag on a run whose metrics include the shifted benchmark's: ``standard`` (seed 0, the whole validation split: the
registry ranks on it), or what differed (then the registry leaves the run out)."""


def benchmark_tag(result) -> str:
    """:data:`BENCHMARK_TAG`'s value for a :class:`~wbc.evaluation.shiftbench.ShiftBenchResult`."""
    if result.standard:
        return "standard"
    return f"not comparable: seed {result.seed}, {result.images} images" + (" (limit_per_class)" if result.limited else "")


def benchmark_is_standard(run) -> bool:
    """Whether ``run``'s benchmark metrics come from the standard benchmark. Runs logged before the tag existed count
    when they trained with seed 0 on every image (the benchmark then used the run's seed and limit)."""
    tag = run.data.tags.get(BENCHMARK_TAG)
    if tag is not None:
        return tag == "standard"
    params = run.data.params
    return params.get("seed", "0") == "0" and params.get("limit_per_class", "0") == "0"


def default_tracking_uri() -> str:
    """``sqlite:///<cwd>/mlflow.db``: runs and the model registry in one local file."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def configure_tracking(experiment: str | None = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``$MLFLOW_TRACKING_URI`` or the local SQLite default, and select ``experiment`` (created if
    missing; ``None``: only the store, for commands that read and write nothing there).

    Under ``mlflow run`` the run (and its experiment) already exist, so the experiment is
    only chosen when no run was handed to us.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    check_store_version(uri)
    if experiment is not None and not os.environ.get("MLFLOW_RUN_ID"):
        found = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)
        # When another process creates the experiment at the same moment, MLflow 3.17's
        # set_experiment returns it without making it active; activating it by id is race-free.
        mlflow.set_experiment(experiment_id=found.experiment_id)
    return uri


class StoreVersionError(WBCError):
    """The tracking store or server belongs to another MLflow version than the client's."""


def check_store_version(uri: str) -> None:
    """Raise :class:`StoreVersionError`, naming both MLflow versions and the fix, when the store at ``uri`` (one that
    exists) was made by a newer or an older MLflow than this client's (:func:`wbc.errors.version_skew`); any other
    failure is left to the first real request. Only database stores are asked here: a remote server that is down
    would make MLflow retry for minutes before the command's own first request could say so."""
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")) or store_not_created(uri):
        return
    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except mlflow.exceptions.MlflowException as error:
        explained = version_skew(error)
        if explained:
            raise StoreVersionError(explained) from None


def project_run_experiment() -> str | None:
    """The experiment of the run that ``mlflow run`` started for this process (``$MLFLOW_RUN_ID``), if any: where
    ``mlflow run --experiment-name X`` wants everything logged."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    client = mlflow.MlflowClient()
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def reopen_run(run_id: str):
    """``mlflow.start_run`` on an existing run, whichever experiment it is in (MLflow refuses a run
    outside the active experiment)."""
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    return mlflow.start_run(run_id=run_id)


def _equivalent(logged: str, value, normalise) -> bool:
    if logged == str(value) or normalise(logged) == normalise(str(value)):
        return True
    try:
        return float(logged) == float(value)
    except (TypeError, ValueError):
        return False


def log_params_once(params: dict, normalise=lambda value: value) -> None:
    """Log ``params`` to the active run, skipping those it already holds with an equivalent value.

    ``mlflow run`` logs the entry point's parameters as given (``lr=0.00001``, ``arch=resnet``)
    before our code starts; MLflow refuses to change a param, so equal values (numerically, or
    after ``normalise``) are left as they are, and a genuinely different value is kept as
    ``resolved_<name>``.
    """
    run = mlflow.active_run()
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.params if run else {}
    fresh = {}
    for name, value in params.items():
        if name not in logged:
            fresh[name] = value
        elif not _equivalent(logged[name], value, normalise):
            fresh[f"resolved_{name}"] = value
    mlflow.log_params(fresh)


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_tags(**extra: str) -> dict[str, str]:
    tags = dict(extra)
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags.setdefault("mlflow.source.git.commit", commit)
    return tags


def training_curves_figure(run_id: str):
    """Loss and validation accuracy / macro-F1 per epoch, from the run's metric history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = mlflow.MlflowClient()
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, names in ((loss_axis, ("train_loss", "val_loss")), (score_axis, ("train_acc", "val_acc", "val_f1"))):
        for name in names:
            history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
            if history:
                axis.plot([m.step + 1 for m in history], [m.value for m in history], marker="o", label=name)
        axis.set_xlabel("epoch")
        axis.legend()
        axis.grid(alpha=0.3)
    loss_axis.set_title("loss")
    score_axis.set_title("accuracy / macro-F1")
    figure.tight_layout()
    return figure
