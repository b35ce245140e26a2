"""The environment `mlflow models serve --env-manager virtualenv` builds for a logged wbc model: its installed size and
the time from the command to the first answer, for a model with an ONNX flavour and one without.

Usage: python benchmarks/served_environment.py [--kinds onnx,torch] [--port 5077]

Each kind: a tiny model (the scratch CNN at 32 px: the environment does not depend on the weights) is logged to a
scratch SQLite store with ``wbc.serving.log_pyfunc_model``, then served from a fresh ``MLFLOW_ENV_ROOT``. "cold" times
a first serve (the environment built from the package index or pip's cache), "warm" a second serve that finds the
environment built. Prints one Markdown row per kind.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests


def _log_model(workdir: Path, onnx: bool) -> str:
    import mlflow
    import numpy as np
    import torch
    from PIL import Image

    from wbc.inference import export_model
    from wbc.models import build_model
    from wbc.serving.pyfunc import log_pyfunc_model

    torch.manual_seed(0)
    export_dir = export_model(build_model("scratch"), 32, workdir / "model", onnx=onnx)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(workdir / "cell.png")
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    experiment = mlflow.create_experiment("bench", artifact_location=(workdir / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        return log_pyfunc_model(export_dir, example_image=workdir / "cell.png").model_uri


def _serve_until_answer(model_uri: str, workdir: Path, port: int, env: dict) -> float:
    body = json.dumps({"dataframe_split": {"columns": ["image"],
                                           "data": [[base64.b64encode((workdir / "cell.png").read_bytes()).decode()]]}})
    start = time.perf_counter()
    with open(workdir / "serve.log", "a") as log:
        process = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri,
                                    "--env-manager", "virtualenv", "-p", str(port), "-h", "127.0.0.1"],
                                   env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"mlflow models serve exited: see {workdir / 'serve.log'}")
            try:
                answer = requests.post(f"http://127.0.0.1:{port}/invocations", data=body,
                                       headers={"Content-Type": "application/json"}, timeout=30)
                if answer.status_code == 200:
                    return time.perf_counter() - start
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        _wait_until_closed(port)


def _wait_until_closed(port: int, timeout: float = 60) -> None:
    """The server's workers outlive the command by a moment: the next serve must not find them answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/ping", timeout=1)
        except requests.ConnectionError:
            return
        time.sleep(0.2)
    raise SystemExit(f"port {port} still answers {timeout:.0f} s after the server was stopped")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="onnx,torch")
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args()
    print("| model | requirements | environment size | serve to first answer, cold | warm |")
    print("|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        workdir = Path(tempfile.mkdtemp(prefix=f"wbc-served-{kind}-"))
        model_uri = _log_model(workdir, onnx=kind == "onnx")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db", MLFLOW_ENV_ROOT=str(workdir / "envs"))
        cold = _serve_until_answer(model_uri, workdir, args.port, env)
        warm = _serve_until_answer(model_uri, workdir, args.port, env)
        (environment,) = [path.parent for path in (workdir / "envs").rglob("pyvenv.cfg")]
        requirements = next((workdir / "artifacts").rglob("requirements.txt")).read_text().split()
        names = ", ".join(line.split("==")[0] for line in requirements)
        print(f"| {kind} | {names} | {_size(environment) / 2**20:.0f} MiB | {cold:.0f} s | {warm:.1f} s |", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
