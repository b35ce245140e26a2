"""Training end to end on tiny synthetic data: MLflow run contents, checkpoints, modes, reproducibility."""

import json
from pathlib import Path

import mlflow
import pytest
import torch

from wbc.classes import NUM_CLASSES
from wbc.data import load_split
from wbc.training.losses import distillation_loss
from wbc.evaluation.reports import REPORT_FILES
from wbc.inference import Predictor, export_model, load_model
from wbc.training.module import WBCClassifierModule, warmup_cosine
from wbc.training.config import TrainConfig
from wbc.jobs.train import config_from_run, train

from conftest import isolated

TRAINING_PARAMS = {
    "arch", "mode", "epochs", "batch_size", "lr", "image_size", "trainable_params", "total_params",
    "train_size", "val_size", "data_fingerprint", "augment", "sampling",
}


def tiny_config(data_root, **overrides) -> TrainConfig:
    settings = dict(
        data_dir=str(data_root), arch="scratch", mode="scratch", epochs=2, batch_size=16, image_size=32,
        lr=3e-3, warmup_steps=2, progress=False, onnx=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    """One tiny scratch run shared by the tests that only read it (six epochs: four were not enough on every CPU)."""
    with isolated(tmp_path_factory.mktemp("trained")):
        result = train(tiny_config(synthetic_data, epochs=6, lr=1e-2))
        run = mlflow.MlflowClient().get_run(result.run_id)
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
        history = mlflow.MlflowClient().get_metric_history(result.run_id, "val_f1")
    return result, run, artifacts, history


def test_run_logs_params_metrics_and_artifacts(trained):
    result, run, artifacts, history = trained
    assert run.info.status == "FINISHED"
    assert TRAINING_PARAMS <= set(run.data.params)
    assert run.data.params["arch"] == "scratch" and run.data.params["train_size"] == "96"
    for name in ("train_loss", "val_loss", "val_acc", "val_f1", "best_val_acc", "best_val_f1", "train_minutes"):
        assert name in run.data.metrics, name
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(6))
    assert set(REPORT_FILES) | {"training_curves.png"} <= artifacts
    assert run.data.tags.get("git_commit")
    assert result.best_val_f1 == pytest.approx(max(m.value for m in history), abs=1e-6)


def test_synthetic_task_is_learned(trained):
    result, *_ = trained
    assert result.best_val_acc >= 0.8, "distinct colours per class must be learnable in six epochs"


def test_best_checkpoint_loads_safely_and_predicts(trained, synthetic_data):
    result, *_ = trained
    model, image_size = load_model(result.best_checkpoint)
    assert image_size == 32 and model.arch == "scratch"
    predictor = Predictor(model, image_size)
    files = sorted((synthetic_data / "barcelona" / "valid" / "platelet").glob("*.jpg"))
    predictions = predictor.predict_sources(files)
    assert all(p.label is not None and 0 < p.confidence <= 1 for p in predictions)


def test_same_seed_same_result(synthetic_data, tmp_path):
    first = train(tiny_config(synthetic_data, epochs=1, limit_per_class=6, output_dir=str(tmp_path / "a")))
    second = train(tiny_config(synthetic_data, epochs=1, limit_per_class=6, output_dir=str(tmp_path / "b")))
    a = torch.load(first.best_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(second.best_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_trains_head_then_unfreezes(synthetic_data):
    """Phase 1 leaves the backbone untouched; phase 2 changes it."""
    config = tiny_config(synthetic_data, arch="efficientnet_lite0", mode="finetune", epochs=2, head_epochs=1,
                         unfreeze="last", limit_per_class=3, lr=1e-3)
    result = train(config)
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.params["unfreeze"] == "last" and run.data.params["pretrained"] == "True"
    pretrained = WBCClassifierModule(arch="efficientnet_lite0", mode="finetune").model.state_dict()
    last = Path(result.best_checkpoint).with_name("last.ckpt")
    trained_state = {k[len("model."):]: v for k, v in torch.load(last, weights_only=True)["state_dict"].items()}
    assert torch.equal(trained_state["net.conv_stem.weight"], pretrained["net.conv_stem.weight"]), "early layers stay frozen"
    assert torch.equal(trained_state["net.bn1.running_mean"], pretrained["net.bn1.running_mean"]), "frozen BN stats fixed"
    assert not torch.equal(trained_state["net.conv_head.weight"], pretrained["net.conv_head.weight"]), "last block trains in phase 2"
    assert int(run.data.params["trainable_params"]) < int(run.data.params["total_params"])


def test_freeze_stages_keeps_the_early_stages_pretrained_while_the_rest_trains(synthetic_data):
    config = tiny_config(synthetic_data, arch="efficientnet_lite0", mode="finetune", epochs=2, head_epochs=1,
                         freeze_stages=2, limit_per_class=3, lr=1e-3, shiftbench=False)
    result = train(config)
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.params["freeze_stages"] == "2"
    pretrained_model = WBCClassifierModule(arch="efficientnet_lite0", mode="finetune").model
    pretrained = pretrained_model.state_dict()
    last = Path(result.best_checkpoint).with_name("last.ckpt")
    trained_state = {k[len("model."):]: v for k, v in torch.load(last, weights_only=True)["state_dict"].items()}
    for frozen in ("net.conv_stem.weight", "net.bn1.running_var", "net.blocks.0.0.conv_dw.weight", "net.blocks.0.0.bn1.running_mean"):
        assert torch.equal(trained_state[frozen], pretrained[frozen]), frozen
    for trains in ("net.blocks.1.0.conv_pw.weight", "net.blocks.1.0.bn1.running_mean", "net.conv_head.weight"):
        assert not torch.equal(trained_state[trains], pretrained[trains]), trains
    total = int(run.data.params["total_params"])
    frozen_params = sum(p.numel() for name, p in pretrained_model.named_parameters() if name.startswith(("net.conv_stem.", "net.bn1.", "net.blocks.0.")))
    assert int(run.data.params["trainable_params"]) == total - frozen_params


def test_ema_starts_after_the_head_epochs_and_is_what_is_kept(synthetic_data):
    settings = dict(arch="efficientnet_lite0", mode="finetune", epochs=2, head_epochs=1, limit_per_class=3, lr=1e-3, batch_size=8,
                    shiftbench=False)
    plain = train(tiny_config(synthetic_data, **settings))
    averaged = train(tiny_config(synthetic_data, ema=0.9, **settings))
    client = mlflow.MlflowClient()
    assert client.get_run(averaged.run_id).data.params["ema"] == "0.9"

    def val_loss(run_id):
        return [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)]

    assert val_loss(averaged.run_id)[0] == pytest.approx(val_loss(plain.run_id)[0], abs=1e-6), "head epoch: no average yet"
    assert val_loss(averaged.run_id)[1] != pytest.approx(val_loss(plain.run_id)[1], abs=1e-6), "then the average is validated"
    last = torch.load(Path(averaged.best_checkpoint).with_name("last.ckpt"), weights_only=True)
    kept, live = last["state_dict"], last["current_model_state"]
    name = "model.net.conv_head.weight"
    assert not torch.equal(kept[name], live[name]), "the checkpoint keeps the average, with the live weights beside it"
    model, _ = load_model(Path(averaged.best_checkpoint).with_name("last.ckpt"))
    assert torch.equal(model.state_dict()[name[len("model."):]], kept[name])


def test_a_student_learns_its_teachers_answers_not_the_labels(trained, synthetic_data, tmp_path):
    """Distillation with weight 1: the only signal is the teacher, here one that names each class's neighbour."""
    result, *_ = trained
    teacher, image_size = load_model(result.best_checkpoint)
    head = [module for module in teacher.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():  # logit of class c := the trained logit of class c - 1
        head.weight.copy_(head.weight.roll(1, dims=0))
        head.bias.copy_(head.bias.roll(1, dims=0))
    teacher_dir = export_model(teacher, image_size, tmp_path / "teacher", onnx=False)
    # the student at 40 px: the teacher scores the training images decoded at its own 32 px
    student = train(tiny_config(synthetic_data, epochs=6, lr=1e-2, image_size=40, teachers=(str(teacher_dir),),
                                distill_weight=1.0, distill_temperature=1.0, shiftbench=False))
    run = mlflow.MlflowClient().get_run(student.run_id)
    assert json.loads(run.data.params["teachers"]) == [str(teacher_dir)] and run.data.params["distill_weight"] == "1.0"
    assert "train_distill_loss" in run.data.metrics and "train_loss" in run.data.metrics
    resumed = config_from_run(run, TrainConfig())
    assert (resumed.teachers, resumed.distill_weight, resumed.distill_temperature) == ((str(teacher_dir),), 1.0, 1.0)
    valid = load_split(synthetic_data, "valid", image_size)
    teacher_answers = Predictor(teacher, image_size).predict_pixels(valid.pixels).argmax(1)
    # the last epoch's weights: the kept "best" checkpoint is chosen by F1 against the labels
    last = Predictor.load(Path(student.best_checkpoint).with_name("last.ckpt"))
    assert last.image_size == 40
    student_answers = last.predict_pixels(load_split(synthetic_data, "valid", 40).pixels).argmax(1)
    assert (teacher_answers == (valid.targets + 1) % NUM_CLASSES).mean() >= 0.8
    # trained on the labels it would agree with this teacher on ~1/8 of the images, and with the labels on most
    assert (student_answers == teacher_answers).mean() >= 0.6
    assert (student_answers == valid.targets).mean() <= 0.3


def test_distillation_loss_is_zero_only_at_the_teachers_probabilities():
    logits = torch.randn(5, NUM_CLASSES)
    for temperature in (1.0, 3.0):
        teacher = torch.softmax(logits / temperature, dim=1)
        assert distillation_loss(logits, teacher, temperature).item() == pytest.approx(0, abs=1e-6)
        assert distillation_loss(logits.flip(1), teacher, temperature).item() > 0.01


def test_warmup_cosine_schedule():
    factor = warmup_cosine(start_step=10, warmup_steps=5, total_steps=40)
    assert factor(0) == 0 and factor(9) == 0
    assert factor(10) == pytest.approx(0.2) and factor(14) == pytest.approx(1.0)
    assert factor(27) == pytest.approx(0.5, abs=0.06) and factor(40) == pytest.approx(0.0, abs=1e-9)


def test_max_time_fits_the_schedule_to_the_time():
    """Cut short by max_time, training still ends with the learning rate decayed (the schedule follows the clock).

    Each step's rate is checked against the share of the time used when it was set, not against the step's
    index, so a slow step on a loaded machine cannot fail the test."""
    import math

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    peak = 1e-2
    module = WBCClassifierModule(arch="scratch", mode="scratch", lr=peak, warmup_steps=2, image_size=32)
    images = DataLoader(TensorDataset(torch.rand(32, 3, 32, 32), torch.randint(0, 8, (32,))), batch_size=8)
    steps = []  # (share of max_time used when the rate was set, the rate)

    class RecordLR(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_index):
            steps.append((pl_module.time_budget_used, trainer.optimizers[0].param_groups[0]["lr"]))

    trainer = pl.Trainer(
        max_epochs=100_000, max_time={"seconds": 3}, limit_val_batches=0, callbacks=[RecordLR()], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(module, images)
    assert 10 <= len(steps) < 100_000 * 4, "the time limit, not the epochs, ended training"
    assert max(rate for _, rate in steps) == pytest.approx(peak, rel=0.05), "the warm-up reached the peak"
    for used, rate in steps[2:]:
        assert rate == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * used)), abs=peak * 0.01), (
            f"the rate follows the cosine of the time used ({used:.2f} used, rate {rate})"
        )
    assert any(0.3 < used < 0.7 for used, _ in steps), "the run passed through the middle of the schedule"
    # the rate the last optimizer step left, set when the time was (nearly) spent
    final_rate = trainer.optimizers[0].param_groups[0]["lr"]
    assert module.time_budget_used > 0.85 and final_rate < peak * 0.06, (
        f"by the end the rate had decayed: {module.time_budget_used:.2f} of the time used, rate {final_rate}"
    )


@pytest.mark.parametrize(
    "override, field",
    [({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"arch": "resnet9000"}, "resnet9000"),
     ({"lr": -1.0}, "lr"), ({"data_dir": "/nonexistent"}, "data_dir"), ({"mode": "finetune", "head_epochs": 5}, "head_epochs"),
     ({"ema": 1.0}, "ema"), ({"sampling": "weighted"}, "sampling"), ({"freeze_stages": 1}, "freeze_stages=1 needs mode finetune"),
     ({"arch": "efficientnet_lite0", "mode": "finetune", "freeze_stages": 9}, "freeze_stages=9 is invalid"),
     ({"teachers": ("/nonexistent/teacher",)}, "teacher /nonexistent/teacher"),
     ({"teachers": ("/nonexistent/teacher",), "distill_weight": 0.0}, "distill_weight"),
     ({"teachers": ("runs:/abc/model", "runs:/abc/model")}, "teacher runs:/abc/model: given twice")],
)
def test_bad_settings_fail_before_any_run(synthetic_data, override, field):
    with pytest.raises(ValueError, match=field):
        train(tiny_config(synthetic_data, **override))
    experiment = mlflow.get_experiment_by_name("wbc")
    assert experiment is None or not mlflow.search_runs([experiment.experiment_id]).shape[0]


def test_failed_run_is_marked_failed(synthetic_data, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")
    with pytest.raises(Exception, match="TORCH_HOME"):
        train(tiny_config(synthetic_data, arch="resnet18", mode="transfer"))
    runs = mlflow.search_runs(experiment_names=["wbc"])
    assert list(runs["status"]) == ["FAILED"]


@pytest.mark.parametrize("terminal, refresh", [(True, 10), (False, 50)])
def test_training_progress_refreshes_less_often_in_a_log(synthetic_data, tmp_path, monkeypatch, terminal, refresh):
    """Lightning's bar writes each refresh as a ``\\r`` line, which a log keeps: every 50 steps there, 10 in a terminal."""
    from pytorch_lightning.callbacks import TQDMProgressBar

    import wbc._progress
    from wbc.training.trainer import make_trainer

    monkeypatch.setattr(wbc._progress, "stderr_is_terminal", lambda: terminal)
    trainer, _ = make_trainer(tiny_config(synthetic_data, progress=True), tmp_path, None)
    bars = [callback for callback in trainer.callbacks if isinstance(callback, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == refresh
