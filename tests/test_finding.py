"""wbc.finding on synthetic smear fields drawn here: pink red cells, purple nuclei in lilac cytoplasm, platelets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from torchvision.ops import box_iou

from wbc.finding import find_cells


def draw_field(size=(640, 480), red_radius=30, whites=((320, 240),), platelets=((100, 400),), seed=0,
               background=(226, 224, 214), red=(214, 150, 150), nucleus=(90, 50, 150), cytoplasm=(200, 180, 215),
               lobed=False) -> tuple[np.ndarray, list]:
    """A field of ``size`` px with red cells of ``red_radius`` px, white cells (radius 1.6 red cells, nucleus 1.1,
    or with ``lobed`` two lobes of 0.55 parted by 0.6 of cytoplasm) centred at ``whites`` and platelets (0.25 red
    cells); returns the pixels and the white cells' true boxes."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    width, height = size
    cell, core = 1.6 * red_radius, 1.1 * red_radius
    for _ in range(int(width * height / (np.pi * red_radius ** 2) * 0.35)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        if all(np.hypot(x - wx, y - wy) > cell + red_radius for wx, wy in whites):
            draw.ellipse([x - red_radius, y - red_radius, x + red_radius, y + red_radius], fill=red)
    boxes = []
    for x, y in whites:
        draw.ellipse([x - cell, y - cell, x + cell, y + cell], fill=cytoplasm)
        if lobed:
            for side in (-1, 1):
                lobe_x, lobe = x + side * 0.85 * red_radius, 0.55 * red_radius
                draw.ellipse([lobe_x - lobe, y - lobe, lobe_x + lobe, y + lobe], fill=nucleus)
        else:
            draw.ellipse([x - core, y - core * 0.8, x + core, y + core * 0.8], fill=nucleus)
        boxes.append((max(0, x - cell), max(0, y - cell), min(width, x + cell), min(height, y + cell)))
    for x, y in platelets:
        r = 0.25 * red_radius
        draw.ellipse([x - r, y - r, x + r, y + r], fill=nucleus)
    image = image.filter(ImageFilter.GaussianBlur(max(1, red_radius / 15)))
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-4, 5, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), boxes


def iou(a, b) -> float:
    return float(box_iou(torch.tensor([a]), torch.tensor([b]))[0, 0])


@pytest.mark.parametrize("size, red_radius", [((640, 480), 30), ((360, 363), 18), ((2400, 1800), 110)])
def test_the_white_cell_is_found_at_any_magnification(size, red_radius):
    centre = (size[0] * 0.55, size[1] * 0.45)
    field, (truth,) = draw_field(size, red_radius, whites=(centre,), platelets=((size[0] * 0.15, size[1] * 0.8),))
    found = find_cells(field)
    whites = [cell for cell in found if cell.kind == "white"]
    assert len(whites) == 1, found
    assert iou(whites[0].box, truth) >= 0.5, (whites[0].box, truth)
    assert not whites[0].partial and 0 < whites[0].score <= 1
    assert any(cell.kind == "platelet" for cell in found)


def test_two_white_cells_and_one_cut_by_the_border():
    field, truths = draw_field(whites=((200, 200), (600, 300)), platelets=())
    whites = sorted((cell for cell in find_cells(field) if cell.kind == "white"), key=lambda cell: cell.box[0])
    assert len(whites) == 2
    assert [cell.partial for cell in whites] == [False, True]
    assert all(iou(cell.box, truth) >= 0.5 for cell, truth in zip(whites, truths))
    assert whites[1].box[2] <= 640


def test_a_pale_cytoplasm_is_part_of_the_cell():
    field, (truth,) = draw_field(cytoplasm=(212, 208, 214), platelets=())
    (white,) = [cell for cell in find_cells(field) if cell.kind == "white"]
    assert iou(white.box, truth) >= 0.5, (white.box, truth)


def test_the_lobes_of_one_nucleus_are_one_cell_and_two_touching_cells_are_two():
    field, (truth,) = draw_field(lobed=True, platelets=())
    (white,) = [cell for cell in find_cells(field) if cell.kind == "white"]
    assert iou(white.box, truth) >= 0.5, (white.box, truth)
    field, truths = draw_field(whites=((250, 240), (250 + 3.2 * 30, 240)), platelets=())
    assert len([cell for cell in find_cells(field) if cell.kind == "white"]) == 2


def test_a_blank_field_gives_nothing():
    assert find_cells(np.full((480, 640, 3), 230, np.uint8)) == []


@pytest.mark.xfail(strict=True, reason="known gap: without a nucleus the top saturation class is red cells")
def test_a_field_without_white_cells_gives_none():
    field, _ = draw_field(whites=())
    assert [cell for cell in find_cells(field) if cell.kind == "white"] == []


def test_a_field_is_an_rgb_array():
    with pytest.raises(ValueError, match="shape"):
        find_cells(np.zeros((480, 640), np.uint8))
