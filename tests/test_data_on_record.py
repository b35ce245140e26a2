"""Every training and evaluation run records the images it used as MLflow datasets, with a digest of their content;
training runs also log system metrics."""

import shutil

import mlflow
import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.jobs.train import train
from wbc.tracking.datasets import content_digest
from wbc.training.config import TrainConfig


def test_the_digest_follows_the_content_not_the_place(synthetic_data, tmp_path):
    copy = shutil.copytree(synthetic_data / "barcelona" / "valid", tmp_path / "valid")
    original = sorted((synthetic_data / "barcelona" / "valid").rglob("*.jpg"))
    copied = sorted(copy.rglob("*.jpg"))
    assert content_digest(original, synthetic_data / "barcelona" / "valid") == content_digest(copied, copy)
    before = content_digest(copied, copy)
    copied[3].write_bytes(copied[3].read_bytes()[:-1] + b"\0")
    assert content_digest(copied, copy) != before, "one changed byte changes it"
    copied[3].rename(copied[3].with_name("renamed.jpg"))
    assert content_digest(sorted(copy.rglob("*.jpg")), copy) != before


def test_training_and_evaluation_runs_record_their_images_and_training_its_system_metrics(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    trained = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=2, batch_size=16,
                                image_size=32, progress=False, onnx=False, shiftbench=False))
    client = mlflow.MlflowClient()
    run = client.get_run(trained.run_id)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"barcelona/train", "barcelona/valid"}
    assert {tag.value for d in inputs.values() for tag in d.tags if tag.key == "mlflow.data.context"} == {"train", "valid"}
    valid_files = sorted((synthetic_data / "barcelona" / "valid").rglob("*.jpg"))
    assert inputs["barcelona/valid"].dataset.digest == content_digest(valid_files, synthetic_data / "barcelona")
    assert str((synthetic_data / "barcelona").resolve()) in inputs["barcelona/train"].dataset.source, "the folder as source"
    assert any(name.startswith("system/cpu_utilization") for name in run.data.metrics), sorted(run.data.metrics)

    result = CliRunner().invoke(cli, ["evaluate", f"runs:/{trained.run_id}/model", "--data-dir", str(synthetic_data),
                                      "--output-dir", str(tmp_path / "report")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (evaluation,) = client.search_runs([run.info.experiment_id], "tags.`wbc.kind` = 'evaluate'")
    (scored,) = evaluation.inputs.dataset_inputs
    assert scored.dataset.name == "barcelona/valid" and scored.dataset.digest == inputs["barcelona/valid"].dataset.digest
    assert [tag.value for tag in scored.tags if tag.key == "mlflow.data.context"] == ["valid"]


def test_a_dataset_refused_as_a_duplicate_is_recorded_again_and_other_refusals_are_not(monkeypatch):
    """The race itself runs against PostgreSQL in test_tracking_server.py; here, how often and on what it tries again."""
    from mlflow.exceptions import MlflowException

    from wbc.tracking import datasets

    calls = []

    def refuse(message):
        def log_input(dataset, context):
            calls.append(context)
            raise MlflowException(message)
        return log_input

    monkeypatch.setattr(datasets.time, "sleep", lambda seconds: None)
    duplicate = '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
    monkeypatch.setattr(datasets.mlflow, "log_input", refuse(duplicate))
    with pytest.raises(MlflowException, match="duplicate key"):
        datasets.log_input(object(), "train")
    assert len(calls) == datasets.LOG_INPUT_ATTEMPTS
    calls.clear()
    monkeypatch.setattr(datasets.mlflow, "log_input", refuse("RESOURCE_DOES_NOT_EXIST: run not found"))
    with pytest.raises(MlflowException, match="run not found"):
        datasets.log_input(object(), "train")
    assert len(calls) == 1, "only a duplicate is tried again"
    outcomes = iter([MlflowException("UNIQUE constraint failed: datasets.experiment_id"), None])

    def once_refused(dataset, context):
        calls.append(context)
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    calls.clear()
    monkeypatch.setattr(datasets.mlflow, "log_input", once_refused)
    datasets.log_input(object(), "valid")
    assert calls == ["valid", "valid"], "SQLite's wording too; the second try records it"
