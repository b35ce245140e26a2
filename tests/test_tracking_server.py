"""The team set-up for real: `mlflow server` on PostgreSQL with a served artifact store.

Two training processes log to it at the same time; then register and load the champion
through the server. Needs PostgreSQL's server binaries (Debian package `postgresql`, which
`.ci/run` installs).
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from PIL import Image

from conftest import free_port, start_http_server, stop_process_group

pytestmark = pytest.mark.slow
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    return command if os.geteuid() != 0 else ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)]


@pytest.fixture(scope="module")
def postgres():
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="wbc-pg-", dir="/tmp"))
    root.chmod(0o777)
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = free_port()
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True, timeout=120)
    start = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
             f"'-p {port} -k {root} -c listen_addresses=127.0.0.1'", "start"]
    subprocess.run(_as_postgres(start), check=True, capture_output=True, timeout=120)
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), capture_output=True, timeout=120)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [MLFLOW, "server", "--backend-store-uri", postgres, "--artifacts-destination", str(workdir / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    process = start_http_server(command, f"{url}/health", env=env, cwd=workdir)
    yield url, workdir
    stop_process_group(process)


def test_two_trainings_at_once_then_register_and_load_through_the_server(tracking_server, synthetic_data, tmp_path):
    url, workdir = tracking_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=url, WBC_CACHE_DIR=str(tmp_path / "cache"))
    common = ["train", "--data-dir", str(synthetic_data), "--arch", "scratch", "--mode", "scratch",
              "--image-size", "32", "--batch-size", "16", "--epochs", "3", "--experiment", "team"]
    processes = [
        subprocess.Popen([sys.executable, "-m", "wbc", *common, "--lr", lr, "--output-dir", str(tmp_path / f"out{i}"), onnx],
                         env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i, (lr, onnx) in enumerate((("0.01", "--onnx"), ("0.003", "--no-onnx")))
    ]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]

    client = mlflow.MlflowClient(tracking_uri=url)
    runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "val_f1")) == 3, "no epoch metric lost"
        assert {"best_val_f1", "train_minutes"} <= set(run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.png", "classification_report.json"} <= artifacts
    assert any((workdir / "artifacts").rglob("weights.pt")), "artifacts are stored by the server"
    exported = {float(r.data.params["lr"]): "onnx_max_probability_difference" in r.data.metrics for r in runs}
    assert exported == {0.01: True, 0.003: False}, "--no-onnx skips the ONNX flavour"
    assert any((workdir / "artifacts").rglob("model.onnx"))

    registered = subprocess.run([sys.executable, "-m", "wbc", "register", "--experiment", "team", "--metric", "best_val_f1"], env=env,
                                capture_output=True, text=True, timeout=300)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    best = max(runs, key=lambda r: r.data.metrics["best_val_f1"])
    assert client.get_model_version_by_alias("wbc-classifier", "champion").run_id == best.info.run_id

    mlflow.set_tracking_uri(url)
    model = mlflow.pyfunc.load_model("models:/wbc-classifier@champion", dst_path=str(tmp_path))
    png = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 40, 40)).save(png, format="PNG")
    import base64

    predicted = model.predict(pd.DataFrame({"image": [base64.b64encode(png.getvalue()).decode()]}))
    assert predicted["error"][0] == "" and 0 < predicted["confidence"][0] <= 1


def test_runs_that_record_the_same_new_dataset_at_once_all_record_it(tracking_server, tmp_path):
    """MLflow's SQL store looks a dataset up, then inserts it: runs that record the same new one at the same moment
    race to the insert (two trainings started together failed this way). Eight runs, four new datasets each."""
    import threading

    from wbc.tracking.datasets import log_image_dataset

    url, _ = tracking_server
    mlflow.set_tracking_uri(url)
    client = mlflow.MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment("same-dataset-at-once")
    rounds, runs = 4, [client.create_run(experiment_id).info.run_id for _ in range(8)]
    folders = []
    for round_index in range(rounds):
        folder = tmp_path / f"images{round_index}"
        folder.mkdir()
        Image.new("RGB", (8, 8), (round_index, 0, 0)).save(folder / "cell.png")
        folders.append(folder)
    barrier, failures = threading.Barrier(len(runs)), []
    mlflow.set_experiment(experiment_id=experiment_id)  # an earlier test's active experiment would refuse these runs

    def record(run_id: str) -> None:
        try:
            with mlflow.start_run(run_id=run_id):
                for folder in folders:
                    barrier.wait(timeout=120)
                    try:
                        log_image_dataset([folder / "cell.png"], [0], folder, "lab", "evaluation")
                    except Exception as error:  # noqa: BLE001 - the test reports every thread's failure
                        failures.append(f"{folder.name}: {str(error).splitlines()[0]}")
        except Exception as error:  # noqa: BLE001
            failures.append(f"run {run_id}: {str(error).splitlines()[0]}")
            barrier.abort()

    threads = [threading.Thread(target=record, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures
    digests = [{i.dataset.digest for i in client.get_run(run_id).inputs.dataset_inputs} for run_id in runs]
    assert all(len(d) == rounds for d in digests) and len(set(map(frozenset, digests))) == 1


def _create_database(postgres: str, name: str) -> str:
    import psycopg2

    dsn = postgres.replace("postgresql+psycopg2://", "postgresql://")
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return postgres.rsplit("/", 1)[0] + f"/{name}"


ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def auth_server(postgres, tmp_path_factory):
    """The recipe of docs/operations.md, "The team server with logins": MLflow's basic-auth app, its users in a
    PostgreSQL database of their own (deploy/basic_auth.ini with database_uri edited), runs in another."""
    workdir = tmp_path_factory.mktemp("auth-server")
    tracking = _create_database(postgres, "tracking_auth")
    users = _create_database(postgres, "mlflow_auth")
    recipe = (Path(__file__).parents[1] / "deploy" / "basic_auth.ini").read_text()
    config = workdir / "basic_auth.ini"
    config.write_text("\n".join(f"database_uri = {users}" if line.startswith("database_uri") else line
                                for line in recipe.splitlines()))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_AUTH_CONFIG_PATH=str(config),
               MLFLOW_FLASK_SERVER_SECRET_KEY="a secret the admin generated")
    command = [MLFLOW, "server", "--app-name", "basic-auth", "--backend-store-uri", tracking, "--artifacts-destination",
               str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]

    # no admin password anywhere: the server refuses to start, saying so
    refused = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr.strip().splitlines()[-1]

    url = f"http://127.0.0.1:{port}"
    process = start_http_server(command, f"{url}/health", env=env | {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}, cwd=workdir)
    yield url, workdir
    stop_process_group(process)


def _client_env(url: str, tmp_path: Path, user: str | None, password: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=url, WBC_CACHE_DIR=str(tmp_path / "cache"))
    if user is not None:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    return env


def _wbc(env: dict, cwd: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wbc", *arguments], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and lines[-1].startswith("Error: "), done.stderr[-3000:]
    return lines[-1]


def test_logins_and_roles_on_the_team_server(auth_server, synthetic_data, tmp_path):
    import requests
    from mlflow.server import get_app_client

    url, workdir = auth_server
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 10}, timeout=30).status_code == 401
    train = ["train", "--data-dir", str(synthetic_data), "--arch", "scratch", "--mode", "scratch", "--image-size", "32",
             "--batch-size", "16", "--epochs", "1", "--no-onnx"]

    anonymous = _wbc(_client_env(url, tmp_path, None, None), tmp_path, *train, "--experiment", "team")
    line = _one_line_error(anonymous)
    assert "needs a login" in line and "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line
    wrong = _wbc(_client_env(url, tmp_path, "admin", "not it"), tmp_path, *train, "--experiment", "team")
    assert "refused the login of 'admin'" in _one_line_error(wrong)

    admin = _client_env(url, tmp_path, "admin", ADMIN_PASSWORD)
    trained = _wbc(admin, tmp_path, *train, "--experiment", "team", "--output-dir", str(tmp_path / "admin"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    registered = _wbc(admin, tmp_path, "register", "--experiment", "team", "--metric", "best_val_f1")
    assert registered.returncode == 0, registered.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=url)
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    try:
        champion = client.get_model_version_by_alias("wbc-classifier", "champion")
        get_app_client("basic-auth", tracking_uri=url).create_user("lab-tech", "reads only 123")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]

    reader = _client_env(url, tmp_path, "lab-tech", "reads only 123")
    loaded = subprocess.run([sys.executable, "-c", "import mlflow; mlflow.pyfunc.load_model('models:/wbc-classifier@champion')"],
                            env=reader, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    own = _wbc(reader, tmp_path, *train, "--experiment", "lab-tech", "--output-dir", str(tmp_path / "reader"))
    assert own.returncode == 0, own.stderr[-3000:]
    refused = _wbc(reader, tmp_path, "register", "--experiment", "lab-tech", "--metric", "best_val_f1")
    line = _one_line_error(refused)
    assert "user 'lab-tech' has no permission to" in line and "ask the server's admin" in line, line
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    try:
        after = client.get_model_version_by_alias("wbc-classifier", "champion")
        versions = client.search_model_versions("name = 'wbc-classifier'")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert after.version == champion.version and len(versions) == 1, "the refused register changed nothing"
