"""What the other-lab benchmarks share: their common arguments, and the model and images they load.

Imported by the scripts beside it (``python benchmarks/<script>.py`` puts this folder on the path).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

LAB_IMAGES = "../shared/data/other-lab"
DATA_DIR = "../shared/data"


def lab_parser(doc: str, *, valid: bool = True) -> argparse.ArgumentParser:
    """A parser with the model, the lab's labelled folder (``--images``) and PBC's (``--data-dir``); with ``valid``,
    also ``--valid-per-class``, that many PBC ``valid`` images of each class (a seeded draw; 0 = all) scored beside
    the lab's."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("model", help="a model: runs:/<id>/model, models:/<name>@<alias> or an exported folder")
    parser.add_argument("--images", default=LAB_IMAGES, help="the lab's cells, <class>/<image> sub-folders")
    parser.add_argument("--data-dir", default=DATA_DIR, help="the PBC data (train/, valid/)")
    if valid:
        parser.add_argument("--valid-per-class", type=int, default=40)
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line, then re-execute with wbc's memory-allocator settings (before anything heavy loads);
    into a log, without MLflow's download bar (a line per file of a model), as ``wbc`` does."""
    args = parser.parse_args()
    from wbc._process import tune_malloc_and_reexec
    from wbc._progress import quiet_downloads_in_logs

    quiet_downloads_in_logs()
    tune_malloc_and_reexec()
    return args


def present_guesses(scores, targets):
    """Each cell's class (int (N,)) when the model may only answer one of the classes ``targets`` holds: the argmax of
    ``scores`` (logits or probabilities, (N, 8)) over those classes, as ``Evaluation.present_accuracy`` scores a lab."""
    import numpy as np

    present = np.unique(targets)
    return present[np.asarray(scores)[:, present].argmax(axis=1)]


@dataclass
class Loaded:
    predictor: Any
    """:class:`wbc.inference.Predictor` of the model, PyTorch runtime (its network can be adapted)."""
    lab: Any
    """The lab's labelled cells at the model's image size (``wbc.data.load_folder``)."""
    valid: Any
    """``--valid-per-class`` images of each class of PBC ``valid`` (a seeded draw; 0 = all); None without the option."""
    replay: Any
    """PBC training images to replay in a few-shot fine-tune (``REPLAY_PER_CLASS`` a class); None unless asked."""


def load(args: argparse.Namespace, *, replay: bool = False) -> Loaded:
    """The model and the images the parsed ``args`` name."""
    from wbc.data import load_folder, load_split
    from wbc.inference import Predictor
    from wbc.jobs.adapt import REPLAY_PER_CLASS

    predictor = Predictor.load(args.model, runtime="torch")
    size = predictor.image_size
    valid_per_class = getattr(args, "valid_per_class", None)
    return Loaded(
        predictor,
        load_folder(args.images, size),
        load_split(args.data_dir, "valid", size, limit_per_class=valid_per_class) if valid_per_class is not None else None,
        load_split(args.data_dir, "train", size, limit_per_class=REPLAY_PER_CLASS) if replay else None,
    )
