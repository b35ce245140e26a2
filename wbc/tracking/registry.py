"""Register the best finished training run in the MLflow model registry and manage its aliases.

The best run of an experiment (by a metric, default ``val_robust_acc``, among the runs within 0.3 points of the best
clean validation accuracy) is registered as a version
of ``wbc-classifier``. Alias ``champion`` moves to it only when it beats the current champion,
which then keeps alias ``previous``; a candidate that does not beat the champion gets
``challenger``. Each version records the metric, its value and the run id as tags.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from wbc import defaults
from wbc._io import sqlite_file, store_not_created
from wbc.errors import WBCError
from wbc.evaluation.shiftbench import BENCHMARK_METRICS, CLEAN_METRIC, SELECTION_METRIC
from wbc.tracking.runs import RUN_KIND_TAG, benchmark_is_standard

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = defaults.MODEL_NAME
DEFAULT_ALIAS = defaults.CHAMPION_ALIAS
DEFAULT_METRIC = SELECTION_METRIC
"""Mean of clean and shifted validation accuracy (:mod:`wbc.evaluation.shiftbench`), logged by every training run."""
MAX_CLEAN_DROP = 0.003
"""Selecting on :data:`DEFAULT_METRIC`, a candidate may trail the most accurate candidate on clean
validation accuracy by at most this much (0.3 points): robustness must not cost the lab's own images."""


def clean_accuracy_floor(clean_accuracies) -> float:
    """The least clean validation accuracy a candidate may have: the best of ``clean_accuracies`` less
    :data:`MAX_CLEAN_DROP` (with a hair of slack for float round-trips)."""
    return max(clean_accuracies) - MAX_CLEAN_DROP - 1e-9


DEFAULT_SEARCH_EXPERIMENTS = f"{defaults.EXPERIMENT},Default"
"""Where ``register`` looks: ``mlflow run`` without ``--experiment-name`` logs to ``Default``."""


class RegistryError(WBCError, ValueError):
    """Nothing to register, or the registry is not in the state asked for; the message says what to do."""


@dataclass
class Registration:
    model_name: str
    version: str
    run_id: str
    metric: str
    value: float
    alias: str
    """The alias this version holds now: the champion alias, or ``challenger``."""
    previous_champion: str | None


def best_training_run(client: MlflowClient, experiment: str, metric: str):
    """The best finished training run in ``experiment`` (comma-separated names allowed)."""
    names = [name.strip() for name in experiment.split(",") if name.strip()]
    found = [client.get_experiment_by_name(name) for name in names]
    ids = [item.experiment_id for item in found if item is not None]
    if not ids:
        raise RegistryError(f"experiment {experiment!r} does not exist: train a model first (wbc train)")
    runs = client.search_runs(
        ids,
        filter_string=f"attributes.status = 'FINISHED' and tags.`{RUN_KIND_TAG}` = 'train'",
        order_by=[f"metrics.`{metric}` DESC", "attributes.start_time DESC"],
        max_results=1000,
    )
    # the benchmark's metrics rank only when measured on the standard benchmark
    runs = [run for run in runs if metric in run.data.metrics and (metric not in BENCHMARK_METRICS or benchmark_is_standard(run))]
    if metric == DEFAULT_METRIC and runs:
        floor = clean_accuracy_floor(run.data.metrics.get(CLEAN_METRIC, 0.0) for run in runs)
        runs = [run for run in runs if run.data.metrics.get(CLEAN_METRIC, 0.0) >= floor]
    if not runs:
        raise RegistryError(
            f"no finished training run with metric {metric!r} in experiment {experiment!r}: train a model first"
            + (" (training runs log it unless --no-shiftbench; for an older run: wbc shiftbench runs:/<run id>/model)"
               if metric == DEFAULT_METRIC else "")
        )
    return runs[0]


SUPERSEDED_TAG = "superseded_by"


def _version_metric(version, metric: str) -> float | None:
    """The version's recorded metric; None when unknown or when a newer model of its run replaced it."""
    if SUPERSEDED_TAG in version.tags:
        return None
    value = version.tags.get(f"metric.{metric}")
    return float(value) if value is not None else None


def register_best(
    experiment: str = DEFAULT_SEARCH_EXPERIMENTS,
    metric: str = DEFAULT_METRIC,
    model_name: str = DEFAULT_MODEL_NAME,
    alias: str = DEFAULT_ALIAS,
) -> Registration:
    """Register the best finished training run of ``experiment`` and move ``alias`` if it wins.

    Safe to run concurrently: on a local SQLite store the decision is taken under a file lock,
    and on any store the alias is finally re-pointed at the best registered version, so two
    racing calls cannot leave it on the worse model or on nothing.
    """
    client = MlflowClient()
    run = best_training_run(client, experiment, metric)
    value = float(run.data.metrics[metric])
    run_id = run.info.run_id
    with _registry_lock():
        version = _version_for_run(client, model_name, run_id, metric, value)
        champion = _alias_target(client, model_name, alias)
        previous = None
        if champion is not None and champion.version == version.version:
            held = alias
        elif (
            champion is None
            or value > (_version_metric(champion, metric) or float("-inf"))
            or not _clean_enough(client, [champion], metric, against=[run])
        ):
            client.set_registered_model_alias(model_name, alias, version.version)
            if champion is not None:
                client.set_registered_model_alias(model_name, "previous", champion.version)
                previous = str(champion.version)
            held = alias
        else:
            client.set_registered_model_alias(model_name, "challenger", version.version)
            held = "challenger"
    if reconcile_alias(client, model_name, alias, metric) != str(version.version) and held == alias:
        held = "challenger"
        client.set_registered_model_alias(model_name, "challenger", version.version)
    log.info("%s version %s (%s=%.4f) holds %s", model_name, version.version, metric, value, held)
    return Registration(model_name, str(version.version), run_id, metric, value, held, previous)


def _clean_enough(client: MlflowClient, versions: list, metric: str, against: list | None = None) -> list:
    """The ``versions`` whose training runs trail the best clean accuracy (among them and the runs
    ``against``) by at most :data:`MAX_CLEAN_DROP`; all of them when selecting on another metric."""
    if metric != DEFAULT_METRIC or not versions:
        return versions
    clean = {}
    for version in versions:
        try:
            clean[version.version] = client.get_run(version.run_id).data.metrics.get(CLEAN_METRIC, 0.0)
        except MlflowException:
            clean[version.version] = 0.0
    floor = clean_accuracy_floor([*clean.values(), *(run.data.metrics.get(CLEAN_METRIC, 0.0) for run in against or [])])
    return [version for version in versions if clean[version.version] >= floor]


def _alias_target(client: MlflowClient, model_name: str, alias: str):
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def _version_for_run(client: MlflowClient, model_name: str, run_id: str, metric: str, value: float):
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        try:
            client.create_registered_model(model_name, description="White blood cell classifier (wbc), 8 classes.")
        except MlflowException:
            pass  # created meanwhile by a concurrent registration
    latest = _latest_model_uri(client, run_id)
    of_run = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    existing = [version for version in of_run if latest is None or version.source == latest]
    if existing:
        # a metric logged after registration (e.g. by wbc shiftbench) is recorded on the version too
        client.set_model_version_tag(model_name, existing[0].version, f"metric.{metric}", str(value))
        client.set_model_version_tag(model_name, existing[0].version, "metric", metric)
        return client.get_model_version(model_name, existing[0].version)
    version = mlflow.register_model(
        latest or f"runs:/{run_id}/model",
        model_name,
        tags={f"metric.{metric}": str(value), "metric": metric, "run_id": run_id},
    )
    for older in of_run:  # the run logged a newer model (wbc calibrate): it replaces the older versions
        client.set_model_version_tag(model_name, older.version, SUPERSEDED_TAG, str(version.version))
    return version


def replace_run_versions(run_id: str, model_name: str = DEFAULT_MODEL_NAME) -> str | None:
    """After a run logged a newer model (``wbc calibrate``): register it as a new version that takes over the
    metric tags and the aliases of the run's registered versions, which are tagged ``superseded_by``.
    Returns the new version, or None when no version of the run was registered (nothing to replace)."""
    client = MlflowClient()
    with _registry_lock():
        try:
            of_run = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
        except MlflowException:
            return None
        latest = _latest_model_uri(client, run_id)
        if not of_run or latest is None or any(version.source == latest for version in of_run):
            return None
        tags = {"run_id": run_id}
        for older in sorted(of_run, key=lambda version: int(version.version)):  # the newest version's values win
            tags |= {name: value for name, value in older.tags.items() if name.startswith("metric")}
        version = mlflow.register_model(latest, model_name, tags=tags)
        old = {str(older.version) for older in of_run}
        for older in of_run:
            client.set_model_version_tag(model_name, older.version, SUPERSEDED_TAG, str(version.version))
        aliases = client.get_registered_model(model_name).aliases
        for alias, target in aliases.items():
            if str(target) in old:
                client.set_registered_model_alias(model_name, alias, version.version)
        if str(aliases.get("previous")) in old and str(aliases.get(DEFAULT_ALIAS)) in old:
            client.delete_registered_model_alias(model_name, "previous")
        log.info("%s version %s replaces version(s) %s of run %s", model_name, version.version, ", ".join(sorted(old)), run_id)
    # as in register_best: the champion ends on the best registered version even if a registration raced this one
    reconcile_alias(client, model_name, DEFAULT_ALIAS, tags.get("metric", DEFAULT_METRIC))
    return str(version.version)


def _latest_model_uri(client: MlflowClient, run_id: str) -> str | None:
    """``models:/<id>`` of the newest model named ``model`` logged by the run (a recalibrated one wins)."""
    run = client.get_run(run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = 'model'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
        output_format="list",
    )
    return f"models:/{models[0].model_id}" if models else None


def reconcile_alias(client: MlflowClient, model_name: str, alias: str, metric: str) -> str | None:
    """Point ``alias`` at the registered version with the highest ``metric`` (on ties: the version holding it
    now, else the earliest); return it."""
    versions = [v for v in client.search_model_versions(f"name = '{model_name}'") if _version_metric(v, metric) is not None]
    versions = _clean_enough(client, versions, metric)
    current = _alias_target(client, model_name, alias)
    holder = str(current.version) if current is not None else None
    scored = [(_version_metric(version, metric), str(version.version) == holder, -int(version.version), version) for version in versions]
    if not scored:
        return None
    *_, best = max(scored, key=lambda item: item[:3])
    if current is None or str(current.version) != str(best.version):
        client.set_registered_model_alias(model_name, alias, best.version)
        previous = _alias_target(client, model_name, "previous")
        if previous is not None and str(previous.version) == str(best.version):
            client.delete_registered_model_alias(model_name, "previous")
    return str(best.version)


@contextlib.contextmanager
def _registry_lock():
    """An exclusive file lock beside a local SQLite store (no-op for other stores)."""
    database = sqlite_file(mlflow.get_registry_uri())
    if database is None or os.name != "posix":
        yield
        return
    import fcntl

    lock_path = database.with_suffix(".register.lock")
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def source_run_id(model: str) -> str | None:
    """The training run behind an MLflow model URI (``runs:/``, ``models:/name@alias``, ``models:/name/N``, ``models:/m-...``)."""
    client = mlflow.MlflowClient()
    if model.startswith("runs:/"):
        return model[len("runs:/"):].split("/")[0]
    if not model.startswith("models:/"):
        return None
    reference = model[len("models:/"):].strip("/")
    if reference.startswith("m-"):
        return client.get_logged_model(reference).source_run_id
    if "@" in reference:
        name, _, alias = reference.partition("@")
        return client.get_model_version_by_alias(name, alias).run_id
    name, _, version = reference.rpartition("/")
    return client.get_model_version(name, version).run_id


def adaptation_run(model: str):
    """The MLflow run of kind ``adapt`` that made ``model`` (a model URI, or the exported folder ``<output dir>/<run
    id>/model`` that run wrote, looked up in a local SQLite store only), or None: another kind of run, another
    reference, or no store that knows it."""
    store = mlflow.get_tracking_uri()
    local = "://" not in model and ":/" not in model
    candidate = Path(model).parent.name if local else None
    if local and (not re.fullmatch(r"[0-9a-f]{32}", candidate) or sqlite_file(store) is None):
        return None  # a folder needs no store to load: a remote one is not asked (it may be down)
    if store_not_created(store):
        return None
    try:
        run = mlflow.MlflowClient().get_run(candidate or source_run_id(model))
    except (MlflowException, OSError):
        return None
    return run if run.data.tags.get(RUN_KIND_TAG) == "adapt" else None


def list_versions(model_name: str = DEFAULT_MODEL_NAME) -> list[dict[str, str]]:
    """Every registered version of ``model_name``, newest first: ``version``, ``aliases`` (comma-separated),
    ``kind`` (the run's ``wbc.kind``: train, average, adapt, ...), ``made`` (for a selected one, its selection metric
    and value; for an adapted one, the lab's alias it was made for and the version it came from), ``run_id`` and
    ``created`` (UTC, to the minute). Empty when the name is not registered or there is no store yet."""
    if store_not_created(mlflow.get_tracking_uri()):
        return []
    client = MlflowClient()
    try:
        aliases = client.get_registered_model(model_name).aliases or {}
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(str(number), []).append(alias)
    rows = []
    for version in sorted(client.search_model_versions(f"name = '{model_name}'"), key=lambda v: -int(v.version)):
        tags = version.tags or {}
        try:
            kind = client.get_run(version.run_id).data.tags.get(RUN_KIND_TAG, "") if version.run_id else ""
        except MlflowException:
            kind = "(run deleted)"
        if "adapted_for" in tags:
            made = f"for {tags['adapted_for']} from {tags.get('adapted_from', '?')}"
        elif "metric" in tags:
            made = f"{tags['metric']} {float(tags.get('metric.' + tags['metric'], 'nan')):.4f}"
        else:
            made = ""
        created = datetime.datetime.fromtimestamp(version.creation_timestamp / 1000, datetime.timezone.utc)
        rows.append({"version": str(version.version), "aliases": ",".join(sorted(by_version.get(str(version.version), []))),
                     "kind": kind, "made": made, "run_id": version.run_id or "", "created": created.strftime("%Y-%m-%d %H:%M")})
    return rows


def version_line(model: str) -> str | None:
    """``<name> version <N> (run <id>)`` for what a registered name or alias means now; None for other references."""
    version = registered_version(model)
    return None if version is None else f"{version.name} version {version.version} (run {version.run_id})"


def version_params(model: str) -> dict[str, str]:
    """What a run that scored ``model`` records about it: for a registered name or alias, the version and the training
    run behind it now (an alias moves later); nothing for other references."""
    version = registered_version(model)
    return {} if version is None else {"model_version": f"{version.name}/{version.version}", "model_run_id": version.run_id}


def registered_version(model: str):
    """The registered model version a ``models:/name@alias`` or ``models:/name/N`` URI means now (None for other
    references, or when there is none)."""
    if not model.startswith("models:/") or model[len("models:/"):].startswith("m-") \
            or store_not_created(mlflow.get_tracking_uri()):
        return None
    reference = model[len("models:/"):].strip("/")
    client = mlflow.MlflowClient()
    try:
        if "@" in reference:
            name, _, alias = reference.partition("@")
            return client.get_model_version_by_alias(name, alias)
        name, _, version = reference.rpartition("/")
        return client.get_model_version(name, version)
    except MlflowException:
        return None


RESERVED_ALIASES = (DEFAULT_ALIAS, "previous", "challenger")
"""The aliases the registry's own selection moves: an adapted model never takes one."""


MLFLOW_RESERVED_ALIAS = re.compile(r"latest|[vV]\d+", re.IGNORECASE)
"""Aliases MLflow's registry refuses, as its documentation states: ``latest`` (any letter case) and version
references such as ``v1``, which ``models:/name@v1`` would confuse with version 1."""
MAX_ALIAS_LENGTH = 255
"""MLflow's limit on an alias's length."""


def check_lab_alias(alias: str) -> str:
    """``alias`` if a lab's adapted model may hold it; else :class:`RegistryError` saying why not: one of
    :data:`RESERVED_ALIASES` in any letter case, one MLflow reserves (:data:`MLFLOW_RESERVED_ALIAS`), longer than
    :data:`MAX_ALIAS_LENGTH`, or characters other than letters, digits, ``-`` and ``_``. The registry checks again
    when the alias is set (:func:`register_adapted`)."""
    if alias.lower() in RESERVED_ALIASES:
        raise RegistryError(f"alias={alias!r} is the registry's own ({', '.join(RESERVED_ALIASES)}, in any letter case): "
                            "name the lab, e.g. lab-a")
    if not alias or not alias.replace("-", "").replace("_", "").isalnum() or alias[0].isdigit():
        raise RegistryError(f"alias={alias!r} is invalid: letters, digits, - and _, not starting with a digit (e.g. lab-a)")
    if MLFLOW_RESERVED_ALIAS.fullmatch(alias) or len(alias) > MAX_ALIAS_LENGTH:
        raise RegistryError(f"alias={alias!r} is reserved or invalid in MLflow ('latest' and version names such as v1 "
                            f"are reserved; at most {MAX_ALIAS_LENGTH} characters): name the lab, e.g. lab-a")
    return alias


def register_adapted(run_id: str, alias: str, source: str, model_name: str = DEFAULT_MODEL_NAME) -> tuple[str, str | None]:
    """Register the model run ``run_id`` logged as a new version of ``model_name`` and point ``alias`` (a lab's, never
    one of :data:`RESERVED_ALIASES`) at it; return the version and the one the alias pointed at before (None: a new
    alias). The version carries no selection metric, so the registry's own ranking (``@champion``) never picks it."""
    check_lab_alias(alias)
    client = MlflowClient()
    with _registry_lock():
        previous = None
        try:
            registered = client.get_registered_model(model_name)
            previous = (registered.aliases or {}).get(alias)
        except MlflowException:
            client.create_registered_model(model_name, description="White blood cell classifier (wbc), 8 classes.")
        version = mlflow.register_model(_latest_model_uri(client, run_id) or f"runs:/{run_id}/model", model_name,
                                        tags={"run_id": run_id, "adapted_for": alias, "adapted_from": source})
        try:
            client.set_registered_model_alias(model_name, alias, version.version)
        except MlflowException as error:
            raise RegistryError(f"alias={alias!r} was refused by the registry ({error.message}); version "
                                f"{version.version} is registered without it: name the lab, e.g. lab-a") from None
    return str(version.version), None if previous is None else str(previous)

