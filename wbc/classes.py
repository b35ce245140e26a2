"""The eight cell classes, in the one fixed order used everywhere (alphabetical)."""

CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
NUM_CLASSES = len(CLASS_NAMES)
CLASS_TO_IDX: dict[str, int] = {name: index for index, name in enumerate(CLASS_NAMES)}
