"""Zero-shot on another lab's cells: do ensembles or weight averages of trained models hold up better than one?

Usage: python benchmarks/zero_shot_ensembles.py NAME=MODEL NAME=MODEL [NAME=MODEL ...] [--images ../shared/data/other-lab]
       [--data-dir ../shared/data] [--tta]

Scores each model, the mean of the class probabilities of every pair and of all of them (an ensemble), and the first
two models' weights averaged half and half (``wbc.training.averaging.average_weights``; same architecture) on the
lab's labelled cells (accuracy among the classes present, one view; with ``--tta`` each model scores the mean logits of
the 8 flips/rotations, as ``wbc evaluate --tta``) and on all of PBC ``valid``. One JSON line each,
and one with how many lab cells each model gets wrong and how many of those the models share.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL (a model folder, checkpoint or MLflow URI)")
    parser.add_argument("--images", default="../shared/data/other-lab")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--tta", action="store_true", help="each model scores the mean logits of 8 flips/rotations")
    args = parser.parse_args()

    from wbc._process import tune_malloc_and_reexec

    tune_malloc_and_reexec()
    import numpy as np

    from wbc.data import load_folder, load_split
    from wbc.evaluation.reports import Evaluation
    from wbc.inference import Predictor
    from wbc.training.averaging import average_weights

    models = dict(model.split("=", 1) for model in args.models)
    predictors = {name: Predictor.load(path, runtime="torch", tta=args.tta) for name, path in models.items()}
    size = next(iter(predictors.values())).image_size
    sets = {"other_lab": load_folder(args.images, size), "valid": load_split(args.data_dir, "valid", size)}
    probabilities = {}

    def report(name, scored):
        line = {"model": name, "tta": args.tta}
        for set_name, data in sets.items():
            evaluation = Evaluation.from_scores(data.targets, scored[set_name])
            line[set_name] = round(100 * (evaluation.present_accuracy if set_name == "other_lab" else evaluation.accuracy), 2)
        print(json.dumps(line), flush=True)

    lab = sets["other_lab"]
    present = np.unique(lab.targets)
    wrong = {}
    for name, predictor in predictors.items():
        probabilities[name] = {set_name: predictor.score_pixels(data.pixels).probabilities for set_name, data in sets.items()}
        report(name, probabilities[name])
        guesses = present[probabilities[name]["other_lab"][:, present].argmax(axis=1)]
        wrong[name] = {Path(lab.paths[i]).name for i in np.flatnonzero(guesses != lab.targets)}
    print(json.dumps({"lab_cells_wrong": {name: len(cells) for name, cells in wrong.items()},
                      "wrong_in_both": {f"{a} + {b}": len(wrong[a] & wrong[b]) for a, b in itertools.combinations(wrong, 2)},
                      "wrong_in_all": len(set.intersection(*wrong.values()))}), flush=True)
    names = list(predictors)
    groups = [list(pair) for pair in itertools.combinations(names, 2)] + ([names] if len(names) > 2 else [])
    for group in groups:
        report("ensemble " + " + ".join(group),
               {set_name: np.mean([probabilities[name][set_name] for name in group], axis=0) for set_name in sets})
    averaged = copy.deepcopy(predictors[names[0]])
    average_weights(averaged.model, predictors[names[1]].model, 0.5)
    report(f"weights averaged 0.5 {names[0]} + {names[1]}",
           {set_name: averaged.score_pixels(data.pixels).probabilities for set_name, data in sets.items()})


if __name__ == "__main__":
    main()
