"""Finding the cells on a smear field: white cells (and erythroblasts, which a differential counts with them) as
boxes in the field's own pixels, platelets as a kind of their own. NumPy, SciPy and scikit-image only: no PyTorch,
so the served model can find cells too."""

from wbc.finding.finder import MAX_CELLS, FoundCell, find_cells

__all__ = ["MAX_CELLS", "FoundCell", "find_cells"]
