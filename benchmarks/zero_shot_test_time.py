"""Test-time variants of a trained model on another lab's cells, zero-shot: what inference alone can do.

Usage: python benchmarks/zero_shot_test_time.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--valid-per-class 40]

Scores the lab's labelled cells (accuracy among the classes present) and ``--valid-per-class`` images (a seeded draw) of
each class of PBC ``valid`` with: one view; the mean of the 8 flips/rotations (TTA); the cells zoomed at test time
(``wbc.data.shifts.magnify``); batch-norm statistics re-estimated on the lab's images (AdaBN, no labels), with and
without TTA; and two colour standardisations from scikit-image applied to every image: Reinhard et al. 2001's
colour transfer in CIELAB to the mean and spread of those PBC valid images, and histogram matching to 16 PBC valid images
(``skimage.exposure.match_histograms``); a white balance that scales each image's channels so its background (the 95th
percentile of each channel) takes PBC's median background colour; and Macenko et al. 2009's stain normalisation
(``torchstain``, ``pip install torchstain``), on the raw images and after a white balance to a grey 240 background
(its ``Io``), fitted on 32 of those PBC valid images, with PBC's background given back after. One JSON line per variant.
"""

from __future__ import annotations

import copy
import json

from _lab import lab_parser, load, parse


def main() -> None:
    args = parse(lab_parser(__doc__))
    import numpy as np
    import torch
    from skimage.color import lab2rgb, rgb2lab
    from skimage.exposure import match_histograms

    from wbc.data.shifts import magnify
    from wbc.evaluation.reports import Evaluation
    from wbc.training.adaptation import reestimate_batch_norm

    loaded = load(args)
    predictor, lab, valid = loaded.predictor, loaded.lab, loaded.valid
    lab_pixels, valid_pixels = np.array(lab.pixels), np.array(valid.pixels)

    def accuracy(model, pixels, targets, tta=False):
        model.tta = tta
        probabilities = model.score_pixels(pixels).probabilities
        model.tta = False
        return round(100 * Evaluation.from_scores(targets, probabilities).present_accuracy, 2)

    def report(variant, lab_images=lab_pixels, valid_images=valid_pixels, model=predictor, tta=False):
        line = {"variant": variant, "other_lab": accuracy(model, lab_images, lab.targets, tta)}
        if valid_images is not None:
            line["valid_subset"] = accuracy(model, valid_images, valid.targets, tta)
        print(json.dumps(line), flush=True)

    report("one view")
    report("TTA (8 flips/rotations)", tta=True)
    for zoom in (0.6, 0.7, 0.8, 0.9, 1.1, 1.25):
        zoomed = torch.stack([magnify(image, zoom) for image in torch.from_numpy(lab_pixels)]).numpy()
        report(f"zoom {zoom} at test time (lab only)", zoomed, None)
    adapted = copy.deepcopy(predictor)
    reestimate_batch_norm(adapted.model, lab_pixels)
    report("AdaBN on the lab's images", valid_images=None, model=adapted)
    report("AdaBN + TTA", valid_images=None, model=adapted, tta=True)

    reference = rgb2lab(valid_pixels.transpose(0, 2, 3, 1)).reshape(-1, 3)
    mean, spread = reference.mean(axis=0), reference.std(axis=0)

    def reinhard(pixels):
        out = []
        for image in pixels.transpose(0, 2, 3, 1):
            colours = rgb2lab(image)
            flat = colours.reshape(-1, 3)
            colours = (colours - flat.mean(axis=0)) / (flat.std(axis=0) + 1e-6) * spread + mean
            out.append(np.round(np.clip(lab2rgb(colours), 0, 1) * 255).astype(np.uint8))
        return np.stack(out).transpose(0, 3, 1, 2)

    references = np.concatenate(list(valid_pixels[:: max(1, len(valid_pixels) // 16)][:16].transpose(0, 2, 3, 1)))

    def matched(pixels):
        return np.stack([np.round(match_histograms(image, references, channel_axis=-1)).astype(np.uint8)
                         for image in pixels.transpose(0, 2, 3, 1)]).transpose(0, 3, 1, 2)

    report("Reinhard colour transfer to PBC (every image)", reinhard(lab_pixels), reinhard(valid_pixels))
    report("histogram matching to PBC (every image)", matched(lab_pixels), matched(valid_pixels))

    def channels_last(pixels):
        return pixels.transpose(0, 2, 3, 1)

    def channels_first(images):
        return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))

    def background(image):
        return np.percentile(image.reshape(-1, 3).astype(float), 95, axis=0)

    pbc_background = np.median([background(image) for image in channels_last(valid_pixels)], axis=0)

    def white_balanced(pixels, target=pbc_background):
        return channels_first([np.clip(np.round(image * (target / np.maximum(background(image), 1))), 0, 255).astype(np.uint8)
                               for image in channels_last(pixels)])

    report("white balance to PBC's background (every image)", white_balanced(lab_pixels), white_balanced(valid_pixels))

    try:
        import torchstain
    except ImportError:
        print(json.dumps({"variant": "Macenko stain normalisation", "skipped": "pip install torchstain"}), flush=True)
        return

    grey = np.full(3, 240.0)

    def macenko(pixels, balance):
        normaliser = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        fit_on = valid_pixels[:: max(1, len(valid_pixels) // 32)][:32]
        normaliser.fit(np.concatenate(list(channels_last(white_balanced(fit_on, grey) if balance else fit_on))))
        out = []
        for image in channels_last(white_balanced(pixels, grey) if balance else pixels):
            try:
                image = normaliser.normalize(image, stains=False)[0]
            except (np.linalg.LinAlgError, ValueError, IndexError):  # too few stained pixels: left as it is
                pass
            out.append(np.clip(np.round(image * (pbc_background / grey)), 0, 255).astype(np.uint8) if balance else image)
        return channels_first(out)

    report("Macenko stain normalisation to PBC (torchstain)", macenko(lab_pixels, False), macenko(valid_pixels, False))
    report("white balance to grey, Macenko, PBC's background", macenko(lab_pixels, True), macenko(valid_pixels, True))


if __name__ == "__main__":
    main()
