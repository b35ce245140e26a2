"""Named training recipes (settings over ``wbc train``'s defaults), measured in benchmarks/RESULTS.md."""

MAIN_RECIPE = {"epochs": 10, "image_size": 160, "augment": "robust"}
"""``wbc main``: EfficientNet-Lite0 fine-tuned at 160 px for 10 epochs with the lab-to-lab shift augmentation."""

FAST_RECIPE = {"epochs": 6, "image_size": 160, "augment": "standard"}
"""The documented fast recipe (at most 20 minutes on 2 cores)."""
