"""Does random-convolution augmentation make a PBC model hold up on another lab? Continued training of a champion.

Usage: python benchmarks/continued_randconv.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--steps 1500] [--lr 5e-5] [--variants stain,stain-randconv]

RandConv (Xu et al. 2021; ``wbc.data.augmentation.RandomConvolution``, the ``stain-randconv`` augmentation): each
training image passes, with probability 1/2, through a random 3-to-3-channel convolution mixed with the image; it
keeps shapes and scrambles colour and local texture, the cues that differ between labs. Each variant (an augmentation
kind) continues the model's training on PBC's training images for ``--steps`` steps of 16
(``wbc.training.adaptation.fine_tune_few_shot``: AdamW at ``--lr``, batch norm kept at PBC's statistics); ``stain``,
the main job's stage-1 augmentation, is the control for the extra training. (The raw lines of 2026-12-01 name the
variant ``stain+randconv``: the same transform, then a copy in this script.) Scored on the lab's cells (among the classes present; one view and ``--tta``'s 8
views, and on the four classes other than basophil, which that set photographed apart) and on all of PBC ``valid``.
One JSON line per variant, the model as it is first.
"""

from __future__ import annotations

import copy
import json
import time

from _lab import lab_parser, load, parse, present_guesses


def main() -> None:
    parser = lab_parser(__doc__)
    parser.set_defaults(valid_per_class=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--variants", default="stain,stain-randconv")
    args = parse(parser)
    import numpy as np
    from wbc.data import load_split
    from wbc.training.adaptation import fine_tune_few_shot

    loaded = load(args)
    base, lab, valid = loaded.predictor, loaded.lab, loaded.valid
    train = load_split(args.data_dir, "train", base.image_size)
    basophil = lab.targets == 0

    def scores(predictor):
        views = predictor.view_logits_pixels(lab.pixels)
        line = {}
        for name, logits in (("one_view", views[0]), ("tta", views.mean(axis=0))):
            right = present_guesses(logits, lab.targets) == lab.targets
            line[f"lab_{name}"] = round(100 * float(right.mean()), 1)
            line[f"lab_four_{name}"] = round(100 * float(right[~basophil].mean()), 1)
        valid_logits = np.asarray(predictor.logits_pixels(valid.pixels))
        line["valid"] = round(100 * float((valid_logits.argmax(axis=1) == valid.targets).mean()), 2)
        return line

    print(json.dumps({"variant": "as it is", **scores(base), "date": time.strftime("%Y-%m-%d")}), flush=True)
    for variant in args.variants.split(","):
        predictor, start = copy.deepcopy(base), time.time()
        losses = fine_tune_few_shot(predictor.model, train.pixels, train.targets, steps=args.steps, lr=args.lr,
                                    augment=variant, seed=0, progress=True)
        print(json.dumps({"variant": variant, "steps": args.steps, "lr": args.lr, **scores(predictor),
                          "final_loss": round(float(np.mean(losses[-100:])), 3), "minutes": round((time.time() - start) / 60, 1),
                          "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
    main()
