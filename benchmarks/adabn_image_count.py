"""How many of a lab's images does label-free adaptation need? Batch-norm statistics re-estimated on k of them.

Usage: python benchmarks/adabn_image_count.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--counts 2,4,8,16,32,64,100] [--draws 3] [--valid-per-class 40]

For each k, ``--draws`` seeded draws of k of the lab's images re-estimate the model's batch-norm statistics
(``wbc.training.adaptation.reestimate_batch_norm``, as ``wbc adapt`` does on all of them); the model is then scored on
all the lab's labelled cells (accuracy among the classes present) and on ``--valid-per-class`` images (a seeded draw) of
each class of PBC ``valid``. One JSON line per k: mean and per-draw accuracies.
"""

from __future__ import annotations

import copy
import json
import statistics

from _lab import lab_parser, load, parse


def main() -> None:
    parser = lab_parser(__doc__)
    parser.add_argument("--counts", default="2,4,8,16,32,64,100")
    parser.add_argument("--draws", type=int, default=3)
    args = parse(parser)
    import numpy as np

    from wbc.evaluation.reports import Evaluation
    from wbc.training.adaptation import reestimate_batch_norm

    loaded = load(args)
    base, lab, valid = loaded.predictor, loaded.lab, loaded.valid

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
