"""Registry rules: best finished run wins champion; previous and challenger aliases; failed runs never register."""

import os
import subprocess
import sys

import mlflow
import pytest

from wbc.tracking.registry import RegistryError, reconcile_alias
from wbc.tracking.registry import register_best as register_by_metric
from wbc.training.config import TrainConfig
from wbc.jobs.train import train


def register_best(**settings):
    """The registry's rules do not depend on the metric; these tests order runs by macro-F1."""
    return register_by_metric(metric="best_val_f1", **settings)


def _train(data_root, **overrides):
    settings = dict(data_dir=str(data_root), arch="scratch", mode="scratch", epochs=1, batch_size=16,
                    image_size=16, limit_per_class=3, progress=False, onnx=False)
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


def test_reconcile_repairs_a_champion_moved_by_a_racing_writer(synthetic_data):
    client = mlflow.MlflowClient()
    good = _train(synthetic_data, lr=1e-2, epochs=3, limit_per_class=0)
    weak = _train(synthetic_data, lr=1e-6, experiment="weak")
    assert good.best_val_f1 > weak.best_val_f1
    register_best(experiment="wbc")
    register_best(experiment="weak")
    weak_version = client.get_model_version_by_alias("wbc-classifier", "challenger").version
    client.set_registered_model_alias("wbc-classifier", "champion", weak_version)  # a racing writer's damage
    best = reconcile_alias(client, "wbc-classifier", "champion", "best_val_f1")
    assert client.get_model_version_by_alias("wbc-classifier", "champion").run_id == good.run_id
    assert best == str(client.get_model_version_by_alias("wbc-classifier", "champion").version)


@pytest.mark.slow
def test_concurrent_register_commands_keep_the_better_champion(synthetic_data, tmp_path):
    good = _train(synthetic_data, lr=1e-2, epochs=3, limit_per_class=0)
    weak = _train(synthetic_data, lr=1e-6, experiment="weak")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    client = mlflow.MlflowClient()
    for round_index in range(3):
        name = f"race-{round_index}"
        commands = [
            [sys.executable, "-m", "wbc", "register", "--experiment", experiment, "--model-name", name, "--metric", "best_val_f1"]
            for experiment in (("weak", "wbc") if round_index % 2 else ("wbc", "weak"))
        ]
        processes = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
        for process in processes:
            output, _ = process.communicate(timeout=120)
            assert process.returncode == 0, output[-2000:]
        assert client.get_model_version_by_alias(name, "champion").run_id == good.run_id, name
        (found,) = client.search_model_versions(f"name = '{name}' and run_id = '{weak.run_id}'")
        weak_version = client.get_model_version(name, found.version)
        assert set(weak_version.aliases) in ({"previous"}, {"challenger"}), (name, weak_version.aliases)


def test_the_champion_is_the_most_robust_model_that_keeps_clean_accuracy(synthetic_data):
    """Selecting on val_robust_acc, a run may trail the best clean accuracy by at most 0.3 points."""
    from wbc.tracking.registry import DEFAULT_METRIC, MAX_CLEAN_DROP

    client = mlflow.MlflowClient()
    runs = {name: _train(synthetic_data, seed=seed) for seed, name in enumerate(("plain", "too_costly", "robust"))}
    measured = {  # (clean accuracy, robust score) imposed on the three runs
        "plain": (0.990, 0.90),
        "too_costly": (0.990 - MAX_CLEAN_DROP - 0.002, 0.97),
        "robust": (0.990 - MAX_CLEAN_DROP + 0.001, 0.95),
    }
    for name, (clean, robust) in measured.items():
        client.log_metric(runs[name].run_id, "val_clean_acc", clean, step=10)
        client.log_metric(runs[name].run_id, DEFAULT_METRIC, robust, step=10)
    registration = register_by_metric(experiment="wbc")
    assert registration.run_id == runs["robust"].run_id and registration.alias == "champion"

    # a champion that costs too much clean accuracy is replaced, and reconcile never picks one
    client.log_metric(runs["robust"].run_id, "val_clean_acc", 0.980, step=20)
    assert register_by_metric(experiment="wbc").run_id == runs["plain"].run_id
    assert client.get_model_version_by_alias("wbc-classifier", "champion").run_id == runs["plain"].run_id
    assert reconcile_alias(client, "wbc-classifier", "champion", DEFAULT_METRIC) == str(
        client.get_model_version_by_alias("wbc-classifier", "champion").version
    )


def test_a_recalibrated_model_takes_over_its_versions_aliases_even_against_a_tied_run(synthetic_data):
    """``wbc calibrate`` on the champion's run: the new version holds @champion, although an identical run
    (same seed, same score) was registered in between; ties keep the sitting champion."""
    from wbc.jobs.calibrate import calibrate_run
    from wbc.tracking.registry import SUPERSEDED_TAG, replace_run_versions

    client = mlflow.MlflowClient()
    first = _train(synthetic_data)
    original = register_best(experiment="wbc")
    twin = _train(synthetic_data)
    assert twin.best_val_f1 == first.best_val_f1
    assert register_best(experiment="wbc").alias == "challenger"
    client.set_registered_model_alias("wbc-classifier", "previous", original.version)  # both aliases on the run

    calibrate_run(first.run_id, str(synthetic_data))
    replaced = replace_run_versions(first.run_id)
    champion = client.get_model_version_by_alias("wbc-classifier", "champion")
    assert str(champion.version) == replaced and champion.run_id == first.run_id
    assert champion.tags["metric.best_val_f1"] == client.get_model_version("wbc-classifier", original.version).tags["metric.best_val_f1"]
    assert client.get_model_version("wbc-classifier", original.version).tags[SUPERSEDED_TAG] == replaced
    assert "previous" not in client.get_registered_model("wbc-classifier").aliases, "previous must not equal champion"
    assert reconcile_alias(client, "wbc-classifier", "champion", "best_val_f1") == replaced
    assert replace_run_versions(first.run_id) is None, "nothing newer to register"
    assert replace_run_versions(twin.run_id) is None


def test_the_robust_metric_ranks_only_runs_scored_on_the_standard_benchmark(synthetic_data):
    """Whatever the training seed or limit, the benchmark a run logs is seed 0 over the whole validation split; a run
    whose metric came from another benchmark is left out of the ranking, however high it is."""
    from wbc.evaluation.shiftbench import SELECTION_METRIC

    client = mlflow.MlflowClient()
    limited = _train(synthetic_data, seed=1, limit_per_class=2)
    assert limited.shiftbench.images == 32 and limited.shiftbench.seed == 0, "the whole validation split, seed 0"
    assert client.get_run(limited.run_id).data.tags["wbc.shiftbench"] == "standard"
    other = _train(synthetic_data)
    client.log_metric(other.run_id, SELECTION_METRIC, 2.0)
    client.set_tag(other.run_id, "wbc.shiftbench", "not comparable: seed 3, 16 images")
    registration = register_by_metric(metric=SELECTION_METRIC)
    assert registration.run_id == limited.run_id

