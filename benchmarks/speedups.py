"""Training and inference throughput of EfficientNet-Lite0 under the speed-ups, as ratios from one process.

Usage: python benchmarks/speedups.py [--image-size 160] [--batch-size 64] [--steps 12]

Variants: NCHW eager (baseline), channels_last eager (what wbc uses), channels_last + torch.compile
(inductor, CPU). Training = one AdamW step of the full network on random uint8 images; inference =
forward passes in inference mode. Also: images per second through the standard and the robust
training augmentation. Run it alone: the machine's 2 cores are the measurement.
"""

from __future__ import annotations

import argparse
import time

import torch

from wbc.data.augmentation import train_augmentation
from wbc.models import build_model
from wbc._process import tune_malloc_and_reexec


def throughput(step, images, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step(images)
    started = time.perf_counter()
    for _ in range(steps):
        step(images)
    return steps * len(images) / (time.perf_counter() - started)


def variant(name: str, image_size: int, batch: torch.Tensor, targets: torch.Tensor, steps: int) -> dict:
    channels_last = name != "nchw"
    model = build_model("efficientnet_lite0", pretrained=False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if name == "channels_last+compile" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(images):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(images), targets).backward()
        optimizer.step()

    def infer_step(images):
        with torch.inference_mode():
            forward(images)

    model.train()
    training = throughput(train_step, batch, steps)
    model.eval()
    inference = throughput(infer_step, batch, steps * 2)
    return {"variant": name, "train_img_s": training, "infer_img_s": inference}


def augmentation_rate(kind: str, image_size: int, count: int = 400) -> float:
    augment = train_augmentation(kind)
    images = torch.randint(0, 256, (count, 3, image_size, image_size), dtype=torch.uint8)
    started = time.perf_counter()
    for image in images:
        augment(image)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--variants", default="nchw,channels_last,channels_last+compile")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8).float().div(255)
    targets = torch.randint(0, 8, (args.batch_size,))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.image_size} px, batch {args.batch_size}")
    rows = [variant(name, args.image_size, batch, targets, args.steps) for name in args.variants.split(",")]
    base = rows[0]
    print("| variant | training img/s | ratio | inference img/s | ratio |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['train_img_s']:.1f} | x{row['train_img_s'] / base['train_img_s']:.2f} | "
              f"{row['infer_img_s']:.1f} | x{row['infer_img_s'] / base['infer_img_s']:.2f} |")
    standard, robust = augmentation_rate("standard", args.image_size), augmentation_rate("robust", args.image_size)
    print(f"augmentation, one worker: standard {standard:.0f} img/s, robust {robust:.0f} img/s")


if __name__ == "__main__":
    tune_malloc_and_reexec()
    main()
