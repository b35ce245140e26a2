"""Decoded-image cache vs decoding JPEGs every epoch: data-loading and training-epoch throughput.

Usage: python benchmarks/cache_speedup.py --data-dir ../shared/data [--images 2048] [--image-size 128]
Both variants feed the same images through the same augmentation and the same model step
(EfficientNet-Lite0 fine-tuning, batch 64, channels_last), in one process, one after the other.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Dataset

from wbc.data.cache import decode_cached
from wbc.data.splits import DecodedImageDataset, limit_samples
from wbc.data.augmentation import train_augmentation
from wbc.data.dataset import BarcelonaDataset
from wbc.data.images import decode_image
from wbc.training.module import WBCClassifierModule
from wbc._process import tune_malloc_and_reexec


class DecodeEveryTime(Dataset):
    def __init__(self, samples, size, transform):
        self.samples, self.size, self.transform = samples, size, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, target = self.samples[index]
        return self.transform(decode_image(path, self.size)), target


def timed_pass(loader, step=None) -> float:
    started = time.perf_counter()
    for images, targets in loader:
        if step is not None:
            step(images, targets)
    return time.perf_counter() - started


def main() -> None:
    tune_malloc_and_reexec()
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    samples = limit_samples(BarcelonaDataset(args.data_dir, "train").samples, args.images // 8)
    paths = [p for p, _ in samples]
    with tempfile.TemporaryDirectory() as cache_dir:
        started = time.perf_counter()
        decoded = decode_cached(paths, args.image_size, cache_dir=cache_dir)
        build_seconds = time.perf_counter() - started
        targets = torch.tensor([t for _, t in samples])
        cached = DecodedImageDataset(decoded.pixels, targets.numpy(), paths, train_augmentation())
        uncached = DecodeEveryTime(samples, args.image_size, train_augmentation())
        loaders = {name: DataLoader(ds, batch_size=64, shuffle=True) for name, ds in (("jpeg", uncached), ("cache", cached))}

        module = WBCClassifierModule(arch="efficientnet_lite0", mode="finetune", head_epochs=0, image_size=args.image_size)
        module.on_train_epoch_start()
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
        module.train()

        def step(images, targets):
            optimizer.zero_grad()
            module.criterion(module(images), targets).backward()
            optimizer.step()

        results = {}
        for name, loader in loaders.items():
            results[f"{name}_load"] = timed_pass(loader)
        for name, loader in loaders.items():
            results[f"{name}_train"] = timed_pass(loader, step)
    n = len(samples)
    print(f"images: {n} at {args.image_size}px; cache build (2 processes): {build_seconds:.1f} s ({n / build_seconds:.0f} img/s)")
    print("| variant | data loading img/s | training epoch img/s |")
    print("|---|---|---|")
    for name in ("jpeg", "cache"):
        print(f"| {name} | {n / results[name + '_load']:.0f} | {n / results[name + '_train']:.1f} |")
    print(f"speed-up from the cache: loading x{results['jpeg_load'] / results['cache_load']:.1f}, "
          f"training epoch x{results['jpeg_train'] / results['cache_train']:.2f}")


if __name__ == "__main__":
    main()
