"""A model on another lab's cells: zero-shot, adapted without labels, and fine-tuned on a few labelled cells.

Usage: python benchmarks/other_lab.py MODEL [--images ../shared/data/other-lab] [--data-dir ../shared/data]
       [--per-class 10] [--seeds 5] [--steps N]

Every figure comes from ``wbc adapt`` itself (``wbc.jobs.adapt.adapt_model``), each call logged to a scratch MLflow
store under this run's folder. Protocol for the labelled rows: for each seed, ``--per-class`` cells of every class
are drawn to fine-tune on and the lab's other cells measure (accuracy among the classes present); the table gives
the mean and the range over the seeds. The label-free row re-estimates batch-norm statistics on all the lab's images
and measures on all of them (their labels are never used to adapt the network, only to refit the calibration, whose
flags are then cross-fitted: each half judged by thresholds fitted on the other). Flag figures of the fine-tuned
rows are means over the seeds.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from _lab import lab_parser, parse


def main() -> None:
    parser = lab_parser(__doc__, valid=False)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="default: wbc adapt's")
    args = parse(parser)
    scratch = tempfile.mkdtemp(prefix="wbc-other-lab-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
    import mlflow

    from wbc.jobs.adapt import adapt_model

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model

    label_free = adapt_model(model, args.images, "bench-unlabelled", data_dir=args.data_dir, onnx=False,
                             output_dir=f"{scratch}/outputs")
    rows = [("zero-shot", label_free.lab_before, label_free.valid_before),
            ("batch-norm statistics (no labels)", label_free.lab_after, label_free.valid_after)]
    steps = {} if args.steps is None else {"steps": args.steps}
    tuned = [adapt_model(model, args.images, f"bench-{seed}", data_dir=args.data_dir, labelled_per_class=args.per_class,
                         seed=seed, onnx=False, output_dir=f"{scratch}/outputs", **steps)
             for seed in range(args.seeds)]

    def line(name, lab, valid):
        flags = lab.flags
        return (f"| {name} | {100 * lab.present_accuracy:.1f} | {100 * lab.accuracy:.1f} | "
                f"{100 * flags.out_of_distribution:.0f} | {_pct(flags.error_flagged)} / {_pct(flags.error_unflagged)} | "
                f"{100 * flags.accepted:.0f} / {_pct(flags.error_accepted)} | {100 * valid.accuracy:.2f} |")

    print(f"label-free run calibrated on: {label_free.calibrated_on}; fine-tuned: {tuned[0].calibrated_on if tuned else '-'}")
    print("| model | other lab, 5 classes % | over 8 classes % | flagged % | error flagged / unflagged % | "
          "accepted % / error among them % | PBC valid % |")
    print("|---|---|---|---|---|---|---|")
    for name, lab, valid in rows:
        print(line(name, lab, valid))
    for when in ("before", "after"):
        results = [(getattr(result, f"lab_{when}"), getattr(result, f"valid_{when}")) for result in tuned]
        accuracies = [100 * lab.present_accuracy for lab, _ in results]
        eight = [100 * lab.accuracy for lab, _ in results]
        flags = [lab.flags for lab, _ in results]
        print(f"| {args.per_class}/class fine-tuned, {when}, held-out cells ({tuned[0].measured}), {args.seeds} seeds | "
              f"{statistics.mean(accuracies):.1f} ({min(accuracies):.1f}-{max(accuracies):.1f}) | "
              f"{statistics.mean(eight):.1f} | {_mean(flags, 'out_of_distribution')} | "
              f"{_mean(flags, 'error_flagged')} / {_mean(flags, 'error_unflagged')} | "
              f"{_mean(flags, 'accepted')} / {_mean(flags, 'error_accepted')} | "
              f"{statistics.mean(100 * valid.accuracy for _, valid in results):.2f} |")
    print(f"(scratch store: {scratch})")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


def _mean(flags, name: str) -> str:
    """Mean over the seeds of one flag figure, in %, over the seeds where it is defined."""
    values = [getattr(summary, name) for summary in flags if summary is not None and getattr(summary, name) is not None]
    return f"{100 * statistics.mean(values):.0f}" if values else "-"


if __name__ == "__main__":
    main()
