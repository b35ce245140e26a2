"""What a new user meets first: one epoch is a normal request, everyday commands default to the champion and say which
version they used, reading a model leaves the store as it was, and bad settings stop before any work is announced."""


import mlflow
import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.jobs.train import train
from wbc.tracking.registry import register_best
from wbc.training.config import TrainConfig


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def _train_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.`wbc.kind` = 'train'", output_format="list")


def test_one_epoch_of_finetuning_is_a_normal_request_and_a_conflicting_head_epochs_still_an_error(synthetic_data):
    quick = ["--arch", "efficientnet_lite0", "--weights", "none", "--image-size", 32, "--limit-per-class", 2,
             "--batch-size", 16, "--no-onnx", "--no-shiftbench", "--data-dir", synthetic_data]
    result = invoke("train", "--epochs", 1, *quick)
    assert result.exit_code == 0, result.output
    (run,) = _train_runs()
    assert run.data.params["epochs"] == "1" and run.data.params["head_epochs"] == "0"
    result = invoke("train", "--epochs", 1, "--head-epochs", 1, *quick)
    assert result.exit_code == 1
    assert "Error: head_epochs=1 is invalid: expected from 0 to epochs - 1 = 0" in result.output


def test_predict_defaults_to_the_champion_and_says_which_version(synthetic_data, tmp_path):
    trained = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=1, batch_size=16,
                                image_size=32, progress=False, onnx=False, shiftbench=False))
    registration = register_best(metric="best_val_f1")
    result = invoke("predict", synthetic_data / "barcelona" / "valid" / "monocyte", "--output", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    assert (f"model: models:/wbc-classifier@champion = wbc-classifier version {registration.version} "
            f"(run {trained.run_id})") in result.output
    assert "wrote 4 rows" in result.output


@pytest.mark.parametrize("command", [["app"], ["predict", "cell.png"], ["evaluate", "--no-track"]])
def test_loading_a_model_from_a_store_that_does_not_exist_creates_nothing(command, synthetic_data, tmp_path):
    (tmp_path / "cell.png").write_bytes(b"")
    before = sorted(path.name for path in tmp_path.iterdir())
    result = invoke(*command, "--data-dir", synthetic_data) if command[0] == "evaluate" else invoke(*command)
    assert result.exit_code == 1
    assert "there is no MLflow store at sqlite:///" in result.output and "train and register a model first" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == before, "no mlflow.db, no mlruns/"


def test_listing_versions_before_any_store_says_how_to_make_one_and_creates_nothing(tmp_path):
    before = sorted(path.name for path in tmp_path.iterdir())
    result = invoke("versions")
    assert result.exit_code == 0 and "no registered versions of wbc-classifier in sqlite:///" in result.output
    assert "wbc main registers the first" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == before, "no mlflow.db"


def test_serving_a_missing_model_leaves_the_store_as_it_was():
    client = mlflow.MlflowClient()
    experiments = [e.name for e in client.search_experiments()]
    result = invoke("app")
    assert result.exit_code == 1 and "models:/wbc-classifier@champion" in result.output
    assert [e.name for e in client.search_experiments()] == experiments
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_settings_are_checked_before_anything_is_announced_or_started(synthetic_data, tmp_path):
    result = invoke("main", "--data-dir", tmp_path / "no-data")
    assert result.exit_code == 1 and result.output.startswith("Error: data_dir=")
    assert f"wbc download --data-dir {tmp_path / 'no-data'}" in result.output and "time budget" not in result.output
    (tmp_path / "empty").mkdir()
    result = invoke("main", "--data-dir", tmp_path / "empty")
    assert result.exit_code == 1 and "barcelona/train does not exist" in result.output and "wbc download" in result.output
    (tmp_path / "a-file").write_text("")
    result = invoke("train", "--data-dir", synthetic_data, "--output-dir", tmp_path / "a-file" / "outputs")
    assert result.exit_code == 1 and result.output.startswith("Error: output_dir=") and "cannot create it" in result.output
    assert _train_runs() == []


def test_nothing_to_do_is_said_before_anything_is_written_or_announced(synthetic_data, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "predictions.csv").write_text("an earlier result\n")
    result = invoke("predict", tmp_path / "empty", "--model", tmp_path)
    assert result.exit_code == 1 and "no files to classify" in result.output
    assert (tmp_path / "predictions.csv").read_text() == "an earlier result\n", "the earlier CSV is left alone"

    for command in (["train"], ["main"]):
        result = invoke(*command, "--resume", "last", "--data-dir", synthetic_data)
        assert result.exit_code == 1 and result.output.startswith("Error: resume='last': there is no MLflow store at")
        assert "time budget" not in result.output
    assert not (tmp_path / "mlflow.db").exists(), "looking for a run to resume creates no store"

    result = invoke("evaluate", "--split", "test", "--data-dir", synthetic_data.parent / "nowhere")
    assert result.exit_code == 1
    (tmp_path / "data" / "barcelona" / "valid").mkdir(parents=True)
    result = invoke("evaluate", "--split", "test", "--data-dir", tmp_path / "data")
    assert result.exit_code == 1 and "the PBC test split is the held-out set, not shipped" in result.output
