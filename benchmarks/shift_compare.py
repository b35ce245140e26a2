"""Side-by-side table of shifted-benchmark results logged in MLflow runs (markdown, for RESULTS.md).

Usage: python benchmarks/shift_compare.py LABEL=RUN_ID [LABEL=RUN_ID ...]
Each run must hold ``shiftbench.csv`` (a training run, a ``wbc average`` run or a ``wbc shiftbench``
run). Prints accuracy per shift and severity for each model, then the share flagged out-of-distribution.
"""

from __future__ import annotations

import sys
import tempfile

import mlflow
import pandas as pd

from wbc.tracking.runs import configure_tracking


def load(run_id: str, folder: str) -> pd.DataFrame:
    path = mlflow.MlflowClient().download_artifacts(run_id, "shiftbench.csv", folder)
    return pd.read_csv(path, keep_default_na=False)


def main(arguments: list[str]) -> None:
    configure_tracking(experiment=None)
    pairs = [argument.split("=", 1) for argument in arguments]
    with tempfile.TemporaryDirectory() as folder:
        tables = {label: load(run_id, f"{folder}/{index}") for index, (label, run_id) in enumerate(pairs)}
    first = next(iter(tables.values()))
    for column, title in (("accuracy", "accuracy %"), ("flagged", "flagged out-of-distribution %")):
        print("| shift | severity | strength | " + " | ".join(f"{label} {title}" for label in tables) + " |")
        print("|---|---|---|" + "---|" * len(tables))
        for index, row in first.iterrows():
            values = " | ".join(f"{100 * table.loc[index, column]:.1f}" for table in tables.values())
            print(f"| {row['shift']} | {row['severity']} | {row['strength']} | {values} |")
        shifted = first["shift"] != "none"
        means = " | ".join(f"**{100 * table.loc[shifted, column].mean():.1f}**" for table in tables.values())
        print(f"| mean of shifted | | | {means} |\n")


if __name__ == "__main__":
    main(sys.argv[1:])
