"""How many of a lab's images does label-free adaptation need? Batch-norm statistics re-estimated on k of them.

Usage: python benchmarks/adabn_image_count.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--counts 2,4,8,16,32,64,100] [--draws 3] [--valid-per-class 40]

For each k, ``--draws`` seeded draws of k of the lab's images re-estimate the model's batch-norm statistics
(``wbc.training.adaptation.reestimate_batch_norm``, as ``wbc adapt`` does on all of them); the model is then scored on
all the lab's labelled cells (accuracy among the classes present) and on the first ``--valid-per-class`` images of
each class of PBC ``valid``. One JSON line per k: mean and per-draw accuracies.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--images", default="../shared/data/other-lab")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--counts", default="2,4,8,16,32,64,100")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--valid-per-class", type=int, default=40)
    args = parser.parse_args()

    from wbc._process import tune_malloc_and_reexec

    tune_malloc_and_reexec()
    import numpy as np

    from wbc.data import load_folder, load_split
    from wbc.evaluation.reports import Evaluation
    from wbc.inference import Predictor
    from wbc.training.adaptation import reestimate_batch_norm

    base = Predictor.load(args.model, runtime="torch")
    lab = load_folder(args.images, base.image_size)
    valid = load_split(args.data_dir, "valid", base.image_size, limit_per_class=args.valid_per_class)

    def accuracy(predictor, data, present):
        evaluation = Evaluation.from_scores(data.targets, predictor.score_pixels(data.pixels).probabilities)
        return round(100 * (evaluation.present_accuracy if present else evaluation.accuracy), 2)

    print(json.dumps({"images": 0, "other_lab": accuracy(base, lab, True), "valid_subset": accuracy(base, valid, False)}), flush=True)
    for count in map(int, args.counts.split(",")):
        lab_scores, valid_scores = [], []
        for draw in range(args.draws if count < len(lab.targets) else 1):
            chosen = np.random.default_rng(draw).choice(len(lab.targets), size=min(count, len(lab.targets)), replace=False)
            adapted = copy.deepcopy(base)
            reestimate_batch_norm(adapted.model, lab.pixels[np.sort(chosen)])
            lab_scores.append(accuracy(adapted, lab, True))
            valid_scores.append(accuracy(adapted, valid, False))
        print(json.dumps({"images": count, "other_lab": statistics.mean(lab_scores), "other_lab_draws": lab_scores,
                          "valid_subset": statistics.mean(valid_scores), "valid_draws": valid_scores}), flush=True)


if __name__ == "__main__":
    main()
