"""A classical, training-free finder of white cells on Romanowsky-stained smear fields (May Grünwald-Giemsa, Giemsa,
Wright), at any magnification.

Method (scikit-image throughout): the field is first read at a coarse scale to measure its red cells (the
area-weighted median of the largest inscribed radius of each stained region: red cells are most of a field's
stained area), then rescaled so that a red cell is :data:`WORK_RADIUS` pixels in radius. The scale of everything
after is that red-cell radius, never pixels, so a 640x480 webcam frame and a 12-megapixel phone photo are read alike.
Nuclei are the most saturated objects of a field in every Romanowsky stain, whatever the hue: the HSV saturation
is split in three classes (background, red cells and cytoplasm, nuclei) by multi-level Otsu thresholding
(``skimage.filters.threshold_multiotsu``); the lobes of one nucleus are grouped by a closing of 0.4 red-cell radii,
and then by :func:`group_lobes` (lobes parted by stained granules, as an eosinophil's). A group holding at least a
quarter of a red cell's area of nucleus is a white cell, a smaller one above 2 % a platelet. A white cell's extent is
what is not background: farther from the field's own background colour, in CIELAB, than three robust deviations of
that background (so a pale cytoplasm counts, whatever the stain). Its box is its watershed basin on the distance map
of that extent, seeded by the nuclei and by one marker per red cell (``skimage.segmentation.watershed``), kept within
one red-cell radius of its nucleus.

Known gap (tests/test_finding.py, strict xfail): a field with no white cell still has a top saturation class, and
its darkest red cells are then found as white cells; a guard on the red cells' saturation cost PBC's centre cell
more than it saved. Choice and limits, measured in benchmarks/field_finder.py (BCCD fields, PBC valid, the Raabin
cells): saturation held across the three stains where the haematoxylin channel (``rgb2hed``) and red-channel optical
density lit up Raabin's purple red cells as much as its nuclei; no threshold is a constant of one data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

WORK_RADIUS = 12.0
"""The red-cell radius, in pixels, at which a field is read."""
COARSE_SIDE = 320
"""The long side, in pixels, of the copy the red cells are first measured on."""
MIN_NUCLEUS = 0.25
"""The least nucleus area of a white cell, in red-cell areas."""
MIN_PLATELET = 0.02
"""The least stained area of a platelet, in red-cell areas."""
CYTOPLASM = 1.0
"""How far a white cell's box may reach beyond its nucleus, in red-cell radii."""
BACKGROUND_NOISE = 3.0
"""How far a pixel's colour must be from the field's background colour to belong to a cell, in robust standard
deviations (1.4826 median absolute deviations) of the background's own colours."""
LOBE_GAP = 1.2
"""The widest stained gap between two lobes of one nucleus, in red-cell radii."""
NUCLEUS_SPAN = 3.0
"""The longest extent of a nucleus whose lobes are grouped, in red-cell radii: two touching cells' nuclei span more."""
MAX_CELLS = 200
"""Finds kept per field; a field with more (a thick smear, a stained blob) keeps the highest-scoring."""


@dataclass(frozen=True)
class FoundCell:
    """One cell found on a field.

    ``box`` is ``(x0, y0, x1, y1)`` in the field's own pixels (float, x1 and y1 exclusive); ``kind`` is ``"white"``
    (a white cell or an erythroblast: a nucleated cell) or ``"platelet"``; ``partial`` is True when the box touches
    the field's border (the cell is cut); ``score`` in [0, 1] is the mean saturation of its nucleus above the
    nucleus threshold, relative to the headroom left above it."""

    box: tuple[float, float, float, float]
    kind: str
    score: float
    partial: bool


def _rescaled(field: np.ndarray, factor: float) -> np.ndarray:
    """``field`` (uint8) as float32 in [0, 1], scaled by ``factor``: block means by the whole part of a reduction
    first (``skimage.measure.block_reduce``; cheap on a 12-megapixel photo), then interpolation for the rest."""
    from skimage.measure import block_reduce
    from skimage.transform import rescale

    block = int(1 / factor) if factor < 1 else 1
    if block > 1:
        rows, columns = field.shape[0] // block * block, field.shape[1] // block * block
        field = block_reduce(field[:rows, :columns], (block, block, 1), np.mean)
    image = field.astype(np.float32) / 255.0
    factor *= block
    if abs(factor - 1.0) < 1e-3:
        return image
    return rescale(image, factor, channel_axis=-1, anti_aliasing=False, preserve_range=True).astype(np.float32)


def _saturation(image: np.ndarray) -> np.ndarray:
    high, low = image.max(axis=-1), image.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0).astype(np.float32)


def _foreground(saturation: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, opening

    return ndi.binary_fill_holes(opening(saturation > threshold_otsu(saturation), disk(1)))


def _cell_foreground(image: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """The pixels of ``image`` (float RGB) that are not background: farther from the background's median colour in
    CIELAB than :data:`BACKGROUND_NOISE` robust deviations of the background itself. The background is what lies
    below the saturation's Otsu threshold. Unlike that threshold, this keeps a white cell's pale cytoplasm."""
    from skimage.color import rgb2lab
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import disk, opening

    lab = rgb2lab(gaussian(image, 1.0, channel_axis=-1))
    background = saturation < threshold_otsu(saturation)
    distance = np.linalg.norm(lab - np.median(lab[background], axis=0), axis=-1)
    spread = distance[background]
    centre = np.median(spread)
    threshold = centre + BACKGROUND_NOISE * 1.4826 * np.median(np.abs(spread - centre))
    return ndi.binary_fill_holes(opening(distance > threshold, disk(1)))


def _span(coords: np.ndarray) -> float:
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist

    try:
        coords = coords[ConvexHull(coords).vertices]
    except (QhullError, ValueError):
        pass
    return float(pdist(coords).max()) if len(coords) > 1 else 0.0


def group_lobes(groups: np.ndarray, foreground: np.ndarray, gap: float, span: float) -> np.ndarray:
    """``groups`` (int labels, H x W) with the lobes of one nucleus under one label: two groups merge, nearest
    first, when the straight gap between them is at most ``gap`` pixels and stained all along (``foreground``, bool),
    and the merged nucleus spans at most ``span`` pixels. An eosinophil's two lobes, parted by its granules, are one
    nucleus; two touching lymphocytes' are not."""
    from scipy.spatial import KDTree
    from skimage.draw import line
    from skimage.measure import regionprops

    regions = regionprops(groups)
    parent = {region.label: region.label for region in regions}
    coords = {region.label: region.coords for region in regions}

    def root(group: int) -> int:
        while parent[group] != group:
            group = parent[group]
        return group

    pairs = []
    for index, first in enumerate(regions):
        tree = KDTree(first.coords)
        for second in regions[index + 1:]:
            if np.hypot(*np.subtract(first.centroid, second.centroid)) > span:
                continue
            distances, nearest = tree.query(second.coords)
            closest = int(np.argmin(distances))
            if distances[closest] <= gap:
                pairs.append((float(distances[closest]), first.label, second.label,
                              first.coords[nearest[closest]], second.coords[closest]))
    for _, first, second, start, end in sorted(pairs, key=lambda pair: pair[0]):
        first, second = root(first), root(second)
        if first == second or not foreground[line(*start, *end)].all():
            continue
        merged = np.concatenate([coords[first], coords[second]])
        if _span(merged) <= span:
            parent[second] = first
            coords[first] = merged
    lookup = np.arange(groups.max() + 1)
    for group in parent:
        lookup[group] = root(group)
    return lookup[groups]


def red_cell_radius(foreground: np.ndarray) -> float:
    """The typical red-cell radius in pixels of a stained-foreground mask (bool, H x W): the area-weighted median,
    over its connected regions, of the largest inscribed radius (the peak of the distance transform)."""
    from skimage.measure import label

    distance = ndi.distance_transform_edt(foreground)
    regions = label(foreground)
    if regions.max() == 0:
        return 0.0
    peaks = ndi.maximum(distance, regions, index=np.arange(1, regions.max() + 1))
    areas = np.bincount(regions.ravel())[1:]
    order = np.argsort(peaks)
    cumulative = np.cumsum(areas[order])
    return float(peaks[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def find_cells(field: np.ndarray, *, max_cells: int = MAX_CELLS) -> list[FoundCell]:
    """The white cells and platelets on ``field``, an RGB image (uint8, H x W x 3) of any size.

    Returns them best score first, white cells before platelets, at most ``max_cells``. A field with no stained
    region, or none large enough to be a cell, gives []. Raises ValueError for an array that is not H x W x 3."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_multiotsu
    from skimage.measure import label, regionprops
    from skimage.morphology import closing, disk, opening
    from skimage.segmentation import watershed

    if field.ndim != 3 or field.shape[2] != 3 or min(field.shape[:2]) < 8:
        raise ValueError(f"a field is an RGB image of at least 8x8 pixels, not an array of shape {field.shape}")
    height, width = field.shape[:2]
    coarse = min(1.0, COARSE_SIDE / max(height, width))
    radius = red_cell_radius(_foreground(_saturation(_rescaled(field, coarse)))) / coarse
    if radius <= 1.0 / coarse:
        return []
    factor = min(4.0, WORK_RADIUS / radius)
    image = _rescaled(field, factor)
    factor = image.shape[1] / width
    saturation = _saturation(image)
    if float(saturation.std()) < 0.01:
        return []
    foreground = _cell_foreground(image, saturation)
    threshold = threshold_multiotsu(saturation, classes=3)[1]
    nuclei = opening(saturation > threshold, disk(1))
    reach = max(1, round(WORK_RADIUS * 0.4))
    groups = label(closing(nuclei, disk(reach)) & ndi.binary_dilation(nuclei, disk(reach)))
    groups = group_lobes(groups, foreground, LOBE_GAP * WORK_RADIUS, NUCLEUS_SPAN * WORK_RADIUS)
    red_cell_area = np.pi * WORK_RADIUS ** 2
    headroom = max(1e-6, float(saturation.max()) - threshold)
    kept = []
    for region in regionprops(groups):
        member = groups[region.slice] == region.label
        area = int(nuclei[region.slice][member].sum())
        kind = "white" if area >= MIN_NUCLEUS * red_cell_area else "platelet" if area >= MIN_PLATELET * red_cell_area else None
        if kind:
            score = float(np.clip((saturation[region.slice][member].mean() - threshold) / headroom, 0, 1))
            kept.append((region, kind, score))
    kept = sorted(kept, key=lambda entry: (entry[1] != "white", -entry[2]))[:max_cells]

    markers = np.zeros(saturation.shape, np.int32)
    for index, (region, kind, _) in enumerate(kept, start=1):
        if kind == "white":
            markers[region.slice][groups[region.slice] == region.label] = index
    distance = ndi.distance_transform_edt(foreground)
    whites = markers > 0
    free = foreground & ~ndi.binary_dilation(whites, disk(round(WORK_RADIUS / 2)))
    for offset, (y, x) in enumerate(peak_local_max(distance, min_distance=round(WORK_RADIUS * 0.7),
                                                   threshold_abs=WORK_RADIUS / 2, labels=free.astype(np.int32))):
        markers[y, x] = len(kept) + 1 + offset
    basins = watershed(-distance, markers, mask=foreground | whites) if whites.any() else markers

    found = []
    rows, columns = saturation.shape
    for index, (region, kind, score) in enumerate(kept, start=1):
        y0, x0, y1, x1 = region.bbox
        if kind == "white":
            ys, xs = np.nonzero(basins == index)
            y0, x0 = max(ys.min(), y0 - CYTOPLASM * WORK_RADIUS), max(xs.min(), x0 - CYTOPLASM * WORK_RADIUS)
            y1, x1 = min(ys.max() + 1, y1 + CYTOPLASM * WORK_RADIUS), min(xs.max() + 1, x1 + CYTOPLASM * WORK_RADIUS)
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(rows, y1), min(columns, x1)
        partial = y0 <= 0 or x0 <= 0 or y1 >= rows or x1 >= columns
        box = (min(width, x0 / factor), min(height, y0 / factor), min(width, x1 / factor), min(height, y1 / factor))
        found.append(FoundCell(box=tuple(float(v) for v in box), kind=kind, score=score, partial=bool(partial)))
    return found
