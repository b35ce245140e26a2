"""The data settings a user picks, as plain values: the command line lists them without importing Lightning."""

AUGMENTATIONS = ("none", "standard", "zoom", "robust", "stain", "stain-randconv")
"""Training augmentation (:func:`wbc.data.augmentation.train_augmentation`)."""
DEFAULT_AUGMENTATION = "standard"
SAMPLINGS = ("shuffle", "balanced")
"""How training batches are drawn: ``shuffle`` = each image once per epoch; ``balanced`` = each
class equally often (images drawn with replacement, weighted by 1 / their class's count)."""
DEFAULT_SAMPLING = "shuffle"
