"""Register the best finished training run in the MLflow model registry and manage its aliases.

The best run of an experiment (by a metric, default ``best_val_f1``) is registered as a version
of ``wbc-classifier``. Alias ``champion`` moves to it only when it beats the current champion,
which then keeps alias ``previous``; a candidate that does not beat the champion gets
``challenger``. Each version records the metric, its value and the run id as tags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from wbc.tracking import DEFAULT_EXPERIMENT, RUN_KIND_TAG

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "wbc-classifier"
DEFAULT_ALIAS = "champion"
DEFAULT_METRIC = "best_val_f1"
DEFAULT_SEARCH_EXPERIMENTS = f"{DEFAULT_EXPERIMENT},Default"
"""Where ``register`` looks: ``mlflow run`` without ``--experiment-name`` logs to ``Default``."""


class RegistryError(ValueError):
    pass


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
        max_results=50,
    )
    runs = [run for run in runs if metric in run.data.metrics]
    if not runs:
        raise RegistryError(
            f"no finished training run with metric {metric!r} in experiment {experiment!r}: train a model first"
        )
    return runs[0]


def _version_metric(version, metric: str) -> float | None:
    value = version.tags.get(f"metric.{metric}")
    return float(value) if value is not None else None


def register_best(
    experiment: str = DEFAULT_SEARCH_EXPERIMENTS,
    metric: str = DEFAULT_METRIC,
    model_name: str = DEFAULT_MODEL_NAME,
    alias: str = DEFAULT_ALIAS,
) -> Registration:
    """Register the best finished training run of ``experiment`` and move ``alias`` if it wins."""
    client = MlflowClient()
    run = best_training_run(client, experiment, metric)
    value = float(run.data.metrics[metric])
    run_id = run.info.run_id
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="White blood cell classifier (wbc), 8 classes.")
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if existing:
        version = existing[0]
    else:
        version = mlflow.register_model(
            f"runs:/{run_id}/model",
            model_name,
            tags={f"metric.{metric}": str(value), "metric": metric, "run_id": run_id},
        )
    try:
        champion = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        champion = None

    previous = None
    if champion is not None and champion.version == version.version:
        held = alias
    elif champion is None or value > (_version_metric(champion, metric) or float("-inf")):
        client.set_registered_model_alias(model_name, alias, version.version)
        if champion is not None:
            client.set_registered_model_alias(model_name, "previous", champion.version)
            previous = str(champion.version)
        held = alias
    else:
        client.set_registered_model_alias(model_name, "challenger", version.version)
        held = "challenger"
    log.info("%s version %s (%s=%.4f) holds %s", model_name, version.version, metric, value, held)
    return Registration(model_name, str(version.version), run_id, metric, value, held, previous)
