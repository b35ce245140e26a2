"""The `wbc` command line: predict, evaluate, register and its one-line errors."""

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
import pytest
from click.testing import CliRunner

from wbc.classes import CLASS_NAMES
from wbc.cli import cli
from wbc.inference import Predictor
from wbc.training.config import TrainConfig
from wbc.jobs.train import train

from conftest import isolated


@pytest.fixture(scope="module")
def model_run(synthetic_data, tmp_path_factory):
    with isolated(tmp_path_factory.mktemp("cli-model")):
        result = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=1,
                                   batch_size=16, image_size=32, progress=False, onnx=False))
    return result


def invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_predict_writes_csv_prints_differential_count_and_lists_bad_files(model_run, synthetic_data, tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    sources = sorted((synthetic_data / "barcelona" / "valid").rglob("*.jpg"))[:6]
    for index, source in enumerate(sources):
        (folder / f"cell_{index}.jpg").write_bytes(source.read_bytes())
    (folder / "broken.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    export_dir = model_run.best_checkpoint.rsplit("/checkpoints/", 1)[0] + "/model"
    result = invoke("predict", folder, "--model", export_dir, "--output", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert len(table) == 8
    assert list(table.columns) == [
        "file", "label", "confidence", *[f"prob_{c}" for c in CLASS_NAMES],
        "in_distribution_score", "in_distribution", "review", "error",
    ]
    bad = table[table["error"] != ""]
    assert sorted(p.rsplit("/", 1)[1] for p in bad["file"]) == ["broken.jpg", "notes.txt"]
    good = table[table["error"] == ""]
    assert set(good["label"]) <= set(CLASS_NAMES) and len(good) == 6
    assert "cells" in result.output and "percent" in result.output and "(2 unreadable, " in result.output
    # cells flagged as unfamiliar (out of distribution) are listed, not counted
    unlike = good[good["in_distribution"].astype(str) == "False"]
    counted = sum(int(line.split()[1]) for line in result.output.splitlines()[1:9])
    assert counted == 6 - len(unlike)
    assert all("not counted, unfamiliar to the model" in result.output and name in result.output for name in unlike["file"])
    assert f"{len(unlike)} out of distribution" in result.output


def test_predict_scores_each_page_of_a_tiff_stack_as_a_cell_named_by_its_page(model_run, synthetic_data, tmp_path):
    from PIL import Image

    sources = sorted((synthetic_data / "barcelona" / "valid" / "eosinophil").glob("*.jpg"))[:3]
    pages = [Image.open(path).convert("RGB") for path in sources]
    folder = tmp_path / "stack"
    folder.mkdir()
    pages[0].save(folder / "three.tif", save_all=True, append_images=pages[1:])
    export_dir = model_run.best_checkpoint.rsplit("/checkpoints/", 1)[0] + "/model"
    assert invoke("predict", folder, "--model", export_dir, "--output", tmp_path / "stack.csv").exit_code == 0
    for index, page in enumerate(pages):
        page.save(tmp_path / f"page{index + 1}.tif")
    singles = [tmp_path / f"page{index + 1}.tif" for index in range(3)]
    assert invoke("predict", *singles, "--model", export_dir, "--output", tmp_path / "pages.csv").exit_code == 0
    stack, alone = pd.read_csv(tmp_path / "stack.csv"), pd.read_csv(tmp_path / "pages.csv")
    assert [name.rsplit("/", 1)[1] for name in stack["file"]] == ["three.tif#1", "three.tif#2", "three.tif#3"]
    columns = [f"prob_{c}" for c in CLASS_NAMES]
    assert np.allclose(stack[columns].to_numpy(), alone[columns].to_numpy(), atol=1e-6), "each page scored as itself"


def test_files_as_cameras_write_them_score_like_their_plain_twins_in_wbc_predict_and_the_pyfunc(model_run, tmp_path):
    """EXIF-rotated, 12-bit, 16-bit and float files: the same probabilities as the plain 8-bit file they mean, from
    ``wbc predict`` and from the logged pyfunc (base64 rows); a TIFF stack is one row per page in ``wbc predict`` and
    a row naming its page count in the pyfunc, which takes one image per row."""
    import base64

    from PIL import Image

    from conftest import faithful_inputs

    pairs = faithful_inputs(tmp_path / "faithful")
    stack = tmp_path / "faithful" / "stack.tif"
    Image.open(pairs["exif"][1]).save(stack, save_all=True, append_images=[Image.open(pairs["12-bit"][1])])
    files = [path for pair in pairs.values() for path in pair] + [stack]
    export_dir = model_run.best_checkpoint.rsplit("/checkpoints/", 1)[0] + "/model"
    assert invoke("predict", *files, "--model", export_dir, "--output", tmp_path / "out.csv").exit_code == 0
    columns = [f"prob_{c}" for c in CLASS_NAMES]
    table = pd.read_csv(tmp_path / "out.csv").set_index("file")
    rows = {name.rsplit("/", 1)[-1]: row for name, row in table.iterrows()}
    for kind, (sent, meant) in pairs.items():
        assert np.allclose(rows[sent.name][columns].astype(float), rows[meant.name][columns].astype(float), atol=1e-6), kind
    assert np.allclose(rows["stack.tif#2"][columns].astype(float), rows["ref_gray.png"][columns].astype(float), atol=1e-6)

    from wbc.serving.pyfunc import log_pyfunc_model
    from wbc.tracking.runs import configure_tracking

    configure_tracking()
    with mlflow.start_run():
        logged = log_pyfunc_model(export_dir, example_image=pairs["exif"][1])
    model = mlflow.pyfunc.load_model(logged.model_uri)
    served = model.predict(pd.DataFrame({"image": [base64.b64encode(path.read_bytes()).decode() for path in files]}))
    by_name = dict(zip((path.name for path in files), served.to_dict("records")))
    for kind, (sent, meant) in pairs.items():
        assert by_name[sent.name]["error"] == "" and by_name[sent.name]["label"] == by_name[meant.name]["label"], kind
        assert np.allclose([by_name[sent.name][c] for c in columns], [by_name[meant.name][c] for c in columns], atol=1e-6), kind
        assert np.allclose([by_name[sent.name][c] for c in columns], rows[meant.name][columns].astype(float), atol=1e-5), kind
    assert "2 images in one file" in by_name["stack.tif"]["error"] and by_name["stack.tif"]["label"] in ("", None)

    # the request parameter tta scores as wbc predict --tta does, flags included; the next request is one view again
    from wbc.inference import Predictor

    cells = [pairs["exif"][1], pairs["exif"][0]]
    frame = pd.DataFrame({"image": [base64.b64encode(path.read_bytes()).decode() for path in cells]})
    averaged = model.predict(frame, params={"tta": True})
    expected = Predictor.load(export_dir, tta=True).predict_sources([str(path) for path in cells])
    assert np.allclose(averaged[columns].astype(float), [p.probabilities for p in expected], atol=1e-5)
    assert list(averaged["in_distribution"]) == [p.in_distribution for p in expected] and None not in list(averaged["review"])
    single = [[by_name[path.name][c] for c in columns] for path in cells]
    assert not np.allclose(averaged[columns].astype(float), single, atol=1e-6)
    assert np.allclose(model.predict(frame)[columns].astype(float), single, atol=1e-6)


def test_predict_from_checkpoint_matches_export(model_run, synthetic_data, tmp_path):
    files = sorted((synthetic_data / "barcelona" / "valid" / "ig").glob("*.jpg"))
    export_dir = model_run.best_checkpoint.rsplit("/checkpoints/", 1)[0] + "/model"
    invoke("predict", *files, "--model", model_run.best_checkpoint, "--output", tmp_path / "a.csv")
    invoke("predict", *files, "--model", export_dir, "--output", tmp_path / "b.csv")
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    # the export carries the temperature fitted on valid; the raw checkpoint does not
    temperature = json.loads(Path(export_dir, "model.json").read_text())["calibration"]["temperature"]
    raw = a[[f"prob_{c}" for c in CLASS_NAMES]].to_numpy()
    expected = torch.softmax(torch.from_numpy(np.log(raw)) / temperature, dim=1).numpy()
    assert b[[f"prob_{c}" for c in CLASS_NAMES]].to_numpy() == pytest.approx(expected, abs=1e-5)
    assert list(a["label"]) == list(b["label"])
    assert a["in_distribution"].isna().all() and b["in_distribution"].notna().all()


def test_evaluate_writes_reports_and_logs_an_evaluate_run(model_run, synthetic_data, tmp_path):
    result = invoke("evaluate", model_run.best_checkpoint, "--data-dir", synthetic_data, "--split", "valid",
                    "--output-dir", tmp_path / "report")
    assert result.exit_code == 0, result.output
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "classification_report.json", "per_class.csv"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    confusion = pd.read_csv(tmp_path / "report" / "confusion_matrix.csv", index_col=0)
    assert confusion.to_numpy().sum() == 32 and list(confusion.columns) == list(CLASS_NAMES)
    runs = mlflow.search_runs(experiment_names=["wbc"], filter_string="tags.`wbc.kind` = 'evaluate'")
    assert len(runs) == 1 and runs["metrics.valid_acc"][0] == pytest.approx(model_run.best_val_acc)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epochs", "0"], "Invalid value for '--epochs'"),
        (["train", "--batch-size", "-3"], "Invalid value for '--batch-size'"),
        (["train", "--arch", "resnet9000"], "Invalid value for '--arch'"),
        (["train", "--data-dir", "/nonexistent/data"], "data_dir='/nonexistent/data' is not a folder"),
        (["train", "--devices", "-2"], "devices='-2' is invalid"),
        (["predict", "/nonexistent/cell.jpg", "--model", "x"], "no such"),
        (["evaluate", "/nonexistent/model.ckpt", "--data-dir", "{data}"], "no such checkpoint"),
        (["register"], "train a model first"),
    ],
)
def test_bad_arguments_give_one_line_errors(args, message, synthetic_data):
    result = CliRunner().invoke(cli, [arg.replace("{data}", str(synthetic_data)) for arg in args])
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_tta_scores_the_mean_logits_of_the_eight_views_with_flags_fitted_on_them(model_run, synthetic_data, tmp_path):
    import torch

    from wbc.inference import Predictor, dihedral_views
    from wbc.inference.calibration import softmax

    views = dihedral_views(torch.arange(4.0).view(1, 1, 2, 2))
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    plain = Predictor.load(model_run.best_checkpoint)
    averaged = Predictor.load(model_run.best_checkpoint, tta=True)
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    mean_logits = sum(plain.logits_pixels(v) for v in dihedral_views(pixels.numpy())) / 8
    assert averaged.logits_pixels(pixels, tta=True) == pytest.approx(mean_logits, abs=1e-5)
    views = averaged.view_logits_pixels(pixels)  # one pass for both: view 0 is the image as it is
    assert views.shape == (8, 3, 8) and np.array_equal(views[0], plain.logits_pixels(pixels))
    assert np.array_equal(views.mean(axis=0, dtype=np.float32), averaged.logits_pixels(pixels, tta=True))
    assert averaged.predict_pixels(pixels) == pytest.approx(softmax(mean_logits), abs=1e-5)

    # the trained model carries thresholds for the mean views, fitted on them: its flags are known with --tta
    model = model_run.best_checkpoint.rsplit("/checkpoints/", 1)[0] + "/model"
    single, tta = Predictor.load(model), Predictor.load(model, tta=True)
    assert single.calibration.tta is not None and tta.active_calibration is tta.calibration.tta
    assert single.active_calibration is single.calibration
    assert tta.calibration.tta.ood_threshold != single.calibration.ood_threshold
    scores = tta.score_pixels(pixels)
    in_distribution, review = tta.flags(scores, pixels)
    assert list(in_distribution) == list(scores.in_distribution_score >= tta.calibration.tta.ood_threshold)
    assert None not in list(review)
    result = invoke("evaluate", model, "--data-dir", synthetic_data, "--tta", "--no-track", "--output-dir", tmp_path / "tta")
    assert result.exit_code == 0 and "flagged out-of-distribution" in result.output, result.output
    # a model calibrated before TTA had thresholds: scored with the single views' temperature, flags unknown
    tta.calibration.tta = None
    assert tta.temperature == single.calibration.temperature
    assert set(tta.flags(tta.score_pixels(pixels), pixels)[1]) == {None}


def test_compare_logs_one_study_run_with_a_row_per_model(synthetic_data, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    result = invoke("compare", "--data-dir", synthetic_data, "--epochs", "2", "--image-size", "32", "--batch-size", "16",
                    "--limit-per-class", "2", "--models", "scratch:scratch,resnet18:transfer,efficientnet_lite0:finetune")
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("wbc-compare")
    (study,) = client.search_runs([experiment.experiment_id], filter_string="tags.`wbc.kind` = 'compare'")
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{study.info.run_id}'")
    assert len(children) == 3
    assert {"comparison.csv", "comparison.png"} <= {a.path for a in client.list_artifacts(study.info.run_id)}
    table = pd.read_csv(client.download_artifacts(study.info.run_id, "comparison.csv", str(tmp_path)))
    assert list(table["arch"]) == ["scratch", "resnet18", "efficientnet_lite0"]
    statuses = dict(zip(table["arch"], table["status"]))
    assert statuses["scratch"] == "ok" and statuses["efficientnet_lite0"] == "ok"
    assert statuses["resnet18"].startswith("not run: no ImageNet weights")
    done = table[table["status"] == "ok"]
    assert (done["inference_img_s"] > 0).all() and (done["torch_img_s"] > 0).all() and (done["model_mb"] > 0).all() and (done["total_params"] > 0).all()
    client = mlflow.MlflowClient()
    for run_id in done["run_id"]:  # the inference_img_s column measured the ONNX flavour, which each model has
        metrics = client.get_run(run_id).data.metrics
        assert metrics["onnx_max_probability_difference"] <= 1e-4
        assert "temperature" in metrics and "temperature_tta" not in metrics, "the study fits no thresholds for --tta"


def test_shiftbench_calibrate_and_register_on_the_robust_metric(synthetic_data, tmp_path):
    from wbc.evaluation.shiftbench import SELECTION_METRIC

    config = dict(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=1, batch_size=16, image_size=32, progress=False,
                  onnx=False)
    plain = train(TrainConfig(**config))
    robust = train(TrainConfig(**config, augment="robust", seed=1))
    client = mlflow.MlflowClient()
    assert client.get_run(robust.run_id).data.params["augment"] == "robust"
    metrics = client.get_run(plain.run_id).data.metrics
    assert 0 < metrics["temperature"] and 0 <= metrics["val_ece_calibrated"] <= 1 and 0 <= metrics["review_fraction"] <= 1

    result = invoke("shiftbench", f"runs:/{plain.run_id}/model", "--data-dir", synthetic_data)
    assert result.exit_code == 0, result.output
    (bench,) = client.search_runs([client.get_experiment_by_name("wbc").experiment_id], "tags.`wbc.kind` = 'shiftbench'")
    table = pd.read_csv(client.download_artifacts(bench.info.run_id, "shiftbench.csv", str(tmp_path)))
    assert len(table) == 1 + 7 * 3 and table["accuracy"].between(0, 1).all()
    assert table.loc[0, "accuracy"] == pytest.approx(plain.best_val_acc)
    assert table.loc[0, "flagged"] <= 0.05
    trained = client.get_run(plain.run_id).data.metrics
    assert trained[SELECTION_METRIC] == pytest.approx((trained["val_clean_acc"] + trained["val_shift_acc"]) / 2)
    assert invoke("shiftbench", f"runs:/{robust.run_id}/model", "--data-dir", synthetic_data).exit_code == 0

    result = invoke("register", "--metric", SELECTION_METRIC)
    assert result.exit_code == 0, result.output
    scores = {run: client.get_run(run).data.metrics[SELECTION_METRIC] for run in (plain.run_id, robust.run_id)}
    champion = client.get_model_version_by_alias("wbc-classifier", "champion")
    assert scores[champion.run_id] == max(scores.values())

    # recalibrating logs a newer model in the run and registers it in place of the old version, aliases included
    result = invoke("calibrate", champion.run_id, "--data-dir", synthetic_data, "--target-error", "0.2")
    assert result.exit_code == 0, result.output
    assert "temperature" in result.output and "ECE" in result.output
    newest = client.get_model_version_by_alias("wbc-classifier", "champion")
    assert f"registered it as wbc-classifier version {newest.version}" in result.output
    assert newest.run_id == champion.run_id and int(newest.version) > int(champion.version)
    assert newest.tags[f"metric.{SELECTION_METRIC}"] == champion.tags[f"metric.{SELECTION_METRIC}"]
    assert client.get_model_version("wbc-classifier", champion.version).tags["superseded_by"] == str(newest.version)
    assert invoke("register", "--metric", SELECTION_METRIC).exit_code == 0
    assert client.get_model_version_by_alias("wbc-classifier", "champion").version == newest.version
    served = Path(mlflow.artifacts.download_artifacts("models:/wbc-classifier@champion", dst_path=str(tmp_path))) / "artifacts" / "model"
    assert json.loads((served / "model.json").read_text())["calibration"]["target_error"] == 0.2
    assert (served / "model.onnx").is_file()


def test_calibrate_adds_the_int8_flavour_to_a_run_in_another_experiment(synthetic_data, monkeypatch, tmp_path):
    monkeypatch.setattr("wbc.inference.onnx.INT8_MIN_AGREEMENT", 0.0)  # a one-epoch network's margins are small
    trained = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=1, batch_size=16,
                                image_size=32, progress=False, shiftbench=False, experiment="elsewhere"))
    result = invoke("calibrate", trained.run_id, "--data-dir", synthetic_data, "--int8")
    assert result.exit_code == 0, result.output
    assert f"(ONNX flavour and its int8 quantization included) in run {trained.run_id}" in result.output
    run = mlflow.MlflowClient().get_run(trained.run_id)
    assert 0 <= run.data.metrics["onnx_int8_top1_agreement"] <= 1
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{trained.run_id}/model", dst_path=str(tmp_path))) / "artifacts" / "model"
    assert (folder / "model.int8.onnx").is_file()
    assert Predictor.load(folder, runtime="onnx-int8").runtime == "onnx-int8"

    # loading by URI downloads into a scratch folder and removes it: repeated loads do not fill the disk
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    predictor = Predictor.load(f"runs:/{trained.run_id}/model", runtime="onnx-int8")
    assert predictor.runtime == "onnx-int8" and predictor.calibration is not None
    predictions = predictor.predict_sources(sorted((synthetic_data / "barcelona" / "valid").rglob("*.jpg"))[:2])
    assert [p.error for p in predictions] == [None, None]
    assert list(scratch.iterdir()) == []


def test_main_skips_stages_2_and_3_when_stage_1_used_the_time_budget(synthetic_data):
    from wbc.training.recipes import STAGE1_TIME_SHARE

    budget = 0.02  # minutes: stage 1 alone takes longer, so nothing is left for stage 2 and its evaluation
    result = invoke("main", "--data-dir", synthetic_data, "--arch", "scratch", "--mode", "scratch", "--image-size", 32,
                    "--epochs", 2, "--limit-per-class", 2, "--no-onnx", "--time-budget", budget)
    assert result.exit_code == 0, result.output
    assert f"stage 1 trains for at most {budget * STAGE1_TIME_SHARE:.1f} min" in result.output
    assert "stages 2 and 3 skipped" in result.output and "stage 2:" not in result.output
    (run,) = mlflow.search_runs(experiment_names=["wbc"], filter_string="tags.`wbc.kind` = 'train'", output_format="list")
    assert float(run.data.params["max_time"]) == round(budget * STAGE1_TIME_SHARE, 2)
    champion = mlflow.MlflowClient().get_model_version_by_alias("wbc-classifier", "champion")
    assert champion.run_id == run.info.run_id and "is now @champion" in result.output


@pytest.mark.parametrize("budget, elapsed, after_training, expected", [
    (90, 50, 5, 27), (90, 80, 5, None), (90, 74, 5, 3), (90, 30, 0, 59.5), (25, 13.43, 1.58, 7.12),
])
def test_stage_2_gets_the_budget_left_after_the_evaluations_to_come(budget, elapsed, after_training, expected):
    from wbc.training.recipes import stage2_minutes

    assert stage2_minutes(budget, elapsed, after_training) == (None if expected is None else pytest.approx(expected))


def _train_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.`wbc.kind` = 'train'",
                              order_by=["attributes.start_time ASC"], output_format="list")


def test_main_refuses_no_shiftbench_up_front(synthetic_data):
    result = invoke("main", "--data-dir", synthetic_data, "--no-shiftbench")
    assert result.exit_code == 1
    assert result.output.startswith("Error: shiftbench=False: wbc main ranks its stages on val_robust_acc")
    assert "time budget" not in result.output and _train_runs() == []


def test_main_resumes_stage_1_only_and_stage_2_continues_what_stage_1_was(synthetic_data):
    stopped = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=1, batch_size=16,
                                image_size=32, progress=False, onnx=False))
    mlflow.MlflowClient().set_terminated(stopped.run_id, "FAILED")  # as a run killed after its last checkpoint
    result = invoke("main", "--resume", stopped.run_id, "--robust-epochs", 1, "--time-budget", 0, "--no-onnx",
                    "--data-dir", synthetic_data)
    assert result.exit_code == 0, result.output
    first, second, averaged = _train_runs()
    assert first.info.run_id == stopped.run_id and first.info.status == "FINISHED"
    assert second.data.params["init_from"] == f"runs:/{stopped.run_id}/model" and second.info.status == "FINISHED"
    assert second.data.params["image_size"] == "32" and second.data.params["arch"] == "scratch", "stage 1's settings"
    assert second.info.run_name == "main stage 2: scratch scratch 32px robust"
    assert averaged.data.params["average_of"].startswith(f"runs:/{stopped.run_id}/model ")


def test_evaluate_into_the_working_folder_logs_only_the_reports_it_wrote(model_run, synthetic_data, tmp_path):
    from wbc.evaluation.reports import REPORT_FILES

    (tmp_path / "notes.txt").write_text("a lab's own file beside the reports")
    result = invoke("evaluate", model_run.best_checkpoint, "--data-dir", synthetic_data, "--output-dir", ".")
    assert result.exit_code == 0, result.output
    (run,) = mlflow.search_runs(experiment_names=["wbc"], filter_string="tags.`wbc.kind` = 'evaluate'", output_format="list")
    assert sorted(a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)) == sorted([*REPORT_FILES, "predictions.csv"])
    assert run.info.run_name == f"evaluate {model_run.best_checkpoint} on valid"


def test_every_step_after_training_decodes_through_the_cache_dir_given(synthetic_data, tmp_path, monkeypatch):
    default_cache, mine = tmp_path / "default-cache", tmp_path / "mine"
    monkeypatch.setenv("WBC_CACHE_DIR", str(default_cache))
    trained = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=1, batch_size=16,
                                image_size=32, progress=False, onnx=False, cache_dir=str(mine)))
    model = f"runs:/{trained.run_id}/model"
    for args in (["calibrate", trained.run_id], ["evaluate", model, "--no-track"], ["shiftbench", model],
                 ["average", model, model]):
        result = invoke(*args, "--data-dir", synthetic_data, "--cache-dir", mine)
        assert result.exit_code == 0, result.output
    assert any(mine.iterdir()) and not default_cache.exists()


def test_any_labelled_folder_is_an_evaluation_set(model_run, synthetic_data, tmp_path):
    """A lab's folder with three of the eight classes, named its own way: scored over the eight classes and over the
    three, with how the flags fell, logged and written like a split."""
    from wbc.classes import CLASS_TO_IDX

    lab = tmp_path / "lab-a"
    for folder in ("Monocyte", "basophil", "NEUTROPHIL"):
        (lab / folder).mkdir(parents=True)
        for source in sorted((synthetic_data / "barcelona" / "valid" / folder.lower()).glob("*.jpg")):
            (lab / folder / source.name).write_bytes(source.read_bytes())
    model = model_run.best_checkpoint.rsplit("/checkpoints/", 1)[0] + "/model"
    result = invoke("evaluate", "--model", model, "--images", lab, "--output-dir", tmp_path / "report")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(tmp_path / "report" / "predictions.csv")
    assert len(rows) == 12 and set(rows["true"]) == {"monocyte", "basophil", "neutrophil"}
    present = sorted(CLASS_TO_IDX[name] for name in ("basophil", "monocyte", "neutrophil"))
    (run,) = mlflow.search_runs(experiment_names=["wbc"], filter_string="tags.`wbc.kind` = 'evaluate'", output_format="list")
    metrics, params = run.data.metrics, run.data.params
    assert metrics["images_acc"] == pytest.approx((rows["true"] == rows["predicted"]).mean())
    assert metrics["images_acc_present"] >= metrics["images_acc"]
    assert params["classes_present"] == "basophil,monocyte,neutrophil" and params["images"] == str(lab)
    assert params["photographed_apart"] == "none; not tested: basophil (4 images), monocyte (4 images), neutrophil (4 images)"
    assert run.info.run_name == f"evaluate {model} on lab-a"
    assert f"logged as run {run.info.run_id} (experiment wbc)" in result.output
    refused = invoke("evaluate", model, "--model", "elsewhere", "--images", lab, "--no-track")
    assert refused.exit_code == 2 and "two models given" in refused.output
    refused = invoke("evaluate", "models:/wbc-classifier@nosuch", "--images", lab, "--no-track")
    assert refused.exit_code == 1 and "register one (wbc main, wbc register; a lab's: wbc adapt FOLDER --alias NAME), or give another model" in refused.output
    flagged = rows["in_distribution"] == False  # noqa: E712
    wrong = rows["true"] != rows["predicted"]
    assert metrics["images_flagged"] == pytest.approx(flagged.mean())
    if flagged.any():
        assert metrics["images_error_flagged"] == pytest.approx(wrong[flagged].mean())
    assert "among the classes present (basophil, monocyte, neutrophil)" in result.output
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)} >= {"predictions.csv", "confusion_matrix.png"}

    # restricted scoring is the argmax over the classes present
    from wbc.evaluation.reports import Evaluation

    probabilities = np.array([[0.5, 0.3, 0, 0, 0, 0.2, 0, 0], [0.6, 0, 0, 0, 0, 0.3, 0.1, 0]])
    evaluation = Evaluation.from_scores(np.array([5, 6]), probabilities)
    assert evaluation.accuracy == 0 and evaluation.present_accuracy == 0.5 and evaluation.present_classes == [5, 6]
    assert present == [0, 5, 6]
    # macro-F1 over the eight: classes neither held nor answered are left out, one answered but not held counts at 0
    assert Evaluation.from_predictions(np.array([5, 5, 6]), np.array([5, 5, 6])).macro_f1 == 1.0
    assert Evaluation.from_predictions(np.array([5, 5, 6]), np.array([5, 0, 6])).macro_f1 == pytest.approx((0 + 2 / 3 + 1) / 3)

    # unreadable files: one error names them all; --skip-bad-images leaves them out and says how many
    (lab / "Monocyte" / "broken.jpg").write_bytes(b"not an image")
    (lab / "basophil" / "empty.jpg").write_bytes(b"")
    result = invoke("evaluate", model, "--images", lab, "--no-track", "--output-dir", tmp_path / "skipped")
    assert result.exit_code == 1 and "Error: 2 unreadable image files: " in result.output, result.output
    assert "broken.jpg: not an image file" in result.output and "empty.jpg: empty file" in result.output
    assert "leave them out with --skip-bad-images" in result.output
    result = invoke("evaluate", model, "--images", lab, "--skip-bad-images", "--output-dir", tmp_path / "skipped")
    assert result.exit_code == 0, result.output
    assert "warning: skipped 2 unreadable image file(s), first: " in result.output and "UserWarning" not in result.output
    (latest, _) = mlflow.search_runs(experiment_names=["wbc"], filter_string="tags.`wbc.kind` = 'evaluate'",
                                     order_by=["attributes.start_time DESC"], output_format="list")
    assert latest.data.params["skipped_images"] == "2" and latest.data.params["size"] == "12"
    assert len(pd.read_csv(tmp_path / "skipped" / "predictions.csv")) == 12
    (lab / "Monocyte" / "broken.jpg").unlink()
    (lab / "basophil" / "empty.jpg").unlink()

    (lab / "Neutrophils").mkdir()
    result = invoke("evaluate", model, "--images", lab, "--no-track")
    assert result.exit_code == 1 and "Neutrophils (did you mean neutrophil?): folder is not one of the eight classes" in result.output
    (lab / "lymph").mkdir()
    (lab / "junk").mkdir()
    result = invoke("evaluate", model, "--images", lab, "--no-track")
    assert result.exit_code == 1, result.output
    assert (f"Error: {lab / 'Neutrophils'} (did you mean neutrophil?); {lab / 'junk'}; {lab / 'lymph'} (did you mean "
            "lymphocyte?): folders are not one of the eight classes") in result.output, "all of them at once"
    (lab / "lymph").rmdir()
    (lab / "junk").rmdir()
    # a class folder given for the lab's folder, or loose images: said as such
    result = invoke("evaluate", model, "--images", lab / "Monocyte", "--no-track")
    assert result.exit_code == 1 and "Monocyte holds 4 image(s) but no class sub-folders" in result.output, result.output
    assert "it looks like the monocyte folder itself: give the folder above it" in result.output
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "cell.jpg").write_bytes((lab / "Monocyte" / next(iter(sorted(p.name for p in (lab / "Monocyte").iterdir())))).read_bytes())
    result = invoke("evaluate", model, "--images", loose, "--no-track")
    assert result.exit_code == 1 and "sort them into <class>/ sub-folders, or score unlabelled cells with wbc predict" in result.output
