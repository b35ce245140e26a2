"""Which training makes a PBC model hold up on another lab's cells: a sweep of training variants on one GPU.

Two steps, because the GPU machine has neither the data nor MLflow:

    python benchmarks/other_lab_sweep.py prepare --out .sweep [--per-class 1000]   # here: decode and pack
    python benchmarks/other_lab_sweep.py run --packed .sweep --out OUT [--epochs 10] # on the GPU machine

``prepare`` decodes PBC train (at most ``--per-class`` images per class, evenly spaced over sorted names), PBC valid
and ``../shared/data/other-lab`` with wbc's own decoder at 160 px, stores them as JPEG (quality 80 for train, 90 for the
others, to fit the 64 MiB a device call carries) in one tar file
with their labels, and writes the EfficientNet-Lite0 ImageNet weights (timm's key names, float16) beside it.
``run`` needs only torch and timm: the images live on the GPU and every augmentation is a batched tensor operation,
so a variant trains in well under a minute. Each variant writes one JSON line to ``OUT/sweep.jsonl``: PBC valid
accuracy, other-lab accuracy over its five classes and over all eight, as given and with batch-norm statistics
re-estimated on the lab's images (AdaBN, Li et al. 2016), plain and with 8-fold flip/rotation test-time averaging.

The augmentations are GPU re-implementations of the families in :mod:`wbc.data.shifts` plus HSV/HED colour jitter
after Tellez et al. 2019 ("Quantifying the effects of data augmentation and stain color normalization", Med. Image
Anal. 58); what wins is then built into wbc's own training and measured there (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tarfile
import time
from pathlib import Path

CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
SIZE = 160
DEVICE_TYPE = "cuda"


# ---------------------------------------------------------------- prepare (here, with wbc installed)

def prepare(args) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from wbc.data.images import decode_image_array
    from wbc.models.efficientnet_lite import lite0_weights_path, remap_lite_keys

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {"train": Path(args.data_dir) / "barcelona" / "train", "valid": Path(args.data_dir) / "barcelona" / "valid",
            "lab": Path(args.lab)}
    labels: dict[str, list] = {}
    with tarfile.open(out / "images.tar", "w") as tar:
        for split, root in sets.items():
            for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
                files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff"))
                if split == "train" and len(files) > args.per_class:
                    files = [files[round(i * len(files) / args.per_class)] for i in range(args.per_class)]
                for index, path in enumerate(files):
                    array = decode_image_array(path, SIZE)
                    buffer = io.BytesIO()
                    Image.fromarray(array).save(buffer, "JPEG", quality=args.train_quality if split == "train" else 90)
                    name = f"{split}/{class_dir.name.lower()}/{index:05d}.jpg"
                    info = tarfile.TarInfo(name)
                    info.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(info, buffer)
                    labels.setdefault(split, []).append([name, CLASSES.index(class_dir.name.lower())])
    (out / "labels.json").write_text(json.dumps(labels))
    state = remap_lite_keys(torch.load(lite0_weights_path(), map_location="cpu", weights_only=True))
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, out / "lite0_imagenet_fp16.pt")
    print({k: len(v) for k, v in labels.items()}, f"{(out / 'images.tar').stat().st_size / 2**20:.1f} MiB")
    del np


# ---------------------------------------------------------------- run (GPU machine: torch + timm)

def load_packed(packed: Path, device):
    import numpy as np
    import torch
    from concurrent.futures import ThreadPoolExecutor
    from PIL import Image

    labels = json.loads((packed / "labels.json").read_text())
    with tarfile.open(packed / "images.tar") as tar:
        blobs = {member.name: tar.extractfile(member).read() for member in tar if member.isfile()}

    def decode(name):
        return np.asarray(Image.open(io.BytesIO(blobs[name])).convert("RGB"))

    data = {}
    with ThreadPoolExecutor(16) as pool:
        for split, rows in labels.items():
            arrays = list(pool.map(decode, [name for name, _ in rows]))
            images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)
            data[split] = (images, torch.tensor([label for _, label in rows], device=device))
    return data


# colour spaces, batched on float images in [0, 1] of shape (N, 3, H, W)
def _batch_norms() -> tuple:
    """PyTorch's public batch-norm layers (their common base class is private)."""
    import torch

    return torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm


_RGB_FROM_HED = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]  # Ruifrok & Johnston 2001, as skimage


def _per_sample(values, x):
    return values.view(-1, *([1] * (x.dim() - 1)))


def hed_jitter(x, strength, shift_strength):
    import torch

    rgb_from_hed = torch.tensor(_RGB_FROM_HED, device=x.device)
    rgb_from_hed[2] = torch.linalg.cross(rgb_from_hed[0], rgb_from_hed[1])
    rgb_from_hed = rgb_from_hed / rgb_from_hed.norm(dim=1, keepdim=True)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    n = x.shape[0]
    od = -torch.log(x.clamp_min(1e-3))
    hed = torch.einsum("nchw,cd->ndhw", od, hed_from_rgb)
    scale = 1 + (torch.rand(n, 3, device=x.device) * 2 - 1) * strength
    shift = (torch.rand(n, 3, device=x.device) * 2 - 1) * shift_strength
    hed = hed * scale[:, :, None, None] + shift[:, :, None, None]
    od = torch.einsum("ndhw,dc->nchw", hed, rgb_from_hed)
    return torch.exp(-od).clamp(0, 1)


def hsv_jitter(x, hue, saturation, brightness, contrast, gamma):
    """Hue as a rotation about the grey axis (YIQ), saturation/contrast as blends, brightness as a gain, gamma."""
    import torch

    n = x.shape[0]
    dev = x.device

    def u(spread):
        return (torch.rand(n, device=dev) * 2 - 1) * spread

    if hue:
        theta = u(hue) * 2 * math.pi
        yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=dev)
        rgb_from_yiq = torch.linalg.inv(yiq)
        c, s = torch.cos(theta), torch.sin(theta)
        rot = torch.zeros(n, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
        m = rgb_from_yiq @ rot @ yiq
        x = torch.einsum("nij,njhw->nihw", m, x).clamp(0, 1)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    if saturation:
        f = _per_sample(1 + u(saturation), x)
        x = (grey + f * (x - grey)).clamp(0, 1)
    if contrast:
        f = _per_sample(1 + u(contrast), x)
        mean = grey.mean(dim=(2, 3), keepdim=True)
        x = (mean + f * (x - mean)).clamp(0, 1)
    if brightness:
        x = (x * _per_sample(1 + u(brightness), x)).clamp(0, 1)
    if gamma:
        x = x.clamp_min(1e-4) ** _per_sample(torch.exp(u(gamma)), x)
    return x


def random_blur(x, p, max_sigma):
    import torch
    from torchvision.transforms.v2 import functional as F

    mask = torch.rand(x.shape[0], device=x.device) < p
    if not mask.any():
        return x
    sigma = float(torch.empty(()).uniform_(0.3, max_sigma))
    k = 2 * math.ceil(3 * sigma) + 1
    x = x.clone()
    x[mask] = F.gaussian_blur(x[mask], [k, k], [sigma, sigma])
    return x


def random_grey(x, p):
    import torch

    mask = _per_sample((torch.rand(x.shape[0], device=x.device) < p).float(), x)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand_as(x)
    return mask * grey + (1 - mask) * x


def random_zoom(x, p, low, high, translate):
    import torch
    import torch.nn.functional as nnf

    n = x.shape[0]
    dev = x.device
    apply = torch.rand(n, device=dev) < p
    zoom = torch.exp(torch.empty(n, device=dev).uniform_(math.log(low), math.log(high)))
    zoom = torch.where(apply, zoom, torch.ones_like(zoom))
    t = (torch.rand(n, 2, device=dev) * 2 - 1) * translate * apply[:, None]
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = t
    grid = nnf.affine_grid(theta, list(x.shape), align_corners=False)
    return nnf.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def flips_and_turns(x):
    import torch

    n = x.shape[0]
    flip = _per_sample(torch.rand(n, device=x.device) < 0.5, x)
    x = torch.where(flip, x.flip(-1), x)
    k = torch.randint(4, (n,), device=x.device)
    out = x.clone()
    for turns in range(1, 4):
        sel = k == turns
        if sel.any():
            out[sel] = torch.rot90(x[sel], turns, dims=(-2, -1))
    return out


VARIANTS = {
    # name: (augmentation settings, model settings)
    "standard": ({}, {}),
    "robust-like": ({"hed": (0.4, 0.04, 0.3), "zoom": (0.3, 0.65, 2.0, 0.0), "blur": (0.1, 2.5), "brightness": 0.35}, {}),
    "hsv-strong": ({"hsv": (0.05, 0.5, 0.3, 0.3, 0.3)}, {}),
    "hed-strong": ({"hed": (0.5, 0.05, 0.8)}, {}),
    "stain-strong": ({"hed": (0.5, 0.05, 0.8), "hsv": (0.05, 0.5, 0.3, 0.3, 0.3), "blur": (0.3, 2.0), "grey": 0.1}, {}),
    "stain-strong+frozen-bn": ({"hed": (0.5, 0.05, 0.8), "hsv": (0.05, 0.5, 0.3, 0.3, 0.3), "blur": (0.3, 2.0), "grey": 0.1},
                               {"frozen_bn": True}),
    "stain-strong+standardise": ({"hed": (0.5, 0.05, 0.8), "hsv": (0.05, 0.5, 0.3, 0.3, 0.3), "blur": (0.3, 2.0), "grey": 0.1},
                                 {"standardise": True}),
    "stain-strong+zoom": ({"hed": (0.5, 0.05, 0.8), "hsv": (0.05, 0.5, 0.3, 0.3, 0.3), "blur": (0.3, 2.0), "grey": 0.1,
                           "zoom": (0.7, 0.7, 1.5, 0.1)}, {}),
    "standard+standardise": ({}, {"standardise": True}),
    "grey": ({}, {"grey_input": True}),
    "stain-strong+hue-full": ({"hed": (0.5, 0.05, 0.8), "hsv": (0.5, 0.5, 0.3, 0.3, 0.3), "blur": (0.3, 2.0), "grey": 0.2}, {}),
    "stain-strong+zoom+grey-0.3": ({"hed": (0.5, 0.05, 0.8), "hsv": (0.05, 0.5, 0.3, 0.3, 0.3), "blur": (0.3, 2.0), "grey": 0.3,
                                    "zoom": (0.7, 0.7, 1.5, 0.1)}, {}),
    "stain-strong+grey-half": ({"hed": (0.5, 0.05, 0.8), "hsv": (0.05, 0.5, 0.3, 0.3, 0.3), "blur": (0.3, 2.0), "grey": 0.5}, {}),
}


def augment(x, settings):
    """``x`` float (N, 3, S, S) in [0, 1]."""
    x = flips_and_turns(x)
    if "zoom" in settings:
        x = random_zoom(x, *settings["zoom"])
    if "hed" in settings:
        strength, shift, p = settings["hed"]
        import torch

        mask = _per_sample((torch.rand(x.shape[0], device=x.device) < p).float(), x)
        x = mask * hed_jitter(x, strength, shift) + (1 - mask) * x
    if "hsv" in settings:
        x = hsv_jitter(x, *settings["hsv"])
    else:
        x = hsv_jitter(x, 0, 0.1, settings.get("brightness", 0.1), 0.1, 0)
    if "blur" in settings:
        x = random_blur(x, *settings["blur"])
    if "grey" in settings:
        x = random_grey(x, settings["grey"])
    return x


def build(weights_path, model_settings, device):
    import timm
    import torch

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    net.reset_classifier(len(CLASSES))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.frozen_bn = model_settings.get("frozen_bn", False)

        def forward(self, x):  # float [0, 1]
            if model_settings.get("grey_input"):
                x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1).expand(-1, 3, -1, -1)
            if model_settings.get("standardise"):
                mean = x.mean(dim=(2, 3), keepdim=True)
                std = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
                return self.net((x - mean) / std * 0.25 / 0.5)  # per image, per channel: zero mean, Lite0's spread
            return self.net((x - 0.5) / 0.5)

        def train(self, mode=True):
            super().train(mode)
            if self.frozen_bn and mode:
                for m in self.net.modules():
                    if isinstance(m, _batch_norms()):
                        m.eval()
            return self

    return Model().to(device).to(memory_format=torch.channels_last)


def predict(model, images, tta=False, batch=500):
    import torch

    model.eval()
    outs = []
    with torch.no_grad(), torch.autocast(DEVICE_TYPE, dtype=torch.bfloat16):
        for i in range(0, len(images), batch):
            x = images[i:i + batch].float() / 255
            if tta:
                views = [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]
                probs = torch.stack([model(v.contiguous(memory_format=torch.channels_last)).float().softmax(1) for v in views]).mean(0)
            else:
                probs = model(x.contiguous(memory_format=torch.channels_last)).float().softmax(1)
            outs.append(probs)
    return torch.cat(outs)


def adabn(model, images):
    """Batch-norm running statistics re-estimated on ``images`` (cumulative average over two passes of 50)."""
    import copy

    import torch

    adapted = copy.deepcopy(model)
    for m in adapted.modules():
        if isinstance(m, _batch_norms()):
            m.reset_running_stats()
            m.momentum = None
    torch.nn.Module.train(adapted, True)
    with torch.no_grad(), torch.autocast(DEVICE_TYPE, dtype=torch.bfloat16):
        for i in range(0, len(images), 50):
            adapted(images[i:i + 50].float().div(255).contiguous(memory_format=torch.channels_last))
    return adapted


def scores(probs, labels, present):
    import torch

    all8 = (probs.argmax(1) == labels).float().mean().item()
    mask = torch.zeros(probs.shape[1], dtype=torch.bool, device=probs.device)
    mask[present] = True
    restricted = (probs.masked_fill(~mask, -1).argmax(1) == labels).float().mean().item()
    return all8, restricted


def confusion(probs, labels, present):
    import torch

    mask = torch.zeros(probs.shape[1], dtype=torch.bool, device=probs.device)
    mask[present] = True
    pred = probs.masked_fill(~mask, -1).argmax(1)
    return [[int(((labels == t) & (pred == p)).sum()) for p in present] for t in present]


def run(args) -> None:
    import torch

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    global DEVICE_TYPE
    DEVICE_TYPE = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(DEVICE_TYPE)
    start = time.time()
    packed = Path(args.packed)
    data = load_packed(packed, device)
    print(f"loaded in {time.time() - start:.1f} s: " + ", ".join(f"{k} {len(v[1])}" for k, v in data.items()), flush=True)
    train_x, train_y = data["train"]
    if args.limit:
        train_x, train_y = train_x[:: len(train_y) // args.limit], train_y[:: len(train_y) // args.limit]
    valid_x, valid_y = data["valid"]
    lab_x, lab_y = data["lab"]
    present = sorted(set(lab_y.tolist()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in names:
            if time.time() - start > args.deadline:
                print(f"deadline: skipping {name} seed {seed}", flush=True)
                continue
            aug_settings, model_settings = VARIANTS[name]
            t0 = time.time()
            torch.manual_seed(seed)
            model = build(packed / "lite0_imagenet_fp16.pt", model_settings, device)
            head = list(model.net.get_classifier().parameters())
            head_ids = {id(p) for p in head}
            body = [p for p in model.parameters() if id(p) not in head_ids]
            optimizer = torch.optim.AdamW([{"params": head, "lr": args.lr}, {"params": body, "lr": args.lr * 0.5}],
                                          weight_decay=0.02)
            steps_per_epoch = len(train_y) // args.batch_size
            total = steps_per_epoch * args.epochs
            warmup = min(100, total // 5)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
            loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
            step = 0
            for epoch in range(args.epochs):
                model.train()
                order = torch.randperm(len(train_y), device=device)
                for b in range(steps_per_epoch):
                    idx = order[b * args.batch_size:(b + 1) * args.batch_size]
                    x = augment(train_x[idx].float() / 255, aug_settings).contiguous(memory_format=torch.channels_last)
                    with torch.autocast(DEVICE_TYPE, dtype=torch.bfloat16):
                        loss = loss_fn(model(x).float(), train_y[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    step += 1
            train_seconds = time.time() - t0
            row = {"variant": name, "seed": seed, "epochs": args.epochs, "train_images": len(train_y),
                   "augmentation": aug_settings, "model": model_settings, "train_seconds": round(train_seconds, 1)}
            row["valid_acc"] = scores(predict(model, valid_x), valid_y, list(range(len(CLASSES))))[0]
            row["valid_acc_tta"] = scores(predict(model, valid_x, tta=True), valid_y, list(range(len(CLASSES))))[0]
            probs = predict(model, lab_x)
            row["lab_acc8"], row["lab_acc5"] = scores(probs, lab_y, present)
            row["lab_confusion"] = confusion(probs, lab_y, present)
            row["lab_acc8_tta"], row["lab_acc5_tta"] = scores(predict(model, lab_x, tta=True), lab_y, present)
            adapted = adabn(model, lab_x)
            row["lab_acc8_adabn"], row["lab_acc5_adabn"] = scores(predict(adapted, lab_x), lab_y, present)
            row["lab_acc8_adabn_tta"], row["lab_acc5_adabn_tta"] = scores(predict(adapted, lab_x, tta=True), lab_y, present)
            with open(out / "sweep.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} seed {seed}: valid {row['valid_acc']:.4f} lab5 {row['lab_acc5']:.2f} tta {row['lab_acc5_tta']:.2f} "
                  f"adabn {row['lab_acc5_adabn']:.2f} adabn+tta {row['lab_acc5_adabn_tta']:.2f} "
                  f"({train_seconds:.0f} s, total {time.time() - start:.0f} s)", flush=True)
            if args.save == name:
                torch.save(model.state_dict(), out / f"{name}-{seed}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--lab", default="../shared/data/other-lab")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--train-quality", type=int, default=80, help="JPEG quality of the packed training images")
    r = sub.add_parser("run")
    r.add_argument("--packed", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--seeds", type=int, default=1)
    r.add_argument("--first-seed", type=int, default=0)
    r.add_argument("--variants", default="")
    r.add_argument("--deadline", type=float, default=480, help="seconds after which no new variant starts")
    r.add_argument("--limit", type=int, default=0, help="train on about this many images (a smoke test)")
    r.add_argument("--save", default="", help="save this variant's weights")
    args = parser.parse_args()
    prepare(args) if args.step == "prepare" else run(args)


if __name__ == "__main__":
    main()
