"""Int8 quantization choices for a model's ONNX flavour: accuracy on valid, agreement with the float
network, and network speed in ONNX Runtime, as ratios to the float network measured in the same process.

Usage (from the project folder):
    python benchmarks/int8_variants.py --model runs:/<run id>/model --data-dir ../shared/data

Every variant is static QDQ quantization in ONNX Runtime, activations uint8 with ranges from the same
256 validation images `wbc` uses (every 6th), weights int8 per channel; they differ in the weights' bits
and in which layers stay float. ``wbc`` is `wbc.inference.onnx.quantize_onnx` itself. Speed: 32 random
images per call, rounds alternating between the networks, the median ratio. Run it alone.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from wbc.data import load_split
    from wbc.inference import load_export_config, resolved_model
    from wbc.inference.onnx import ONNX_FILE, OnnxNetwork, calibration_reader, quantize_onnx

    with resolved_model(args.model) as folder, tempfile.TemporaryDirectory(prefix="wbc-int8-") as scratch_dir:
        scratch = Path(scratch_dir)
        image_size = int(load_export_config(folder)["image_size"])
        valid = load_split(args.data_dir, "valid", image_size)
        pixels, targets = np.asarray(valid.pixels), np.asarray(valid.targets)

        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(folder / ONNX_FILE), str(prepared))
        nodes = onnx.load(str(prepared)).graph.node
        convolutions = [node for node in nodes if node.op_type == "Conv"]
        depthwise = [node.name for node in convolutions if any(a.name == "group" and a.i > 1 for a in node.attribute)]
        classifier = [node.name for node in nodes if node.op_type in ("Gemm", "MatMul")]
        variants = {
            "all layers, 8-bit weights": dict(reduce_range=False, nodes_to_exclude=[]),
            "depthwise convolutions float, 8-bit weights": dict(reduce_range=False, nodes_to_exclude=depthwise),
            "depthwise convolutions float, 7-bit weights": dict(reduce_range=True, nodes_to_exclude=depthwise),
            "classifier float, 7-bit weights": dict(reduce_range=True, nodes_to_exclude=classifier),
            "first convolution and classifier float, 7-bit weights": dict(reduce_range=True, nodes_to_exclude=[convolutions[0].name] + classifier),
        }
        files = {"float (model.onnx)": folder / ONNX_FILE}
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns once per layer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, options in variants.items():
                files[name] = scratch / f"{len(files)}.onnx"
                quantize_static(str(prepared), str(files[name]), calibration_reader(pixels), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **options)
            files["wbc (quantize_onnx): all layers, 7-bit weights"] = scratch / "wbc.onnx"
            quantize_onnx(folder / ONNX_FILE, scratch / "wbc.onnx", pixels)

        networks = {name: OnnxNetwork(path, threads=2) for name, path in files.items()}
        predictions = {name: np.concatenate([net.run(pixels[i : i + 64]) for i in range(0, len(pixels), 64)]).argmax(1)
                       for name, net in networks.items()}
        batch = np.random.default_rng(0).integers(0, 256, (32, 3, image_size, image_size), dtype=np.uint8)
        rates = {name: [] for name in networks}
        for network in networks.values():
            network.run(batch)
        for _ in range(args.rounds):
            for name, network in networks.items():
                started = time.perf_counter()
                for _ in range(4):
                    network.run(batch)
                rates[name].append(4 * len(batch) / (time.perf_counter() - started))
        base = np.array(rates["float (model.onnx)"])
        reference = predictions["float (model.onnx)"]
        print(f"{args.model}: {len(pixels)} validation images at {image_size} px, {args.rounds} rounds\n")
        print("| network | valid accuracy | same class as float | img/s (median) | vs float |\n|---|---|---|---|---|")
        for name in networks:
            print(f"| {name} | {100 * (predictions[name] == targets).mean():.2f} % | {100 * (predictions[name] == reference).mean():.2f} % "
                  f"| {np.median(rates[name]):.0f} | x{np.median(np.array(rates[name]) / base):.2f} |")


if __name__ == "__main__":
    main()
