"""How long the shifted validation benchmark takes through each runtime of a model (what every training run
scores after training), alternating the runtimes so that both see the same machine.

Usage: python benchmarks/shiftbench_runtimes.py --model runs:/<run id>/model [--data-dir ../shared/data]
       [--runtimes torch,onnx] [--limit-per-class 0] [--rounds 1]

Prints, per runtime, the seconds of each round, the mean accuracy over the shifted conditions, and the
largest accuracy difference from the first runtime over all 22 conditions. Run it alone.
"""

from __future__ import annotations

import argparse
import time

from wbc.inference import Predictor, resolved_model
from wbc._process import tune_malloc_and_reexec
from wbc.evaluation.shiftbench import run_shiftbench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/wbc-classifier@champion")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--runtimes", default="torch,onnx", help="comma-separated, the first is the base of the ratios")
    parser.add_argument("--limit-per-class", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    runtimes = args.runtimes.split(",")
    with resolved_model(args.model) as folder:
        predictors = {runtime: Predictor.load(folder, runtime=runtime) for runtime in runtimes}
    seconds = {runtime: [] for runtime in runtimes}
    tables = {}
    for _ in range(args.rounds):
        for runtime, predictor in predictors.items():
            started = time.perf_counter()
            tables[runtime] = run_shiftbench(predictor, args.data_dir, limit_per_class=args.limit_per_class, progress=False).table
            seconds[runtime].append(time.perf_counter() - started)
    base = tables[runtimes[0]]
    print(f"{args.model}, {len(base)} conditions, limit per class {args.limit_per_class or 'none'}\n")
    print(f"| runtime | seconds per round | vs {runtimes[0]} | mean shifted accuracy | largest accuracy difference from {runtimes[0]} |")
    print("|---|---|---|---|---|")
    for runtime in runtimes:
        table = tables[runtime]
        ratio = sum(seconds[runtimes[0]]) / sum(seconds[runtime])
        difference = (table["accuracy"] - base["accuracy"]).abs().max()
        shifted = table.loc[table["shift"] != "none", "accuracy"].mean()
        print(f"| {runtime} | {' / '.join(f'{s:.0f}' for s in seconds[runtime])} | x{ratio:.2f} | {100 * shifted:.2f} % | {100 * difference:.2f} points |")


if __name__ == "__main__":
    tune_malloc_and_reexec()
    main()
