"""Adapting to a lab's unlabelled images: does anything beyond batch-norm statistics (``wbc adapt`` without labels) help?

Usage: python benchmarks/label_free_adaptation.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--variants none,adabn,tent20,...] [--seeds 3] [--valid-per-class 40]

Every variant sees the lab's images without their labels, all of them, and is scored on the same images
(transductive, as test-time adaptation is): accuracy among the classes present and over the eight (what a lab that
does not know its classes gets), and on ``--valid-per-class`` images (a seeded draw) of each class of PBC ``valid``.
Variants:

- ``none``: the model as given (zero-shot); ``adabn``: batch-norm statistics re-estimated on the lab's images
  (``wbc.training.adaptation.reestimate_batch_norm``; Li et al. 2016), what ``wbc adapt`` does without labels;
- ``tentN``: after AdaBN, N steps of entropy minimisation on the batch-norm layers' scale and shift, batch statistics
  in each step, Adam 1e-3, batches of 32 (Tent, Wang et al. 2021), then the statistics re-estimated;
- ``selfK``: after AdaBN, self-training on pseudo-labels (Lee 2013): the model's K most confident cells of each
  class it predicts (at most, and only those with calibrated confidence >= 0.5) fine-tune it as ``wbc adapt``'s
  labelled recipe does (``fine_tune_few_shot``, 200 steps, half PBC replay, zoom), class-balanced like the labelled
  draw; ``self0.9``: every cell with confidence >= 0.9 instead; ``selfttaK``: as ``selfK`` with pseudo-labels and
  confidences from the mean of the 8 flips/rotations (TTA);
- ``recolourN``: after AdaBN (``--recolour-source-weight`` of PBC's statistics kept), N steps of ``wbc adapt``'s fine-tune (``fine_tune_few_shot``, half PBC replay, zoom) on
  ``--recolour-per-class`` PBC training images of each class, with their own labels, each recoloured to the lab's
  look: its CIELAB mean and spread matched to those of a lab image drawn at random (Reinhard et al. 2001, with
  scikit-image's colour conversions; two copies, two draws). The lab lends only its colours, never labels.
  ``recolourkN``: the same, region by region: each image's pixels fall in three k-means clusters of CIELAB colour
  (scikit-learn), ranked dark to light (nucleus, then cytoplasm and red cells, then background), and each cluster's
  mean and spread are matched to the same-ranked cluster of the lab image, so PBC's blue-violet nuclei take the
  lab's hue as its background does.

With ``--held-out``, each seed instead draws half of the lab's cells of each class (``wbc adapt``'s own draw,
``wbc.jobs.adapt.split_per_class``): the variant adapts on that half, unlabelled, and is scored on the other half,
as a lab's next cells would be.

Variants with random draws run ``--seeds`` times (all of them, with ``--held-out``). One JSON line per variant and seed, with the pseudo-labels' count
and accuracy where there are some.
"""

from __future__ import annotations

import copy
import json
import time

from _lab import lab_parser, load, parse


def main() -> None:
    parser = lab_parser(__doc__)
    parser.add_argument("--variants", default="none,adabn,tent20,tent60,self10,self20,self0.9")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--held-out", action="store_true", help="adapt on half of the cells, score on the other half")
    parser.add_argument("--recolour-per-class", type=int, default=100, help="PBC training images a class for recolourN")
    parser.add_argument("--recolour-source-weight", type=float, default=0.0,
                        help="recolourN: the share of PBC's batch-norm statistics kept in the AdaBN before it (1 = no AdaBN)")
    args = parse(parser)
    import numpy as np
    import torch

    from wbc.evaluation.reports import Evaluation
    from wbc.jobs.adapt import split_per_class
    from wbc.training.adaptation import batch_norm_layers, fine_tune_few_shot, reestimate_batch_norm

    loaded = load(args, replay=True)
    source, everything, valid, replay = loaded.predictor, loaded.lab, loaded.valid, loaded.replay

    def scored(predictor, pixels, targets):
        return Evaluation.from_scores(targets, predictor.score_pixels(pixels).probabilities)

    def tent(model, steps, seed):
        norms = batch_norm_layers(model)
        parameters = [p for norm in norms for p in (norm.weight, norm.bias) if p is not None]
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in parameters:
            parameter.requires_grad_(True)
        before = [parameter.detach().clone() for parameter in parameters]
        optimizer = torch.optim.Adam(parameters, lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        images = torch.from_numpy(lab_pixels)
        with torch.inference_mode(False), torch.enable_grad():
            model.eval()
            for norm in norms:
                norm.train()
            for _ in range(steps):
                batch = images[torch.randperm(len(images), generator=generator)[:32]]
                probabilities = model(batch).softmax(dim=1)
                loss = -(probabilities * probabilities.clamp_min(1e-8).log()).sum(dim=1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        reestimate_batch_norm(model, lab_pixels)
        return max(float((parameter.detach() - old).abs().max()) for parameter, old in zip(parameters, before))

    sources = []

    def recoloured(lab_pixels, seed, clustered):
        from skimage.color import lab2rgb, rgb2lab
        from sklearn.cluster import KMeans

        if not sources:
            from wbc.data import load_split

            sources.append(load_split(args.data_dir, "train", source.image_size, limit_per_class=args.recolour_per_class))
        pbc = sources[0]

        def regions(values):
            """Each pixel's region (int (S*S,)) and each region's CIELAB mean and spread ((K, 3) each); one region, or
            with ``clustered`` three k-means clusters ranked dark to light (nucleus, cytoplasm and red cells,
            background). Black padding (L < 5) is left out of the statistics."""
            flat = values.reshape(-1, 3)
            kept = flat[flat[:, 0] >= 5] if (flat[:, 0] >= 5).sum() > 100 else flat
            if not clustered:
                members = np.zeros(len(flat), dtype=np.int64)
                return members, kept.mean(0, keepdims=True), np.maximum(kept.std(0, keepdims=True), 1e-6)
            kmeans = KMeans(3, n_init=1, random_state=0).fit(kept[::7])
            rank = np.empty(3, dtype=np.int64)
            rank[np.argsort(kmeans.cluster_centers_[:, 0])] = np.arange(3)
            members, kept_members = rank[kmeans.predict(flat)], rank[kmeans.predict(kept)]
            means = np.stack([kept[kept_members == k].mean(0) if (kept_members == k).any() else flat.mean(0) for k in range(3)])
            spreads = np.stack([kept[kept_members == k].std(0) if (kept_members == k).sum() > 1 else flat.std(0) for k in range(3)])
            return members, means, np.maximum(spreads, 1e-6)

        targets = [regions(values)[1:] for values in rgb2lab(np.asarray(lab_pixels).transpose(0, 2, 3, 1) / 255.0)]
        generator = np.random.default_rng(seed)
        images, labels = [], []
        for _ in range(2):
            for index, pixels in enumerate(pbc.pixels):
                values = rgb2lab(np.asarray(pixels).transpose(1, 2, 0) / 255.0)
                members, mean, spread = regions(values)
                target_mean, target_spread = targets[generator.integers(len(targets))]
                flat = values.reshape(-1, 3)
                matched = (flat - mean[members]) / spread[members] * target_spread[members] + target_mean[members]
                rgb = lab2rgb(matched.reshape(values.shape))
                images.append((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8).transpose(2, 0, 1))
                labels.append(pbc.targets[index])
        return np.stack(images), np.asarray(labels)

    def pseudo_labels(predictor, rule, tta):
        predictor.tta = tta
        probabilities = predictor.score_pixels(lab_pixels).probabilities
        predictor.tta = False
        predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
        if rule < 1:
            return np.flatnonzero(confidence >= rule), predicted
        chosen = []
        for target in np.unique(predicted):
            members = np.flatnonzero((predicted == target) & (confidence >= 0.5))
            chosen += members[np.argsort(-confidence[members])][: int(rule)].tolist()
        return np.asarray(sorted(chosen), dtype=np.int64), predicted

    variants = args.variants.split(",")
    for variant in variants:
        seeds = range(args.seeds) if args.held_out or variant.startswith(("self", "tent", "recolour")) else [0]
        for seed in seeds:
            started = time.monotonic()
            lab = measured = everything
            if args.held_out:
                adapting, rest = split_per_class(everything.targets, len(everything) // (2 * len(set(everything.targets))), seed)
                lab, measured = everything.subset(adapting), everything.subset(rest)
            lab_pixels = np.array(lab.pixels)
            predictor = copy.deepcopy(source)
            line = {"model": args.model, "protocol": "held-out" if args.held_out else "transductive", "variant": variant,
                    "seed": seed}
            if variant.startswith("mix"):
                reestimate_batch_norm(predictor.model, lab_pixels, source_weight=float(variant[3:]))
            elif variant.startswith("recolour"):
                reestimate_batch_norm(predictor.model, lab_pixels, source_weight=args.recolour_source_weight)
                line["source_weight"] = args.recolour_source_weight
            elif variant != "none":
                reestimate_batch_norm(predictor.model, lab_pixels)
            if variant.startswith("tent"):
                line["largest_scale_or_shift_change"] = round(tent(predictor.model, int(variant[4:]), seed), 4)
            elif variant.startswith("self"):
                tta = variant.startswith("selftta")
                chosen, predicted = pseudo_labels(predictor, float(variant[7 if tta else 4:]), tta)
                line["pseudo_labelled"] = len(chosen)
                if len(chosen) == 0:
                    print(json.dumps(line | {"skipped": "no cell confident enough"}), flush=True)
                    continue
                line["pseudo_label_accuracy"] = round(100 * float((predicted[chosen] == lab.targets[chosen]).mean()), 1)
                fine_tune_few_shot(predictor.model, lab_pixels[chosen], predicted[chosen], replay_pixels=replay.pixels,
                                   replay_targets=replay.targets, seed=seed)
            elif variant.startswith("recolour"):
                clustered = variant.startswith("recolourk")
                images, labels = recoloured(lab_pixels, seed, clustered)
                line["recoloured_images"] = len(images)
                fine_tune_few_shot(predictor.model, images, labels, replay_pixels=replay.pixels, replay_targets=replay.targets,
                                   steps=int(variant[9 if clustered else 8:]), seed=seed)
            elif variant not in ("none", "adabn") and not variant.startswith("mix"):
                raise SystemExit(f"unknown variant {variant!r}")
            on_lab = scored(predictor, np.array(measured.pixels), measured.targets)
            line["adapted_on"], line["measured_on"] = len(lab), len(measured)
            line |= {"other_lab": round(100 * on_lab.present_accuracy, 1), "other_lab_over_8": round(100 * on_lab.accuracy, 1),
                     "valid_subset": round(100 * scored(predictor, valid.pixels, valid.targets).accuracy, 2),
                     "minutes": round((time.monotonic() - started) / 60, 2)}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
