"""Named training recipes (settings over ``wbc train``'s defaults), measured in benchmarks/RESULTS.md."""

from __future__ import annotations

from dataclasses import dataclass, replace

from wbc.training.config import TrainConfig, setting

MAIN_RECIPE = {"epochs": 10, "image_size": 160, "augment": "stain"}
"""``wbc main``, stage 1: EfficientNet-Lite0 fine-tuned at 160 px for 10 epochs with the stain augmentation, which
holds up on another lab's cells (73 % zero-shot on the other-lab set against 52-57 % with the standard augmentation);
stage 2 then brings PBC valid back to within 0.12 points of the standard job's champion (benchmarks/RESULTS.md,
"Other labs: the main job with the stain augmentation")."""

ROBUST_STAGE = {"head_epochs": 0, "lr": 3e-4, "augment": "robust"}
"""``wbc main``, stage 2 (``--robust-epochs``, default 3): continue from stage 1's model with the
lab-to-lab shift augmentation at a lower learning rate. (The stain augmentation as stage 2 of a standard stage 1
lost its other-lab gain in stage 3's average: it has to be in stage 1; benchmarks/RESULTS.md, "Other labs".)"""
ROBUST_EPOCHS = 3

FEW_SHOT_STEPS = 200
"""Fine-tuning steps on a lab's few labelled cells: 200 matched or beat 60 on each of 5 seeded draws of 10 cells per
class (90.4 % against 87.2 % on the other 50 other-lab cells), and 400 did not add (87.6 %): benchmarks/RESULTS.md,
"Few-shot recipes"."""

FEW_SHOT_AUGMENTATION = "zoom"
"""The few-shot fine-tune's augmentation of a lab's cells (and the PBC cells replayed beside them): the standard
flips, turns and light colour jitter, with the cell zoomed 0.7-1.5x on 70 % of images, since a lab's magnification
differs from PBC's. On the champion, over 10 seeded draws of 10 cells per class, 93.0 % on the other 50 cells against
90.8 % with the standard augmentation (paired: better on 5 draws, worse on 1, equal on 4): benchmarks/RESULTS.md, "Other labs:
few-shot fine-tuning with zoom"."""

LABEL_FREE_SOURCE_WEIGHT = 0.5
"""``wbc adapt`` without labelled cells to fine-tune on: the share of PBC's batch-norm statistics kept beside the lab's
(``reestimate_batch_norm(source_weight=...)``). The lab's own statistics alone (AdaBN) cost the main job's champion 8.5
points on other-lab cells it had not seen (66.0 against 74.5 %, 4 draws of 50 adapting and 50 measured), the half mix
2.5 (72.0 %); on a model without the robust stage 2 both gain (72.0 and 73.5 against 67.5 %); PBC valid keeps 95 %
with the mix, about 88-93 % without: benchmarks/RESULTS.md, "Other labs: adapting without labels". With labelled cells
the fine-tune starts from the lab's statistics alone (weight 0), as measured for the few-shot recipe."""

FAST_RECIPE = {"epochs": 6, "image_size": 160}
"""The documented fast recipe: at most 20 minutes on the faster 2-core machines; on slower ones, add
``head_epochs=0, freeze_stages=5, lr=2e-3, backbone_lr_scale=1, max_time=17, shiftbench=False`` to stay
within 20 minutes (benchmarks/RESULTS.md)."""

ROBUST_AVERAGE_WEIGHTS = (0.7, 0.5, 0.35)
"""``wbc main``, stage 3: the served model's weights mix stage 2 with stage 1 (``wbc average``), at the first
of these shares of stage 2 whose validation accuracy stays within the registry's ``MAX_CLEAN_DROP`` of the
better stage (else the most accurate): as much robustness as the champion rule is likely to let through
(the rule itself compares ``val_clean_acc`` across every run of the experiment, so it can still differ)."""

TIME_BUDGET_MINUTES = 90.0
"""``wbc main --time-budget``: the whole job's minutes. On the faster 2-core machines the job takes about 43 and
the caps below never bind; on machines 2.5-3.5x slower they shorten stages 1 and 2 instead of overrunning."""
STAGE1_TIME_SHARE = 0.47
"""Share of the budget stage 1 may train for when stage 2 follows (42 of 90 minutes, as measured on a slow
machine); without stage 2, :data:`SINGLE_STAGE_TIME_SHARE`."""
SINGLE_STAGE_TIME_SHARE = 0.9
AFTER_STAGE2_FACTOR = 2.5
REGISTER_MINUTES = 0.5
MIN_STAGE2_MINUTES = 3.0
"""Below this many minutes of training left for stage 2, ``wbc main`` skips stages 2 and 3."""


def stage1_minutes(time_budget: float, robust_epochs: int) -> float:
    """Stage 1's training cap (``--max-time``) within the job's budget, to 0.01 min."""
    return round(time_budget * (STAGE1_TIME_SHARE if robust_epochs else SINGLE_STAGE_TIME_SHARE), 2)


def stage2_minutes(time_budget: float, elapsed: float, stage1_after_training: float) -> float | None:
    """Stage 2's training cap: the budget left after stage 1 (``elapsed`` minutes) less what comes after stage 2's
    training. Stage 2's evaluation (calibration, shifted benchmark, export) takes about as long as stage 1's did
    after training; stage 3 that again plus its weight search; registering a few seconds: together
    :data:`AFTER_STAGE2_FACTOR` times stage 1's after-training time plus :data:`REGISTER_MINUTES`.
    To 0.01 min; None when under :data:`MIN_STAGE2_MINUTES` are left."""
    minutes = time_budget - elapsed - AFTER_STAGE2_FACTOR * stage1_after_training - REGISTER_MINUTES
    return round(minutes, 2) if minutes >= MIN_STAGE2_MINUTES else None


@dataclass
class MainSettings:
    """What ``wbc main`` adds to the training settings (derived into its options like :class:`TrainConfig`'s)."""

    robust_epochs: int = setting(ROBUST_EPOCHS, "Stage 2: epochs continuing from stage 1 with the lab-to-lab shift "
                                 "augmentation (0 = no stage 2).", low=0, high=1000)
    time_budget: float = setting(TIME_BUDGET_MINUTES, f"Minutes for the whole job (0 = no limit): stage 1 trains for at most "
                                 f"{STAGE1_TIME_SHARE:.0%} of them (unless --max-time), stage 2 for what is left after "
                                 "reserving its own evaluation and stage 3's; fewer epochs on a slow machine.", low=0)


def main_config(**settings) -> TrainConfig:
    """Stage 1's settings: :class:`TrainConfig`'s defaults with :data:`MAIN_RECIPE` over them, then ``settings``."""
    return replace(TrainConfig(), **MAIN_RECIPE, **settings)
