"""`train(config)`: one training run, tracked in MLflow, from data to a logged, servable model."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import pytorch_lightning as pl
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from wbc.checkpointing import EpochMetricsLogger, atomic_torch_save
from wbc.data import BarcelonaDataModule
from wbc.data.settings import AUGMENTATIONS, SAMPLINGS
from wbc.distillation import TeacherError, canonical_teachers, load_teachers, teacher_probabilities
from wbc.evaluate import Evaluation
from wbc.inference import load_model, load_model_from
from wbc.model_logging import log_model_run
from wbc.models import MODES, UNFREEZE_CHOICES, check_freeze_stages, count_parameters, get_spec
from wbc.module import WBCClassifierModule
from wbc.tracking import (
    DEFAULT_EXPERIMENT,
    RUN_KIND_TAG,
    configure_tracking,
    log_params_once,
    reopen_run,
    run_tags,
    training_curves_figure,
)

log = logging.getLogger(__name__)

DEFAULT_LR = {"scratch": 3e-3, "transfer": 3e-3, "finetune": 1e-3}
CHECKPOINT_DIR_TAG = "wbc.checkpoint_dir"


class ConfigError(ValueError):
    """A training setting is out of range; the message names the setting."""


class TrainingStopped(RuntimeError):
    """SIGTERM stopped training (a scheduler's pre-emption, ``docker stop``); the message says how to resume."""


@dataclass
class TrainConfig:
    data_dir: str = "data"
    arch: str = "efficientnet_lite0"
    mode: str = "finetune"
    epochs: int = 6
    batch_size: int = 64
    lr: float | None = None
    """Peak learning rate; default by mode (:data:`DEFAULT_LR`)."""
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    warmup_steps: int = 100
    image_size: int | None = None
    """Square input size in pixels; default: the architecture's own."""
    head_epochs: int = 1
    unfreeze: str = "all"
    backbone_lr_scale: float = 0.5
    freeze_stages: int = 0
    """finetune: the backbone's first N stages (stem first) never train; faster, as the backward pass stops above them."""
    pretrained: bool | None = None
    """Default: pretrained for transfer and finetune, random init for scratch."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights, updated every step after the head-only epochs;
    validation, checkpoints and the logged model use the average. 0 = off."""
    augment: str = "standard"
    """Training augmentation: none, standard (flips, rotations, light colour jitter) or robust (+ lab-to-lab shifts)."""
    sampling: str = "shuffle"
    """How training batches are drawn: shuffle (each image once per epoch) or balanced (each class equally often)."""
    init_from: str | None = None
    """Start from this model's weights (checkpoint, exported folder or MLflow model URI; same arch) instead of ImageNet's."""
    teachers: tuple[str, ...] = ()
    """Distil from these models (checkpoints, exported folders or MLflow model URIs): the loss mixes the labels with
    the teachers' mean probabilities on each training image (:mod:`wbc.distillation`)."""
    distill_weight: float = 0.5
    """With teachers: the share of the distillation loss in the training loss."""
    distill_temperature: float = 2.0
    """With teachers: the temperature that softens the teachers' and the model's probabilities in the distillation loss."""
    shiftbench: bool = True
    """After training, score the model on the shifted validation benchmark (``val_robust_acc``, the registry's metric)."""
    onnx: bool = True
    """Export the logged model's ONNX flavour too (served faster); the export takes seconds to a minute."""
    int8: bool = False
    """Also export an int8 quantization of the ONNX flavour (served with ``WBC_RUNTIME=onnx-int8``)."""
    seed: int = 0
    max_time: float | None = None
    """Stop training after this many minutes; the learning-rate decay follows the clock when it is ahead
    of the epochs, so a run cut short ends decayed (the best checkpoint is kept)."""
    limit_per_class: int = 0
    num_workers: int = 0
    cache_dir: str | None = None
    skip_bad_images: bool = False
    output_dir: str = "outputs"
    experiment: str = DEFAULT_EXPERIMENT
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    progress: bool = True
    resume: str | None = None
    """Continue this run id (or ``last``: the newest unfinished training run) from its last checkpoint."""
    extra_tags: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        get_spec(self.arch)
        checks = [
            ("mode", self.mode in MODES, f"one of {', '.join(MODES)}"),
            ("unfreeze", self.unfreeze in UNFREEZE_CHOICES, f"one of {', '.join(UNFREEZE_CHOICES)}"),
            ("epochs", 1 <= self.epochs <= 1000, "an integer from 1 to 1000"),
            ("batch_size", 1 <= self.batch_size <= 4096, "an integer from 1 to 4096"),
            ("lr", self.lr is None or 0 < self.lr <= 10, "a number in (0, 10]"),
            ("weight_decay", 0 <= self.weight_decay <= 10, "a number in [0, 10]"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "a number in [0, 1)"),
            ("ema", 0 <= self.ema < 1, "0 (off) or a decay in (0, 1), e.g. 0.998"),
            ("image_size", self.image_size is None or 16 <= self.image_size <= 1024, "an integer from 16 to 1024"),
            ("head_epochs", 0 <= self.head_epochs < self.epochs or self.mode != "finetune", "from 0 to epochs - 1"),
            ("max_time", self.max_time is None or self.max_time > 0, "a positive number of minutes"),
            ("limit_per_class", self.limit_per_class >= 0, "0 (all) or a positive integer"),
            ("num_workers", self.num_workers >= 0, "0 or a positive integer"),
            ("augment", self.augment in AUGMENTATIONS, f"one of {', '.join(AUGMENTATIONS)}"),
            ("sampling", self.sampling in SAMPLINGS, f"one of {', '.join(SAMPLINGS)}"),
            ("distill_weight", not self.teachers or 0 < self.distill_weight <= 1, "a number in (0, 1]"),
            ("distill_temperature", not self.teachers or 0 < self.distill_temperature <= 100, "a number in (0, 100]"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: expected {expected}")
        with _teacher_errors():
            self.teachers = canonical_teachers(self.teachers)
        try:
            check_freeze_stages(get_spec(self.arch), self.mode, self.freeze_stages)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not Path(self.data_dir).is_dir():
            raise ConfigError(f"data_dir={self.data_dir!r} is not a folder: point it at the folder that holds barcelona/")
        return self

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    @property
    def resolved_pretrained(self) -> bool:
        return self.mode != "scratch" if self.pretrained is None else self.pretrained

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or get_spec(self.arch).image_size


@dataclass
class TrainResult:
    run_id: str
    best_checkpoint: str
    best_val_acc: float
    best_val_f1: float
    train_minutes: float
    evaluation: Evaluation
    shiftbench: object | None = None
    """The shifted benchmark (:class:`wbc.shiftbench.ShiftBenchResult`), unless ``shiftbench=False``."""


def _canonical_arch(value: str) -> str:
    try:
        return get_spec(value).name
    except ValueError:
        return value


def is_global_zero() -> bool:
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


class WeightEMA(EMAWeightAveraging):
    """Lightning's EMA of the weights, started at epoch ``start_epoch`` (after the head-only epochs).

    Until the first update, validation and checkpoints use the live weights (Lightning's callback would
    swap in the untouched initial copy).
    """

    def __init__(self, decay: float, start_epoch: int = 0) -> None:
        super().__init__(decay=decay)
        self.start_epoch = start_epoch
        self._swapped = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch >= self.start_epoch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _started(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swapped = self._started()
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer, pl_module) -> None:
        if self._started():
            self._copy_average_to_current(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._started():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that saves with :func:`wbc.checkpointing.atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)


_NEVER = 2**62


def _make_trainer(config: TrainConfig, checkpoint_dir: Path, run_id: str | None) -> tuple[pl.Trainer, ModelCheckpoint]:
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best-epoch{epoch:02d}-f1{val_f1:.4f}",
        auto_insert_metric_name=False,
        monitor="val_f1",
        mode="max",
        save_on_train_epoch_end=True,  # after every callback's on_train_epoch_end: EpochMetricsLogger relies on it
    )
    # Lightning's save_last only refreshes when the best improves; this one is rewritten every epoch.
    latest = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False,
                             save_on_train_epoch_end=True)
    callbacks: list[pl.Callback] = [best, latest, EpochMetricsLogger(run_id)]
    if config.ema:
        callbacks.append(WeightEMA(config.ema, start_epoch=config.head_epochs if config.mode == "finetune" else 0))
    if config.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    trainer = pl.Trainer(
        plugins=[AtomicCheckpointIO()],
        max_epochs=config.epochs,
        max_time={"minutes": config.max_time} if config.max_time else None,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        default_root_dir=str(checkpoint_dir.parent),
    )
    return trainer, best


def train(config: TrainConfig) -> TrainResult | None:
    """Train one model as configured, tracked as one MLflow run; return where its best checkpoint is.

    With ``config.resume`` (a run id, or ``last``) a killed or failed run continues from its last
    checkpoint, in the same MLflow run, with the settings that run logged. In a multi-process
    run (DDP) only global rank 0 talks to MLflow; the other ranks train and return ``None``.
    """
    tracking = is_global_zero()
    resumed = None
    if config.resume:
        configure_tracking(config.experiment)
        resumed = find_resumable_run(config.resume, config.experiment)
        config = config_from_run(resumed, config)
    config.validate()
    with _teacher_errors():
        teachers = load_teachers(config.teachers)
    image_size = config.resolved_image_size
    lr = config.resolved_lr
    if tracking:
        configure_tracking(config.experiment)
        # autolog records the optimizer's params; EpochMetricsLogger logs the epoch metrics
        mlflow.pytorch.autolog(log_models=False, checkpoint=False, silent=True, log_every_n_epoch=_NEVER)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if not tracking:
        run_context = nullcontext(None)
    elif resumed is not None:
        run_context = reopen_run(resumed.info.run_id)
    else:
        # inside an active run (a study such as `wbc compare`) the training run is its child
        run_context = mlflow.start_run(
            tags=run_tags(**{RUN_KIND_TAG: "train"}, **config.extra_tags), nested=mlflow.active_run() is not None
        )
    with run_context as run:
        started = time.perf_counter()
        module = WBCClassifierModule(
            arch=config.arch,
            mode=config.mode,
            lr=lr,
            weight_decay=config.weight_decay,
            label_smoothing=config.label_smoothing,
            warmup_steps=config.warmup_steps,
            head_epochs=config.head_epochs,
            unfreeze=config.unfreeze,
            backbone_lr_scale=config.backbone_lr_scale,
            freeze_stages=config.freeze_stages,
            pretrained=config.resolved_pretrained and resumed is None and not config.init_from,
            image_size=image_size,
            distill_weight=config.distill_weight if config.teachers else 0.0,
            distill_temperature=config.distill_temperature,
        )
        if config.init_from and resumed is None:
            _load_initial_weights(module, config)
        datamodule = BarcelonaDataModule(
            config.data_dir,
            image_size=image_size,
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
            checkpoint_dir = _checkpoint_dir(resumed) if resumed else Path(config.output_dir).resolve() / run.info.run_id / "checkpoints"
            mlflow.set_tags({CHECKPOINT_DIR_TAG: str(checkpoint_dir), **({"wbc.resumed": "true"} if resumed else {})})
            if config.progress:
                print(f"MLflow run {run.info.run_id}; checkpoints in {checkpoint_dir}", file=sys.stderr)
        if teachers:
            _attach_teacher_probabilities(datamodule.datasets["train"], teachers, config, progress=config.progress and tracking)
            teachers = None  # their networks are not needed again
        trainer, checkpoint = _make_trainer(config, checkpoint_dir, run.info.run_id if run else None)
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


@contextmanager
def _teacher_errors():
    """A teacher that cannot be used is a setting error, named as such."""
    try:
        yield
    except TeacherError as error:
        raise ConfigError(f"teacher {error}") from None


def _attach_teacher_probabilities(train_images, teachers: dict, config: TrainConfig, progress: bool) -> None:
    with _teacher_errors():
        train_images.soft_targets = teacher_probabilities(
            teachers, train_images, config.distill_temperature, data_dir=config.data_dir,
            limit_per_class=config.limit_per_class, cache_dir=config.cache_dir, skip_bad_images=config.skip_bad_images,
            progress=progress,
        )


def _log_training_params(config: TrainConfig, module: WBCClassifierModule, datamodule: BarcelonaDataModule) -> None:
    """The params every training run logs under the same names, so runs compare column by column."""
    _, total_params = count_parameters(module.model)
    log_params_once(
        {
            "arch": get_spec(config.arch).name,
            "mode": config.mode,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.resolved_lr,
            "weight_decay": config.weight_decay,
            "warmup_steps": config.warmup_steps,
            "image_size": config.resolved_image_size,
            "label_smoothing": config.label_smoothing,
            "ema": config.ema,
            "augment": config.augment,
            "sampling": config.sampling,
            "head_epochs": config.head_epochs if config.mode == "finetune" else 0,
            "unfreeze": config.unfreeze if config.mode == "finetune" else "none",
            "backbone_lr_scale": config.backbone_lr_scale,
            "freeze_stages": config.freeze_stages,
            "pretrained": config.resolved_pretrained,
            "init_from": config.init_from or "",
            "teachers": json.dumps(list(config.teachers)) if config.teachers else "",
            "distill_weight": config.distill_weight if config.teachers else 0,
            "distill_temperature": config.distill_temperature if config.teachers else 0,
            "seed": config.seed,
            "max_time": config.max_time or 0,
            "limit_per_class": config.limit_per_class,
            "data_dir": str(Path(config.data_dir).resolve()),
            "trainable_params": module.final_trainable_params(),
            "total_params": total_params,
            "train_size": len(datamodule.datasets["train"]),
            "val_size": len(datamodule.datasets["valid"]),
            "data_fingerprint": datamodule.fingerprint,
        },
        normalise=_canonical_arch,
    )


# How to read each resumable setting back from the run's params.
_RESUMABLE_PARAMS = {
    "arch": str, "mode": str, "epochs": int, "batch_size": int, "lr": float, "weight_decay": float,
    "warmup_steps": int, "image_size": int, "label_smoothing": float, "ema": float, "augment": str, "sampling": str, "head_epochs": int, "unfreeze": str,
    "backbone_lr_scale": float, "freeze_stages": int, "pretrained": lambda v: v == "True", "seed": int,
    "max_time": lambda v: float(v) or None, "limit_per_class": int, "data_dir": str,
    "teachers": lambda v: tuple(json.loads(v)) if v else (), "distill_weight": float, "distill_temperature": float,
}


def _checkpoint_dir(run) -> Path:
    return Path(run.data.tags[CHECKPOINT_DIR_TAG])


def _best_in(checkpoint_dir: Path) -> str:
    candidates = sorted(checkpoint_dir.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return str(candidates[-1] if candidates else checkpoint_dir / "last.ckpt")


def find_resumable_run(resume: str, experiment: str):
    """The run to resume: by id, or ``last`` (the newest unfinished training run); checked resumable."""
    client = mlflow.MlflowClient()
    if resume == "last":
        ids = [e.experiment_id for e in (client.get_experiment_by_name(n) for n in (experiment, "Default")) if e]
        runs = client.search_runs(
            ids,
            filter_string=f"tags.`{RUN_KIND_TAG}` = 'train' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        ) if ids else []
        if not runs:
            raise ConfigError(f"resume=last: no unfinished training run in experiment {experiment!r}")
        run = runs[0]
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
    if CHECKPOINT_DIR_TAG not in run.data.tags or not (_checkpoint_dir(run) / "last.ckpt").exists():
        raise ConfigError(f"resume={run_id}: no checkpoint was saved (stopped before its first epoch ended); start a new run")
    return run


def config_from_run(run, config: TrainConfig) -> TrainConfig:
    """``config`` with the training settings replaced by those ``run`` logged."""
    logged = run.data.params
    settings = {name: parse(logged[name]) for name, parse in _RESUMABLE_PARAMS.items() if name in logged}
    if settings.get("unfreeze") == "none":
        settings.pop("unfreeze")
    if not settings.get("teachers"):
        settings.pop("distill_weight", None)
        settings.pop("distill_temperature", None)
    return replace(config, **settings)


def _finish_run(run_id, best_checkpoint, datamodule, train_minutes, config) -> TrainResult:
    """Score the best checkpoint on valid; log the metrics, reports, curves and the servable model."""
    import matplotlib.pyplot as plt

    model, image_size = load_model(best_checkpoint)
    mlflow.log_metric("train_minutes", train_minutes)
    figure = training_curves_figure(run_id)
    mlflow.log_figure(figure, "training_curves.png")
    plt.close(figure)
    logged = log_model_run(
        model, image_size, datamodule.datasets["valid"], Path(best_checkpoint).parent.parent / "model",
        data_dir=config.data_dir, shiftbench=config.shiftbench, onnx=config.onnx, int8=config.int8, seed=config.seed,
        limit_per_class=config.limit_per_class, progress=config.progress,
    )
    evaluation = logged.evaluation
    log.info("run %s: valid accuracy %.4f, macro-F1 %.4f", run_id, evaluation.accuracy, evaluation.macro_f1)
    return TrainResult(run_id, best_checkpoint, evaluation.accuracy, evaluation.macro_f1, train_minutes, evaluation, logged.shiftbench)


__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingStopped", "train"]
