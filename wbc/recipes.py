"""Named training recipes (settings over ``wbc train``'s defaults), measured in benchmarks/RESULTS.md."""

MAIN_RECIPE = {"epochs": 10, "image_size": 160, "augment": "standard"}
"""``wbc main``, stage 1: EfficientNet-Lite0 fine-tuned at 160 px for 10 epochs."""

ROBUST_STAGE = {"head_epochs": 0, "lr": 3e-4, "augment": "robust"}
"""``wbc main``, stage 2 (``--robust-epochs``, default 3): continue from stage 1's model with the
lab-to-lab shift augmentation at a lower learning rate."""
ROBUST_EPOCHS = 3

FAST_RECIPE = {"epochs": 6, "image_size": 160, "augment": "standard"}
"""The documented fast recipe: at most 20 minutes on the faster 2-core machines; on slower ones, add
``head_epochs=0, freeze_stages=5, lr=2e-3, backbone_lr_scale=1, max_time=17, shiftbench=False`` to stay
within 20 minutes (benchmarks/RESULTS.md)."""

ROBUST_AVERAGE_WEIGHTS = (0.7, 0.5, 0.35)
"""``wbc main``, stage 3: the served model's weights mix stage 2 with stage 1 (``wbc average``), at the first
of these shares of stage 2 whose validation accuracy stays within the registry's ``MAX_CLEAN_DROP`` of the
better stage (else the most accurate): as much robustness as the champion rule is likely to let through
(the rule itself compares ``val_clean_acc`` across every run of the experiment, so it can still differ)."""
