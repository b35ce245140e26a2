"""Would averaging the probabilities of models we already have reach 99.2 %? (issue #5 accuracy experiment)

Usage: python benchmarks/ensembles.py NAME=MODEL [NAME=MODEL ...] [--data-dir ../shared/data] [--top 25] [--clean-only]

MODEL is anything ``wbc evaluate`` takes (an MLflow model URI, an exported folder, a checkpoint). Each
model scores the clean validation split and the 21 shifted conditions of ``wbc shiftbench`` (seed 0,
the same images; ``--clean-only`` skips them). Probabilities are the plain softmax (no temperature), so
every member weighs the same. Prints each model's clean and mean shifted accuracy, the ensemble of all
members, then every smaller ensemble of 2 to 5 members, best clean accuracy first.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from wbc.data import load_split
from wbc.data.shifts import SEVERITIES, SHIFTS, apply_shift
from wbc.inference import Predictor
from wbc._process import tune_malloc_and_reexec
from wbc.tracking.runs import configure_tracking


def described(accuracy: np.ndarray) -> str:
    """Clean accuracy (row 0) and, unless --clean-only, the mean over the shifted conditions."""
    shifted = f" shifted {100 * accuracy[1:].mean():.2f} %" if len(accuracy) > 1 else ""
    return f"clean {100 * accuracy[0]:.2f} %{shifted}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--clean-only", action="store_true", help="score the clean validation split only")
    args = parser.parse_args()
    members = dict(item.split("=", 1) for item in args.models)
    configure_tracking()
    probabilities, image_size, conditions, targets = {}, None, None, None
    for name, uri in members.items():
        started = time.perf_counter()
        predictor = Predictor.load(uri)
        predictor.calibration = None
        if conditions is None or predictor.image_size != image_size:
            image_size = predictor.image_size
            valid = load_split(args.data_dir, "valid", image_size)
            clean, targets = torch.from_numpy(np.array(valid.pixels)), valid.targets
            shifted = [] if args.clean_only else [apply_shift(clean, shift, severity, seed=severity) for shift in SHIFTS for severity in SEVERITIES]
            conditions = [clean, *shifted]
        probabilities[name] = np.stack([predictor.predict_pixels(images) for images in conditions])
        accuracy = (probabilities[name].argmax(-1) == targets).mean(axis=1)
        print(f"{name}: {described(accuracy)} ({predictor.runtime}, {time.perf_counter() - started:.0f} s)", flush=True)
    every = (sum(probabilities.values()).argmax(-1) == targets).mean(axis=1)
    print(f"all {len(members)}: {described(every)}")
    results = []
    for size in range(2, min(5, len(members) - 1) + 1):  # the whole set is printed above
        for combo in itertools.combinations(members, size):
            accuracy = (sum(probabilities[name] for name in combo).argmax(-1) == targets).mean(axis=1)
            results.append(("+".join(combo), accuracy))
    ranked = sorted(results, key=lambda result: (result[1][0], result[1][1:].mean() if len(result[1]) > 1 else 0.0), reverse=True)
    for combo, accuracy in ranked[: args.top]:
        print(f"{combo}: {described(accuracy)}")


if __name__ == "__main__":
    tune_malloc_and_reexec()
    main()
