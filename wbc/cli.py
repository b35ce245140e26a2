"""The ``wbc`` command line: train, evaluate, predict, list models."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from wbc.runtime import tune_malloc_and_reexec

DEFAULT_DATA_DIR = "../shared/data"


def _user_errors(command):
    """Turn the project's expected errors into one-line ``Error: ...`` messages (exit 1)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from wbc.data import DatasetError, ImageDecodeError
        from wbc.inference import ModelLoadError
        from wbc.models import PretrainedWeightsUnavailable, UnknownModelError
        from wbc.train import ConfigError

        try:
            return command(*args, **kwargs)
        except (
            ConfigError,
            DatasetError,
            ImageDecodeError,
            ModelLoadError,
            PretrainedWeightsUnavailable,
            UnknownModelError,
            FileNotFoundError,
        ) as error:
            raise click.ClickException(str(error)) from None

    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
def cli(verbose: bool) -> None:
    """White blood cell classification: train, evaluate and serve models, tracked in MLflow."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _data_dir_option(function):
    return click.option(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help="Folder that holds barcelona/{train,valid}/<class>/*.jpg.",
    )(function)


def training_options(function):
    """The options of ``wbc train`` (also used by ``wbc main``)."""
    from wbc.models import MODES, UNFREEZE_CHOICES, list_models

    options = [
        _data_dir_option,
        click.option("--arch", default="efficientnet_lite0", show_default=True, type=click.Choice(list_models())),
        click.option("--mode", default="finetune", show_default=True, type=click.Choice(MODES)),
        click.option("--epochs", default=4, show_default=True, type=click.IntRange(1, 1000)),
        click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096)),
        click.option("--lr", type=click.FloatRange(0, 10, min_open=True), help="Peak learning rate [default: by mode]."),
        click.option("--weight-decay", default=0.02, show_default=True, type=click.FloatRange(0, 10)),
        click.option("--label-smoothing", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True)),
        click.option("--image-size", type=click.IntRange(16, 1024), help="Input size in pixels [default: the model's]."),
        click.option("--head-epochs", default=1, show_default=True, type=click.IntRange(0), help="finetune: epochs of head-only training before unfreezing."),
        click.option("--unfreeze", default="all", show_default=True, type=click.Choice(UNFREEZE_CHOICES), help="finetune: what phase 2 unfreezes."),
        click.option("--backbone-lr-scale", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="finetune: backbone LR as a fraction of --lr."),
        click.option("--pretrained/--no-pretrained", default=None, help="[default: pretrained unless --mode scratch]"),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--max-time", type=click.FloatRange(0, min_open=True), help="Stop training after this many minutes."),
        click.option("--limit-per-class", default=0, show_default=True, type=click.IntRange(0), help="Use at most N images per class (0 = all)."),
        click.option("--num-workers", default=0, show_default=True, type=click.IntRange(0)),
        click.option("--cache-dir", type=click.Path(file_okay=False), help="Decoded-image cache [default: $WBC_CACHE_DIR or ~/.cache/wbc]."),
        click.option("--skip-bad-images", is_flag=True, help="Skip unreadable training images with a warning instead of failing."),
        click.option("--output-dir", default="outputs", show_default=True, type=click.Path(file_okay=False)),
        click.option("--experiment", default="wbc", show_default=True),
        click.option("--devices", default="1", show_default=True, help="Lightning devices (a count, or 'auto')."),
        click.option("--strategy", default="auto", show_default=True, help="Lightning strategy, e.g. ddp."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _config_from_options(options: dict):
    from wbc.train import TrainConfig

    devices = options.pop("devices")
    return TrainConfig(devices=int(devices) if devices.isdigit() else devices, **options)


@cli.command()
@training_options
@_user_errors
def train(**options) -> None:
    """Train a model; the run (params, metrics, reports, model) goes to MLflow."""
    from wbc.train import train as run_training

    result = run_training(_config_from_options(options))
    click.echo(
        f"run {result.run_id}: valid accuracy {result.best_val_acc:.4f}, macro-F1 {result.best_val_f1:.4f}, "
        f"{result.train_minutes:.1f} min\nbest checkpoint: {result.best_checkpoint}"
    )
    click.echo(result.evaluation.summary())


@cli.command()
@click.argument("model")
@_data_dir_option
@click.option("--split", default="valid", show_default=True, type=click.Choice(["train", "valid", "test"]))
@click.option("--output-dir", default="evaluation", show_default=True, type=click.Path(file_okay=False))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option("--track/--no-track", default=True, show_default=True, help="Log the evaluation as an MLflow run.")
@click.option("--experiment", default="wbc", show_default=True)
@_user_errors
def evaluate(model: str, data_dir: str, split: str, output_dir: str, batch_size: int, track: bool, experiment: str) -> None:
    """Score MODEL (checkpoint, exported folder or MLflow model URI) on a data split; write the reports."""
    from wbc.evaluation_run import evaluate_model

    evaluation, files = evaluate_model(
        model, data_dir, split, output_dir=output_dir, batch_size=batch_size, track=track, experiment=experiment
    )
    click.echo(evaluation.summary())
    click.echo("wrote " + ", ".join(str(path) for path in files))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model", required=True, help="Checkpoint, exported folder or MLflow model URI (models:/wbc-classifier@champion).")
@click.option("--output", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@_user_errors
def predict(paths: tuple[str, ...], model: str, output: str, batch_size: int) -> None:
    """Classify image files (or every file in folders); write a CSV and print the differential count."""
    from wbc.predict import differential_count, predict_files

    table = predict_files(paths, model, batch_size=batch_size)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    errors = table[table["error"] != ""]
    click.echo(differential_count(table).to_string(index=False))
    for _, row in errors.iterrows():
        click.echo(f"error: {row['error']}", err=True)
    click.echo(f"wrote {len(table)} rows ({len(errors)} unreadable) to {output}")


@cli.command("models")
def list_architectures() -> None:
    """List the model architectures."""
    from wbc.models import get_spec, list_models

    for name in list_models(include_aliases=False):
        spec = get_spec(name)
        click.echo(f"{name:20s} {spec.image_size:4d}px  {spec.description}")


def main() -> None:
    tune_malloc_and_reexec()
    cli(prog_name="wbc")


if __name__ == "__main__":
    sys.exit(main())
