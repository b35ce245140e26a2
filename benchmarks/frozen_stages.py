"""Training throughput of EfficientNet-Lite0 with its first stages frozen (``--freeze-stages``), as ratios from one process.

Usage: python benchmarks/frozen_stages.py [--image-size 160] [--batch-size 64] [--steps 6] [--stages 0,2,3,4,5,6]

For each N: one AdamW step of the network in finetune phase 2 with its first N stages frozen (stem
first; what ``wbc train --freeze-stages N`` does), on random images, channels_last. Also the bound
that caching the frozen stages' output once would give: the same step on stored features (the
frozen part's forward no longer counted), and the frozen part's own forward rate (the cost of
filling such a cache once per augmented view). Run it alone: the machine's 2 cores are the measurement.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from speedups import throughput
from wbc.models import build_model, get_spec
from wbc._process import tune_malloc_and_reexec


def split_at_stage(model, freeze_stages: int) -> tuple[nn.Module, nn.Module]:
    """(the frozen part, the rest) of a Lite0 :class:`Classifier`, as two modules run one after the other."""
    net = model.net
    normalise = lambda images: (images - model.mean) / model.std  # noqa: E731

    def modules(stages):
        return [net.get_submodule(name) for stage in stages for name in stage]

    frozen = nn.Sequential(*modules(model.spec.stages[:freeze_stages]))
    rest = nn.Sequential(*modules(model.spec.stages[freeze_stages:]), net.conv_head, net.bn2, net.global_pool, net.classifier)
    return (lambda images: frozen(normalise(images))), rest


def measure(freeze_stages: int, batch: torch.Tensor, targets: torch.Tensor, steps: int) -> dict:
    model = build_model("efficientnet_lite0", pretrained=False).to(memory_format=torch.channels_last)
    model.set_trainable("finetune", phase=2, unfreeze="all", freeze_stages=freeze_stages)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step(forward, inputs):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(inputs), targets).backward()
        optimizer.step()

    row = {"freeze_stages": freeze_stages, "train_img_s": throughput(lambda x: train_step(model, x), batch, steps)}
    if freeze_stages:
        frozen, rest = split_at_stage(model, freeze_stages)
        with torch.no_grad():
            features = frozen(batch).contiguous(memory_format=torch.channels_last)
        row["cached_img_s"] = throughput(lambda x: train_step(rest, x), features, steps)

        def frozen_forward(inputs):
            with torch.inference_mode():
                frozen(inputs)

        row["frozen_forward_img_s"] = throughput(frozen_forward, batch, steps)
        row["feature_shape"] = tuple(features.shape[1:])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--stages", default="0,2,3,4,5,6", help="Comma-separated freeze_stages values; the first is the baseline.")
    args = parser.parse_args()
    stage_names = [" + ".join(stage) for stage in get_spec("efficientnet_lite0").stages]
    torch.manual_seed(0)
    batch = torch.rand(args.batch_size, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 8, (args.batch_size,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.image_size} px, batch {args.batch_size}")
    rows = [measure(int(n), batch, targets, args.steps) for n in args.stages.split(",")]
    base = rows[0]["train_img_s"]
    print("| freeze_stages | frozen | training img/s | ratio | on cached features img/s | ratio | frozen part's forward img/s | cached feature |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        n = row["freeze_stages"]
        cached = f"{row['cached_img_s']:.1f} | x{row['cached_img_s'] / base:.2f}" if n else "– | –"
        forward = f"{row['frozen_forward_img_s']:.0f}" if n else "–"
        shape = "x".join(map(str, row["feature_shape"])) if n else "–"
        print(f"| {n} | {', '.join(stage_names[:n]) or 'nothing'} | {row['train_img_s']:.1f} | x{row['train_img_s'] / base:.2f} | {cached} | {forward} | {shape} |")


if __name__ == "__main__":
    tune_malloc_and_reexec()
    main()
