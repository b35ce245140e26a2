"""``wbc train``: one training run, tracked in MLflow, from data to a logged, servable model; resumable."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from wbc._io import held_lock, lock_holder, store_not_created
from wbc.data import BarcelonaDataModule
from wbc.evaluation.reports import Evaluation
from wbc.evaluation.shiftbench import ShiftBenchResult
from wbc.inference import load_model, load_model_from
from wbc.models import count_parameters, get_spec
from wbc.tracking.datasets import log_image_dataset
from wbc.tracking.model_logging import log_model_run
from wbc.tracking.runs import RUN_KIND_TAG, configure_tracking, log_params_once, reopen_run, run_tags, training_curves_figure
from wbc.training.config import ConfigError, TrainConfig, teacher_errors
from wbc.training.module import WBCClassifierModule
from wbc.training.teachers import load_teachers, teacher_probabilities
from wbc.training.trainer import NEVER, TrainingStopped, is_global_zero, make_trainer

log = logging.getLogger(__name__)

CHECKPOINT_DIR_TAG = "wbc.checkpoint_dir"
TRAINING_LOCK = "training.lock"
"""Beside the checkpoint folder: held by the process that trains the run (``--resume`` leaves such a run alone)."""


@dataclass
class TrainResult:
    run_id: str
    best_checkpoint: str
    best_val_acc: float
    best_val_f1: float
    train_minutes: float
    evaluation: Evaluation
    shiftbench: ShiftBenchResult | None = None
    """The shifted benchmark, unless ``shiftbench=False``."""

    def summary(self) -> str:
        """What ``wbc train`` prints: the run, its valid scores, the per-class report and the shifted benchmark."""
        lines = [f"run {self.run_id}: valid accuracy {self.best_val_acc:.4f}, macro-F1 {self.best_val_f1:.4f}, "
                 f"{self.train_minutes:.1f} min", f"best checkpoint: {self.best_checkpoint}", self.evaluation.summary()]
        if self.shiftbench is not None:
            lines += ["shifted validation benchmark (percent):", self.shiftbench.summary()]
        return "\n".join(lines)


def run_name(config: TrainConfig) -> str:
    """What the run is, as the MLflow UI lists it: ``finetune efficientnet_lite0 160px`` (and ``robust``, ``from <model>``)."""
    name = f"{config.mode} {get_spec(config.arch).name} {config.resolved_image_size}px"
    if config.augment != "standard":
        name += f" {config.augment}"
    return name


def train(config: TrainConfig) -> TrainResult | None:
    """Train one model as configured, tracked as one MLflow run; return where its best checkpoint is.

    With ``config.resume`` (a run id, or ``last``) a killed or failed run continues from its last
    checkpoint, in the same MLflow run, with the settings that run logged. In a multi-process
    run (DDP) only global rank 0 talks to MLflow; the other ranks train and return ``None``.
    Raises :class:`ConfigError` (before any run is created) for settings out of range.
    """
    tracking = is_global_zero()
    resumed = None
    if config.resume:
        resumed = resumable_run(config)
        config = config.from_logged_params(resumed.data.params)
    config = config.validate()
    with teacher_errors():
        teachers = load_teachers(config.teachers)
    if tracking:
        configure_tracking(config.experiment)
        # autolog records the optimizer's params; EpochMetricsLogger logs the epoch metrics
        mlflow.pytorch.autolog(log_models=False, checkpoint=False, silent=True, log_every_n_epoch=NEVER)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if not tracking:
        run_context = nullcontext(None)
    elif resumed is not None:
        run_context = reopen_run(resumed.info.run_id)
    else:
        # inside an active run (a study such as `wbc compare`) the training run is its child
        run_context = mlflow.start_run(
            tags=run_tags(**{RUN_KIND_TAG: "train"}, **config.extra_tags), nested=mlflow.active_run() is not None,
            log_system_metrics=True,  # CPU, memory, disk and network (system/...) beside the training curves
        )
    with run_context as run:
        if run is not None and resumed is None:
            mlflow.set_tag("mlflow.runName", config.run_name or run_name(config))  # also names the run `mlflow run` made
        started = time.perf_counter()
        module_arguments = config.module_arguments()
        module_arguments["pretrained"] &= resumed is None and not config.init_from
        module = WBCClassifierModule(**module_arguments)
        if config.init_from and resumed is None:
            _load_initial_weights(module, config)
        datamodule = BarcelonaDataModule(
            config.data_dir,
            image_size=config.resolved_image_size,
            batch_size=config.batch_size,
            num_workers=config.num_workers,
            limit_per_class=config.limit_per_class,
            skip_bad_images=config.skip_bad_images,
            cache_dir=config.cache_dir,
            augment=config.augment,
            sampling=config.sampling,
            seed=config.seed,
        )
        datamodule.setup("fit")
        if run is None:
            # the checkpoint folder is rank 0's; Lightning broadcasts it to the other ranks
            checkpoint_dir = Path(config.output_dir).resolve() / "non-zero-rank"
        else:
            _log_training_params(config, module, datamodule)
            if resumed is None:
                for split, images in datamodule.datasets.items():
                    log_image_dataset(images.paths, images.targets, datamodule.data_dir / "barcelona", f"barcelona/{split}", split)
            checkpoint_dir = _checkpoint_dir(resumed) if resumed else Path(config.output_dir).resolve() / run.info.run_id / "checkpoints"
            mlflow.set_tags({CHECKPOINT_DIR_TAG: str(checkpoint_dir), **({"wbc.resumed": "true"} if resumed else {})})
            if config.progress:
                print(f"MLflow run {run.info.run_id}; checkpoints in {checkpoint_dir}", file=sys.stderr)
        if teachers:
            _attach_teacher_probabilities(datamodule.datasets["train"], teachers, config, progress=config.progress and tracking)
            teachers = None  # their networks are not needed again
        trainer, checkpoint = make_trainer(config, checkpoint_dir, run.info.run_id if run else None)
        with held_lock(checkpoint_dir.parent / TRAINING_LOCK) if run is not None else nullcontext():
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint_dir / "last.ckpt") if resumed else None)
            except SIGTERMException:
                # Lightning stops at a batch boundary and exits with status 0; say so, and fail the run
                if run is None:
                    raise
                raise TrainingStopped(
                    f"run {run.info.run_id} was stopped by SIGTERM in epoch {trainer.current_epoch}; "
                    f"continue it from its last checkpoint with: wbc train --resume {run.info.run_id}"
                ) from None
            if run is None:
                return None
            train_minutes = (time.perf_counter() - started) / 60
            best_checkpoint = checkpoint.best_model_path or _best_in(checkpoint_dir)
            result = _finish_run(run.info.run_id, best_checkpoint, datamodule, train_minutes, config)
    return result


def _load_initial_weights(module: WBCClassifierModule, config: TrainConfig) -> None:
    source, _ = load_model_from(config.init_from)
    if source.arch != get_spec(config.arch).name:
        raise ConfigError(f"init_from={config.init_from!r} is a {source.arch} model: train it with --arch {source.arch}")
    module.model.load_state_dict(source.state_dict())


def _attach_teacher_probabilities(train_images, teachers: dict, config: TrainConfig, progress: bool) -> None:
    with teacher_errors():
        train_images.soft_targets = teacher_probabilities(
            teachers, train_images, config.distill_temperature, data_dir=config.data_dir,
            limit_per_class=config.limit_per_class, cache_dir=config.cache_dir, skip_bad_images=config.skip_bad_images,
            progress=progress,
        )


def _log_training_params(config: TrainConfig, module: WBCClassifierModule, datamodule: BarcelonaDataModule) -> None:
    """The params every training run logs under the same names, so runs compare column by column."""
    _, total_params = count_parameters(module.model)
    log_params_once(
        config.logged_params() | {
            "pretrained": config.resolved_pretrained,
            "trainable_params": module.final_trainable_params(),
            "total_params": total_params,
            "train_size": len(datamodule.datasets["train"]),
            "val_size": len(datamodule.datasets["valid"]),
            "data_fingerprint": datamodule.fingerprint,
        },
        normalise=_canonical_arch,
    )


def _canonical_arch(value: str) -> str:
    try:
        return get_spec(value).name
    except ValueError:
        return value


def _checkpoint_dir(run) -> Path:
    return Path(run.data.tags[CHECKPOINT_DIR_TAG])


def _best_in(checkpoint_dir: Path) -> str:
    candidates = sorted(checkpoint_dir.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return str(candidates[-1] if candidates else checkpoint_dir / "last.ckpt")


def _trained_elsewhere(run) -> int | None:
    """The id of a live process that is training ``run`` now (0 when unknown), else None."""
    if CHECKPOINT_DIR_TAG not in run.data.tags:
        return None
    return lock_holder(_checkpoint_dir(run).parent / TRAINING_LOCK)


def resumable_run(config: TrainConfig):
    """The run ``config.resume`` names, checked resumable, without creating a store or an experiment on the way."""
    store = configure_tracking(experiment=None)
    if store_not_created(store):
        raise ConfigError(f"resume={config.resume!r}: there is no MLflow store at {store}, so no run to resume")
    return find_resumable_run(config.resume, config.experiment)


def find_resumable_run(resume: str, experiment: str):
    """The run to resume: by id, or ``last`` (the newest unfinished training run that no live process is training);
    checked resumable. Raises :class:`ConfigError` saying why not."""
    client = mlflow.MlflowClient()
    if resume == "last":
        ids = [e.experiment_id for e in (client.get_experiment_by_name(n) for n in (experiment, "Default")) if e]
        runs = client.search_runs(
            ids,
            filter_string=f"tags.`{RUN_KIND_TAG}` = 'train' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=100,
        ) if ids else []
        resumable = [run for run in runs if CHECKPOINT_DIR_TAG in run.data.tags and (_checkpoint_dir(run) / "last.ckpt").exists()]
        idle = [run for run in resumable if _trained_elsewhere(run) is None]
        if not idle:
            busy = f" ({len(resumable)} still training in other processes)" if resumable else ""
            raise ConfigError(f"resume=last: no unfinished training run with a checkpoint in experiment {experiment!r}{busy}")
        run = idle[0]
    else:
        try:
            run = client.get_run(resume)
        except mlflow.exceptions.MlflowException:
            raise ConfigError(f"resume={resume!r}: no such MLflow run in {mlflow.get_tracking_uri()}") from None
    run_id = run.info.run_id
    if run.data.tags.get(RUN_KIND_TAG) != "train":
        raise ConfigError(f"resume={run_id}: not a wbc training run")
    if run.info.status == "FINISHED":
        raise ConfigError(f"resume={run_id}: the run already finished; nothing to resume")
    holder = _trained_elsewhere(run)
    if holder is not None:
        raise ConfigError(f"resume={run_id}: process {holder or '(unknown)'} is still training this run; wait for it or stop it first")
    if CHECKPOINT_DIR_TAG not in run.data.tags or not (_checkpoint_dir(run) / "last.ckpt").exists():
        raise ConfigError(f"resume={run_id}: no checkpoint was saved (stopped before its first epoch ended); start a new run")
    return run


def config_from_run(run, config: TrainConfig) -> TrainConfig:
    """``config`` with the training settings replaced by those ``run`` logged."""
    return config.from_logged_params(run.data.params)


def _finish_run(run_id, best_checkpoint, datamodule, train_minutes, config: TrainConfig) -> TrainResult:
    """Score the best checkpoint on valid; log the metrics, reports, curves and the servable model."""
    import matplotlib.pyplot as plt

    model, image_size = load_model(best_checkpoint)
    mlflow.log_metric("train_minutes", train_minutes)
    figure = training_curves_figure(run_id)
    mlflow.log_figure(figure, "training_curves.png")
    plt.close(figure)
    logged = log_model_run(
        model, image_size, datamodule.datasets["valid"], Path(best_checkpoint).parent.parent / "model",
        data_dir=config.data_dir, shiftbench=config.shiftbench, tta_thresholds=config.tta_thresholds, onnx=config.onnx,
        int8=config.int8, cache_dir=config.cache_dir, progress=config.progress,
    )
    evaluation = logged.evaluation
    log.info("run %s: valid accuracy %.4f, macro-F1 %.4f", run_id, evaluation.accuracy, evaluation.macro_f1)
    return TrainResult(run_id, best_checkpoint, evaluation.accuracy, evaluation.macro_f1, train_minutes, evaluation, logged.shiftbench)


__all__ = ["TrainResult", "config_from_run", "find_resumable_run", "run_name", "train"]
