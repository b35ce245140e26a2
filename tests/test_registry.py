"""Registry rules: best finished run wins champion; previous and challenger aliases; failed runs never register."""

import mlflow
import pytest

from wbc.model_registry import RegistryError, register_best
from wbc.train import TrainConfig, train


def _train(data_root, **overrides):
    settings = dict(data_dir=str(data_root), arch="scratch", mode="scratch", epochs=1, batch_size=16,
                    image_size=16, limit_per_class=3, progress=False)
    settings.update(overrides)
    return train(TrainConfig(**settings))


def test_champion_previous_and_challenger(synthetic_data):
    client = mlflow.MlflowClient()
    first = _train(synthetic_data, lr=1e-6)
    assert register_best(experiment="wbc").alias == "champion"

    better = _train(synthetic_data, lr=1e-2, epochs=3, limit_per_class=0)
    assert better.best_val_f1 > first.best_val_f1
    registration = register_best(experiment="wbc")
    assert registration.alias == "champion" and registration.run_id == better.run_id
    assert client.get_model_version_by_alias("wbc-classifier", "previous").run_id == first.run_id
    champion = client.get_model_version_by_alias("wbc-classifier", "champion")
    assert champion.tags["run_id"] == better.run_id
    assert float(champion.tags["metric.best_val_f1"]) == pytest.approx(better.best_val_f1)

    assert register_best(experiment="wbc").version == registration.version, "registering again changes nothing"
    assert str(client.get_model_version_by_alias("wbc-classifier", "champion").version) == registration.version

    weaker = _train(synthetic_data, lr=1e-6, experiment="other-study")
    challenger = register_best(experiment="other-study")
    assert challenger.alias == "challenger" and challenger.run_id == weaker.run_id
    assert client.get_model_version_by_alias("wbc-classifier", "challenger").run_id == weaker.run_id
    assert client.get_model_version_by_alias("wbc-classifier", "champion").run_id == better.run_id


def test_failed_and_unfinished_runs_are_never_registered(synthetic_data):
    finished = _train(synthetic_data)
    mlflow.set_experiment("wbc")
    with pytest.raises(RuntimeError):
        with mlflow.start_run(tags={"wbc.kind": "train"}):
            mlflow.log_metric("best_val_f1", 0.999)
            raise RuntimeError("training crashed")
    running = mlflow.start_run(tags={"wbc.kind": "train"})
    mlflow.log_metric("best_val_f1", 0.998)
    try:
        registration = register_best(experiment="wbc")
    finally:
        mlflow.end_run()
    assert registration.run_id == finished.run_id != running.info.run_id


def test_no_training_run_is_a_clear_error():
    mlflow.set_experiment("wbc")
    with pytest.raises(RegistryError, match="no finished training run"):
        register_best(experiment="wbc")
