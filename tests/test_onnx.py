"""The ONNX flavour: exported with every model, checked against PyTorch, chosen by ``runtime``."""

import json
import threading

import numpy as np
import pytest
import torch

from wbc.inference import EXPORT_CONFIG, ModelLoadError, Predictor, export_model
from wbc.classes import CLASS_NAMES
from wbc.models import build_model
from wbc.inference.onnx import INT8_FILE, ONNX_FILE, TOLERANCE, OnnxNetwork


def _images(count: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("arch", ["scratch", "efficientnet_lite0"])
def test_export_writes_a_checked_onnx_flavour_that_agrees_with_pytorch(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, pretrained=False).eval()
    folder = export_model(model, 48, tmp_path / "model", check_images=_images(6, 48))

    config = json.loads((folder / EXPORT_CONFIG).read_text())
    assert (folder / ONNX_FILE).is_file() and len(config["onnx"]["weights_sha256"]) == 64
    assert 0 <= config["onnx"]["max_probability_difference"] <= TOLERANCE
    onnx, eager = Predictor.load(folder), Predictor.load(folder, runtime="torch")
    assert (onnx.runtime, eager.runtime) == ("onnx", "torch")
    # other images and batch sizes than the export saw, and the 8-view TTA path
    for count in (1, 5, 70):
        images = _images(count, 48, seed=count)
        assert np.abs(onnx.predict_pixels(images) - eager.predict_pixels(images)).max() <= TOLERANCE
    onnx.tta = eager.tta = True
    assert np.abs(onnx.predict_pixels(_images(3, 48)) - eager.predict_pixels(_images(3, 48))).max() <= TOLERANCE


def test_without_onnx_the_model_runs_in_pytorch_and_onnx_on_request_fails_clearly(tmp_path):
    with pytest.warns(UserWarning, match="no int8 flavour: it is quantized from the ONNX flavour, which this model does not have"):
        folder = export_model(build_model("scratch"), 32, tmp_path / "model", onnx=False, int8=True)
    assert not (folder / ONNX_FILE).exists() and not (folder / INT8_FILE).exists()
    assert "onnx" not in json.loads((folder / EXPORT_CONFIG).read_text())
    assert Predictor.load(folder).runtime == "torch"
    with pytest.raises(ModelLoadError, match=f"has no {ONNX_FILE}.*wbc calibrate"):
        Predictor.load(folder, runtime="onnx")
    with pytest.raises(ValueError, match="runtime='tensorrt' is invalid"):
        Predictor.load(folder, runtime="tensorrt")


def test_re_export_without_onnx_removes_a_stale_onnx_file(tmp_path):
    folder = export_model(build_model("scratch"), 32, tmp_path / "model")
    assert (folder / ONNX_FILE).is_file()
    export_model(build_model("scratch"), 32, folder, onnx=False)
    assert not (folder / ONNX_FILE).exists(), "an ONNX file of other weights would be served"


def test_int8_flavour_is_checked_recorded_and_served_only_on_request(tmp_path, monkeypatch):
    monkeypatch.setattr("wbc.inference.onnx.INT8_MIN_AGREEMENT", 0.5)  # a random tiny network has small margins
    torch.manual_seed(0)
    check = _images(64, 32)
    folder = export_model(build_model("scratch").eval(), 32, tmp_path / "model", int8=True, check_images=check)
    config = json.loads((folder / EXPORT_CONFIG).read_text())
    assert (folder / INT8_FILE).is_file() and config["onnx_int8"]["weights_sha256"] == config["onnx"]["weights_sha256"]
    assert (folder / INT8_FILE).stat().st_size < (folder / ONNX_FILE).stat().st_size
    assert Predictor.load(folder).runtime == "onnx", "auto keeps the float flavour"
    int8, float_ = Predictor.load(folder, runtime="onnx-int8"), Predictor.load(folder, runtime="onnx")
    assert int8.runtime == "onnx-int8"
    int8_probabilities, float_probabilities = int8.predict_pixels(check), float_.predict_pixels(check)
    assert np.allclose(int8_probabilities.sum(axis=1), 1, atol=1e-4)
    assert 0 < np.abs(int8_probabilities - float_probabilities).max(), "the int8 file is a real quantization"
    agreement = (int8_probabilities.argmax(1) == float_probabilities.argmax(1)).mean()
    assert agreement == pytest.approx(config["onnx_int8"]["top1_agreement"]) and agreement >= 0.5
    export_model(build_model("scratch"), 32, folder)
    assert not (folder / INT8_FILE).exists(), "an int8 file of other weights would be served"


def test_int8_below_the_agreement_floor_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr("wbc.inference.onnx.INT8_MIN_AGREEMENT", 1.01)
    with pytest.warns(UserWarning, match=r"no int8 flavour: int8 picks the float network's class on [\d.]+ % of the check images \(at least 101.0 % needed\)"):
        folder = export_model(build_model("scratch"), 32, tmp_path / "model", int8=True, check_images=_images(16, 32))
    assert (folder / ONNX_FILE).is_file() and not (folder / INT8_FILE).exists()
    assert sorted(path.name for path in folder.iterdir()) == ["model.json", "model.onnx", "weights.pt"], "no temporary files left"
    assert "onnx_int8" not in json.loads((folder / EXPORT_CONFIG).read_text())
    with pytest.raises(ModelLoadError, match=f"has no {INT8_FILE} \\(train with --int8, or `wbc calibrate RUN_ID --int8` adds it\\)"):
        Predictor.load(folder, runtime="onnx-int8")


def test_onnx_network_gives_the_same_answers_from_many_threads(tmp_path):
    """A server scores requests on worker threads; one session serves them all, at the same time."""
    folder = export_model(build_model("scratch"), 32, tmp_path / "model")
    network = OnnxNetwork(folder / ONNX_FILE)
    images = _images(4, 32)
    expected = network(images).numpy()
    start = threading.Barrier(6)
    results, errors = [], []

    def score():
        try:
            start.wait()
            results.extend(network(images).numpy() for _ in range(10))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=score) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 60
    assert all(np.array_equal(result, expected) for result in results)
    with pytest.raises(TypeError, match="uint8"):
        network(images.float() / 255)


def test_an_onnx_file_from_other_weights_is_not_used(tmp_path):
    torch.manual_seed(0)
    folder = export_model(build_model("scratch"), 32, tmp_path / "model")
    other = export_model(build_model("scratch"), 32, tmp_path / "other")
    (folder / "weights.pt").write_bytes((other / "weights.pt").read_bytes())
    with pytest.warns(UserWarning, match="was not exported from this folder's weights.pt"):
        predictor = Predictor.load(folder)
    assert predictor.runtime == "torch"
    with pytest.raises(ModelLoadError, match="was not exported from this folder's weights.pt"):
        Predictor.load(folder, runtime="onnx")


def _cell_files(folder, count: int) -> list:
    from conftest import cell_image

    folder.mkdir()
    paths = []
    for index in range(count):
        path = folder / f"cell{index}.jpg"
        cell_image("neutrophil" if index % 2 else "basophil", seed=index).save(path)
        paths.append(path)
    return paths


def test_wbc_predict_runtimes_agree(tmp_path):
    from click.testing import CliRunner

    from wbc.cli import cli

    torch.manual_seed(0)
    folder = export_model(build_model("scratch"), 32, tmp_path / "model")
    _cell_files(tmp_path / "cells", 5)
    tables = {}
    for runtime in ("onnx", "torch"):
        output = tmp_path / f"{runtime}.csv"
        result = CliRunner().invoke(cli, ["predict", str(tmp_path / "cells"), "--model", str(folder), "--runtime", runtime, "--output", str(output)])
        assert result.exit_code == 0, result.output
        import pandas as pd

        tables[runtime] = pd.read_csv(output)
    columns = [c for c in tables["onnx"].columns if c.startswith("prob_")]
    assert np.abs(tables["onnx"][columns].to_numpy() - tables["torch"][columns].to_numpy()).max() <= TOLERANCE
    assert list(tables["onnx"]["label"]) == list(tables["torch"]["label"])


def test_served_model_uses_onnx_unless_told_otherwise(tmp_path, monkeypatch):
    import base64

    import mlflow
    import pandas as pd

    from wbc.serving.pyfunc import log_pyfunc_model
    from wbc.tracking.runs import configure_tracking

    folder = export_model(build_model("scratch"), 32, tmp_path / "model")
    files = _cell_files(tmp_path / "cells", 3)
    configure_tracking("onnx-test")
    with mlflow.start_run():
        info = log_pyfunc_model(folder, example_image=files[0])
    request = pd.DataFrame({"image": [base64.b64encode(path.read_bytes()).decode() for path in files]})
    answers = {}
    for runtime in ("", "torch", "onnx"):
        monkeypatch.setenv("WBC_RUNTIME", runtime.upper())
        served = mlflow.pyfunc.load_model(info.model_uri)
        assert served.unwrap_python_model().predictor.runtime == (runtime or "onnx")
        answers[runtime] = served.predict(request)
    columns = [c for c in answers[""].columns if c.startswith("prob_")]
    assert np.abs(answers[""][columns].to_numpy() - answers["torch"][columns].to_numpy()).max() <= TOLERANCE
    monkeypatch.setenv("WBC_RUNTIME", "onnx-int8")
    with pytest.raises(Exception, match=f"has no {INT8_FILE}"):
        mlflow.pyfunc.load_model(info.model_uri)
    monkeypatch.setenv("WBC_RUNTIME", "gpu")
    with pytest.raises(Exception, match="WBC_RUNTIME='gpu' is invalid: set it to one of auto, onnx, onnx-int8, torch"):
        mlflow.pyfunc.load_model(info.model_uri)


def test_a_damaged_onnx_file_falls_back_to_pytorch_or_fails_clearly(tmp_path):
    folder = export_model(build_model("scratch"), 32, tmp_path / "model")
    (folder / ONNX_FILE).write_bytes((folder / ONNX_FILE).read_bytes()[:200])
    with pytest.warns(UserWarning, match="not a loadable ONNX model.*PyTorch instead"):
        assert Predictor.load(folder).runtime == "torch"
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        Predictor.load(folder, runtime="onnx")


def test_mlflow_models_serve_answers_from_the_int8_flavour_when_told(tmp_path, monkeypatch):
    """A real server started with WBC_RUNTIME=onnx-int8 answers HTTP with the int8 network's probabilities."""
    import base64
    import os
    import sys
    from pathlib import Path

    import mlflow
    import requests

    from conftest import free_port, start_http_server, stop_process_group
    from wbc.serving.pyfunc import log_pyfunc_model
    from wbc.tracking.runs import configure_tracking

    monkeypatch.setattr("wbc.inference.onnx.INT8_MIN_AGREEMENT", 0.5)
    torch.manual_seed(0)
    folder = export_model(build_model("scratch").eval(), 32, tmp_path / "model", int8=True, check_images=_images(64, 32))
    files = _cell_files(tmp_path / "cells", 4)
    configure_tracking("int8-serve-test")
    with mlflow.start_run() as run:
        log_pyfunc_model(folder, example_image=files[0])
    port = free_port()
    environment = os.environ | {"WBC_RUNTIME": "onnx-int8", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"runs:/{run.info.run_id}/model",
               "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
    server = start_http_server(command, f"http://127.0.0.1:{port}/ping", env=environment, cwd=tmp_path)
    try:
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(f.read_bytes()).decode()] for f in files]}}
        response = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
    finally:
        stop_process_group(server, timeout=30)
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    served = np.array([[row[f"prob_{name}"] for name in CLASS_NAMES] for row in rows])
    expected = {runtime: np.stack([p.probabilities for p in Predictor.load(folder, runtime=runtime).predict_sources(files)])
                for runtime in ("onnx-int8", "onnx")}
    assert np.abs(served - expected["onnx-int8"]).max() <= 1e-5
    assert np.abs(served - expected["onnx"]).max() > 1e-5, "the server ran the float network"
