"""Crash safety and scale: atomic checkpoints, resuming a SIGKILLed run, multi-process (DDP) training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch

from wbc._io import atomic_torch_save
from wbc.jobs.train import find_resumable_run, train
from wbc.training.callbacks import AtomicCheckpointIO, EpochMetricsLogger
from wbc.training.config import ConfigError, TrainConfig

from conftest import make_dataset

pytestmark = pytest.mark.slow


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1}, target)

    def dies_halfway(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary file left behind"


def _wbc(*args: str, env: dict, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wbc", *args], env=env, cwd=cwd, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", WBC_CACHE_DIR=str(tmp_path / "cache"))
    return env


TRAIN_ARGS = ["train", "--arch", "scratch", "--mode", "scratch", "--image-size", "32", "--batch-size", "16",
              "--lr", "0.01", "--output-dir", "outputs", "--no-onnx"]


def test_sigkilled_training_resumes_into_the_same_run(tmp_path):
    data = make_dataset(tmp_path / "data", per_class={"train": 80, "valid": 4})
    epochs = 8
    process = _wbc(*TRAIN_ARGS, "--data-dir", str(data), "--epochs", str(epochs), env=_env(tmp_path), cwd=tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.monotonic() + 240
    killed_after, seen = None, {}  # epoch -> when its last.ckpt was first seen
    refused = []
    while time.monotonic() < deadline and process.poll() is None:
        lasts = list((tmp_path / "outputs").glob("*/checkpoints/last.ckpt"))
        if lasts and not refused:
            # while it trains, no other process may resume it: neither as `last` nor by its id
            mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
            (live,) = client.search_runs([client.get_experiment_by_name("wbc").experiment_id])
            for resume, message in (("last", "still training in other processes"), (live.info.run_id, "is still training this run")):
                with pytest.raises(ConfigError, match=message):
                    find_resumable_run(resume, "wbc")
            refused.append(live.info.run_id)
        if lasts:
            epoch = torch.load(lasts[0], weights_only=True)["epoch"]
            seen.setdefault(epoch, time.monotonic())
            if len(seen) >= 2 and epoch >= 1:
                # kill in the middle of the next epoch, away from the end-of-epoch logging and saving
                epoch_seconds = seen[epoch] - seen[min(seen)]
                time.sleep(max(0.05, epoch_seconds / max(1, epoch - min(seen)) / 2))
                os.killpg(process.pid, signal.SIGKILL)
                killed_after = epoch
                break
        time.sleep(0.02)
    process.wait(timeout=30)
    assert killed_after is not None, "training ended before it could be killed: " + process.stdout.read()[-2000:]
    assert killed_after < epochs - 1

    (run,) = client.search_runs([client.get_experiment_by_name("wbc").experiment_id])
    assert run.info.status == "RUNNING", "a killed run stays unfinished"

    resumed = _wbc(*TRAIN_ARGS, "--data-dir", "/ignored/on/resume", "--resume", "last", env=_env(tmp_path), cwd=tmp_path)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output[-3000:]

    runs = client.search_runs([client.get_experiment_by_name("wbc").experiment_id])
    assert len(runs) == 1, "resuming continues the same MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["wbc.resumed"] == "true"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_f1"))
    assert steps == list(range(epochs)), steps
    assert "best_val_f1" in run.data.metrics
    checkpoint = torch.load(Path(run.data.tags["wbc.checkpoint_dir"]) / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == epochs - 1

    with pytest.raises(ConfigError, match="already finished"):
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        find_resumable_run(run.info.run_id, "wbc")


class _KilledWhileSaving(Exception):
    pass


@pytest.mark.parametrize("killed_epoch, after_last_ckpt", [(2, False), (3, True)], ids=["while-saving", "after-the-last-save"])
def test_a_kill_at_an_epoch_end_loses_no_epoch_and_logs_none_twice(synthetic_data, tmp_path, monkeypatch, killed_epoch, after_last_ckpt):
    """Killed while writing epoch 2's checkpoints, or right after the last epoch's last.ckpt (resuming then
    has nothing left to train): every epoch reaches the MLflow run exactly once."""
    epochs = 4
    save = AtomicCheckpointIO.save_checkpoint

    def killed_at_epoch_end(self, checkpoint, path, storage_options=None):
        if checkpoint["epoch"] == killed_epoch and not after_last_ckpt:
            raise _KilledWhileSaving(path)
        save(self, checkpoint, path, storage_options)
        if checkpoint["epoch"] == killed_epoch and Path(path).name == "last.ckpt":
            raise _KilledWhileSaving(path)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", killed_at_epoch_end)
    config = dict(arch="scratch", mode="scratch", image_size=32, batch_size=16, lr=0.01, progress=False, onnx=False,
                  output_dir=str(tmp_path / "outputs"))
    with pytest.raises(_KilledWhileSaving):
        train(TrainConfig(data_dir=str(synthetic_data), epochs=epochs, **config))
    monkeypatch.undo()
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("wbc").experiment_id])
    logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_f1"))
    assert logged == list(range(killed_epoch)), "an epoch reaches MLflow only once its checkpoint is saved"

    train(TrainConfig(resume=run.info.run_id, **config))
    for metric in ("val_f1", "val_acc", "train_loss"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
        assert steps == list(range(epochs)), (metric, steps)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_epoch_metrics_wait_while_mlflow_refuses_them(caplog):
    logger = EpochMetricsLogger("no-such-run")
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=0, callback_metrics={"val_f1": torch.tensor(0.5)})
    logger.on_train_epoch_end(trainer, None)
    logger.on_train_epoch_start(trainer, None)  # training goes on
    assert len(logger.pending) == 1 and "will retry" in caplog.text
    client = mlflow.MlflowClient()
    run = client.create_run(client.create_experiment("epoch-metrics"))
    logger.run_id = run.info.run_id
    trainer.current_epoch = 1
    logger.on_train_epoch_end(trainer, None)
    logger.on_fit_end(trainer, None)
    assert logger.pending == []
    history = client.get_metric_history(run.info.run_id, "val_f1")
    assert sorted(m.step for m in history) == [0, 1]


def test_ddp_on_two_cpu_processes_logs_one_run_and_learns(synthetic_data, tmp_path):
    args = [*TRAIN_ARGS, "--data-dir", str(synthetic_data), "--epochs", "4", "--batch-size", "8"]
    # two processes of 8 images each make the same global batch of 16 as the single-process run below
    process = _wbc(*args, "--devices", "2", "--strategy", "ddp", env=_env(tmp_path), cwd=tmp_path)
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "only rank 0 talks to MLflow"
    ddp_run = runs[0]
    assert ddp_run.info.status == "FINISHED"
    assert len(client.get_metric_history(ddp_run.info.run_id, "val_acc")) == 4

    single = train(TrainConfig(data_dir=str(synthetic_data), arch="scratch", mode="scratch", image_size=32,
                               batch_size=16, lr=0.01, epochs=4, progress=False, onnx=False))
    ddp_accuracy = ddp_run.data.metrics["best_val_acc"]
    assert ddp_accuracy >= 0.6 and abs(ddp_accuracy - single.best_val_acc) <= 0.25, (ddp_accuracy, single.best_val_acc)


def test_sigterm_fails_the_run_with_a_resume_hint_and_a_nonzero_status(tmp_path):
    data = make_dataset(tmp_path / "data", per_class={"train": 80, "valid": 4})
    process = _wbc(*TRAIN_ARGS, "--data-dir", str(data), "--epochs", "20", env=_env(tmp_path), cwd=tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and not list((tmp_path / "outputs").glob("*/checkpoints/last.ckpt")):
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be stopped: " + process.stdout.read()[-2000:]
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("wbc").experiment_id])
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "stopped by SIGTERM" in output and f"wbc train --resume {run.info.run_id}" in output
    assert run.info.status == "FAILED" and "best_val_f1" not in run.data.metrics
