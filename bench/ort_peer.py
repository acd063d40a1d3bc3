#!/usr/bin/env python3
"""The peer: onnxruntime (CPUExecutionProvider) on the same models, input prepared once.

For each model and each intra-op thread count: a bare loop of session.run on one prepared frame
(vtest_0180, PIL-bilinear stretched to the model's input size, values in [0, 1], NCHW), warm-up
rounds first, then the median, 10th and 90th percentile of the per-run wall time in ms.
One JSON object per line on stdout: {"runtime", "model", "threads", "median_ms", "p10_ms", "p90_ms",
"rounds", "version"}.

Usage:  python bench/ort_peer.py --rounds 60 --threads 1,2 MODEL.onnx [MODEL.onnx ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FRAME = ROOT / "models" / "frames" / "vtest" / "vtest_0180.jpg"
WARM_UP = 5


def prepared_input(session: ort.InferenceSession) -> dict:
    """The frame in the session's fixed input shape [1, 3, H, W]."""
    spec = session.get_inputs()[0]
    _, channels, height, width = spec.shape
    if channels != 3:
        raise SystemExit(f"expected an NCHW input with 3 channels, found shape {spec.shape}")
    image = Image.open(FRAME).convert("RGB").resize((width, height), Image.BILINEAR)
    data = (np.asarray(image, np.float32) / 255.0).transpose(2, 0, 1)[None].copy()
    return {spec.name: data}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 1])."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(model: Path, threads: int, rounds: int) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = prepared_input(session)
    times = []
    for round_index in range(WARM_UP + rounds):
        started = time.perf_counter()
        session.run(None, feed)
        elapsed = (time.perf_counter() - started) * 1e3
        if round_index >= WARM_UP:
            times.append(elapsed)
    times.sort()
    return {"runtime": "onnxruntime", "version": ort.__version__, "model": str(model),
            "threads": threads, "median_ms": statistics.median(times),
            "p10_ms": percentile(times, 0.1), "p90_ms": percentile(times, 0.9), "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("models", nargs="+", type=Path)
    args = parser.parse_args()
    for model in args.models:
        for threads in (int(t) for t in args.threads.split(",")):
            print(json.dumps(measure(model, threads, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
