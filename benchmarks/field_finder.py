"""How well and how fast wbc.finding finds white cells, on images it was not tuned on as much as on BCCD.

    python benchmarks/field_finder.py [--data ../shared/data] [--pbc-step 1] [--out finder.json]
    python benchmarks/field_finder.py --share     # the PBC cell share that fields' cells are framed at

- BCCD fields (``fields/bccd``, Pascal VOC): recall and precision of the white cells at IoU 0.5 (greedy one-to-one
  matching, best IoU first), the mean IoU of the matches, and milliseconds per field;
- PBC valid (every ``--pbc-step``-th image): the share of images with a find whose box holds the image centre (each
  PBC image shows one cell there: a white find, or for a platelet image a find of either kind), and the other white
  finds;
- the Raabin cells (``other-lab``): the same centre rate;
- speed of the finder alone on 640x480, 1440x900 and 4000x3000 fields (BCCD fields resized).
"""

from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from wbc.finding import find_cells

WHITE_NAMES = {"wbc", "neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"}


def voc_white_boxes(annotation: Path) -> list[list[float]]:
    boxes = []
    for item in ET.parse(annotation).findall("object"):
        if item.findtext("name", "").strip().lower() in WHITE_NAMES:
            box = item.find("bndbox")
            boxes.append([float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax")])
    return boxes


def bccd(root: Path) -> dict:
    matched = missed = extra = 0
    ious, seconds = [], []
    for image_path in sorted((root / "JPEGImages").glob("*.jpg")):
        truth = voc_white_boxes(root / "Annotations" / f"{image_path.stem}.xml")
        field = np.asarray(Image.open(image_path).convert("RGB"))
        start = time.perf_counter()
        found = [cell.box for cell in find_cells(field) if cell.kind == "white"]
        seconds.append(time.perf_counter() - start)
        overlaps = box_iou(torch.tensor(truth).reshape(-1, 4), torch.tensor(found).reshape(-1, 4))
        pairs = sorted(((float(overlaps[i, j]), i, j) for i in range(len(truth)) for j in range(len(found))), reverse=True)
        used_truth, used_found = set(), set()
        for overlap, i, j in pairs:
            if overlap >= 0.5 and i not in used_truth and j not in used_found:
                used_truth.add(i), used_found.add(j), ious.append(overlap)
        matched += len(used_truth)
        missed += len(truth) - len(used_truth)
        extra += len(found) - len(used_found)
    return {"fields": len(seconds), "white_cells": matched + missed, "recall": matched / (matched + missed),
            "precision": matched / max(1, matched + extra), "false_finds": extra, "mean_iou": float(np.mean(ious)),
            "ms_per_field": 1000 * float(np.median(seconds))}


def holds_centre(box, field: np.ndarray) -> bool:
    height, width = field.shape[:2]
    return box[0] <= width / 2 <= box[2] and box[1] <= height / 2 <= box[3]


def centre_rate(paths: list[Path]) -> dict:
    """A PBC platelet image shows a clump of platelets at its centre: a find of either kind holding the centre counts,
    and how many of those were called platelets is reported apart."""
    hits = others = platelet_images = platelets_called = 0
    for path in paths:
        field = np.asarray(Image.open(path).convert("RGB"))
        found = find_cells(field)
        clump = path.parent.name == "platelet"
        centred = [cell for cell in found if (clump or cell.kind == "white") and holds_centre(cell.box, field)]
        hits += bool(centred)
        others += sum(cell.kind == "white" for cell in found) - (bool(centred) and not clump)
        platelet_images += clump
        platelets_called += clump and any(cell.kind == "platelet" for cell in centred)
    return {"images": len(paths), "centre_found": hits / len(paths), "other_white_finds": others,
            "platelet_images": platelet_images, "platelet_images_called_platelet": platelets_called}


def cell_share(paths: list[Path]) -> dict:
    """The share of each PBC image's shorter side that the box of its centre white cell spans (whole boxes only):
    what wbc.inference.fields.CELL_SHARE frames a field's cells at."""
    shares = []
    for path in paths:
        field = np.asarray(Image.open(path).convert("RGB"))
        centred = [cell.box for cell in find_cells(field)
                   if cell.kind == "white" and not cell.partial and holds_centre(cell.box, field)]
        if centred:
            x0, y0, x1, y1 = centred[0]
            shares.append(max(x1 - x0, y1 - y0) / min(field.shape[:2]))
    return {"images": len(paths), "measured": len(shares), "median": float(np.median(shares)),
            "p10": float(np.percentile(shares, 10)), "p90": float(np.percentile(shares, 90))}


def speed(root: Path) -> dict:
    field = Image.open(sorted((root / "JPEGImages").glob("*.jpg"))[0]).convert("RGB")
    result = {}
    for width, height in ((640, 480), (1440, 900), (4000, 3000)):
        pixels = np.asarray(field.resize((width, height), Image.BILINEAR))
        find_cells(pixels)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            find_cells(pixels)
            times.append(time.perf_counter() - start)
        result[f"{width}x{height}_ms"] = 1000 * float(np.median(times))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--pbc-step", type=int, default=1, help="every n-th PBC valid image")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--share", action="store_true", help="only measure the PBC cell share, on every 16th train image")
    args = parser.parse_args()
    if args.share:
        print(json.dumps(cell_share(sorted((args.data / "barcelona" / "train").glob("*/*.jpg"))[::16]), indent=2))
        return
    results = {
        "bccd": bccd(args.data / "fields" / "bccd"),
        "pbc_valid": centre_rate(sorted((args.data / "barcelona" / "valid").glob("*/*.jpg"))[::args.pbc_step]),
        "raabin": centre_rate(sorted((args.data / "other-lab").glob("*/*.jpg"))),
        "speed": speed(args.data / "fields" / "bccd"),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
