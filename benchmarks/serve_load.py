"""Bounded load test of `mlflow models serve` on localhost: throughput, latency percentiles, errors, memory.

Usage (from the project folder, with a registered champion in ./mlflow.db):
    python benchmarks/serve_load.py --model "models:/wbc-classifier@champion" --data-dir ../shared/data

Starts the server itself on a free 127.0.0.1 port, sends a fixed number of requests for each
(concurrent clients, images per request) pair, prints a Markdown table, and stops the server; once
per variant (default: the model in ONNX Runtime, then in eager PyTorch, ``--runtimes onnx,onnx-int8,torch``
adds the int8 flavour; ``--compare malloc``: the server started plainly, then with the MALLOC_* variables).
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from wbc._process import MALLOC_SETTINGS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants, MiB (Linux /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except OSError:
                continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models:/wbc-classifier@champion")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--requests", type=int, default=240, help="single-image requests per concurrency level")
    parser.add_argument("--batch-requests", type=int, default=48, help="32-image requests per concurrency level")
    parser.add_argument("--compare", choices=["runtime", "malloc"], default="runtime",
                        help="runtime: one server per --runtimes entry (WBC_RUNTIME); "
                             "malloc: a server started plainly, then with the MALLOC_* variables")
    parser.add_argument("--runtimes", default="onnx,torch",
                        help="with --compare runtime: the WBC_RUNTIME values, in order (onnx-int8 needs a model exported with --int8)")
    args = parser.parse_args()

    if args.compare == "runtime":
        variants = [(f"WBC_RUNTIME={runtime}", {"WBC_RUNTIME": runtime}) for runtime in args.runtimes.split(",")]
    else:
        variants = [("plain environment", {}), ("MALLOC_* variables in the environment", MALLOC_SETTINGS)]
    for label, settings in variants:
        print(f"\n### server started with {label}\n")
        run_load(args, settings)


def run_load(args, settings: dict) -> None:
    files = sorted((Path(args.data_dir) / "barcelona" / "valid").rglob("*.jpg"))[::25][:64]
    encoded = [base64.b64encode(f.read_bytes()).decode() for f in files]
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")}
    # `mlflow models serve` execs `uvicorn` from PATH: put this environment's scripts first
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in (*MALLOC_SETTINGS, "WBC_RUNTIME"):
        env.pop(name, None)
    env.update(settings)
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", args.model, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                if server.poll() is not None:
                    raise SystemExit(f"mlflow models serve exited with status {server.returncode}: try it by hand to see why")
                time.sleep(1)
        else:
            raise SystemExit("server did not start")
        session = requests.Session()
        for image in encoded[:8]:  # warm-up
            session.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["image"], "data": [[image]]}})
        print(f"server RSS after warm-up: {_tree_rss_mib(server.pid):.0f} MiB")
        print("| clients | images/request | requests | errors | images/s | p50 ms | p95 ms | p99 ms | server RSS MiB after |")
        print("|---|---|---|---|---|---|---|---|---|")
        for batch, count in ((1, args.requests), (32, args.batch_requests)):
            for clients in (1, 8, 32):
                bodies = [
                    {"dataframe_split": {"columns": ["image"], "data": [[encoded[(i * batch + j) % len(encoded)]] for j in range(batch)]}}
                    for i in range(count)
                ]

                def send(body):
                    started = time.perf_counter()
                    try:
                        ok = requests.post(f"{url}/invocations", json=body, timeout=120).status_code == 200
                    except requests.RequestException:
                        ok = False
                    return time.perf_counter() - started, ok

                started = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    results = list(pool.map(send, bodies))
                wall = time.perf_counter() - started
                latencies = sorted(seconds * 1000 for seconds, _ in results)
                errors = sum(not ok for _, ok in results)
                quantile = statistics.quantiles(latencies, n=100)
                print(f"| {clients} | {batch} | {count} | {errors} | {count * batch / wall:.0f} | {statistics.median(latencies):.1f} "
                      f"| {quantile[94]:.1f} | {quantile[98]:.1f} | {_tree_rss_mib(server.pid):.0f} |")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
