"""The logged model runs where wbc is not installed: it carries its code (MLflow's ``code_paths``) and requirements
that cover everything its load and predict path imports, and no more: a model with an ONNX flavour is served without
PyTorch (issue "The registered model runs wherever MLflow runs a model")."""

import importlib.metadata
import json
import os
import re
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import torch
from packaging.requirements import Requirement

from conftest import cell_image


def _logged_model(tmp_path: Path, onnx: bool) -> Path:
    from wbc.inference import export_model
    from wbc.models import build_model
    from wbc.serving.pyfunc import log_pyfunc_model
    from wbc.tracking.runs import configure_tracking

    torch.manual_seed(0)
    export_dir = export_model(build_model("scratch"), 32, tmp_path / "export", onnx=onnx)
    cell_image("monocyte", 0).save(tmp_path / "cell.png")
    configure_tracking()
    with mlflow.start_run():
        info = log_pyfunc_model(export_dir, example_image=tmp_path / "cell.png")
    return Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "downloaded")))


def _closure(requirements: list[str]) -> set[str]:
    """The distributions the requirements install: themselves and their dependencies (no extras), normalised names."""
    def norm(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    seen, todo = set(), [Requirement(line).name for line in requirements]
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


HEAVY = ("torch", "torchvision", "timm", "lightning", "pytorch_lightning", "torchmetrics", "sklearn", "matplotlib")
"""Modules the served path of an ONNX model must not import."""


def _serve_in_fresh_interpreter(model: Path, cwd: Path, env: dict | None = None, blocked: tuple[str, ...] = ()):
    """Load ``model`` with MLflow and predict its input example in an interpreter that cannot import the installed wbc
    (nor the ``blocked`` modules, as where they are not installed); returns the completed process (its last stdout
    line is JSON)."""
    script = textwrap.dedent(f"""
        import importlib.metadata, importlib.util, json, sys
        for name in {list(blocked)!r}:
            sys.modules[name] = None
        assert importlib.util.find_spec("wbc") is None, "wbc is importable: the test proves nothing"
        import mlflow, pandas as pd
        example = json.loads(open({str(model / "input_example.json")!r}).read())
        frame = pd.DataFrame(example["data"], columns=example["columns"])
        answer = mlflow.pyfunc.load_model({str(model)!r}).predict(frame)
        import wbc
        served = sorted(m.__file__ for name, m in list(sys.modules.items()) if name.split(".")[0] == "wbc" and m)
        print(json.dumps({{"label": answer["label"][0], "probability": answer["prob_monocyte"][0], "wbc": wbc.__file__,
                           "served": served, "loaded": sorted({{name.split(".")[0] for name, m in list(sys.modules.items()) if m}})}}))
    """)
    # the interpreter without its site-packages' .pth files: the editable install of wbc is not on the path
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    return subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize("onnx", [True, False], ids=["onnx", "torch"])
def test_the_logged_model_predicts_where_wbc_is_not_installed_and_its_requirements_are_what_it_imports(tmp_path, onnx):
    model = _logged_model(tmp_path, onnx)
    assert (model / "code" / "wbc" / "serving" / "pyfunc.py").is_file() and not list(model.rglob("__pycache__"))
    requirements = (model / "requirements.txt").read_text().split()
    assert all("==" in line for line in requirements), "pinned to the versions it was logged with"
    names = {Requirement(line).name for line in requirements}
    assert ("torch" in names) is not onnx and ("onnxruntime" in names) is onnx

    result = _serve_in_fresh_interpreter(model, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(answer["wbc"]).is_relative_to(model / "code"), "the model's own copy of wbc ran"
    heavy = set(HEAVY) & set(answer["loaded"])
    assert heavy == (set() if onnx else {"torch", "torchvision", "timm"} & heavy) and "lightning" not in heavy
    if not onnx:
        assert "torch" in heavy

    from wbc.inference import Predictor

    expected = Predictor.load(str(tmp_path / "export")).predict_sources([tmp_path / "cell.png"])[0]
    assert answer["label"] == expected.label
    assert abs(answer["probability"] - float(expected.probabilities[5])) < 1e-5

    distributions = importlib.metadata.packages_distributions()
    # what wbc's served modules import and the serving process really loaded (an import inside a function that
    # serving never calls, such as the ImageNet weights' package, is not needed there)
    imported = ({name.split(".")[0] for path in answer["served"] for name in _imports(Path(path))} & set(answer["loaded"])
                - set(sys.stdlib_module_names))
    used = {re.sub(r"[-_.]+", "-", d).lower() for name in imported - {"wbc"} for d in distributions.get(name, [name])}
    assert {"pillow", "mlflow-skinny", "lazy-loader", "numpy", "pandas"} <= used
    assert ("onnxruntime" in used) is onnx and ("torch" in used) is not onnx
    # three distributions install the `mlflow` package; mlflow-skinny has all the pyfunc path needs
    missing = used - {"mlflow", "mlflow-tracing"} - _closure(requirements)
    assert not missing, f"wbc's served modules import what the model's requirements do not install: {sorted(missing)}"


def test_an_onnx_model_is_served_without_pytorch_and_asked_for_it_says_what_to_install(tmp_path):
    model = _logged_model(tmp_path, onnx=True)
    without_torch = _serve_in_fresh_interpreter(model, tmp_path, blocked=HEAVY)
    assert without_torch.returncode == 0, without_torch.stderr[-3000:]
    assert json.loads(without_torch.stdout.strip().splitlines()[-1])["label"]

    asked = _serve_in_fresh_interpreter(model, tmp_path, env={"WBC_RUNTIME": "torch"}, blocked=HEAVY)
    assert asked.returncode != 0
    assert "PyTorch is not installed here" in asked.stderr and "pip install torch torchvision timm" in asked.stderr


def _imports(path: Path) -> set[str]:
    """Every absolute import in a module, those inside functions included."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found
