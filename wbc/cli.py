"""The ``wbc`` command line: train, evaluate, predict, list models."""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from pathlib import Path

import click

from wbc.onnx_export import RUNTIMES
from wbc.recipes import (
    MAIN_RECIPE,
    ROBUST_AVERAGE_WEIGHTS,
    ROBUST_EPOCHS,
    ROBUST_STAGE,
    STAGE1_TIME_SHARE,
    TIME_BUDGET_MINUTES,
    stage1_minutes,
    stage2_minutes,
)

DEFAULT_DATA_DIR = "../shared/data"
DEFAULT_SELECTION_METRIC = "val_robust_acc"
"""The registry's metric (:data:`wbc.model_registry.DEFAULT_METRIC`; kept here so ``--help`` needs no MLflow import)."""


def _user_errors(command):
    """Turn the project's expected errors into one-line ``Error: ...`` messages (exit 1; a SIGTERM-stopped training 143)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from wbc.averaging import AveragingError
        from wbc.data import DatasetError, ImageDecodeError
        from wbc.inference import ModelLoadError
        from wbc.model_registry import RegistryError
        from wbc.models import PretrainedWeightsUnavailable, UnknownModelError
        from wbc.train import ConfigError, TrainingStopped

        try:
            return command(*args, **kwargs)
        except TrainingStopped as error:
            stopped = click.ClickException(str(error))
            stopped.exit_code = 128 + signal.SIGTERM
            raise stopped from None
        except (
            AveragingError,
            ConfigError,
            DatasetError,
            ImageDecodeError,
            ModelLoadError,
            PretrainedWeightsUnavailable,
            UnknownModelError,
            RegistryError,
            FileNotFoundError,
        ) as error:
            raise click.ClickException(str(error)) from None

    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
def cli(verbose: bool) -> None:
    """White blood cell classification: train, evaluate and serve models, tracked in MLflow."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


_tta_option = click.option(
    "--tta", is_flag=True, help="Average over the 8 flips/rotations of each image (8x slower)."
)
_int8_option = click.option(
    "--int8", is_flag=True, help="Also export the int8 quantization of the ONNX flavour (served with WBC_RUNTIME=onnx-int8)."
)
_runtime_option = click.option(
    "--runtime", default="auto", show_default=True, type=click.Choice(RUNTIMES),
    help="onnx: the model's ONNX flavour in ONNX Runtime; onnx-int8: its int8 quantization (faster, answers may differ); torch: PyTorch; auto: ONNX when the model has it.",
)


def _data_dir_option(function):
    return click.option(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help="Folder that holds barcelona/{train,valid}/<class>/*.jpg.",
    )(function)


def _option(flag: str, **settings):
    """A click option that also answers to its underscore spelling (``mlflow run -P foo_bar=1`` passes ``--foo_bar``)."""
    names = [flag] + ([flag.replace("-", "_").replace("__", "--", 1)] if "-" in flag[2:] else [])
    return click.option(*names, **settings)


def training_options(function=None, **defaults):
    """The options of ``wbc train``; ``wbc main`` uses them with the defaults of :data:`wbc.recipes.MAIN_RECIPE`."""
    if function is None:
        return functools.partial(training_options, **defaults)
    from wbc.data.settings import AUGMENTATIONS, SAMPLINGS
    from wbc.models import MODES, UNFREEZE_CHOICES, list_models

    recipe_settings_used = set()

    def default(name, value):
        recipe_settings_used.add(name)
        return defaults.get(name, value)

    options = [
        _data_dir_option,
        _option("--arch", default="efficientnet_lite0", show_default=True, type=click.Choice(list_models())),
        _option("--mode", default="finetune", show_default=True, type=click.Choice(MODES)),
        _option("--epochs", default=default("epochs", 6), show_default=True, type=click.IntRange(1, 1000)),
        _option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096)),
        _option("--lr", default=0.0, type=click.FloatRange(0, 10), help="Peak learning rate; 0 = by mode (scratch/transfer 3e-3, finetune 1e-3)."),
        _option("--weight-decay", default=0.02, show_default=True, type=click.FloatRange(0, 10)),
        _option("--label-smoothing", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True)),
        _option("--ema", default=default("ema", 0.0), show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Decay of an exponential moving average of the weights (e.g. 0.998), validated and kept instead of the raw weights; 0 = off."),
        _option("--image-size", default=default("image_size", 0), show_default=bool(default("image_size", 0)), type=click.IntRange(0, 1024), help="Input size in pixels; 0 = the model's own (e.g. 128 for efficientnet_lite0)."),
        _option("--augment", default=default("augment", "standard"), show_default=True, type=click.Choice(AUGMENTATIONS), help="standard: flips, rotations, light colour jitter; robust: + zoom, stain, light, blur, resolution and JPEG shifts."),
        _option("--sampling", default=default("sampling", "shuffle"), show_default=True, type=click.Choice(SAMPLINGS), help="shuffle: each image once per epoch; balanced: each class equally often (drawn with replacement)."),
        _option("--head-epochs", default=1, show_default=True, type=click.IntRange(0), help="finetune: epochs of head-only training before unfreezing."),
        _option("--unfreeze", default="all", show_default=True, type=click.Choice(UNFREEZE_CHOICES), help="finetune: what phase 2 unfreezes."),
        _option("--backbone-lr-scale", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="finetune: backbone LR as a fraction of --lr."),
        _option("--freeze-stages", default=default("freeze_stages", 0), show_default=True, type=click.IntRange(0), help="finetune: keep the backbone's first N stages (stem first) frozen; the backward pass stops above them (faster)."),
        _option("--weights", default="auto", show_default=True, type=click.Choice(["auto", "imagenet", "none"]), help="Initial weights; auto = imagenet unless --mode scratch."),
        _option("--init-from", default=None, metavar="MODEL", help="Start from this model's weights (checkpoint, exported folder, MLflow URI; same --arch), e.g. to fine-tune the champion further."),
        click.option("--teacher", "teachers", multiple=True, metavar="MODEL", help="Distil from this model (repeat for an ensemble; checkpoint, exported folder, MLflow URI): the loss mixes the labels with the teachers' mean probabilities."),
        _option("--distill-weight", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="With --teacher: the distillation loss's share of the training loss."),
        _option("--distill-temperature", default=2.0, show_default=True, type=click.FloatRange(0, 100, min_open=True), help="With --teacher: the temperature that softens both sides' probabilities."),
        _option("--seed", default=0, show_default=True, type=int),
        _option("--max-time", default=0.0, type=click.FloatRange(0), help="Stop training after this many minutes, with the learning-rate decay fitted to end then; 0 = no limit."),
        _option("--limit-per-class", default=0, show_default=True, type=click.IntRange(0), help="Use at most N images per class (0 = all)."),
        _option("--num-workers", default=0, show_default=True, type=click.IntRange(0)),
        _option("--cache-dir", type=click.Path(file_okay=False), help="Decoded-image cache [default: $WBC_CACHE_DIR or ~/.cache/wbc]."),
        click.option("--shiftbench/--no-shiftbench", default=True, show_default=True, help="After training, score the model on the shifted validation benchmark (val_robust_acc, what wbc register selects on)."),
        click.option("--onnx/--no-onnx", default=True, show_default=True, help="Export the logged model's ONNX flavour too (served faster by ONNX Runtime); --no-onnx saves the export's time for models you will not serve."),
        click.option("--int8/--no-int8", default=False, show_default=True, help="Also export an int8 quantization of the ONNX flavour (about 1.5x faster on CPU, answers may differ on ~1 % of images; served with WBC_RUNTIME=onnx-int8)."),
        _option("--skip-bad-images", is_flag=True, help="Skip unreadable training images with a warning instead of failing."),
        _option("--output-dir", default="outputs", show_default=True, type=click.Path(file_okay=False)),
        _option("--experiment", default="wbc", show_default=True),
        _option("--devices", default="1", show_default=True, help="Lightning devices (a count, or 'auto')."),
        _option("--strategy", default="auto", show_default=True, help="Lightning strategy, e.g. ddp."),
        _option("--resume", default=None, metavar="RUN_ID|last", help="Continue a killed or failed training run from its last checkpoint (same MLflow run, its logged settings)."),
    ]
    if unused := sorted(set(defaults) - recipe_settings_used):
        raise TypeError(f"training_options: no option takes its default from recipe setting(s) {unused}; wire them with default()")
    for option in reversed(options):
        function = option(function)
    return function


def _config_from_options(options: dict):
    """Map CLI values onto :class:`TrainConfig` (0 means "the default" for lr, image size and max time)."""
    from wbc.train import ConfigError, TrainConfig

    devices = options.pop("devices")
    if not (devices == "auto" or devices.isdigit() and int(devices) >= 1):
        raise ConfigError(f"devices={devices!r} is invalid: expected a positive integer or 'auto'")
    pretrained = {"auto": None, "imagenet": True, "none": False}[options.pop("weights")]
    for name in ("lr", "image_size", "max_time"):
        options[name] = options[name] or None
    return TrainConfig(devices=int(devices) if devices.isdigit() else devices, pretrained=pretrained, **options)


def _train_and_report(options: dict):
    from wbc.train import train as run_training

    result = run_training(_config_from_options(options))
    if result is None:  # a non-zero rank of a multi-process run
        return None
    click.echo(
        f"run {result.run_id}: valid accuracy {result.best_val_acc:.4f}, macro-F1 {result.best_val_f1:.4f}, "
        f"{result.train_minutes:.1f} min\nbest checkpoint: {result.best_checkpoint}"
    )
    click.echo(result.evaluation.summary())
    if result.shiftbench is not None:
        click.echo("shifted validation benchmark (percent):\n" + result.shiftbench.summary())
    return result


@cli.command()
@training_options
@_user_errors
def train(**options) -> None:
    """Train a model; the run (params, metrics, reports, model) goes to MLflow."""
    _train_and_report(options)


def _registry_options(function):
    for option in reversed(
        [
            click.option("--experiment", default="wbc,Default", show_default=True, help="Experiment(s) to search, comma-separated."),
            click.option("--metric", default=DEFAULT_SELECTION_METRIC, show_default=True, help="Higher is better; val_robust_acc = mean of clean and shifted validation accuracy."),
            click.option("--model-name", default="wbc-classifier", show_default=True),
            click.option("--alias", default="champion", show_default=True),
        ]
    ):
        function = option(function)
    return function


def _register_and_report(experiment: str, metric: str, model_name: str, alias: str) -> None:
    from wbc.model_registry import register_best
    from wbc.tracking import configure_tracking

    configure_tracking()
    registration = register_best(experiment=experiment, metric=metric, model_name=model_name, alias=alias)
    click.echo(
        f"{registration.model_name} version {registration.version} (run {registration.run_id}, "
        f"{registration.metric}={registration.value:.4f}) is now @{registration.alias}"
        + (f"; version {registration.previous_champion} is @previous" if registration.previous_champion else "")
    )
    click.echo(f"load it with: mlflow.pyfunc.load_model('models:/{registration.model_name}@{registration.alias}')")


@cli.command()
@_registry_options
@_user_errors
def register(experiment: str, metric: str, model_name: str, alias: str) -> None:
    """Register the experiment's best finished training run; make it champion if it beats the current one."""
    _register_and_report(experiment, metric, model_name, alias)


@cli.command("main")
@training_options(**MAIN_RECIPE)
@click.option("--robust-epochs", default=ROBUST_EPOCHS, show_default=True, type=click.IntRange(0, 1000),
              help="Stage 2: epochs continuing from stage 1 with the lab-to-lab shift augmentation (0 = no stage 2).")
@click.option("--time-budget", default=TIME_BUDGET_MINUTES, show_default=True, type=click.FloatRange(0),
              help=f"Minutes for the whole job (0 = no limit): stage 1 trains for at most {STAGE1_TIME_SHARE:.0%} of them (unless --max-time), "
                   "stage 2 for what is left after reserving its own evaluation and stage 3's; fewer epochs on a slow machine.")
@_user_errors
def main_job(robust_epochs: int, time_budget: float, **options) -> None:
    """The whole job: train (the documented recipe), then continue it with the shift augmentation, then
    average the two (as much of stage 2 as keeps valid accuracy within 0.3 points of the better stage);
    each stage is calibrated and scored on valid and on the shifted benchmark; register the best on
    clean + shifted accuracy (val_robust_acc) as champion. --time-budget caps the training of stages 1 and 2."""
    from wbc.model_registry import DEFAULT_METRIC, clean_accuracy_floor

    started = time.monotonic()
    if time_budget and not options["max_time"]:
        options["max_time"] = stage1_minutes(time_budget, robust_epochs)
        click.echo(f"time budget {time_budget:g} min: stage 1 trains for at most {options['max_time']:.1f} min")
    first = _train_and_report(dict(options))
    if first is None:
        return
    stage2_cap = None
    if robust_epochs and time_budget:
        elapsed = (time.monotonic() - started) / 60
        stage2_cap = stage2_minutes(time_budget, elapsed, max(elapsed - first.train_minutes, 0.0))
        if stage2_cap is None:
            click.echo(f"stages 2 and 3 skipped: {elapsed:.1f} of the {time_budget:g} min budget used by stage 1, too little "
                       "left for another stage and its evaluation (--time-budget 0 for no limit)")
            robust_epochs = 0
    if robust_epochs:
        click.echo(f"stage 2: {robust_epochs} epochs from run {first.run_id} with --augment robust"
                   + (f", training for at most {stage2_cap:.1f} min" if stage2_cap else ""))
        os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run`, stage 1 was the project's run; stage 2 gets its own
        second = dict(options, **ROBUST_STAGE, epochs=robust_epochs, init_from=f"runs:/{first.run_id}/model", teachers=(),
                      max_time=stage2_cap or options["max_time"])
        stage2 = _train_and_report(second)
        if stage2 is None:
            return
        min_accuracy = clean_accuracy_floor([first.best_val_acc, stage2.best_val_acc])
        click.echo(f"stage 3: weight average of stage 1 and stage 2, with the first of {', '.join(map(str, ROBUST_AVERAGE_WEIGHTS))} "
                   f"on stage 2 that keeps valid accuracy at or above {min_accuracy:.4f}")
        _average_and_report(f"runs:/{first.run_id}/model", f"runs:/{stage2.run_id}/model", ROBUST_AVERAGE_WEIGHTS,
                            options["data_dir"], options["experiment"], options["output_dir"], options["onnx"], options["int8"],
                            min_accuracy=min_accuracy, limit_per_class=options["limit_per_class"])
    _register_and_report(f"{options['experiment']},Default", DEFAULT_METRIC, "wbc-classifier", "champion")


def _shiftbench_and_report(model: str, data_dir: str, experiment: str, seed: int = 0, limit_per_class: int = 0,
                           tta: bool = False, batch_size: int = 64) -> None:
    from wbc.inference import Predictor
    from wbc.shiftbench import log_shiftbench, run_shiftbench
    from wbc.tracking import configure_tracking

    configure_tracking(experiment)
    predictor = Predictor.load(model, batch_size=batch_size, tta=tta)
    result = run_shiftbench(predictor, data_dir, seed=seed, limit_per_class=limit_per_class)
    run_id = log_shiftbench(result, model, data_dir, experiment, seed, tta, full=limit_per_class == 0)
    click.echo(result.summary())
    click.echo(f"shiftbench run {run_id}: shiftbench.csv, shiftbench.png")


def _average_and_report(first: str, second: str, weight, data_dir: str, experiment: str, output_dir: str,
                        onnx: bool = True, int8: bool = False, min_accuracy: float = 0.0, limit_per_class: int = 0) -> None:
    import mlflow

    from wbc.averaging import average_run

    run_id, logged = average_run(first, second, weight, data_dir, min_accuracy=min_accuracy, limit_per_class=limit_per_class,
                                 experiment=experiment, output_dir=output_dir, onnx=onnx, int8=int8)
    params = mlflow.get_run(run_id).data.params
    if "average_weights_tried" in params:
        click.echo(f"valid accuracy by weight on the second model (weight:accuracy): {params['average_weights_tried']}; "
                   f"kept {params['average_weight']}")
    click.echo(f"run {run_id}: valid accuracy {logged.evaluation.accuracy:.4f}, macro-F1 {logged.evaluation.macro_f1:.4f}")
    if logged.shiftbench is not None:
        click.echo("shifted validation benchmark (percent):\n" + logged.shiftbench.summary())


@cli.command()
@click.argument("first")
@click.argument("second")
@click.option("--weight", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Weight of SECOND (0 = FIRST, 1 = SECOND).")
@_data_dir_option
@click.option("--experiment", default="wbc", show_default=True)
@click.option("--output-dir", default="outputs", show_default=True, type=click.Path(file_okay=False))
@_int8_option
@_user_errors
def average(first: str, second: str, weight: float, data_dir: str, experiment: str, output_dir: str, int8: bool) -> None:
    """Average the weights of two models of the same architecture (e.g. a model and its continuation with
    --augment robust) into a new run: calibrated, scored on valid and the shifted benchmark, registrable."""
    _average_and_report(first, second, weight, data_dir, experiment, output_dir, int8=int8)


@cli.command()
@click.argument("model")
@_data_dir_option
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit-per-class", default=0, show_default=True, type=click.IntRange(0), help="Use at most N validation images per class (0 = all).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option("--experiment", default="wbc", show_default=True)
@_tta_option
@_user_errors
def shiftbench(model: str, data_dir: str, seed: int, limit_per_class: int, batch_size: int, experiment: str, tta: bool) -> None:
    """Score MODEL on the validation split under seeded lab-to-lab shifts (zoom, blur, JPEG, resolution,
    stain, light); log the table and chart. The standard benchmark (all of valid, seed 0, no TTA) also
    records val_shift_acc / val_robust_acc on the model's training run (training runs do this themselves)."""
    _shiftbench_and_report(model, data_dir, experiment, seed, limit_per_class, tta, batch_size)


@cli.command()
@click.argument("run_id")
@_data_dir_option
@click.option("--target-error", default=0.005, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Error rate allowed among cells not flagged for review (valid).")
@click.option("--flag-rate", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Share of clean validation images the out-of-distribution flag may fire on.")
@_int8_option
@_user_errors
def calibrate(run_id: str, data_dir: str, target_error: float, flag_rate: float, int8: bool) -> None:
    """Fit temperature, review threshold and OOD threshold on valid for training run RUN_ID's model, and
    log the calibrated model, with its ONNX flavour, in that run (new trainings have both already)."""
    from wbc.calibration_run import calibrate_run
    from wbc.tracking import configure_tracking

    configure_tracking()
    calibration = calibrate_run(run_id, data_dir, target_error, flag_rate, int8=int8)
    click.echo(
        f"temperature {calibration.temperature:.3f}; ECE {calibration.ece_before:.4f} -> {calibration.ece_after:.4f}; "
        f"review below confidence {calibration.review_threshold:.4f} ({100 * (1 - calibration.accepted_fraction):.1f} % of valid, "
        + ("no cell accepted" if calibration.accepted_error is None else f"error among the rest {100 * calibration.accepted_error:.2f} %")
        + f"); OOD threshold {calibration.ood_threshold:.3f}"
    )
    from mlflow.exceptions import MlflowException

    from wbc.model_registry import DEFAULT_MODEL_NAME, replace_run_versions

    click.echo(f"logged the calibrated model (ONNX flavour{' and its int8 quantization' if int8 else ''} included) in run {run_id}")
    try:
        replaced = replace_run_versions(run_id)
    except MlflowException as error:
        raise click.ClickException(f"the model is logged, but registering it failed ({error.message.splitlines()[0]}): run wbc register") from None
    if replaced:
        click.echo(f"registered it as {DEFAULT_MODEL_NAME} version {replaced}, with the aliases of the run's earlier versions")
    else:
        click.echo("no version of this run was registered: register it with wbc register")


@cli.command()
@click.argument("model")
@_data_dir_option
@click.option("--split", default="valid", show_default=True, type=click.Choice(["train", "valid", "test"]))
@click.option("--output-dir", default="evaluation", show_default=True, type=click.Path(file_okay=False))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option("--track/--no-track", default=True, show_default=True, help="Log the evaluation as an MLflow run.")
@click.option("--experiment", default="wbc", show_default=True)
@_tta_option
@_runtime_option
@_user_errors
def evaluate(model: str, data_dir: str, split: str, output_dir: str, batch_size: int, track: bool, experiment: str, tta: bool, runtime: str) -> None:
    """Score MODEL (checkpoint, exported folder or MLflow model URI) on a data split; write the reports."""
    from wbc.evaluation_run import evaluate_model

    evaluation, files = evaluate_model(
        model, data_dir, split, output_dir=output_dir, batch_size=batch_size, track=track, experiment=experiment, tta=tta,
        runtime=runtime,
    )
    click.echo(evaluation.summary())
    click.echo("wrote " + ", ".join(str(path) for path in files))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model", required=True, help="Checkpoint, exported folder or MLflow model URI (models:/wbc-classifier@champion).")
@click.option("--output", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@_tta_option
@_runtime_option
@_user_errors
def predict(paths: tuple[str, ...], model: str, output: str, batch_size: int, tta: bool, runtime: str) -> None:
    """Classify image files (or every file in folders); write a CSV and print the differential count."""
    from wbc.predict import differential_count, out_of_distribution, predict_files

    table = predict_files(paths, model, batch_size=batch_size, tta=tta, runtime=runtime)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    errors = table[table["error"] != ""]
    unlike = out_of_distribution(table)
    click.echo(differential_count(table).to_string(index=False))
    for _, row in unlike.iterrows():
        click.echo(f"not counted, unlike the training images (in_distribution_score {row['in_distribution_score']:.2f}): {row['file']}")
    for _, row in errors.iterrows():
        click.echo(f"error: {row['error']}", err=True)
    review = int((table["review"] == True).sum())  # noqa: E712
    click.echo(
        f"wrote {len(table)} rows ({len(errors)} unreadable, {len(unlike)} out of distribution, {review} to review) to {output}"
    )


def _parse_study(text: str) -> list[tuple[str, str]]:
    from wbc.models import MODES, get_spec

    entries = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        arch, _, mode = item.partition(":")
        if mode not in MODES:
            raise click.BadParameter(f"{item!r}: expected ARCH:MODE with MODE one of {', '.join(MODES)}", param_hint="--models")
        entries.append((get_spec(arch).name, mode))
    return entries


@cli.command()
@_data_dir_option
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(2, 1000), help="Per model (finetune: 1 head + the rest).")
@click.option("--image-size", default=0, type=click.IntRange(0, 1024), help="0 = each model's own.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option("--limit-per-class", default=0, show_default=True, type=click.IntRange(0))
@click.option("--models", "models_text", default="", help="ARCH:MODE list, comma-separated [default: the full study].")
@click.option("--experiment", default="wbc-compare", show_default=True)
@click.option("--output-dir", default="outputs", show_default=True, type=click.Path(file_okay=False))
@_user_errors
def compare(data_dir, epochs, image_size, batch_size, limit_per_class, models_text, experiment, output_dir) -> None:
    """The course study: scratch CNN, transfer vs fine-tune for ResNet-50, AlexNet, VGG-16, Lite0; one run with the table."""
    from wbc.compare import STUDY, run_study
    from wbc.train import TrainConfig

    config = TrainConfig(data_dir=data_dir, epochs=epochs, image_size=image_size or None, batch_size=batch_size,
                         limit_per_class=limit_per_class, output_dir=output_dir, shiftbench=False).validate()
    run_id, table = run_study(config, _parse_study(models_text) or STUDY, experiment=experiment)
    click.echo(table.drop(columns=["run_id"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    click.echo(f"study run {run_id} (experiment {experiment}): comparison.csv and comparison.png")


@cli.command()
@click.option("--model", "model", default="models:/wbc-classifier@champion", show_default=True, help="MLflow model URI, exported folder or checkpoint.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@_user_errors
def app(model: str, host: str, port: int) -> None:
    """Start the web page: upload cell images or a zip, see labels, confidence, Grad-CAM, flags, the differential count."""
    import uvicorn

    from wbc.app import create_app
    from wbc.tracking import configure_tracking

    configure_tracking()
    web_app = create_app(model)
    click.echo(f"wbc app: open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ (Ctrl+C stops it)")
    uvicorn.run(web_app, host=host, port=port, log_level="warning")


@cli.command("models")
def list_architectures() -> None:
    """List the model architectures."""
    from wbc.models import get_spec, list_models

    for name in list_models(include_aliases=False):
        spec = get_spec(name)
        click.echo(f"{name:20s} {spec.image_size:4d}px  {spec.description}")
