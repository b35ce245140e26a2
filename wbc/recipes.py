"""Named training recipes (settings over ``wbc train``'s defaults), measured in benchmarks/RESULTS.md."""

MAIN_RECIPE = {"epochs": 20, "image_size": 160, "augment": "robust", "sampling": "balanced", "backbone_lr_scale": 1.0}
"""``wbc main``: EfficientNet-Lite0 fine-tuned at 160 px for 20 epochs with the lab-to-lab shift
augmentation, each class drawn equally often, the backbone at the full learning rate."""

ROBUST_STAGE = {"head_epochs": 0, "lr": 3e-4, "augment": "robust", "backbone_lr_scale": 0.5}
"""``wbc main --robust-epochs N``, optional stage 2: continue from stage 1's model with the
lab-to-lab shift augmentation at a lower learning rate, then average the two (stage 3)."""
ROBUST_EPOCHS = 0

FAST_RECIPE = {"epochs": 6, "image_size": 160, "augment": "standard"}
"""The documented fast recipe (at most 20 minutes on 2 cores)."""

ROBUST_AVERAGE_WEIGHT = 0.7
"""``wbc main``, stage 3: the served model's weights are this mix of stage 2 with stage 1 (``wbc average``)."""
