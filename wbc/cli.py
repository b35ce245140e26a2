"""The ``wbc`` command line: options and printing only; the work is in :mod:`wbc.jobs`, :mod:`wbc.serving`, :mod:`wbc.app`.

The options of ``wbc train`` and ``wbc main`` are derived from :class:`~wbc.training.config.TrainConfig`'s fields
(their defaults, ranges, choices and help), so each default is written once. Every expected failure is a
:class:`~wbc.errors.WBCError`, printed as one ``Error: ...`` line.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import fields
from pathlib import Path

import click

from wbc import defaults
from wbc._progress import quiet_downloads_in_logs
from wbc.errors import WBCError, server_refusal, version_skew
from wbc.inference.onnx import RUNTIMES
from wbc.training.config import TrainConfig, default_of
from wbc.training.recipes import FEW_SHOT_STEPS, LABEL_FREE_SOURCE_WEIGHT, MainSettings, main_config


def _option_names(flag: str) -> list[str]:
    """The flag, and its underscore spelling (``mlflow run -P foo_bar=1`` passes ``--foo_bar``)."""
    return [flag] + ([flag.replace("-", "_").replace("__", "--", 1)] if "-" in flag[2:] and "/" not in flag else [])


def _option(flag: str, *names, **settings):
    """``click.option`` answering to ``flag`` and its underscore spelling."""
    return click.option(*_option_names(flag), *names, **settings)


def _user_errors(command):
    """Turn the project's expected errors into one-line ``Error: ...`` messages (the error's exit code)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except WBCError as error:
            failure = click.ClickException(str(error))
            failure.exit_code = error.exit_code
            raise failure from None
        except Exception as error:
            explained = (server_refusal(error) or version_skew(error)) if type(error).__module__.startswith("mlflow") else None
            if explained is None:
                raise
            raise click.ClickException(explained) from None

    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
def cli(verbose: bool) -> None:
    """White blood cell classification: train, evaluate and serve models, tracked in MLflow."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_downloads_in_logs()
    _one_line_warnings()


def _one_line_warnings() -> None:
    """wbc's own warnings on stderr as one line, ``warning: <message>``, without Python's file, line and source
    line; other packages' warnings as Python shows them."""
    import warnings

    package = Path(__file__).resolve().parent
    shown = warnings.showwarning
    if getattr(shown, "one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(package):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show.one_line = True
    warnings.showwarning = show


_output_dir_option = _option(
    "--output-dir", default=defaults.OUTPUT_DIR, show_default=True, type=click.Path(file_okay=False),
    help="Where each run writes its exported model: <output dir>/<run id>/model.",
)
_tta_option = click.option(
    "--tta", is_flag=True, help="Score the mean logits of the 8 flips/rotations of each image (8x slower), with flags fitted on such means."
)
_int8_option = click.option(
    "--int8", is_flag=True, help="Also export the int8 quantization of the ONNX flavour (served with WBC_RUNTIME=onnx-int8)."
)
_runtime_option = click.option(
    "--runtime", default="auto", show_default=True, type=click.Choice(RUNTIMES),
    help="onnx: the model's ONNX flavour in ONNX Runtime; onnx-int8: its int8 quantization (faster, answers may differ); torch: PyTorch; auto: ONNX when the model has it.",
)
_data_dir_option = _option(
    "--data-dir", default=defaults.DATA_DIR, show_default=True, type=click.Path(file_okay=False),
    help="Folder that holds barcelona/{train,valid}/<class>/*.jpg.",
)


def _fetch_data(data_dir: str) -> None:
    """``wbc download``: the PBC archive's train and valid splits under ``data_dir`` (nothing when they are there)."""
    from wbc.data import BarcelonaDataset

    for split in ("train", "valid"):
        dataset = BarcelonaDataset(data_dir, split, download=True)
        click.echo(f"{dataset.split_dir}: {len(dataset)} images")


def _downloads_data(command):
    """Add ``--download``: fetch the PBC archive into ``--data-dir`` first, as ``wbc download`` does."""

    @functools.wraps(command)
    def wrapper(*args, download: bool, **kwargs):
        if download:
            _fetch_data(kwargs["data_dir"])
        return command(*args, **kwargs)

    return click.option("--download", is_flag=True, help="First download the public PBC archive into --data-dir "
                        "when it is not there (as wbc download).")(wrapper)


_cache_dir_option = _option(
    "--cache-dir", type=click.Path(file_okay=False), help="Decoded-image cache [default: $WBC_CACHE_DIR or ~/.cache/wbc]."
)
_experiment_option = click.option("--experiment", default=defaults.EXPERIMENT, show_default=True, help="MLflow experiment.")




def _click_option(item, default, hidden: bool = False):
    """The click option of a settings field (:func:`wbc.training.config.setting`), with ``default``."""
    meta = item.metadata
    flag = meta["flag"] or "--" + item.name.replace("_", "-")
    settings = dict(help=meta["help"], metavar=meta["metavar"], hidden=hidden)
    if meta["default_text"] and default == default_of(item):
        settings["show_default"] = meta["default_text"]
    else:
        settings["show_default"] = default not in (None, (), "")
    kind = item.type.split(" | ")[0]
    if kind == "bool":
        return click.option(f"{flag}/--no-{flag[2:]}", item.name, default=default, **settings)
    if kind.startswith("tuple"):
        return click.option(flag, item.name, multiple=True, default=default, **settings)
    if meta["choices"] is not None:
        settings["type"] = click.Choice(meta["choices"])
    elif item.name == "arch":
        from wbc.models import list_models

        settings["type"] = click.Choice(list_models())
    elif item.name.endswith("_dir"):
        settings["type"] = click.Path(file_okay=False)
    elif kind in ("int", "float") and (meta["low"] is not None or meta["high"] is not None):
        bounds = dict(min=meta["low"], max=meta["high"], min_open=meta["low_open"], max_open=meta["high_open"])
        settings["type"] = click.IntRange(**bounds) if kind == "int" else click.FloatRange(**bounds)
    return click.option(*_option_names(flag), item.name, default=default, **settings)


def settings_options(settings_class, defaults_from=None, hidden: tuple[str, ...] = ()):
    """A decorator that adds one option per field of ``settings_class`` that has one; defaults from the instance
    ``defaults_from`` (default: the class's own); the ``hidden`` ones are accepted but not listed in ``--help``."""

    def decorate(function):
        for item in reversed(fields(settings_class)):
            if not item.metadata.get("option"):
                continue
            default = getattr(defaults_from, item.name) if defaults_from is not None else default_of(item)
            function = _click_option(item, default, hidden=item.name in hidden)(function)
        return function

    return decorate


@cli.command()
@settings_options(TrainConfig)
@_user_errors
@_downloads_data
def train(**options) -> None:
    """Train a model; the run (params, metrics, reports, model) goes to MLflow."""
    from wbc.jobs.train import train as run_training

    result = run_training(TrainConfig(**options))
    if result is not None:  # None on the other ranks of a multi-process run
        click.echo(result.summary())


def _registry_options(function):
    for option in reversed(
        [
            click.option("--experiment", default=f"{defaults.EXPERIMENT},Default", show_default=True, help="Experiment(s) to search, comma-separated."),
            click.option("--metric", default=defaults.SELECTION_METRIC, show_default=True, help="Higher is better; val_robust_acc = mean of clean and shifted validation accuracy."),
            _option("--model-name", default=defaults.MODEL_NAME, show_default=True),
            click.option("--alias", default=defaults.CHAMPION_ALIAS, show_default=True),
        ]
    ):
        function = option(function)
    return function


def _model_line(model: str) -> str:
    """``model``, and for a registered name or alias the version (and run) it means now."""
    from wbc.tracking.registry import version_line

    line = version_line(model)
    return model if line is None else f"{model} = {line}"


def _registration_lines(registration) -> str:
    return (
        f"{registration.model_name} version {registration.version} (run {registration.run_id}, "
        f"{registration.metric}={registration.value:.4f}) is now @{registration.alias}"
        + (f"; version {registration.previous_champion} is @previous" if registration.previous_champion else "")
        + f"\nload it with: mlflow.pyfunc.load_model('models:/{registration.model_name}@{registration.alias}')"
    )


@cli.command()
@_registry_options
@_user_errors
def register(experiment: str, metric: str, model_name: str, alias: str) -> None:
    """Register the experiment's best finished training run; make it champion if it beats the current one."""
    from wbc.tracking.registry import register_best
    from wbc.tracking.runs import configure_tracking

    configure_tracking(experiment=None)
    click.echo(_registration_lines(register_best(experiment=experiment, metric=metric, model_name=model_name, alias=alias)))


@cli.command("main")
@settings_options(TrainConfig, defaults_from=main_config(), hidden=("shiftbench",))
@settings_options(MainSettings)
@_user_errors
@_downloads_data
def main_job(robust_epochs: int, time_budget: float, **options) -> None:
    """The whole job: train (the documented recipe), then continue it with the shift augmentation, then
    average the two (as much of stage 2 as keeps valid accuracy within 0.3 points of the better stage);
    each stage is calibrated and scored on valid and on the shifted benchmark; register the best on
    clean + shifted accuracy (val_robust_acc) as champion. --time-budget caps the training of stages 1 and 2;
    --resume continues stage 1."""
    from wbc.jobs.main import run_main

    result = run_main(TrainConfig(**options), MainSettings(robust_epochs, time_budget), echo=click.echo)
    if result is not None:
        click.echo(_registration_lines(result.registration))


@cli.command()
@click.argument("first")
@click.argument("second")
@click.option("--weight", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Weight of SECOND (0 = FIRST, 1 = SECOND).")
@_data_dir_option
@_experiment_option
@_output_dir_option
@_cache_dir_option
@_int8_option
@_user_errors
@_downloads_data
def average(first: str, second: str, weight: float, data_dir: str, experiment: str, output_dir: str, cache_dir: str | None,
            int8: bool) -> None:
    """Average the weights of two models of the same architecture (e.g. a model and its continuation with
    --augment robust) into a new run: calibrated, scored on valid and the shifted benchmark, registrable."""
    from wbc.jobs.average import average_run

    averaged = average_run(first, second, weight, data_dir, experiment=experiment, output_dir=output_dir, int8=int8,
                           cache_dir=cache_dir)
    click.echo(averaged.summary())


@cli.command()
@click.argument("model", default=defaults.CHAMPION_URI)
@_data_dir_option
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the shifts; the standard benchmark is seed 0.")
@_option("--limit-per-class", default=0, show_default=True, type=click.IntRange(0), help="Use at most N validation images per class (0 = all).")
@_option("--batch-size", default=defaults.SCORING_BATCH, show_default=True, type=click.IntRange(1, 4096))
@_experiment_option
@_cache_dir_option
@_tta_option
@_option("--lab-images", multiple=True, type=click.Path(exists=True, file_okay=False),
         help="A labelled folder of another lab's cells (<folder>/<class>/<image>) scored as a real-shift row; repeatable. "
              "Default: DATA_DIR/other-lab when it is there.")
@_user_errors
@_downloads_data
def shiftbench(model: str, data_dir: str, seed: int, limit_per_class: int, batch_size: int, experiment: str,
               cache_dir: str | None, tta: bool, lab_images: tuple[str, ...]) -> None:
    """Score MODEL (default the champion) on the validation split under seeded lab-to-lab shifts (zoom, blur, JPEG, resolution,
    stain, light), and on other labs' labelled cells as real-shift rows; log the table and chart. The standard benchmark
    (all of valid, seed 0, no TTA) also records val_shift_acc / val_robust_acc on the model's training run (training runs
    do this themselves)."""
    from wbc.evaluation.shiftbench import run_shiftbench
    from wbc.inference import Predictor
    from wbc.jobs.shiftbench import log_shiftbench
    from wbc.tracking.runs import configure_tracking

    configure_tracking(experiment)
    predictor = Predictor.load(model, batch_size=batch_size, tta=tta)
    result = run_shiftbench(predictor, data_dir, seed=seed, limit_per_class=limit_per_class, cache_dir=cache_dir,
                            labs=list(lab_images) or None)
    run_id = log_shiftbench(result, model, data_dir, experiment, tta)
    click.echo(f"model: {_model_line(model)}")
    click.echo("shifted validation benchmark (percent):\n" + result.summary())
    click.echo(f"shiftbench run {run_id}: shiftbench.csv, shiftbench.png")


@cli.command()
@click.argument("run_id")
@_data_dir_option
@_option("--target-error", default=0.005, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Error rate allowed among cells not flagged for review (valid).")
@_option("--flag-rate", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True), help="Share of clean validation images the out-of-distribution flag may fire on.")
@_cache_dir_option
@_int8_option
@_user_errors
@_downloads_data
def calibrate(run_id: str, data_dir: str, target_error: float, flag_rate: float, cache_dir: str | None, int8: bool) -> None:
    """Fit temperature, review threshold and OOD threshold on valid for training run RUN_ID's model, for one view and
    for --tta's 8, and log the calibrated model, with its ONNX flavour, in that run (new trainings have both already)."""
    from mlflow.exceptions import MlflowException

    from wbc.jobs.calibrate import calibrate_run
    from wbc.tracking.registry import DEFAULT_MODEL_NAME, replace_run_versions
    from wbc.tracking.runs import configure_tracking

    configure_tracking(experiment=None)
    calibration = calibrate_run(run_id, data_dir, target_error, flag_rate, int8=int8, cache_dir=cache_dir)
    click.echo(
        f"temperature {calibration.temperature:.3f}; ECE {calibration.ece_before:.4f} -> {calibration.ece_after:.4f}; "
        f"review below confidence {calibration.review_threshold:.4f} ({100 * (1 - calibration.accepted_fraction):.1f} % of valid, "
        + ("no cell accepted" if calibration.accepted_error is None else f"error among the rest {100 * calibration.accepted_error:.2f} %")
        + f"); OOD threshold {calibration.ood_threshold:.3f}"
        + ("" if calibration.tta is None else f"; with --tta: temperature {calibration.tta.temperature:.3f}, "
           f"OOD threshold {calibration.tta.ood_threshold:.3f}")
    )
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
@click.argument("model", default=defaults.CHAMPION_URI)
@click.option("--model", "model_option", default=None, metavar="MODEL", help="MODEL given as an option, as the other commands take it.")
@_data_dir_option
@click.option("--split", default="valid", show_default=True, type=click.Choice(["train", "valid", "test"]),
              help="The PBC split to score (test is the held-out set, not shipped).")
@click.option("--images", type=click.Path(), default=None,
              help="Score a lab's labelled folder instead of a split: <folder>/<class>/<image>, any subset of the classes.")
@_option("--output-dir", default=defaults.EVALUATION_DIR, show_default=True, type=click.Path(file_okay=False),
         help="Where the reports and predictions.csv are written (files of the same names are replaced).")
@_option("--batch-size", default=defaults.SCORING_BATCH, show_default=True, type=click.IntRange(1, 4096))
@click.option("--track/--no-track", default=True, show_default=True, help="Log the evaluation as an MLflow run.")
@_experiment_option
@_cache_dir_option
@_tta_option
@_runtime_option
@_option("--skip-bad-images", is_flag=True, help="Leave unreadable images out, with a warning that counts them, instead of stopping.")
@_user_errors
@_downloads_data
def evaluate(model: str, model_option: str | None, data_dir: str, split: str, images: str | None, output_dir: str,
             batch_size: int, track: bool, experiment: str, cache_dir: str | None, tta: bool, runtime: str,
             skip_bad_images: bool) -> None:
    """Score MODEL (checkpoint, exported folder or MLflow model URI; default the champion) on a data split, or on a
    lab's labelled folder (--images: accuracy over the eight classes and over the classes present, and how the flags
    fell); write the reports and one row per image."""
    from wbc.jobs.evaluate import evaluate_model

    if model_option is not None:
        if model != defaults.CHAMPION_URI and model != model_option:
            raise click.UsageError(f"two models given: {model} and --model {model_option}; give one")
        model = model_option

    evaluation, files = evaluate_model(
        model, data_dir, split, images=images, output_dir=output_dir, batch_size=batch_size, track=track,
        experiment=experiment, tta=tta, runtime=runtime, cache_dir=cache_dir, skip_bad_images=skip_bad_images,
    )
    click.echo(f"model: {_model_line(model)}")
    click.echo(evaluation.summary())
    click.echo("wrote " + ", ".join(str(path) for path in files))
    if track:
        import mlflow

        click.echo(f"logged as run {mlflow.last_active_run().info.run_id} (experiment {experiment})")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model", default=defaults.CHAMPION_URI, show_default=True, help="Checkpoint, exported folder or MLflow model URI.")
@click.option("--output", default="predictions.csv", show_default=True, type=click.Path(dir_okay=False))
@_option("--batch-size", default=defaults.SCORING_BATCH, show_default=True, type=click.IntRange(1, 4096))
@_tta_option
@_runtime_option
@click.option("--fields", is_flag=True, help="Each image is a smear field: find its white cells, classify each, count them "
              "per 100 white cells (without it each image is one cell, as an analyser exports it).")
@click.option("--annotated", type=click.Path(file_okay=False), default=None,
              help="With --fields: folder for an annotated PNG per field [default: <output>_annotated/ beside the CSV].")
@_option("--max-cells", default=None, type=click.IntRange(1), help="With --fields: cells kept per field, the highest "
              "scoring, with a warning when more are found [default: wbc.finding.MAX_CELLS].")
@_user_errors
def predict(paths: tuple[str, ...], model: str, output: str, batch_size: int, tta: bool, runtime: str, fields: bool,
            annotated: str | None, max_cells: int | None) -> None:
    """Classify image files (or every file in folders); write a CSV and print the differential count."""
    from wbc.serving.predict import predict_files
    from wbc.serving.tables import differential_count, out_of_distribution
    from wbc.tracking.runs import configure_tracking

    if not fields and (annotated or max_cells):
        raise click.UsageError("--annotated and --max-cells go with --fields")
    configure_tracking(experiment=None)
    if fields:
        _predict_fields(paths, model, output, batch_size, tta, runtime, annotated, max_cells)
        return
    table = predict_files(paths, model, batch_size=batch_size, tta=tta, runtime=runtime)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    errors = table[table["error"] != ""]
    unlike = out_of_distribution(table)
    click.echo(differential_count(table).to_string(index=False))
    for _, row in unlike.iterrows():
        click.echo(f"not counted, unfamiliar to the model (in_distribution_score {row['in_distribution_score']:.2f}): {row['file']}")
    for _, row in errors.iterrows():
        click.echo(f"error: {row['error']}", err=True)
    review = int((table["review"] == True).sum())  # noqa: E712
    scored = table[table["error"] == ""]
    flags = (f"{len(unlike)} out of distribution, {review} to review" if scored["in_distribution"].notna().all()
             else "flags unknown: no thresholds for this model" + (" with --tta" if tta else "") + "; every cell counted")
    click.echo(f"wrote {len(table)} rows ({len(errors)} unreadable, {flags}) to {output}")
    click.echo(f"model: {_model_line(model)}")


def _predict_fields(paths, model, output, batch_size, tta, runtime, annotated, max_cells) -> None:
    from wbc.finding import MAX_CELLS
    from wbc.serving.fields import differential, predict_field_files
    from wbc.serving.tables import out_of_distribution

    output = Path(output)
    annotated_dir = Path(annotated) if annotated else output.with_name(f"{output.stem}_annotated")
    table = predict_field_files(paths, model, batch_size=batch_size, tta=tta, runtime=runtime, annotated_dir=annotated_dir,
                                max_cells=max_cells or MAX_CELLS, say=lambda line: click.echo(line, err=True))
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    counts = differential(table)
    counts_path = output.with_name(f"{output.stem}_differential.csv")
    counts.to_csv(counts_path, index=False)
    errors = table[table["error"] != ""]
    for _, row in errors.iterrows():
        click.echo(f"error: {row['error']}", err=True)
    whites = table[table["kind"] == "white"]
    review = int((whites["review"] == True).sum())  # noqa: E712
    unlike = len(out_of_distribution(whites))
    click.echo("per 100 white cells:")
    click.echo(counts[counts["file"] == "all"].drop(columns="file").to_string(index=False))
    fields_read = table.loc[table["error"] == "", "file"].nunique()
    click.echo(f"wrote {len(whites)} white cells and {int((table['kind'] == 'platelet').sum())} platelets from "
               f"{fields_read} fields ({len(errors)} unreadable; {unlike} out of distribution, {review} to review) to "
               f"{output}, the differential per file to {counts_path}, annotated fields to {annotated_dir}/")
    click.echo(f"model: {_model_line(model)}")


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
@_option("--image-size", default=0, type=click.IntRange(0, 1024), help="0 = each model's own.")
@_option("--batch-size", default=defaults.SCORING_BATCH, show_default=True, type=click.IntRange(1, 4096))
@_option("--limit-per-class", default=0, show_default=True, type=click.IntRange(0))
@click.option("--models", "models_text", default="", help="ARCH:MODE list, comma-separated [default: the full study].")
@click.option("--experiment", default=defaults.COMPARE_EXPERIMENT, show_default=True)
@_output_dir_option
@_user_errors
@_downloads_data
def compare(data_dir, epochs, image_size, batch_size, limit_per_class, models_text, experiment, output_dir) -> None:
    """The course study: scratch CNN, transfer vs fine-tune for ResNet-50, AlexNet, VGG-16, Lite0; one run with the table."""
    from wbc.jobs.compare import STUDY, run_study

    config = TrainConfig(data_dir=data_dir, epochs=epochs, image_size=image_size, batch_size=batch_size,
                           limit_per_class=limit_per_class, output_dir=output_dir, shiftbench=False,
                           tta_thresholds=False).validate()
    run_id, table = run_study(config, _parse_study(models_text) or STUDY, experiment=experiment)
    click.echo(table.drop(columns=["run_id"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    click.echo(f"study run {run_id} (experiment {experiment}): comparison.csv and comparison.png")


@cli.command()
@click.option("--model", "model", default=defaults.CHAMPION_URI, show_default=True, help="MLflow model URI, exported folder or checkpoint.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@_option("--auth-file", envvar="WBC_APP_AUTH_FILE", type=click.Path(dir_okay=False),
         help="Logins file (wbc app-login writes it); needed on any address but loopback. Env: WBC_APP_AUTH_FILE.")
@_tta_option
@_user_errors
def app(model: str, host: str, port: int, auth_file: str | None, tta: bool) -> None:
    """Start the web page: upload cell images or a zip, see labels, confidence, Grad-CAM, flags, the differential count.
    On an address other machines reach, every page but /health needs a login from --auth-file."""
    import uvicorn

    from wbc.app.auth import AUTH_FILE_VARIABLE, AuthConfigError, is_loopback, read_logins
    from wbc.app.server import check_port_free, create_app
    from wbc.tracking.runs import configure_tracking

    if auth_file is None and not is_loopback(host):
        raise AuthConfigError(f"wbc app on {host} is open to other machines and needs logins: create them with "
                              f"wbc app-login NAME --auth-file FILE, then start with --auth-file FILE (or {AUTH_FILE_VARIABLE}=FILE)")
    logins = read_logins(auth_file) if auth_file else None
    check_port_free(host, port)  # before the model loads
    configure_tracking(experiment=None)
    web_app = create_app(model, logins=logins, tta=tta)
    click.echo(f"model: {_model_line(model)}")
    click.echo(f"wbc app: open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ (Ctrl+C stops it)")
    uvicorn.run(web_app, host=host, port=port, log_level="warning")


@cli.command("app-login")
@click.argument("name")
@_option("--auth-file", envvar="WBC_APP_AUTH_FILE", required=True, type=click.Path(dir_okay=False),
         help="The logins file wbc app reads (created if missing, readable by its owner only). Env: WBC_APP_AUTH_FILE.")
@click.password_option(help="Prompted for (twice) unless piped in; never pass it on a command line.")
@_user_errors
def app_login(name: str, auth_file: str, password: str) -> None:
    """Add login NAME to the web page's logins file, or set a new password for it."""
    from wbc.app.auth import add_login

    new = add_login(auth_file, name, password)
    click.echo(f"{'added' if new else 'changed the password of'} login {name} in {auth_file}")


@cli.command()
@click.argument("images", type=click.Path())
@click.option("--alias", required=True, help="The lab's alias for the adapted version (e.g. lab-a; never champion).")
@click.option("--model", "model", default=defaults.CHAMPION_URI, show_default=True, help="The model to adapt.")
@_data_dir_option
@_experiment_option
@_output_dir_option
@_option("--flag-rate", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
         help="Share of the lab's cells the out-of-distribution flag may fire on: of the labelled cells the model "
         "gets right when at least 10 are left to calibrate on, else of all the lab's images.")
@_option("--labelled-per-class", default=0, show_default=True, type=click.IntRange(0),
         help="Fine-tune on up to N labelled cells of each class (IMAGES as <class>/<image>); the rest measure (none left: not measured). 0 = labels only measure and calibrate.")
@click.option("--steps", default=FEW_SHOT_STEPS, show_default=True, type=click.IntRange(1), help="With --labelled-per-class: fine-tuning steps (16 images each).")
@click.option("--seed", default=0, show_default=True, type=int, help="Which cells fine-tune and which measure; the augmentation.")
@_option("--source-weight", default=None, type=click.FloatRange(0, 1),
         help=f"Share of PBC's batch-norm statistics kept beside the lab's [default: {LABEL_FREE_SOURCE_WEIGHT:g}; "
         "0 with --labelled-per-class].")
@click.option("--onnx/--no-onnx", default=True, show_default=True, help="Export the ONNX flavour too.")
@_cache_dir_option
@_user_errors
@_downloads_data
def adapt(images: str, alias: str, model: str, data_dir: str, experiment: str, output_dir: str, flag_rate: float,
          labelled_per_class: int, steps: int, seed: int, source_weight: float | None, onnx: bool, cache_dir: str | None) -> None:
    """Adapt MODEL to a lab's IMAGES (a folder; labelled as <class>/<image> or not): re-estimate its batch-norm
    statistics on them (half of PBC's kept, unless it fine-tunes), with --labelled-per-class fine-tune it on a few labelled cells of each class, and refit its
    calibration and flag thresholds on the lab's cells (labelled ones where there are); register it under --alias (serve it with wbc app --model
    models:/wbc-classifier@ALIAS). Prints accuracy before and after, on the lab's (held-out) cells and on PBC valid."""
    from wbc.jobs.adapt import adapt_model
    from wbc.tracking.runs import configure_tracking

    configure_tracking(experiment=None)
    click.echo(f"adapting {_model_line(model)}")
    result = adapt_model(model, images, alias, data_dir=data_dir, experiment=experiment, output_dir=output_dir,
                         flag_rate=flag_rate, labelled_per_class=labelled_per_class, steps=steps, seed=seed,
                         source_weight=source_weight, onnx=onnx, cache_dir=cache_dir)
    click.echo(result.summary())


@cli.command()
@_data_dir_option
@_user_errors
def download(data_dir: str) -> None:
    """Download the public PBC archive into DATA_DIR/barcelona/ (md5-checked; nothing happens when it is there)."""
    _fetch_data(data_dir)


@cli.command()
@_option("--model-name", default=defaults.MODEL_NAME, show_default=True)
@_user_errors
def versions(model_name: str) -> None:
    """List the registered versions of the model, newest first: aliases (champion, a lab's), the kind of run that made
    each, how (selection metric, or the lab and version it was adapted from), run and date."""
    import pandas as pd

    from wbc.tracking.registry import list_versions
    from wbc.tracking.runs import configure_tracking

    uri = configure_tracking(experiment=None)
    rows = list_versions(model_name)
    if not rows:
        click.echo(f"no registered versions of {model_name} in {uri}: wbc main registers the first (or point "
                   "MLFLOW_TRACKING_URI at the store that holds them)")
        return
    click.echo(pd.DataFrame(rows).to_string(index=False))


@cli.command("models")
def list_architectures() -> None:
    """List the model architectures."""
    from wbc.models import get_spec, list_models

    for name in list_models(include_aliases=False):
        spec = get_spec(name)
        click.echo(f"{name:20s} {spec.image_size:4d}px  {spec.description}")
