"""`TrainConfig`: every training setting, each with its one default, its range or choices and its help.

The ``wbc train`` / ``wbc main`` options, the checks of :meth:`TrainConfig.validate`, the LightningModule's
arguments (:meth:`TrainConfig.module_arguments`), the parameters a run logs (:meth:`TrainConfig.logged_params`)
and those a resumed run reads back (:meth:`TrainConfig.from_logged_params`) are all derived from the fields
below, so a default is written here and nowhere else (in the spirit of Lightning's ``LightningCLI``, which
derives flags from signatures).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from wbc import defaults
from wbc.data.dataset import BarcelonaDataset, how_to_get
from wbc.data.settings import AUGMENTATIONS, DEFAULT_AUGMENTATION, DEFAULT_SAMPLING, SAMPLINGS
from wbc.errors import WBCError
from wbc.models import MODES, UNFREEZE_CHOICES, check_freeze_stages, get_spec
from wbc.models._registry import UnknownModelError
from wbc.training.teachers import TeacherError, canonical_teachers

DEFAULT_LR = {"scratch": 3e-3, "transfer": 3e-3, "finetune": 1e-3}
"""Peak learning rate by mode, when ``lr`` is 0."""
WEIGHTS = ("auto", "imagenet", "none")


class ConfigError(WBCError, ValueError):
    """A training setting is out of range; the message names the setting."""


def setting(
    default: Any,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    flag: str | None = None,
    metavar: str | None = None,
    option: bool = True,
    logged: bool = False,
    resumable: bool = False,
    default_text: str | None = None,
):
    """A :class:`TrainConfig` field and what derives from it: its command-line option (``option``; ``flag`` for a
    name other than ``--field-name``), its range (``low``/``high``, open or closed) or ``choices``, and whether a
    training run logs it (``logged``) and a resumed run takes it back from the log (``resumable``)."""
    metadata = dict(help=help, choices=choices, low=low, high=high, low_open=low_open, high_open=high_open, flag=flag,
                    metavar=metavar, option=option, logged=logged or resumable, resumable=resumable, default_text=default_text)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """One training run's settings (``wbc train``); ``0`` and ``None`` mean "the default" where the help says so."""

    data_dir: str = setting(defaults.DATA_DIR, "Folder that holds barcelona/{train,valid}/<class>/*.jpg.", resumable=True)
    arch: str = setting("efficientnet_lite0", "Architecture (wbc models lists them).", resumable=True)
    mode: str = setting("finetune", "scratch: train everything from random weights; transfer: train the head on a "
                        "frozen backbone; finetune: the head, then the backbone too.", choices=MODES, resumable=True)
    epochs: int = setting(6, "Training epochs.", low=1, high=1000, resumable=True)
    batch_size: int = setting(64, "Images per batch.", low=1, high=4096, resumable=True)
    lr: float = setting(0.0, "Peak learning rate; 0 = by mode (" + ", ".join(f"{m} {v:g}" for m, v in DEFAULT_LR.items()) + ").",
                        low=0, high=10, resumable=True, default_text="by mode")
    weight_decay: float = setting(0.02, "AdamW weight decay.", low=0, high=10, resumable=True)
    label_smoothing: float = setting(0.1, "Label smoothing of the cross-entropy.", low=0, high=1, high_open=True, resumable=True)
    warmup_steps: int = setting(100, "Steps of linear learning-rate warm-up (at most a fifth of the run).", low=0, high=100_000,
                                resumable=True)
    ema: float = setting(0.0, "Decay of an exponential moving average of the weights (e.g. 0.998), validated and kept "
                         "instead of the raw weights; 0 = off.", low=0, high=1, high_open=True, resumable=True)
    image_size: int = setting(0, "Input size in pixels; 0 = the model's own (e.g. 128 for efficientnet_lite0).",
                              low=0, high=1024, resumable=True, default_text="the model's own")
    augment: str = setting(DEFAULT_AUGMENTATION, "standard: flips, rotations, light colour jitter; zoom: + the cell zoomed "
                           "0.7-1.5x; robust: + zoom, stain, light, blur, resolution and JPEG shifts; stain: strong stain and "
                           "colour jitter with zoom (0.7-1.5x) and blur (holds up best on other labs' cells); stain-randconv: stain, "
                           "then random convolutions on half the images (RandConv); none.",
                           choices=AUGMENTATIONS, resumable=True)
    sampling: str = setting(DEFAULT_SAMPLING, "shuffle: each image once per epoch; balanced: each class equally often (drawn "
                            "with replacement).", choices=SAMPLINGS, resumable=True)
    head_epochs: int | None = setting(None, "finetune: epochs of head-only training before unfreezing.", low=0, high=1000,
                                      resumable=True, default_text="1, or 0 when --epochs is 1")
    unfreeze: str = setting("all", "finetune: what phase 2 unfreezes.", choices=UNFREEZE_CHOICES, resumable=True)
    backbone_lr_scale: float = setting(0.5, "finetune: backbone learning rate as a fraction of --lr.", low=0, high=1,
                                       low_open=True, resumable=True)
    freeze_stages: int = setting(0, "finetune: keep the backbone's first N stages (stem first) frozen; the backward pass "
                                 "stops above them (faster).", low=0, high=100, resumable=True)
    weights: str = setting("auto", "Initial weights; auto = imagenet unless --mode scratch.", choices=WEIGHTS)
    init_from: str | None = setting(None, "Start from this model's weights (checkpoint, exported folder, MLflow URI; same "
                                    "--arch), e.g. to fine-tune the champion further.", metavar="MODEL", logged=True)
    teachers: tuple[str, ...] = setting((), "Distil from this model (repeat for an ensemble; checkpoint, exported folder, "
                                        "MLflow URI): the loss mixes the labels with the teachers' mean probabilities.",
                                        flag="--teacher", metavar="MODEL", resumable=True)
    distill_weight: float = setting(0.5, "With --teacher: the distillation loss's share of the training loss.", low=0, high=1,
                                    low_open=True, resumable=True)
    distill_temperature: float = setting(2.0, "With --teacher: the temperature that softens both sides' probabilities.",
                                         low=0, high=100, low_open=True, resumable=True)
    seed: int = setting(0, "Random seed (weights, batches, augmentation).", resumable=True)
    max_time: float = setting(0.0, "Stop training after this many minutes, with the learning-rate decay fitted to end then; "
                              "0 = no limit.", low=0, resumable=True, default_text="no limit")
    limit_per_class: int = setting(0, "Use at most N images per class in each split (0 = all); the shifted benchmark "
                                   "after training still scores all of valid, so runs compare.", low=0, resumable=True)
    num_workers: int = setting(0, "DataLoader worker processes.", low=0, high=256)
    cache_dir: str | None = setting(None, "Decoded-image cache.", default_text="$WBC_CACHE_DIR or ~/.cache/wbc")
    shiftbench: bool = setting(True, "After training, score the model on the shifted validation benchmark "
                               "(val_robust_acc, what wbc register selects on).")
    tta_thresholds: bool = setting(True, "Also fit the calibration --tta uses, on the mean logits of valid's 8 "
                                   "flips/rotations (8x the scoring of valid).")
    onnx: bool = setting(True, "Export the logged model's ONNX flavour too (served faster by ONNX Runtime); --no-onnx saves "
                         "the export's time for models you will not serve.")
    int8: bool = setting(False, "Also export an int8 quantization of the ONNX flavour (about 1.5x faster on CPU, answers may "
                         "differ on ~1 % of images; served with WBC_RUNTIME=onnx-int8).")
    skip_bad_images: bool = setting(False, "Skip unreadable training images with a warning instead of failing.")
    output_dir: str = setting(defaults.OUTPUT_DIR, "Where checkpoints and exported models go (<output-dir>/<run id>/).")
    experiment: str = setting(defaults.EXPERIMENT, "MLflow experiment.")
    accelerator: str = setting("auto", "Lightning accelerator (cpu, gpu, auto).")
    devices: str = setting("1", "Lightning devices (a count, or 'auto').")
    strategy: str = setting("auto", "Lightning strategy, e.g. ddp.")
    resume: str | None = setting(None, "Continue a killed or failed training run from its last checkpoint (same MLflow run, "
                                 "its logged settings); last = the newest one no other process is training.",
                                 metavar="RUN_ID|last")
    progress: bool = setting(True, option=False)
    run_name: str | None = setting(None, option=False)
    """The MLflow run's name; default: what the run is (``finetune efficientnet_lite0 160px``)."""
    extra_tags: dict = setting({}, option=False)

    # -- derived -----------------------------------------------------------------------------------------

    @property
    def resolved_lr(self) -> float:
        return self.lr or DEFAULT_LR[self.mode]

    @property
    def resolved_pretrained(self) -> bool:
        return pretrained_for(self.mode, self.weights)

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or get_spec(self.arch).image_size

    @property
    def resolved_head_epochs(self) -> int:
        """Head-only epochs of ``finetune`` (0 in the other modes): as given, else 1 when there are 2 epochs or more."""
        if self.mode != "finetune":
            return 0
        return self.head_epochs if self.head_epochs is not None else (1 if self.epochs >= 2 else 0)

    @property
    def resolved_devices(self) -> int | str:
        return int(self.devices) if str(self.devices).isdigit() else self.devices

    def module_arguments(self) -> dict[str, Any]:
        """The :class:`~wbc.training.module.WBCClassifierModule` arguments for these settings."""
        return dict(
            arch=get_spec(self.arch).name, mode=self.mode, lr=self.resolved_lr, weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing, warmup_steps=self.warmup_steps, head_epochs=self.resolved_head_epochs,
            unfreeze=self.unfreeze, backbone_lr_scale=self.backbone_lr_scale, freeze_stages=self.freeze_stages,
            pretrained=self.resolved_pretrained, image_size=self.resolved_image_size,
            distill_weight=self.distill_weight if self.teachers else 0.0, distill_temperature=self.distill_temperature,
        )

    def logged_params(self) -> dict[str, Any]:
        """The settings a training run logs, resolved (``lr`` by mode, the image size, the head epochs, absolute paths),
        under their field names, so runs compare column by column in the MLflow UI."""
        values = {
            "arch": get_spec(self.arch).name,
            "lr": self.resolved_lr,
            "image_size": self.resolved_image_size,
            "head_epochs": self.resolved_head_epochs,
            "unfreeze": self.unfreeze if self.mode == "finetune" else "none",
            "data_dir": str(Path(self.data_dir).resolve()),
            "init_from": self.init_from or "",
            "teachers": json.dumps(list(self.teachers)) if self.teachers else "",
            "distill_weight": self.distill_weight if self.teachers else 0,
            "distill_temperature": self.distill_temperature if self.teachers else 0,
        }
        return {item.name: values.get(item.name, getattr(self, item.name)) for item in fields(self) if item.metadata["logged"]}

    def from_logged_params(self, logged: dict[str, str]) -> TrainConfig:
        """These settings with the resumable ones replaced by what a run logged (its :meth:`logged_params`)."""
        settings = {}
        for item in fields(self):
            if item.metadata["resumable"] and item.name in logged:
                settings[item.name] = _parse_logged(item, logged[item.name])
        if settings.get("unfreeze") == "none":
            settings.pop("unfreeze")
        if not settings.get("teachers"):
            settings.pop("distill_weight", None)
            settings.pop("distill_temperature", None)
        return replace(self, **settings)

    # -- checks ------------------------------------------------------------------------------------------

    def validate(self) -> TrainConfig:
        """Check every setting against its range or choices, and the ones that depend on each other; raise
        :class:`ConfigError` naming the first that is off. Returns the settings with the teachers canonical."""
        try:
            get_spec(self.arch)
        except UnknownModelError as error:
            raise ConfigError(str(error)) from None
        check_ranges(self)
        checks = [
            ("image_size", self.image_size == 0 or self.image_size >= 16, "0 (the model's own) or an integer from 16 to 1024"),
            ("head_epochs", self.mode != "finetune" or self.head_epochs is None or self.head_epochs < self.epochs,
             f"from 0 to epochs - 1 = {self.epochs - 1} (or leave it out: 1, or 0 with one epoch)"),
            ("devices", self.devices == "auto" or str(self.devices).isdigit() and int(self.devices) >= 1,
             "a positive integer or 'auto'"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: expected {expected}")
        try:
            check_freeze_stages(get_spec(self.arch), self.mode, self.freeze_stages)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not Path(self.data_dir).is_dir():
            raise ConfigError(f"data_dir={self.data_dir!r} is not a folder: point it at the folder that holds barcelona/, "
                              + how_to_get(self.data_dir))
        for split in ("train", "valid"):
            BarcelonaDataset(self.data_dir, split)  # the splits and their class folders, before any work starts
        output = Path(self.output_dir)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"output_dir={self.output_dir!r}: cannot create it ({error.strerror or error})") from None
        if not os.access(output, os.W_OK):
            raise ConfigError(f"output_dir={self.output_dir!r} is not writable: choose another --output-dir")
        with teacher_errors():
            return replace(self, teachers=canonical_teachers(self.teachers))


def check_ranges(settings) -> None:
    """Raise :class:`ConfigError` for the first field of ``settings`` (a dataclass of :func:`setting` fields) outside
    its range or choices."""
    for item in fields(settings):
        expected = _expected(item, getattr(settings, item.name))
        if expected:
            raise ConfigError(f"{item.name}={getattr(settings, item.name)!r} is invalid: expected {expected}")


def _expected(item, value) -> str | None:
    """What ``item`` expects, when ``value`` is not it; None when it is."""
    meta = item.metadata
    if meta["choices"] is not None:
        return None if value in meta["choices"] else f"one of {', '.join(meta['choices'])}"
    if meta["low"] is None and meta["high"] is None or value is None:
        return None
    low, high = meta["low"], meta["high"]
    inside = (low is None or (value > low if meta["low_open"] else value >= low)) and (
        high is None or (value < high if meta["high_open"] else value <= high))
    if inside:
        return None
    if item.type in ("int", "int | None"):
        return f"an integer from {low} to {high}" if high is not None else f"{low} or a larger integer"
    left, right = "(" if meta["low_open"] else "[", ")" if meta["high_open"] else "]"
    return f"a number in {left}{low}, {high}{right}" if high is not None else f"a number >= {low}"


def _parse_logged(item, text: str):
    """A logged param's text back as the field's value."""
    if item.name == "teachers":
        return tuple(json.loads(text)) if text else ()
    kind = item.type.split(" | ")[0]
    if text in ("", "None") and "None" in item.type:
        return None
    return {"int": int, "float": float, "bool": lambda v: v == "True"}.get(kind, str)(text)


def pretrained_for(mode: str, weights: str = "auto") -> bool:
    """Whether training starts from ImageNet weights: as ``weights`` says, or for ``auto`` unless ``mode`` is scratch."""
    return mode != "scratch" if weights == "auto" else weights == "imagenet"


def default_of(item):
    """The default of a dataclass field (``item``, from :func:`dataclasses.fields`)."""
    return item.default_factory() if item.default is MISSING else item.default


def field_default(name: str):
    """The default of :class:`TrainConfig` field ``name``."""
    return default_of(next(item for item in fields(TrainConfig) if item.name == name))


@contextmanager
def teacher_errors():
    """A teacher that cannot be used is a setting error, named as such."""
    try:
        yield
    except TeacherError as error:
        raise ConfigError(f"teacher {error}") from None
