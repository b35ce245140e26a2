"""Does random-convolution augmentation make a PBC model hold up on another lab? Continued training of a champion.

Usage: python benchmarks/continued_randconv.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--steps 1500] [--lr 5e-5] [--variants stain,stain+randconv]

RandConv (Xu et al. 2021, "Robust and generalizable visual representation learning via random convolutions", ICLR):
each training image passes, with probability 1/2, through a 3x3-channel convolution with random weights (kernel size
drawn from 1, 3, 5, 7; weights N(0, 1/(3 k^2))) whose output is standardised to the image's own mean and spread per
channel and mixed with the image at a random share: it keeps shapes and scrambles colour and local texture, the cues
that differ between labs. Each variant continues the model's training on PBC's training images for ``--steps`` steps
of 16 (``wbc.training.adaptation.fine_tune_few_shot``: AdamW at ``--lr``, batch norm kept at PBC's statistics) with
the main job's stage-1 augmentation (``stain``) and, for ``+randconv``, RandConv after it; ``stain`` alone is the
control for the extra training. Scored on the lab's cells (among the classes present; one view and ``--tta``'s 8
views, and on the four classes other than basophil, which that set photographed apart) and on all of PBC ``valid``.
One JSON line per variant, the model as it is first.
"""

from __future__ import annotations

import copy
import json
import time

from _lab import lab_parser, load, parse

KERNEL_SIZES = (1, 3, 5, 7)


def random_convolution(p: float = 0.5):
    """The RandConv transform of a uint8 (3, S, S) image (see the module)."""
    import torch

    def transform(image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= p:
            return image
        size = KERNEL_SIZES[int(torch.randint(len(KERNEL_SIZES), ()))]
        weight = torch.randn(3, 3, size, size) / (3 * size * size) ** 0.5
        x = image.float().unsqueeze(0) / 255
        y = torch.nn.functional.conv2d(x, weight, padding=size // 2)
        mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
        y = (y - y.mean(dim=(2, 3), keepdim=True)) / (y.std(dim=(2, 3), keepdim=True) + 1e-6) * std + mean
        share = torch.rand(())
        mixed = share * x + (1 - share) * y
        return (mixed.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(0)

    return transform


def main() -> None:
    parser = lab_parser(__doc__)
    parser.set_defaults(valid_per_class=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--variants", default="stain,stain+randconv")
    args = parse(parser)
    import numpy as np
    from torchvision.transforms import v2

    import wbc.data.augmentation as augmentation
    from wbc.data import load_split
    from wbc.training.adaptation import fine_tune_few_shot

    loaded = load(args)
    base, lab, valid = loaded.predictor, loaded.lab, loaded.valid
    train = load_split(args.data_dir, "train", base.image_size)
    present = np.unique(lab.targets)
    basophil = lab.targets == 0
    original = augmentation.train_augmentation

    def scores(predictor):
        views = predictor.view_logits_pixels(lab.pixels)
        line = {}
        for name, logits in (("one_view", views[0]), ("tta", views.mean(axis=0))):
            right = present[logits[:, present].argmax(axis=1)] == lab.targets
            line[f"lab_{name}"] = round(100 * float(right.mean()), 1)
            line[f"lab_four_{name}"] = round(100 * float(right[~basophil].mean()), 1)
        valid_logits = np.asarray(predictor.logits_pixels(valid.pixels))
        line["valid"] = round(100 * float((valid_logits.argmax(axis=1) == valid.targets).mean()), 2)
        return line

    print(json.dumps({"variant": "as it is", **scores(base), "date": time.strftime("%Y-%m-%d")}), flush=True)
    for variant in args.variants.split(","):
        def patched(kind, variant=variant):
            transforms = original(kind)
            return v2.Compose([transforms, random_convolution()]) if variant.endswith("+randconv") else transforms

        augmentation.train_augmentation = patched
        predictor, start = copy.deepcopy(base), time.time()
        losses = fine_tune_few_shot(predictor.model, train.pixels, train.targets, steps=args.steps, lr=args.lr,
                                    augment="stain", seed=0, progress=True)
        augmentation.train_augmentation = original
        print(json.dumps({"variant": variant, "steps": args.steps, "lr": args.lr, **scores(predictor),
                          "final_loss": round(float(np.mean(losses[-100:])), 3), "minutes": round((time.time() - start) / 60, 1),
                          "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
    main()
