"""Few-shot recipes for ``wbc adapt --labelled-per-class``: which fine-tuning holds up on a lab's other cells.

Usage: python benchmarks/few_shot_recipes.py MODEL [--variants base,s200,...] [--images ../shared/data/other-lab]
       [--per-class 10] [--seeds 5] [--by-smear]

The protocol of ``wbc adapt`` (``wbc.jobs.adapt``) without its logging: for each seed, ``--per-class`` labelled cells
of every class are drawn with ``wbc.jobs.adapt.split_per_class`` (the same draw as ``wbc adapt --seed``), batch-norm
statistics are re-estimated on all the lab's images (no labels), the network is fine-tuned with
``wbc.training.adaptation.fine_tune_few_shot`` and scored on the lab's other cells, among the classes present, with
one view and with the 8 flips/rotations (TTA). One JSON line per variant: accuracy per seed, mean, minutes, each draw's wrong cells
(file, true, predicted; one view) and the hard cells (wrong in at least half, and at least 2, of the draws that
held them out: "wrong/held out").
With ``--by-smear`` the draw keeps smears apart (:func:`split_by_smear`): the fine-tune's cells and the measured ones
come from different smears, as a lab's next slides would; the line's ``protocol`` says which. Each line also gives
the model's accuracy on the same held-out cells before adapting (``before``).
A variant without ``augment`` fine-tunes with ``standard`` (the recipe before 2026-12-01, so the earlier rows
reproduce); ``wbc adapt``'s own recipe is now ``s200zoom``.
"""

from __future__ import annotations

import collections
import copy
import json
import statistics
import time
from pathlib import Path

from _lab import lab_parser, load, parse

VARIANTS = {
    "base": dict(steps=60, lr=1e-4, replay=True),
    "lr3": dict(steps=60, lr=3e-4, replay=True),
    "norep": dict(steps=60, lr=1e-4, replay=False),
    "s120lr3": dict(steps=120, lr=3e-4, replay=True),
    "s200": dict(steps=200, lr=1e-4, replay=True),
    "s200stain": dict(steps=200, lr=1e-4, replay=True, augment="stain"),
    "s400": dict(steps=400, lr=1e-4, replay=True),
    "s400norep": dict(steps=400, lr=1e-4, replay=False),
    "s200zoom": dict(steps=200, lr=1e-4, replay=True, augment="zoom"),
    "s200frz4": dict(steps=200, lr=1e-4, replay=True, freeze_stages=4),
    "s200last": dict(steps=200, lr=1e-4, replay=True, unfreeze="last"),
    "s200head": dict(steps=200, lr=1e-3, replay=True, unfreeze="head"),
    "s300zoom": dict(steps=300, lr=1e-4, replay=True, augment="zoom"),
    "s200zoompl": dict(steps=200, lr=1e-4, replay=True, augment="zoom", pseudo=0.9),
    "s200zoomsoup3": dict(steps=200, lr=1e-4, replay=True, augment="zoom", soup=3),
    "s200zoomnoadabn": dict(steps=200, lr=1e-4, replay=True, augment="zoom", adabn=False),
    "s200zoommix": dict(steps=200, lr=1e-4, replay=True, augment="zoom", source_weight=0.5),
    "s200zoomr25": dict(steps=200, lr=1e-4, replay=True, augment="zoom", replay_fraction=0.25),
    "lpft": dict(steps=200, lr=1e-4, replay=True, augment="zoom", head_steps=100),
}
"""steps and lr of the fine-tuning; replay: half of each batch from PBC training images; augment: the fine-tuning's
augmentation (``train_augmentation``'s kind; here ``standard`` unless named; ``zoom``: standard with the stain
augmentation's zoom, 0.7-1.5x on 70 %);
freeze_stages: the network's first stages keep their weights (``Classifier.set_trainable``); unfreeze: ``last``
trains only the head and the last block, ``head`` only the head (default: the whole network); pseudo: then
self-training (pseudo-labels, Lee 2013): the lab's other cells, their labels unused, that the fine-tuned model assigns
to one of the labelled classes with probability >= ``pseudo`` join the labelled ones for another ``steps // 2``
steps (transductive: the held-out cells are among them); soup: that many fine-tunes of the same cells with other
augmentation draws (seeds seed, seed + 1000, ...), their weights averaged (a uniform model soup, Wortsman et al. 2022,
with ``wbc.training.averaging.average_weights``); adabn: False keeps PBC's batch-norm statistics (default: the lab's); source_weight: that share of PBC's kept beside the lab's
(``reestimate_batch_norm(source_weight=...)``, as ``wbc adapt`` without labels);
replay_fraction: the share of each batch replayed from PBC (default a half); head_steps: first that many steps on the head alone at lr 1e-3, then the whole network (LP-FT, Kumar et al. 2022)."""


def smear_of(path: str) -> str:
    """The smear a Raabin-WBC file comes from: its name up to the first ``_`` (``95-8-10-1_12_3.jpg`` -> ``95-8-10-1``;
    the set's README)."""
    return Path(path).name.split("_")[0]


def split_by_smear(targets, smears, per_class: int, seed: int, min_held_out: int = 5):
    """Like ``wbc.jobs.adapt.split_per_class``, but grouped: each smear goes whole to one side, drawn at random
    (each with probability 1/2, redrawn until every class has at least ``per_class`` cells on the fine-tune side and
    ``min_held_out`` on the other); then ``per_class`` cells of each class are drawn from the fine-tune side, and
    every cell of the other side is held out (the fine-tune side's leftover cells are neither). Returns (tuning,
    held_out), int64 indices, sorted. RuntimeError when no draw of 10,000 satisfies the counts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = np.unique(smears)
    for _ in range(10_000):
        tuning_side = np.isin(smears, names[rng.random(len(names)) < 0.5])
        counts_ok = all((targets[tuning_side] == target).sum() >= per_class
                        and (targets[~tuning_side] == target).sum() >= min_held_out for target in np.unique(targets))
        if counts_ok:
            break
    else:
        raise RuntimeError(f"no split of {len(names)} smears gives {per_class} cells a class to tune and {min_held_out} to measure")
    tuning = [rng.choice(np.flatnonzero(tuning_side & (targets == target)), size=per_class, replace=False)
              for target in np.unique(targets)]
    return np.sort(np.concatenate(tuning)).astype(np.int64), np.flatnonzero(~tuning_side).astype(np.int64)


def main() -> None:
    parser = lab_parser(__doc__, valid=False)
    parser.add_argument("--variants", default="base,s200")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--by-smear", action="store_true", help="fine-tune and measure on cells of different smears")
    args = parse(parser)
    import numpy as np

    from wbc.classes import CLASS_NAMES
    from wbc.evaluation.reports import Evaluation
    from wbc.jobs.adapt import split_per_class
    from wbc.training.adaptation import fine_tune_few_shot, reestimate_batch_norm
    from wbc.training.averaging import average_weights

    loaded = load(args, replay=True)
    base, lab, replay = loaded.predictor, loaded.lab, loaded.replay

    present = np.unique(lab.targets)
    smears = np.array([smear_of(path) for path in lab.paths]) if args.by_smear else None

    def accuracy(predictor, indices, tta, wrong=None):
        predictor.tta = tta
        probabilities = predictor.score_pixels(lab.pixels[indices]).probabilities
        predictor.tta = False
        if wrong is not None:
            guesses = present[probabilities[:, present].argmax(axis=1)]
            wrong.append([[Path(lab.paths[i]).name, CLASS_NAMES[lab.targets[i]], CLASS_NAMES[guess]]
                          for i, guess in zip(indices, guesses) if guess != lab.targets[i]])
        return 100 * Evaluation.from_scores(lab.targets[indices], probabilities).present_accuracy

    for name in args.variants.split(","):
        settings = VARIANTS[name]
        single, tta, pseudo_counts, wrong, held_out_counts, start = [], [], [], [], collections.Counter(), time.time()
        before, held_out_sizes = [], []
        for seed in range(args.seeds):
            if args.by_smear:
                tuning, held_out = split_by_smear(lab.targets, smears, args.per_class, seed)
            else:
                tuning, held_out = split_per_class(lab.targets, args.per_class, seed)
            held_out_sizes.append(len(held_out))
            before.append(accuracy(base, held_out, False))
            held_out_counts.update(Path(lab.paths[i]).name for i in held_out)
            predictor = copy.deepcopy(base)
            if settings.get("adabn", True):
                reestimate_batch_norm(predictor.model, lab.pixels, source_weight=settings.get("source_weight", 0.0))
            if "head_steps" in settings:
                predictor.model.set_trainable("transfer")
                fine_tune_few_shot(predictor.model, lab.pixels[tuning], lab.targets[tuning], steps=settings["head_steps"],
                                   lr=1e-3, augment=settings.get("augment", "standard"), seed=seed + 500,
                                   **(dict(replay_pixels=replay.pixels, replay_targets=replay.targets) if settings["replay"] else {}))
            unfreeze = settings.get("unfreeze", "all")
            if unfreeze == "head":
                predictor.model.set_trainable("transfer")
            else:
                predictor.model.set_trainable("finetune", phase=2, unfreeze=unfreeze,
                                              freeze_stages=settings.get("freeze_stages", 0))
            extra = dict(replay_pixels=replay.pixels, replay_targets=replay.targets) if settings["replay"] else {}
            members = [predictor.model] + [copy.deepcopy(predictor.model) for _ in range(settings.get("soup", 1) - 1)]
            for member, model in enumerate(members):
                fine_tune_few_shot(model, lab.pixels[tuning], lab.targets[tuning], steps=settings["steps"],
                                   replay_fraction=settings.get("replay_fraction", 0.5), lr=settings["lr"], augment=settings.get("augment", "standard"), seed=seed + 1000 * member,
                                   **extra)
            for count, model in enumerate(members[1:], start=2):
                average_weights(predictor.model, model, 1 / count)
            if "pseudo" in settings:
                others = np.setdiff1d(np.arange(len(lab.targets)), tuning)
                probabilities = predictor.score_pixels(lab.pixels[others]).probabilities
                labelled_classes = np.unique(lab.targets[tuning])
                confident = probabilities[:, labelled_classes].max(axis=1) >= settings["pseudo"]
                guesses = labelled_classes[probabilities[:, labelled_classes].argmax(axis=1)]
                chosen = np.concatenate([tuning, others[confident]])
                targets = np.concatenate([lab.targets[tuning], guesses[confident]])
                pseudo_counts.append((int(confident.sum()), int((guesses[confident] != lab.targets[others][confident]).sum())))
                fine_tune_few_shot(predictor.model, lab.pixels[chosen], targets, steps=settings["steps"] // 2,
                                   lr=settings["lr"], augment=settings.get("augment", "standard"), seed=seed + 1000, **extra)
            single.append(accuracy(predictor, held_out, False, wrong))
            tta.append(accuracy(predictor, held_out, True))
        extra_fields = {"pseudo_labelled_wrong": pseudo_counts} if pseudo_counts else {}
        wrong_counts = collections.Counter(name for draw in wrong for name, _, _ in draw)
        extra_fields["hard_cells"] = {name: f"{count}/{held_out_counts[name]}" for name, count in wrong_counts.most_common()
                                      if 2 * count >= held_out_counts[name] and count >= 2}
        print(json.dumps(dict(variant=name, **settings, protocol="by smear" if args.by_smear else "per class",
                              held_out=held_out_sizes, before=before, mean_before=statistics.mean(before), acc=single, mean=statistics.mean(single), tta=tta,
                              mean_tta=statistics.mean(tta), wrong=wrong, **extra_fields, minutes=(time.time() - start) / 60)), flush=True)


if __name__ == "__main__":
    main()
