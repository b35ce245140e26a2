"""The house rules: layers import downwards only, the served model needs no training code, one base error,
one home for every default (command line, LightningModule, MLproject), and what was made before the package
layout still loads, serves and resumes."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import click
import mlflow
import torch
import yaml

import wbc
from wbc.cli import cli
from wbc.errors import WBCError
from wbc.training.config import TrainConfig, field_default
from wbc.training.recipes import MainSettings, main_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "wbc"
FIXTURES = Path(__file__).with_name("fixtures") / "before-layout"
LAYERS = ["base", "data", "finding", "models", "inference", "serving", "training", "evaluation", "tracking", "jobs", "app", "cli"]
"""Lowest first: a module may import its own layer and those before it. ``serving`` imports only ``inference``
and below, so it sits right above it, and every job can log the servable model."""


def _layer(module: str) -> str:
    parts = module.split(".")
    if module in ("wbc.cli", "wbc.__main__"):
        return "cli"
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "base"  # wbc, wbc.classes, wbc.errors, wbc.defaults, wbc._io, wbc._process


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
            for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_every_module_belongs_to_a_layer_and_imports_only_its_own_or_lower_ones():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        for imported in _imports(path):
            if imported.startswith("wbc.") and imported in modules:
                if LAYERS.index(_layer(imported)) > LAYERS.index(_layer(module)):
                    wrong.append(f"{module} ({_layer(module)}) imports {imported} ({_layer(imported)})")
    assert not wrong, "\n".join(wrong)
    assert {_layer(module) for module in modules} == set(LAYERS), "every layer has modules, and no module is outside them"


def test_the_stored_model_path_imports_no_lightning_and_no_training_code():
    lightning = {"pytorch_lightning", "lightning", "lightning_fabric"}
    for module, path in _modules().items():
        if _layer(module) in ("data", "finding", "models", "inference", "serving") and module != "wbc.data.datamodule":
            heavy = {name for name in _imports(path) if name.split(".")[0] in lightning}
            assert not heavy, f"{module} imports {heavy}"


def _logged_model(tmp_path: Path) -> str:
    from wbc.inference import export_model
    from wbc.models import build_model
    from wbc.serving.pyfunc import log_pyfunc_model
    from wbc.tracking.runs import configure_tracking

    torch.manual_seed(0)
    export_dir = export_model(build_model("scratch"), 32, tmp_path / "export", onnx=False)
    image = tmp_path / "cell.png"
    from conftest import cell_image

    cell_image("monocyte", 0).save(image)
    configure_tracking()
    with mlflow.start_run():
        return log_pyfunc_model(export_dir, example_image=image).model_uri


def _model_from_before_the_layout(tmp_path: Path) -> Path:
    """The files of a model logged by wbc before the package layout (its entry file imports ``wbc.serving``), with
    fresh weights of the same architecture (a state dict, as then)."""
    folder = tmp_path / "before-layout"
    shutil.copytree(FIXTURES / "logged-model", folder)
    torch.manual_seed(0)
    from wbc.models import build_model

    torch.save(build_model("scratch").state_dict(), folder / "artifacts" / "model" / "weights.pt")
    return folder


def test_logged_models_old_and_new_predict_in_a_fresh_interpreter_without_lightning_or_training_code(tmp_path):
    new = _logged_model(tmp_path)
    old = _model_from_before_the_layout(tmp_path)
    assert "from wbc.serving import WBCImageClassifier" in (old / "pyfunc_entry.py").read_text()
    script = textwrap.dedent(f"""
        import json, sys
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})
        example = json.loads(open({str(old / "input_example.json")!r}).read())
        frame = pd.DataFrame(example["data"], columns=example["columns"])
        labels = [mlflow.pyfunc.load_model(uri).predict(frame)["label"][0] for uri in ({new!r}, {str(old)!r})]
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")
                        or m.startswith(("wbc.training", "wbc.jobs", "wbc.tracking", "wbc.evaluation")))
        print(json.dumps({{"labels": labels, "loaded": loaded}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    from wbc.classes import CLASS_NAMES

    assert all(label in CLASS_NAMES for label in answer["labels"])
    assert answer["loaded"] == []


def test_every_error_wbc_raises_on_purpose_is_a_wbc_error():
    classes = []
    for info in pkgutil.walk_packages(wbc.__path__, "wbc."):
        module = importlib.import_module(info.name)
        classes += [value for value in vars(module).values()
                    if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name]
    assert len(classes) >= 12
    assert [c.__qualname__ for c in classes if not issubclass(c, WBCError)] == []


def _command(name: str) -> click.Command:
    return cli.commands[name]


def _option_defaults(command: click.Command) -> dict:
    return {param.name: param.default for param in command.params}


def test_command_line_defaults_are_the_settings_defaults():
    options = _option_defaults(_command("train"))
    options.pop("download")  # fetches the data before the command runs: not a training setting
    settings = [item for item in fields(TrainConfig) if item.metadata["option"]]
    assert {item.name for item in settings} == set(options)
    for item in settings:
        default = field_default(item.name)
        assert options[item.name] == (default if not isinstance(default, tuple) else ()), item.name
    main = _option_defaults(_command("main"))
    recipe = main_config()
    for item in settings:
        assert main[item.name] == getattr(recipe, item.name), item.name
    for item in fields(MainSettings):
        assert main[item.name] == getattr(MainSettings(), item.name), item.name


def test_the_module_takes_its_defaults_from_the_settings():
    from wbc.training.module import WBCClassifierModule

    signature = inspect.signature(WBCClassifierModule.__init__).parameters
    for name, value in TrainConfig().module_arguments().items():
        if name != "pretrained":  # None there: by mode, as weights=auto
            assert signature[name].default == value, name


def test_a_default_that_depends_on_another_setting_follows_it():
    assert TrainConfig(epochs=1).resolved_head_epochs == 0
    assert TrainConfig(epochs=2).resolved_head_epochs == 1
    assert TrainConfig(epochs=5, head_epochs=3).resolved_head_epochs == 3
    assert TrainConfig(mode="scratch", epochs=5).resolved_head_epochs == 0


def test_logged_settings_read_back_as_they_were():
    config = TrainConfig(arch="resnet", mode="finetune", epochs=7, lr=2e-4, head_epochs=2, teachers=("runs:/a/model",),
                         distill_weight=0.3, max_time=12.5, seed=3)
    logged = {name: str(value) for name, value in config.logged_params().items()}
    back = TrainConfig().from_logged_params(logged)
    for item in fields(TrainConfig):
        if item.metadata["resumable"]:
            expected = config.logged_params()[item.name] if item.name in ("arch", "data_dir", "lr", "image_size") else getattr(config, item.name)
            assert getattr(back, item.name) == expected, item.name


def _entry_point_command(entry: dict) -> tuple[click.Command, list[str]]:
    """The ``wbc`` command an entry point runs, and the words of its command line after the script."""
    words = entry["command"].split()
    script = (REPO / words[1]).read_text()
    (name,) = re.findall(r'main\(\["(\w+)"', script)
    return _command(name), words[2:]


def test_every_mlproject_entry_point_states_only_what_its_command_does_not_default_to():
    entry_points = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    assert set(entry_points) == {"main", "scratch", "transfer", "finetune", "evaluate", "shiftbench", "register", "predict", "compare",
                                 "adapt"}
    for name, entry in entry_points.items():
        command, words = _entry_point_command(entry)
        options = {flag: param for param in command.params for flag in getattr(param, "opts", [])}
        arguments = [param for param in command.params if isinstance(param, click.Argument)]
        declared = entry.get("parameters", {})
        used = set()
        position = 0
        index = 0
        while index < len(words):
            word = words[index]
            if word.startswith("--"):
                assert word in options, f"{name}: {command.name} has no option {word}"
                option = options[word]
                if not option.is_flag:
                    index += 1
                    value = words[index]
                    if value.startswith("{"):
                        parameter = value.strip("{}")
                        used.add(parameter)
                        spec = declared[parameter]
                        if "default" not in spec:
                            pass  # required
                        elif spec.get("type") == "path" or parameter != option.name:
                            # declared for MLflow's sake (made absolute; a name kept): the same default, no drift
                            assert str(spec["default"]) == str(option.default), f"{name}: {parameter} differs from {command.name}"
                        else:
                            converted = option.type.convert(str(spec["default"]), option, None)
                            assert converted != option.default, f"{name}: {parameter} restates {command.name}'s default"
            else:
                parameter = word.strip("{}")
                used.add(parameter)
                argument = arguments[position]
                position += 1
                if "default" in declared.get(parameter, {}):
                    assert str(declared[parameter]["default"]) == str(argument.default), f"{name}: {parameter}"
            index += 1
        assert used == set(declared), f"{name}: declared but unused {set(declared) - used}"
    # every option also answers to the spelling `mlflow run -P name=value` appends (--name_with_underscores)
    for name in ("train", "main", "evaluate", "shiftbench", "register", "predict", "compare", "adapt"):
        for param in _command(name).params:
            flag = param.opts[0] if isinstance(param, click.Option) else ""
            if "-" in flag[2:] and not param.is_flag and not param.multiple:
                assert "--" + flag[2:].replace("-", "_") in param.opts, f"wbc {name} {flag}"


def test_a_checkpoint_from_before_the_layout_has_what_lightning_restores(synthetic_data, tmp_path):
    """The checkpoint's layout (top-level keys, callback state keys) is the same, and its hyper-parameters load."""
    from wbc.inference import load_model
    from wbc.jobs.train import train

    before = json.loads((FIXTURES / "checkpoint.json").read_text())
    result = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", epochs=1, batch_size=16,
                               image_size=32, progress=False, shiftbench=False, onnx=False))
    checkpoint_path = Path(result.best_checkpoint).with_name("last.ckpt")
    checkpoint = torch.load(checkpoint_path, weights_only=True, map_location="cpu")
    assert list(checkpoint) == before["keys"]
    assert list(checkpoint["callbacks"]) == before["callbacks"]
    checkpoint["hyper_parameters"] = before["hyper_parameters"]
    torch.save(checkpoint, checkpoint_path)
    model, image_size = load_model(checkpoint_path)
    assert model.arch == "scratch" and image_size == 32

    # and a run whose params were logged before the layout resumes from it
    client = mlflow.MlflowClient()
    client.set_terminated(result.run_id, "FAILED")
    params = dict(before["run_params"], data_dir=str(synthetic_data), epochs="2")
    run = client.create_run(client.get_run(result.run_id).info.experiment_id,
                            tags={"wbc.kind": "train", "wbc.checkpoint_dir": str(checkpoint_path.parent)})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    resumed = train(TrainConfig(resume=run.info.run_id, progress=False, shiftbench=False, onnx=False))
    assert resumed.run_id == run.info.run_id
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [0, 1], "epoch 0 from the checkpoint (its pending metrics), epoch 1 trained"
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"
