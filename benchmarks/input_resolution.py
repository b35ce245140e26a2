"""Does the lab's cells' input resolution matter? Score a model on the lab's cells and on PBC ``valid`` decoded at
other sizes than the one it was trained at (the network pools globally, so it takes any size; a larger input shows
the same field of view with more pixels, as testing above the training resolution does in Touvron et al. 2019).

Usage: python benchmarks/input_resolution.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--sizes 128,144,160,192,224] [--valid-per-class 40]

One JSON line per size: accuracy on the lab's cells among the classes present and over the eight, with one view and
with the mean logits of the 8 flips/rotations (``--tta``), and on the PBC ``valid`` draw (one view).
"""

from __future__ import annotations

import json

from _lab import lab_parser, parse


def main() -> None:
    parser = lab_parser(__doc__)
    parser.add_argument("--sizes", default="128,144,160,192,224")
    args = parse(parser)
    from wbc.data import load_folder, load_split
    from wbc.evaluation.reports import Evaluation
    from wbc.inference import Predictor

    predictor = Predictor.load(args.model, runtime="torch")
    for size in map(int, args.sizes.split(",")):
        lab = load_folder(args.images, size)
        valid = load_split(args.data_dir, "valid", size, limit_per_class=args.valid_per_class)
        line = {"model": args.model, "trained_at": predictor.image_size, "size": size}
        for tta in (False, True):
            on_lab = Evaluation.from_scores(lab.targets, predictor.logits_pixels(lab.pixels, tta=tta))
            suffix = "_tta" if tta else ""
            line |= {f"other_lab{suffix}": round(100 * on_lab.present_accuracy, 1),
                     f"other_lab_over_8{suffix}": round(100 * on_lab.accuracy, 1)}
        line["valid_subset"] = round(100 * Evaluation.from_scores(valid.targets, predictor.logits_pixels(valid.pixels)).accuracy, 2)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
