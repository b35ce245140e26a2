"""`wbc adapt` without labels: a lab's images re-estimate the model's batch-norm statistics and its out-of-distribution
threshold; the result is its own run and a version under the lab's alias, never the champion."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from click.testing import CliRunner
from PIL import Image

from wbc.cli import cli
from wbc.data import load_folder, load_unlabelled
from wbc.evaluation.calibration import calibrate_on_lab
from wbc.inference import Predictor
from wbc.jobs.train import train
from wbc.tracking.registry import register_best
from wbc.training.config import TrainConfig
from wbc.training.adaptation import batch_norm_layers, reestimate_batch_norm
from wbc.training.recipes import FEW_SHOT_AUGMENTATION

from conftest import cell_image, free_port, start_http_server, stop_process_group


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


LAB_TINT = (0.7, 0.75, 0.95)


def _lab(folder: Path, labelled: bool, tints: dict[str, tuple] | None = None, per_class: int = 6) -> Path:
    """Another lab's cells: three classes, darker and bluer than the training images (``tints``: a class's own)."""
    for name in ("monocyte", "lymphocyte", "neutrophil"):
        target = folder / name.capitalize() if labelled else folder
        target.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = np.asarray(cell_image(name, 900_000 + index)).astype(np.float32)
            shifted = np.clip(pixels * (tints or {}).get(name, LAB_TINT), 0, 255).astype(np.uint8)
            Image.fromarray(shifted).save(target / f"{name}_{index}.png")
    return folder


@pytest.fixture
def champion(synthetic_data):
    trained = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=4, batch_size=16,
                                image_size=32, lr=0.01, progress=False, onnx=False, shiftbench=False))
    registration = register_best(metric="best_val_f1")
    return trained, registration


def test_adapting_to_a_labelled_lab_measures_before_and_after_and_registers_under_the_lab_alias(champion, synthetic_data, tmp_path):
    trained, registration = champion
    lab = _lab(tmp_path / "lab-a", labelled=True)
    result = invoke("adapt", lab, "--alias", "lab-a", "--data-dir", synthetic_data, "--no-onnx")
    assert result.exit_code == 0, result.output
    assert "18 lab cells before: accuracy" in result.output and "18 lab cells after: accuracy" in result.output
    assert "PBC valid after: accuracy" in result.output and "serve it with: wbc app --model models:/wbc-classifier@lab-a" in result.output
    after = next(line for line in result.output.splitlines() if line.startswith("18 lab cells after"))
    assert "flagged out-of-distribution" in after and "accepted with neither flag" in after, "how the flags fell, for the lab"

    client = mlflow.MlflowClient()
    adapted = client.get_model_version_by_alias("wbc-classifier", "lab-a")
    assert str(client.get_model_version_by_alias("wbc-classifier", "champion").version) == registration.version
    run = client.get_run(adapted.run_id)
    assert run.data.tags["wbc.kind"] == "adapt" and run.info.run_name == "adapt to lab-a (lab-a)"
    assert run.data.params["image_count"] == "18" and run.data.params["labelled"] == "True"
    assert run.data.params["photographed_apart"] == "not tested (no fine-tune)"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["lab-a"]
    for name in ("lab_before_acc_present", "lab_after_acc_present", "valid_before_acc", "valid_after_acc", "lab_after_flagged",
                 "lab_after_error_unflagged", "lab_after_accepted"):
        assert name in run.data.metrics, name
    assert run.data.params["calibrated_on"] == "18 labelled cells of lab-a (flags on them cross-fitted over 2 folds)"
    assert "calibrated on 18 labelled cells of lab-a" in result.output

    source = Predictor.load(f"runs:/{trained.run_id}/model", runtime="torch")
    served = Predictor.load("models:/wbc-classifier@lab-a", runtime="torch")
    cells = load_folder(lab, served.image_size)
    refit, _, _ = calibrate_on_lab(served.logits_pixels(cells.pixels), cells.targets, served.calibration.fitted_on,
                                   fallback_temperature=source.calibration.temperature)
    for name in ("temperature", "review_threshold", "ood_threshold", "accepted_fraction"):
        assert getattr(served.calibration, name) == pytest.approx(getattr(refit, name), rel=1e-3), name
    assert served.calibration.fitted_on == run.data.params["calibrated_on"]
    assert source.calibration.tta is not None and served.calibration.tta is None, "no thresholds for TTA it did not fit"
    means = [(a.running_mean, b.running_mean) for a, b in zip(source.model.modules(), served.model.modules())
             if isinstance(a, torch.nn.BatchNorm2d)]
    assert means and all(not torch.allclose(a, b) for a, b in means), "every batch-norm layer took the lab's statistics"
    weights = dict(served.model.named_parameters())
    assert all(torch.equal(value, weights[name]) for name, value in source.model.named_parameters()), "weights unchanged"

    # the registry's own selection never hands the champion to an adapted version
    assert register_best(metric="best_val_f1").version == registration.version
    assert str(client.get_model_version_by_alias("wbc-classifier", "champion").version) == registration.version

    # the lab's page serves its model: wbc app --model models:/wbc-classifier@lab-a, over real HTTP
    port = free_port()
    process = start_http_server([sys.executable, "-m", "wbc", "app", "--model", "models:/wbc-classifier@lab-a", "--port",
                                 str(port)], f"http://127.0.0.1:{port}/health", env=dict(os.environ), cwd=tmp_path)
    try:
        info = requests.get(f"http://127.0.0.1:{port}/api/model", timeout=30).json()
        assert info["model"] == "models:/wbc-classifier@lab-a" and info["temperature"] == pytest.approx(served.calibration.temperature)
        image = next((lab / "Monocyte").iterdir())
        answer = requests.post(f"http://127.0.0.1:{port}/api/classify", files={"files": (image.name, image.read_bytes())},
                               timeout=120)
        assert answer.status_code == 200, answer.text
        (cell,) = answer.json()["cells"]
        (expected,) = served.predict_sources([image])
        assert cell["label"] == expected.label and cell["top"][0]["probability"] == pytest.approx(expected.confidence, abs=1e-4)
    finally:
        stop_process_group(process)

    # from a script or a log (stderr not a terminal), fetching the model prints no progress line per file
    own_env = {name: value for name, value in os.environ.items() if name != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    predicted = subprocess.run([sys.executable, "-m", "wbc", "predict", str(image), "--model", "models:/wbc-classifier@lab-a",
                                "--output", str(tmp_path / "lab.csv")], capture_output=True, text=True, env=own_env,
                               cwd=tmp_path, timeout=600)
    assert predicted.returncode == 0, predicted.stderr
    assert "Downloading artifacts" not in predicted.stderr, predicted.stderr[-2000:]


def test_adapting_to_unlabelled_images_and_a_reserved_alias(champion, synthetic_data, tmp_path):
    lab = _lab(tmp_path / "lab-b", labelled=False)
    result = invoke("adapt", lab, "--alias", "champion", "--data-dir", synthetic_data)
    assert result.exit_code == 1 and "alias='champion' is the registry's own" in result.output
    few = tmp_path / "few"
    few.mkdir()
    for index in range(3):
        cell_image("monocyte", 950_000 + index).save(few / f"cell_{index}.png")
    result = invoke("adapt", few, "--alias", "lab-x", "--data-dir", synthetic_data)
    assert result.exit_code == 1 and "holds 3 image(s): adapting needs at least 16" in result.output, result.output
    (few / "Monocyte").mkdir()
    for index in range(3):
        (few / f"cell_{index}.png").rename(few / "Monocyte" / f"cell_{index}.png")
    for index in range(20):
        cell_image("lymphocyte", 960_000 + index).save(few / f"loose_{index}.png")
    result = invoke("adapt", few, "--alias", "lab-x", "--data-dir", synthetic_data)
    assert result.exit_code == 1 and "holds 3 image(s) in its class folders" in result.output, "loose files are not the lab's cells"
    result = invoke("adapt", tmp_path / "nowhere", "--alias", "lab-x", "--data-dir", synthetic_data)
    assert result.exit_code == 1 and "nowhere: no such folder" in result.output, result.output
    for alias, reason in (("Champion", "is the registry's own"), ("v1", "is reserved or invalid in MLflow"),
                          ("latest", "is reserved or invalid in MLflow")):
        result = invoke("adapt", lab, "--alias", alias, "--data-dir", synthetic_data)
        assert result.exit_code == 1 and f"alias={alias!r} {reason}" in result.output, result.output
    assert mlflow.search_runs(search_all_experiments=True, filter_string="tags.`wbc.kind` = 'adapt'").empty

    result = invoke("adapt", lab, "--alias", "lab-b", "--data-dir", synthetic_data, "--no-onnx")
    assert result.exit_code == 0, result.output
    assert "adapted on 18 of the lab's images (batch-norm statistics (AdaBN), 0.5 of PBC's kept)" in result.output
    assert "lab cells" not in result.output
    assert result.output.startswith("adapting models:/wbc-classifier@champion = wbc-classifier version 1 (run "), "where it starts from"
    assert "the lab's accuracy is not measured (no labelled cells): before serving it, score it" in result.output
    version = mlflow.MlflowClient().get_model_version_by_alias("wbc-classifier", "lab-b")
    assert version.tags["adapted_for"] == "lab-b"
    assert version.tags["adapted_from"] == "models:/wbc-classifier/1", "the version the alias meant, not the alias"
    params = mlflow.MlflowClient().get_run(version.run_id).data.params
    assert params["batch_norm_source_weight"] == "0.5" and params["method"] == "batch-norm statistics (AdaBN), 0.5 of PBC's kept"
    assert params["source_model"] == "models:/wbc-classifier@champion" and params["source_model_version"] == "models:/wbc-classifier/1"
    again = invoke("adapt", lab, "--alias", "lab-b", "--data-dir", synthetic_data, "--no-onnx")
    assert again.exit_code == 0 and f"now models:/wbc-classifier@lab-b (moved from version {version.version})" in again.output
    # the served version carries the mix: half the champion's statistics, half those of the lab's images alone
    source = Predictor.load("models:/wbc-classifier@champion", runtime="torch")
    lab_only = Predictor.load("models:/wbc-classifier@champion", runtime="torch")
    reestimate_batch_norm(lab_only.model, load_unlabelled(lab, source.image_size).pixels)
    served = Predictor.load("models:/wbc-classifier@lab-b", runtime="torch")
    for kept, own, mixed in zip(*(batch_norm_layers(p.model) for p in (source, lab_only, served))):
        assert torch.allclose(mixed.running_mean, 0.5 * kept.running_mean + 0.5 * own.running_mean, atol=1e-5)
        assert torch.allclose(mixed.running_var, 0.5 * kept.running_var + 0.5 * own.running_var, atol=1e-5)


def test_fine_tuning_on_a_few_labelled_cells_of_each_class_measures_on_the_others(champion, synthetic_data, tmp_path, caplog):
    trained, registration = champion
    lab = _lab(tmp_path / "lab-c", labelled=True)
    result = invoke("adapt", lab, "--alias", "lab-c", "--labelled-per-class", 3, "--steps", 30, "--data-dir", synthetic_data,
                    "--no-onnx")
    assert result.exit_code == 0, result.output
    assert "fine-tuned on 9 labelled cells" in result.output and "9 held-out lab cells after" in result.output
    assert "fine-tuning on 9 lab cells: 100%" in result.output and "30/30" in result.output, "progress of the fine-tune"
    assert "calibrated on PBC valid; out-of-distribution threshold: the 18 images of lab-c" in result.output, "too few cells left"
    run = mlflow.MlflowClient().get_run(mlflow.MlflowClient().get_model_version_by_alias("wbc-classifier", "lab-c").run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["labelled_per_class"] == "3" and params["held_out"] == "9" and params["method"] == "batch-norm statistics (AdaBN) + few-shot fine-tuning"
    assert params["few_shot_augment"] == FEW_SHOT_AUGMENTATION and params["batch_norm_source_weight"] == "0.0"
    assert metrics["lab_after_acc_present"] > metrics["lab_before_acc_present"], "the lab's held-out cells gained"
    source = Predictor.load(f"runs:/{trained.run_id}/model", runtime="torch")
    served = Predictor.load("models:/wbc-classifier@lab-c", runtime="torch")
    weights = dict(served.model.named_parameters())
    assert any(not torch.equal(value, weights[name]) for name, value in source.model.named_parameters()), "fine-tuned"
    assert params["photographed_apart"] == ("none; not tested: lymphocyte (6 images), monocyte (6 images), "
                                            "neutrophil (6 images)") and "photograph" not in result.output
    # scoring the adapted model on the very folder it was fine-tuned on says its scores there are flattered
    caplog.clear()
    evaluated = invoke("evaluate", "models:/wbc-classifier@lab-c", "--images", lab, "--no-track", "--output-dir", tmp_path / "r")
    assert evaluated.exit_code == 0, evaluated.output
    assert (f"models:/wbc-classifier@lab-c was fine-tuned on 9 of these cells by wbc adapt (run {run.info.run_id}), so "
            f"its scores on them are flattered; on the 9 it held out it scored {metrics['lab_after_acc_present']:.4f}") in caplog.text
    caplog.clear()
    folder = Path("outputs") / run.info.run_id / "model"  # the exported folder the adapt run wrote: the same warning
    assert invoke("evaluate", folder, "--images", lab, "--no-track", "--output-dir", tmp_path / "r").exit_code == 0
    assert f"{folder} was fine-tuned on 9 of these cells by wbc adapt (run {run.info.run_id})" in caplog.text
    other = _lab(tmp_path / "lab-c2", labelled=True)
    caplog.clear()
    assert invoke("evaluate", "models:/wbc-classifier@lab-c", "--images", other, "--no-track", "--output-dir", tmp_path / "r").exit_code == 0
    assert "flattered" not in caplog.text, "another folder: nothing to say"
    # an adapted model has flags for one view only: with --tta it says so in one line, without Python's internals
    with_tta = invoke("evaluate", "models:/wbc-classifier@lab-c", "--images", other, "--no-track", "--tta", "--output-dir", tmp_path / "r")
    assert with_tta.exit_code == 0, with_tta.output
    (line,) = [line for line in with_tta.output.splitlines() if "thresholds fitted for tta" in line]
    assert line.startswith("warning: ") and line.endswith("score it without --tta for its flags, or for a model wbc trained, "
                                                          "fit them with wbc calibrate <run id>"), line
    assert "UserWarning" not in with_tta.output
    predicted = invoke("predict", other / "Monocyte", "--model", "models:/wbc-classifier@lab-c", "--tta", "--output", tmp_path / "p.csv")
    assert predicted.exit_code == 0, predicted.output
    assert "(0 unreadable, flags unknown: no thresholds for this model with --tta; every cell counted)" in predicted.output
    listed = invoke("versions")
    assert listed.exit_code == 0, listed.output
    header, newest, oldest = listed.output.splitlines()
    assert header.split() == ["version", "aliases", "kind", "made", "run_id", "created"]
    assert newest.split()[:7] == ["2", "lab-c", "adapt", "for", "lab-c", "from", "models:/wbc-classifier/1"]
    assert newest.split()[7] == run.info.run_id
    assert oldest.split()[:5] == ["1", "champion", "train", "best_val_f1", f"{registration.value:.4f}"], oldest
    # an alias that is not there: the ones that are
    missing = invoke("evaluate", "models:/wbc-classifier@lab-z", "--images", other, "--no-track")
    assert missing.exit_code == 1 and ("the aliases of wbc-classifier now: champion (version 1), lab-c (version 2); register "
                                       "one (wbc main, wbc register; a lab's: wbc adapt FOLDER --alias NAME)") in missing.output

    unlabelled = _lab(tmp_path / "lab-d", labelled=False)
    result = invoke("adapt", unlabelled, "--alias", "lab-d", "--labelled-per-class", 3, "--data-dir", synthetic_data)
    assert result.exit_code == 1 and "needs labelled cells" in result.output

    result = invoke("adapt", lab, "--alias", "lab-e", "--labelled-per-class", 6, "--steps", 5, "--data-dir", synthetic_data,
                    "--no-onnx")
    assert result.exit_code == 0, result.output
    assert "fine-tuned on 18 labelled cells" in result.output and "no labelled cells were left to measure on" in result.output
    assert "holds at most 6 labelled cells per class: all 18 will fine-tune" in caplog.text, "warned"
    run = mlflow.MlflowClient().get_run(mlflow.MlflowClient().get_model_version_by_alias("wbc-classifier", "lab-e").run_id)
    assert run.data.params["held_out"] == "0" and "valid_after_acc" in run.data.metrics

    apart = _lab(tmp_path / "lab-f", labelled=True, tints={"monocyte": (0.8, 0.7, 0.9)}, per_class=10)
    result = invoke("adapt", apart, "--alias", "lab-f", "--labelled-per-class", 10, "--steps", 5, "--data-dir", synthetic_data,
                    "--no-onnx")
    assert result.exit_code == 0, result.output
    assert f"{apart}: the background colour alone tells monocyte (10 images, ROC AUC 1.00) from the other classes: " \
           "fine-tuning anyway" in caplog.text, "said before the fine-tune too"
    warning = next(line for line in result.output.splitlines() if "background colour" in line)
    assert warning.startswith("warning: in the lab's folder, the background colour alone (ROC AUC 0.5 = chance) tells "
                              "monocyte (10 images, ROC AUC 1.00) from the other classes"), warning
    assert "accuracy measured" not in warning, "no cell was left to measure"
    run = mlflow.MlflowClient().get_run(mlflow.MlflowClient().get_model_version_by_alias("wbc-classifier", "lab-f").run_id)
    assert run.data.params["photographed_apart"] == "monocyte (10 images, ROC AUC 1.00)"
    assert not any(name.startswith("lab_") for name in run.data.metrics), "nothing measured on the lab"

    # measuring on the same folder, before any fine-tune, says it too
    evaluated = invoke("evaluate", f"runs:/{trained.run_id}/model", "--images", apart, "--output-dir", tmp_path / "report")
    assert evaluated.exit_code == 0, evaluated.output
    assert (f"{apart}: the background colour alone (ROC AUC 0.5 = chance) tells monocyte (10 images, ROC AUC 1.00) from "
            "the other classes: those cells were likely photographed") in caplog.text
    (evaluation,) = mlflow.search_runs(experiment_names=["wbc"], filter_string="tags.`wbc.kind` = 'evaluate'", output_format="list")
    assert evaluation.data.params["photographed_apart"] == "monocyte (10 images, ROC AUC 1.00)"



def test_shiftbench_scores_another_labs_cells_as_a_real_shift_row_apart_from_the_synthetic_ones(champion, synthetic_data, tmp_path):
    import pandas as pd

    trained, _ = champion
    model = f"runs:/{trained.run_id}/model"
    lab = _lab(tmp_path / "lab-a", labelled=True)
    result = invoke("shiftbench", model, "--data-dir", synthetic_data, "--lab-images", lab)
    assert result.exit_code == 0, result.output
    assert "lab rows: another lab's labelled cells" in result.output
    client = mlflow.MlflowClient()
    (bench,) = client.search_runs([client.get_experiment_by_name("wbc").experiment_id], "tags.`wbc.kind` = 'shiftbench'")
    table = pd.read_csv(client.download_artifacts(bench.info.run_id, "shiftbench.csv", str(tmp_path)))
    (row,) = table[table["shift"] == "lab"].itertuples()
    assert row.strength == "lab-a" and row.images == 18 and len(table) == 1 + 7 * 3 + 1

    evaluated = invoke("evaluate", model, "--images", lab, "--data-dir", synthetic_data, "--output-dir", tmp_path / "report")
    assert evaluated.exit_code == 0, evaluated.output
    (evaluation,) = client.search_runs([client.get_experiment_by_name("wbc").experiment_id], "tags.`wbc.kind` = 'evaluate'")
    scores = evaluation.data.metrics
    assert row.accuracy == pytest.approx(scores["images_acc_present"]), "scored among the three classes the lab holds"
    assert row.flagged == pytest.approx(scores["images_flagged"])
    metrics = bench.data.metrics
    assert metrics["real_shift_acc"] == pytest.approx(row.accuracy) and metrics["real_shift_flagged"] == pytest.approx(row.flagged)
    synthetic = table[~table["shift"].isin(["none", "lab"])]
    assert metrics["val_shift_acc"] == pytest.approx(synthetic["accuracy"].mean()), "the lab row stays out of the selection metric"

    plain = invoke("shiftbench", model, "--data-dir", synthetic_data)
    assert plain.exit_code == 0 and "lab rows" not in plain.output, "no other-lab folder under the data: no real-shift row"


@pytest.mark.parametrize("augment", [None, "standard", "none"], ids=["default", "standard", "none"])
def test_the_few_shot_fine_tune_augments_with_the_kind_it_is_given(monkeypatch, augment):
    import wbc.data.augmentation as augmentation
    from wbc.models import build_model
    from wbc.training.adaptation import fine_tune_few_shot

    asked, real = [], augmentation.train_augmentation
    monkeypatch.setattr(augmentation, "train_augmentation", lambda kind: asked.append(kind) or real(kind))
    model = build_model("scratch")
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    chosen = {} if augment is None else {"augment": augment}
    losses = fine_tune_few_shot(model, pixels, np.array([0, 1, 2, 3]), steps=2, batch_size=4, **chosen)
    assert asked == [augment or FEW_SHOT_AUGMENTATION] and len(losses) == 2 and all(np.isfinite(losses))
    assert not model.training
    with pytest.raises(ValueError, match="unknown augmentation"):
        fine_tune_few_shot(model, pixels, np.array([0, 1, 2, 3]), steps=1, augment="strong")
    with pytest.raises(ValueError, match="replay_fraction=1.5 is invalid"):
        fine_tune_few_shot(model, pixels, np.array([0, 1, 2, 3]), steps=1, replay_fraction=1.5)


@pytest.mark.parametrize("replay_fraction, replayed", [(0.5, 8), (0.25, 4), (0.0, 0)])
def test_the_few_shot_fine_tune_replays_the_share_of_each_batch_it_is_given(monkeypatch, replay_fraction, replayed):
    from wbc.models import build_model
    from wbc.training.adaptation import fine_tune_few_shot

    batches, real = [], torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda logits, labels: batches.append(labels.clone()) or real(logits, labels))
    rng = np.random.default_rng(0)
    lab, pbc = (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) for n in (6, 10))
    fine_tune_few_shot(build_model("scratch"), lab, np.array([0, 1, 2, 0, 1, 2]), replay_pixels=pbc, replay_targets=np.full(10, 7),
                       replay_fraction=replay_fraction, steps=3, augment="none")
    assert len(batches) == 3 and all(len(labels) == 16 and int((labels == 7).sum()) == replayed for labels in batches)


def test_replaying_pbc_images_keeps_the_classes_the_lab_did_not_label(champion, synthetic_data, tmp_path):
    from wbc.data import load_split
    from wbc.training.adaptation import fine_tune_few_shot

    trained, _ = champion
    lab = load_folder(_lab(tmp_path / "lab", labelled=True), 32)
    valid, replay = load_split(synthetic_data, "valid", 32), load_split(synthetic_data, "train", 32)
    unlabelled = ~np.isin(valid.targets, lab.targets)
    accuracy = {}
    for name, extra in (("without", {}), ("with", dict(replay_pixels=replay.pixels, replay_targets=replay.targets))):
        predictor = Predictor.load(f"runs:/{trained.run_id}/model", runtime="torch")
        before = predictor.predict_pixels(valid.pixels).argmax(axis=1)
        fine_tune_few_shot(predictor.model, lab.pixels, lab.targets, steps=30, lr=1e-3, **extra)
        after = predictor.predict_pixels(valid.pixels).argmax(axis=1)
        accuracy[name] = (before[unlabelled] == valid.targets[unlabelled]).mean(), (after[unlabelled] == valid.targets[unlabelled]).mean()
    assert accuracy["with"][0] >= 0.9 and accuracy["with"][1] >= 0.9, f"the five classes the lab did not label: {accuracy}"
    assert accuracy["without"][1] <= 0.5, f"without replay they are forgotten, so the test can tell: {accuracy}"


def test_batch_norm_statistics_are_the_labs_or_a_mix_with_the_sources():
    from wbc.models import build_model

    pixels = np.random.default_rng(0).integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    statistics = {}
    for weight in (0.0, 0.25, 1.0):
        torch.manual_seed(0)
        model = build_model("scratch")
        norm = batch_norm_layers(model)[0]
        source = norm.running_mean.clone(), norm.running_var.clone()
        assert reestimate_batch_norm(model, pixels, batch_size=20, source_weight=weight) == len(batch_norm_layers(model))
        statistics[weight] = norm.running_mean.clone(), norm.running_var.clone()
    lab = statistics[0.0]
    assert not torch.allclose(lab[0], source[0]) and not torch.allclose(lab[1], source[1]), "the lab's own statistics"
    assert torch.allclose(statistics[1.0][0], source[0]) and torch.allclose(statistics[1.0][1], source[1]), "the source's kept"
    for mixed, own, kept in zip(statistics[0.25], lab, source):
        assert torch.allclose(mixed, 0.25 * kept + 0.75 * own, atol=1e-6)
    with pytest.raises(ValueError, match="source_weight=1.5 is invalid"):
        reestimate_batch_norm(build_model("scratch"), pixels, source_weight=1.5)


def test_adapt_warns_when_the_adapted_model_is_worse_on_the_lab_or_its_flags_stop_separating():
    from wbc.evaluation.reports import Evaluation
    from wbc.jobs.adapt import AdaptResult

    targets = np.array([0, 0, 5, 5])
    right = np.eye(8)[[0, 0, 5, 5]]
    wrong = np.eye(8)[[0, 5, 0, 5]]
    flagged_wrong = Evaluation.from_scores(targets, wrong, np.array([True, False, False, True]), np.zeros(4, bool))
    flagged_right = Evaluation.from_scores(targets, wrong, np.array([False, True, True, False]), np.zeros(4, bool))
    good = Evaluation.from_scores(targets, right, np.ones(4, bool), np.zeros(4, bool))

    def result(before, after):
        return AdaptResult("run", "2", "lab-a", 20, 0, 4, before, after, good, good, "somewhere")

    assert result(flagged_wrong, flagged_wrong).warnings() == []
    assert result(good, Evaluation.from_scores(targets, right, np.array([True, False, True, True]), np.zeros(4, bool))
                  ).warnings() == [], "no error at all is no reason to doubt the flag"
    (worse,) = result(good, flagged_wrong).warnings()
    assert "right on fewer of the lab's cells than the model it came from (0.5000 against 1.0000)" in worse
    (blind,) = result(flagged_right, flagged_right).warnings()
    assert "no longer separates wrong answers from right ones" in blind and "100.0 % errors among the unflagged" in blind
    assert "warning: " + blind in result(flagged_right, flagged_right).summary()
    assert "moved from" not in result(good, good).summary()


LYMPHOCYTE, MONOCYTE, NEUTROPHIL = (f"{name} (10 images, ROC AUC 1.00)" for name in ("lymphocyte", "monocyte", "neutrophil"))
PINK, BLUE = (0.85, 0.8, 0.95), (0.95, 0.85, 0.8)


@pytest.mark.parametrize("tints, counts, expected, told", [
    ({}, {}, "none", ""),
    ({"lymphocyte": PINK}, {}, LYMPHOCYTE, f"tells {LYMPHOCYTE} from the other classes"),
    ({"lymphocyte": PINK, "neutrophil": PINK}, {}, MONOCYTE, f"tells {MONOCYTE} from the other classes"),
    ({"monocyte": PINK}, {"monocyte": 100}, "monocyte (100 images, ROC AUC 1.00)",
     "tells monocyte (100 images, ROC AUC 1.00) from the other classes"),
    ({"lymphocyte": PINK}, {"lymphocyte": 9}, "none; not tested: lymphocyte (9 images)", ""),
    ({"lymphocyte": PINK}, {"neutrophil": 0}, f"{LYMPHOCYTE}; {MONOCYTE} (from each other)",
     f"tells apart {LYMPHOCYTE} and {MONOCYTE}"),
    ({"lymphocyte": PINK, "neutrophil": BLUE}, {}, f"{LYMPHOCYTE}; {MONOCYTE}; {NEUTROPHIL} (the last two from each other)",
     f"tells {LYMPHOCYTE} from the other classes, and {MONOCYTE} and {NEUTROPHIL} from each other"),
])
def test_the_classes_photographed_apart_are_the_ones_whose_background_differs(tmp_path, tints, counts, expected, told):
    from wbc.evaluation.acquisition import CONFOUND_AUC, background_aucs, background_colours, check_acquisition

    folder = _lab(tmp_path / "lab", labelled=True, tints=tints, per_class=100)
    for name in ("monocyte", "lymphocyte", "neutrophil"):
        for path in sorted((folder / name.capitalize()).iterdir())[counts.get(name, 10):]:
            path.unlink()
        if not counts.get(name, 10):
            (folder / name.capitalize()).rmdir()
    lab = load_folder(folder, 32)
    check = check_acquisition(lab.pixels, lab.targets)
    assert str(check) == expected
    assert check.told() == told
    if counts.get("monocyte") == 100:
        aucs = background_aucs(background_colours(lab.pixels), lab.targets)
        assert min(aucs.values()) >= CONFOUND_AUC, "against a rest that is mostly monocytes, every class looks apart"
    if not tints:
        assert max(background_aucs(background_colours(lab.pixels), lab.targets).values()) < CONFOUND_AUC, "one background"
    with pytest.raises(ValueError, match=r"expected uint8 \(N, 3, H, W\)"):
        background_colours(lab.pixels.transpose(0, 2, 3, 1))
