"""The MLflow project for real: `mlflow run` entry points, the registry, and `mlflow models serve` over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from PIL import Image

from wbc.classes import CLASS_NAMES
from wbc.tracking.registry import MAX_CLEAN_DROP
from wbc.training.recipes import STAGE1_TIME_SHARE, TIME_BUDGET_MINUTES

from conftest import faithful_inputs, free_port, start_http_server, stop_process_group
from test_bad_input import CASES

REPO = Path(__file__).resolve().parents[1]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
WBC = str(Path(sys.executable).with_name("wbc"))
pytestmark = pytest.mark.slow


def _environment(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
        WBC_CACHE_DIR=str(workdir / "cache"),
        TMPDIR=str(workdir),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _mlflow_run(workdir: Path, entry_point: str, *params: str, check: bool = True, experiment: str | None = None) -> subprocess.CompletedProcess:
    command = [MLFLOW, "run", str(REPO), "-e", entry_point, "--env-manager", "local"]
    command += ["--experiment-name", experiment] if experiment else []
    for param in params:
        command += ["-P", param]
    result = subprocess.run(command, cwd=workdir, env=_environment(workdir), capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def project(synthetic_data, tmp_path_factory):
    """Two `mlflow run` trainings (a good and a weak one) and `mlflow run -e register`, in one store."""
    workdir = tmp_path_factory.mktemp("project")
    common = [f"data_dir={synthetic_data}", "image_size=32", "batch_size=16", f"output_dir={workdir / 'outputs'}"]
    _mlflow_run(workdir, "scratch", *common, "epochs=4", "lr=0.01")
    _mlflow_run(workdir, "register")
    _mlflow_run(workdir, "scratch", *common, "epochs=1", "lr=0.00001", "limit_per_class=2")
    registered = _mlflow_run(workdir, "register")
    return workdir, registered


def _client(workdir: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def test_mlflow_run_logs_comparable_training_runs(project):
    workdir, _ = project
    client = _client(workdir)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="tags.`wbc.kind` = 'train'"
    )
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    every_run = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert all(r.data.tags.get("mlflow.project.entryPoint") for r in every_run), "no stray runs from autolog"
    finished_scratch = [r for r in every_run if r.data.tags.get("mlflow.project.entryPoint") == "scratch" and r.info.status == "FINISHED"]
    assert len(finished_scratch) == 2, "one run per `mlflow run`"
    for run in runs:
        params = run.data.params
        assert params["arch"] == "scratch" and params["mode"] == "scratch" and params["image_size"] == "32"
        assert {"trainable_params", "total_params", "train_size", "val_size", "data_fingerprint", "lr", "epochs"} <= set(params)
        assert {"train_loss", "val_loss", "val_acc", "val_f1", "best_val_acc", "best_val_f1", "train_minutes"} <= set(run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.png", "confusion_matrix.csv", "classification_report.json", "per_class.csv", "training_curves.png"} <= artifacts


def test_register_keeps_the_better_model_as_champion(project, tmp_path):
    workdir, registered = project
    client = _client(workdir)
    champion = client.get_model_version_by_alias("wbc-classifier", "champion")
    challenger = client.get_model_version_by_alias("wbc-classifier", "challenger") if "challenger" in registered.stdout else None
    run = client.get_run(champion.run_id)
    assert champion.tags["metric"] == "val_robust_acc"
    assert float(champion.tags["metric.val_robust_acc"]) == pytest.approx(run.data.metrics["val_robust_acc"])
    assert run.data.params["epochs"] == "4"
    if challenger is not None:
        assert float(challenger.tags["metric.val_robust_acc"]) <= float(champion.tags["metric.val_robust_acc"])

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/wbc-classifier@champion", dst_path=str(tmp_path))
    png = io.BytesIO()
    Image.new("RGB", (40, 40), (40, 40, 200)).save(png, format="PNG")
    predicted = model.predict(pd.DataFrame({"image": [_b64(png.getvalue())]}))
    assert predicted["label"][0] in CLASS_NAMES and 0 < predicted["confidence"][0] <= 1


def test_bad_parameter_fails_clearly_and_marks_the_run_failed(project, synthetic_data):
    workdir, _ = project
    result = _mlflow_run(workdir, "scratch", f"data_dir={synthetic_data}", "epochs=abc", check=False)
    assert result.returncode != 0
    assert "Invalid value for '--epochs': 'abc' is not a valid integer" in result.stderr
    assert "Traceback" not in result.stderr.split("Invalid value")[0][-2000:]
    client = _client(workdir)
    failed = client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string="attributes.status = 'FAILED'")
    assert failed


def test_evaluate_and_predict_entry_points(project, synthetic_data, tmp_path):
    workdir, _ = project
    _mlflow_run(workdir, "evaluate", f"data_dir={synthetic_data}", "split=valid")
    folder = synthetic_data / "barcelona" / "valid" / "neutrophil"
    _mlflow_run(workdir, "predict", f"input={folder}", f"output={tmp_path / 'predicted.csv'}")
    assert len(pd.read_csv(tmp_path / "predicted.csv")) == len(list(folder.glob("*.jpg")))
    client = _client(workdir)
    evaluations = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="tags.`wbc.kind` = 'evaluate'"
    )
    assert len(evaluations) == 1 and evaluations[0].info.status == "FINISHED"
    assert "valid_acc" in evaluations[0].data.metrics
    assert "confusion_matrix.png" in {a.path for a in client.list_artifacts(evaluations[0].info.run_id)}


@pytest.fixture(scope="module")
def server(project):
    workdir, _ = project
    port = free_port()
    command = [MLFLOW, "models", "serve", "-m", "models:/wbc-classifier@champion", "--env-manager", "local",
               "-p", str(port), "-h", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}"
    process = start_http_server(command, f"{url}/ping", env=_environment(workdir), cwd=workdir)
    yield url, workdir
    stop_process_group(process, timeout=30)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _valid_files(data_root: Path) -> list[Path]:
    return [sorted((data_root / "barcelona" / "valid" / name).glob("*.jpg"))[0] for name in CLASS_NAMES]


def test_served_predictions_equal_wbc_predict(server, synthetic_data, tmp_path):
    url, workdir = server
    files = _valid_files(synthetic_data)
    body = {"dataframe_split": {"columns": ["image"], "data": [[_b64(f.read_bytes())] for f in files]}}
    response = requests.post(f"{url}/invocations", json=body, timeout=60)
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json()["predictions"])
    assert list(served.columns[:2]) == ["label", "confidence"]
    assert {f"prob_{c}" for c in CLASS_NAMES} <= set(served.columns)

    output = tmp_path / "predictions.csv"
    subprocess.run(
        [WBC, "predict", *map(str, files), "--model", "models:/wbc-classifier@champion", "--output", str(output)],
        env=_environment(workdir), check=True, capture_output=True, timeout=300,
    )
    local = pd.read_csv(output)
    assert list(served["label"]) == list(local["label"])
    for name in CLASS_NAMES:
        assert served[f"prob_{name}"].to_numpy() == pytest.approx(local[f"prob_{name}"].to_numpy(), abs=1e-5)

    # the request parameter tta: as wbc predict --tta, with its flags
    response = requests.post(f"{url}/invocations", json=body | {"params": {"tta": True}}, timeout=120)
    assert response.status_code == 200, response.text
    averaged = pd.DataFrame(response.json()["predictions"])
    subprocess.run(
        [WBC, "predict", *map(str, files), "--model", "models:/wbc-classifier@champion", "--output", str(output), "--tta"],
        env=_environment(workdir), check=True, capture_output=True, timeout=300,
    )
    local = pd.read_csv(output)
    for name in CLASS_NAMES:
        assert averaged[f"prob_{name}"].to_numpy() == pytest.approx(local[f"prob_{name}"].to_numpy(), abs=1e-5)
    assert list(averaged["in_distribution"]) == list(local["in_distribution"]) and averaged["review"].notna().all()

    # base64 as MIME encoders (76-character lines) and browsers (a data URL) send it scores the same
    first = files[0].read_bytes()
    forms = [base64.encodebytes(first).decode(), "data:image/jpeg;base64," + _b64(first) + "\n"]
    response = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["image"], "data": [[f] for f in forms]}},
                             timeout=60)
    assert response.status_code == 200, response.text
    for row in response.json()["predictions"]:
        assert row["error"] == "" and row["label"] == served["label"][0]
        assert row[f"prob_{CLASS_NAMES[0]}"] == pytest.approx(served[f"prob_{CLASS_NAMES[0]}"][0], abs=1e-6)

    # files as cameras and analysis tools write them score like the plain 8-bit files they mean
    pairs = faithful_inputs(tmp_path / "faithful")
    sent = [path for pair in pairs.values() for path in pair]
    response = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["image"], "data": [[_b64(p.read_bytes())] for p in sent]}},
                             timeout=60)
    assert response.status_code == 200, response.text
    rows = dict(zip((p.name for p in sent), response.json()["predictions"]))
    for kind, (file, meant) in pairs.items():
        assert rows[file.name]["error"] == "" and rows[file.name]["label"] == rows[meant.name]["label"], kind
        for name in CLASS_NAMES:
            assert rows[file.name][f"prob_{name}"] == pytest.approx(rows[meant.name][f"prob_{name}"], abs=1e-6), kind

    records = requests.post(f"{url}/invocations", json={"dataframe_records": [{"image": _b64(files[0].read_bytes())}]}, timeout=60)
    assert records.status_code == 200 and records.json()["predictions"][0]["label"] == served["label"][0]


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (50, 50), (200, 100, 100)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, synthetic_data):
    url, _ = server
    jpeg = _valid_files(synthetic_data)[0].read_bytes()
    split = lambda value: {"dataframe_split": {"columns": ["image"], "data": [[value]]}}  # noqa: E731
    cases = {
        "malformed JSON": ("{not json", "application/json", None),
        "missing image column": (json.dumps({"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}), "application/json", "image"),
        "no rows": (json.dumps({"dataframe_split": {"columns": ["image"], "data": []}}), "application/json",
                    "the request holds no rows: send one row per image, in the column 'image'"),
        "invalid base64": (json.dumps(split("@@@not-base64@@@")), "application/json", "not valid base64"),
        "not an image": (json.dumps(split(_b64(b"hello, I am text"))), "application/json", "not an image"),
        "truncated JPEG": (json.dumps(split(_b64(jpeg[: len(jpeg) // 2]))), "application/json", "truncated"),
        "oversized image": (json.dumps(split(_b64(b"\xff\xd8" + b"0" * (17 * 1024 * 1024)))), "application/json", "limit"),
    }
    for name, (body, content_type, expected) in cases.items():
        response = requests.post(f"{url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=60)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
        if expected:
            assert expected in response.text, (name, response.text[:500])
        assert requests.get(f"{url}/ping", timeout=5).status_code == 200, f"server down after {name}"

    for name, (content, expected_error) in CASES.items():
        response = requests.post(f"{url}/invocations", json=split(_b64(content)), timeout=60)
        if expected_error is None:
            assert response.status_code == 200, (name, response.text[:300])
            assert response.json()["predictions"][0]["label"] in CLASS_NAMES, name
        else:
            expected_error = {"zero-byte.jpg": "non-empty base64"}.get(name, expected_error)  # b"" is an empty string
            assert response.status_code == 400 and expected_error in response.text, (name, response.text[:300])

    mixed = {"dataframe_split": {"columns": ["image"], "data": [[_b64(_png_bytes())], [_b64(b"junk")]]}}
    response = requests.post(f"{url}/invocations", json=mixed, timeout=60)
    assert response.status_code == 200
    rows = response.json()["predictions"]
    assert rows[0]["label"] in CLASS_NAMES and rows[0]["error"] == ""
    assert rows[1]["label"] == "" and rows[1]["confidence"] is None and "not an image" in rows[1]["error"]
    assert "NaN" not in response.text, "strict JSON: a missing number is null"

    # a row holds one image: a TIFF stack is refused naming its page count, alone (400) or beside a good row
    stack = io.BytesIO()
    Image.new("RGB", (50, 50), (200, 100, 100)).save(stack, "TIFF", save_all=True, append_images=[Image.new("RGB", (50, 50))] * 2)
    alone = requests.post(f"{url}/invocations", json=split(_b64(stack.getvalue())), timeout=60)
    assert alone.status_code == 400 and "row 0: 3 images in one file" in alone.text, alone.text[:300]
    beside = {"dataframe_split": {"columns": ["image"], "data": [[_b64(_png_bytes())], [_b64(stack.getvalue())]]}}
    rows = requests.post(f"{url}/invocations", json=beside, timeout=60).json()["predictions"]
    assert rows[0]["error"] == "" and "3 images in one file" in rows[1]["error"] and rows[1]["label"] == ""


def test_an_entry_point_passes_on_parameters_it_does_not_declare(synthetic_data, tmp_path):
    result = _mlflow_run(tmp_path, "finetune", "arch=efficientnet_lite0", f"data_dir={synthetic_data}", "epochs=1", "weights=none",
                         "image_size=32", "batch_size=16", "limit_per_class=2", f"output_dir={tmp_path / 'outputs'}")
    (run,) = _client(tmp_path).search_runs([e.experiment_id for e in _client(tmp_path).search_experiments()])
    assert run.info.status == "FINISHED", result.stdout[-2000:]
    params = run.data.params
    assert (params["epochs"], params["head_epochs"], params["pretrained"], params["image_size"]) == ("1", "0", "False", "32")


def test_main_entry_point_trains_and_registers_the_champion(synthetic_data, tmp_path):
    # an earlier run in the default experiment, better on every metric, is not the job's concern
    client = _client(tmp_path)
    elsewhere = client.create_run(client.get_experiment_by_name("Default").experiment_id if client.get_experiment_by_name("Default")
                                  else client.create_experiment("wbc"), tags={"wbc.kind": "train"})
    result = _mlflow_run(tmp_path, "main", f"data_dir={synthetic_data}", "epochs=1", "robust_epochs=1", "limit_per_class=2",
                         "image_size=64", f"output_dir={tmp_path / 'outputs'}", experiment="lab-x")
    assert "is now @champion" in result.stdout
    lab = client.get_experiment_by_name("lab-x")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`wbc.kind` = 'train'",
                              order_by=["attributes.start_time ASC"])
    runs = [run for run in runs if run.info.run_id != elsewhere.info.run_id]
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert {run.info.experiment_id for run in runs} == {lab.experiment_id}, "every stage in the experiment asked for"
    first, second, averaged = runs
    assert [run.info.run_name for run in runs] == [
        "main stage 1: finetune efficientnet_lite0 64px stain", "main stage 2: finetune efficientnet_lite0 64px robust",
        "main stage 3: average of stages 1 and 2 (finetune efficientnet_lite0 64px stain)"]
    assert first.data.tags["mlflow.project.entryPoint"] == "main"
    assert first.data.params["arch"] == "efficientnet_lite0" and first.data.params["mode"] == "finetune"
    assert first.data.params["augment"] == "stain" and first.data.params["head_epochs"] == "0", "one epoch: no head-only one"
    assert [run.data.params["image_size"] for run in runs] == ["64"] * 3, "every stage at the size asked for"
    # stage 2 continues stage 1's model with the shift augmentation, in a run of its own
    assert second.data.params["init_from"] == f"runs:/{first.info.run_id}/model"
    assert second.data.params["augment"] == "robust" and second.data.params["epochs"] == "1"
    assert float(second.data.params["lr"]) == pytest.approx(3e-4)
    # the default 90-minute budget caps stage 1 at 47 % of it and stage 2 at what stage 1 left
    assert float(first.data.params["max_time"]) == pytest.approx(TIME_BUDGET_MINUTES * STAGE1_TIME_SHARE)
    until_stage2 = (second.info.start_time - first.info.start_time) / 60000
    assert 0 < float(second.data.params["max_time"]) < TIME_BUDGET_MINUTES - until_stage2
    # stage 3 averages their weights
    assert averaged.data.tags["wbc.averaged"] == "true" and averaged.data.params["mode"] == "average"
    assert averaged.data.params["average_of"] == f"runs:/{first.info.run_id}/model runs:/{second.info.run_id}/model"
    assert averaged.data.params["val_size"] == first.data.params["val_size"], "the stages' valid images"
    # at the first stage-2 share that stays within the champion rule's 0.3 points of the better stage
    tried = {float(w): float(a) for w, a in (item.split(":") for item in averaged.data.params["average_weights_tried"].split())}
    floor = max(first.data.metrics["best_val_acc"], second.data.metrics["best_val_acc"]) - MAX_CLEAN_DROP
    assert float(averaged.data.params["average_min_accuracy"]) == pytest.approx(floor)
    assert list(tried) == [0.7, 0.5, 0.35][: len(tried)]
    kept = float(averaged.data.params["average_weight"])
    assert kept == next((w for w, a in tried.items() if a >= floor - 1e-9), max(tried, key=tried.get))
    # every stage scored the shifted benchmark; the champion is the better one on clean + shifted accuracy
    for run in runs:
        metrics = run.data.metrics
        assert metrics["val_robust_acc"] == pytest.approx((metrics["val_clean_acc"] + metrics["val_shift_acc"]) / 2)
        assert {"shiftbench.csv", "shiftbench.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    champion = client.get_model_version_by_alias("wbc-classifier", "champion")
    assert champion.tags["metric"] == "val_robust_acc" and champion.run_id in {run.info.run_id for run in runs}
    floor = max(r.data.metrics["val_clean_acc"] for r in runs) - 0.003
    eligible = [r for r in runs if r.data.metrics["val_clean_acc"] >= floor - 1e-9]
    assert champion.run_id == max(eligible, key=lambda r: (r.data.metrics["val_robust_acc"], r.info.start_time)).info.run_id
