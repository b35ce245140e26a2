"""Crash-safe checkpoints: whole files, and MLflow metrics that match them after a kill and resume.

Checkpoint files are written beside their final name, synced, then renamed into place. A kill at
any moment leaves either the previous complete file or the new complete file, never a partial one
(Lightning's own writer stages through the system temp folder, which is not atomic when that
folder is on another file system).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pytorch_lightning as pl
import torch
from mlflow.entities import Metric


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class EpochMetricsLogger(pl.Callback):
    """Logs each epoch's metrics to an MLflow run once a checkpoint holding that epoch is on disk.

    Lightning runs its checkpoint callbacks last at the end of an epoch, so metrics logged there
    (as MLflow's autolog does) reach the run before the checkpoint: a kill in between made the
    resumed run redo that epoch and log it twice. Here an epoch's metrics wait in this callback's
    state, which the checkpoint saves, and go to MLflow when the next epoch starts or training ends;
    a resumed run logs the waiting ones only if the killed run had not.
    """

    def __init__(self, run_id: str | None):
        self.run_id = run_id  # None on the ranks that do not talk to MLflow
        self.pending: dict | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pending = {
            "step": trainer.current_epoch,
            "timestamp": int(time.time() * 1000),
            "metrics": {name: float(value) for name, value in trainer.callback_metrics.items()},
        }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_pending()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_pending()

    def state_dict(self) -> dict:
        return {"pending": self.pending}

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending = state_dict["pending"]

    def _log_pending(self) -> None:
        pending, self.pending = self.pending, None
        if self.run_id is None or not pending or not pending["metrics"]:
            return
        client = mlflow.MlflowClient()
        step, timestamp = pending["step"], pending["timestamp"]
        if any(m.step == step for m in client.get_metric_history(self.run_id, next(iter(pending["metrics"])))):
            return  # the killed run logged this epoch after saving its checkpoint
        client.log_batch(self.run_id, metrics=[Metric(name, value, timestamp, step) for name, value in pending["metrics"].items()])
