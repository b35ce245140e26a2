"""Inference throughput of a served model: eager PyTorch against ONNX Runtime (and its int8 flavour), on the
main thread and on a worker thread (where `mlflow models serve` runs the model), as ratios from one process.

Usage: python benchmarks/inference_runtimes.py [--model "models:/wbc-classifier@champion"] [--data-dir ../shared/data]
       [--runtimes torch,onnx,onnx-int8]

Rows: the network alone on 32 decoded validation images per call, and the whole pyfunc ``predict`` on 32
base64 JPEGs per call (decode, network, calibration, output table). The process is started with wbc's
malloc settings (as `wbc` commands are); the served model applies them itself. Run it alone.
"""

from __future__ import annotations

import argparse
import base64
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wbc.data.images import decode_image
from wbc.inference import Predictor, resolved_model
from wbc._process import tune_malloc_and_reexec
from wbc.serving.pyfunc import WBCImageClassifier


def rate(call, images: int, seconds: float) -> float:
    for _ in range(3):
        call()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        call()
        calls += 1
    return calls * images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/wbc-classifier@champion")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runtimes", default="torch,onnx", help="comma-separated, the first is the base of the ratios")
    args = parser.parse_args()

    files = sorted((Path(args.data_dir) / "barcelona" / "valid").rglob("*.jpg"))[::25][: args.batch]
    request = pd.DataFrame({"image": [base64.b64encode(path.read_bytes()).decode() for path in files]})
    print(f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    rows = []
    worker = ThreadPoolExecutor(1)
    runtimes = args.runtimes.split(",")
    with resolved_model(args.model) as folder:
        predictors = {runtime: Predictor.load(folder, runtime=runtime) for runtime in runtimes}
    for runtime, predictor in predictors.items():
        pixels = torch.stack([decode_image(path, predictor.image_size) for path in files])
        served = WBCImageClassifier()
        served.predictor = predictor
        calls = {
            "network": lambda: predictor.score_pixels(pixels),
            "pyfunc predict (base64 JPEGs in, table out)": lambda: served.predict(None, request),
        }
        for what, call in calls.items():
            main_rate = rate(call, len(files), args.seconds)
            worker_rate = worker.submit(rate, call, len(files), args.seconds).result()
            rows.append((what, runtime, main_rate, worker_rate))
    worker.shutdown()
    base = {what: worker_rate for what, runtime, _, worker_rate in rows if runtime == runtimes[0]}
    print(f"| what | runtime | main thread img/s | worker thread img/s | worker thread vs {runtimes[0]} |\n|---|---|---|---|---|")
    for what, runtime, main_rate, worker_rate in rows:
        print(f"| {what} | {runtime} | {main_rate:.0f} | {worker_rate:.0f} | x{worker_rate / base[what]:.2f} |")
    probabilities = {runtime: predictor.predict_pixels(pixels) for runtime, predictor in predictors.items()}
    for runtime in runtimes[1:]:
        difference = np.abs(probabilities[runtime] - probabilities[runtimes[0]])
        same = (probabilities[runtime].argmax(1) == probabilities[runtimes[0]].argmax(1)).mean()
        print(f"{runtime} vs {runtimes[0]}: largest probability difference {difference.max():.2e}, same class on {100 * same:.1f} % of the images")


if __name__ == "__main__":
    tune_malloc_and_reexec()
    main()
