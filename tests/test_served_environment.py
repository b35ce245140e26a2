"""The registered model served the way users deploy it: ``mlflow models serve --env-manager virtualenv`` builds a fresh
environment from the model's own files (no wbc installed, no PyTorch for a model with an ONNX flavour), and answers
like ``wbc predict``; ``mlflow models predict`` runs in that environment too, and ``mlflow models
generate-dockerfile`` writes a Dockerfile that installs the model's requirements (issue "The registered model runs
wherever MLflow runs a model"). Installs from the package index: slow, and run by CI."""

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import requests
import torch

from conftest import cell_image, free_port, start_http_server, stop_process_group

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("pyenv") is None and not Path(
    os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).is_dir(), reason="MLflow's virtualenv manager needs pyenv")]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny model with an ONNX flavour, logged and registered as @champion in a SQLite store; its cells."""
    from wbc.inference import export_model
    from wbc.models import build_model
    from wbc.serving.pyfunc import log_pyfunc_model

    workdir = tmp_path_factory.mktemp("served-env")
    store = f"sqlite:///{workdir}/mlflow.db"
    torch.manual_seed(0)
    export_dir = export_model(build_model("scratch"), 32, workdir / "export", onnx=True)
    cells = []
    for index, name in enumerate(("monocyte", "neutrophil", "platelet")):
        cell_image(name, index).save(workdir / f"{name}.png")
        cells.append(workdir / f"{name}.png")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        experiment = mlflow.create_experiment("served-env", artifact_location=(workdir / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_pyfunc_model(export_dir, example_image=cells[0])
        version = mlflow.register_model(info.model_uri, "wbc-classifier")
        mlflow.MlflowClient().set_registered_model_alias("wbc-classifier", "champion", version.version)
    finally:
        mlflow.set_tracking_uri(previous)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # a fresh environment root: the environment is built here from the model's python_env.yaml and requirements.txt
    env.update(MLFLOW_TRACKING_URI=store, MLFLOW_ENV_ROOT=str(workdir / "envs"), PIP_NO_INPUT="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))  # uv, from the test extra
    return workdir, env, cells


def _request(cells: list[Path]) -> str:
    """The README's request body: ``dataframe_split`` with one column ``image`` of base64-encoded files."""
    rows = [[base64.b64encode(path.read_bytes()).decode()] for path in cells]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}})


def _wbc_predict(cells: list[Path], workdir: Path, env: dict) -> dict[str, dict]:
    table = workdir / "predicted.csv"
    done = subprocess.run([sys.executable, "-m", "wbc", "predict", *map(str, cells), "--model",
                           "models:/wbc-classifier@champion", "--output", str(table)],
                          env=env, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    import pandas as pd

    return {Path(row["file"]).name: row for row in pd.read_csv(table).to_dict("records")}


def _same_answers(answers: list[dict], cells: list[Path], expected: dict[str, dict]) -> None:
    assert len(answers) == len(cells)
    for answer, path in zip(answers, cells):
        row = expected[path.name]
        assert answer["error"] == "" and answer["label"] == row["label"]
        for column in [c for c in answer if c.startswith("prob_")] + ["in_distribution_score"]:
            assert abs(answer[column] - row[column]) < 1e-5, (path.name, column)


def test_served_in_its_own_virtualenv_without_wbc_or_pytorch_it_answers_like_wbc_predict(registered):
    workdir, env, cells = registered
    port = free_port()
    command = [MLFLOW, "models", "serve", "-m", "models:/wbc-classifier@champion", "--env-manager", "virtualenv",
               "-p", str(port), "-h", "127.0.0.1"]
    # building the environment installs from the package index: minutes
    process = start_http_server(command, f"http://127.0.0.1:{port}/ping", env=env, cwd=workdir, timeout=900)
    try:
        response = requests.post(f"http://127.0.0.1:{port}/invocations", data=_request(cells),
                                 headers={"Content-Type": "application/json"}, timeout=60)
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
    finally:
        stop_process_group(process, timeout=30)
    (environment,) = [path.parent for path in (workdir / "envs").rglob("pyvenv.cfg")]
    site_packages = next(environment.glob("lib/python*/site-packages"))
    installed = {path.name.split("-")[0].lower() for path in site_packages.glob("*.dist-info")}
    assert {"onnxruntime", "mlflow_skinny", "pandas", "pillow"} <= installed
    assert not installed & {"torch", "torchvision", "timm", "wbc", "lightning", "pytorch_lightning"}, installed
    _same_answers(answers, cells, _wbc_predict(cells, workdir, env))

    # mlflow models predict, from a JSON input file, in an environment of its own. MLflow builds it under a new
    # root each time, where the virtualenv manager would download Python from python.org; uv takes the one here.
    (workdir / "input.json").write_text(_request(cells))
    output = workdir / "output.json"
    done = subprocess.run([MLFLOW, "models", "predict", "-m", "models:/wbc-classifier@champion", "-i", "input.json",
                           "-t", "json", "-o", str(output), "--env-manager", "uv"],
                          env=env, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_answers(json.loads(output.read_text())["predictions"], cells, _wbc_predict(cells, workdir, env))


def test_generate_dockerfile_installs_the_models_own_requirements(registered):
    workdir, env, _ = registered
    done = subprocess.run([MLFLOW, "models", "generate-dockerfile", "-m", "models:/wbc-classifier@champion", "-d",
                           "docker", "--env-manager", "virtualenv"], env=env, cwd=workdir, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dockerfile = (workdir / "docker" / "Dockerfile").read_text()
    model_dir = workdir / "docker" / "model_dir"
    requirements = next(model_dir.rglob("requirements.txt")).read_text().split()
    assert "torch" not in " ".join(requirements) and any(line.startswith("onnxruntime==") for line in requirements)
    assert next(model_dir.rglob("code/wbc/serving/pyfunc.py")).is_file(), "the image gets the model's own code"
    assert "model_dir" in dockerfile and ("requirements" in dockerfile or "_install_pyfunc_deps" in dockerfile
                                          or "python_env" in dockerfile), dockerfile


def test_the_project_runs_in_an_environment_mlflow_builds_from_its_own_files(synthetic_data, tmp_path):
    """``mlflow run`` without conda: MLflow converts conda.yaml into a virtual environment (the project installed in
    it from its own pyproject.toml). The virtualenv manager would download Python 3.11's latest patch release from
    python.org, which the build machines cannot reach; uv takes the installed Python. Minutes: it installs PyTorch."""
    project = Path(__file__).parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", MLFLOW_ENV_ROOT=str(tmp_path / "envs"),
               WBC_CACHE_DIR=str(tmp_path / "cache"), PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    done = subprocess.run([MLFLOW, "run", str(project), "-e", "finetune", "-P", "arch=efficientnet_lite0", "-P",
                           f"data_dir={synthetic_data}", "-P", "epochs=1", "-P", "image_size=32", "-P", "batch_size=8",
                           "-P", f"output_dir={tmp_path / 'outputs'}", "--env-manager", "uv", "--experiment-name", "built"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    (environment,) = [path.parent for path in (tmp_path / "envs").rglob("pyvenv.cfg")]
    assert next(environment.glob("lib/python*/site-packages/torch/__init__.py")), "the environment is the project's own"
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("built").experiment_id], "tags.`wbc.kind` = 'train'")
    assert run.info.status == "FINISHED" and run.data.params["arch"] == "efficientnet_lite0"
    shutil.rmtree(tmp_path / "envs", ignore_errors=True)  # gigabytes
