#!/usr/bin/env python3
"""Dump the logits of the multi-class model for Qualm's metric checks.

For every frame DIR/<set>/images/<stem>.png writes OUT/<set>/<stem>.npy: the model's output for that frame,
shape [C, H, W] (C = 9, H = W = 128), float16 by default, as onnxruntime (one thread) computes it with the
daemon's preprocessing (pixel / 255, RGB, NCHW; the frames are already 128x128, so no resize).
About 4 ms per frame: the 400 test + 400 val frames take well under a minute.

Usage:
  python models/build/multiclass_logits.py                      # test and val, int8 model
  python models/build/multiclass_logits.py --sets ood_digits corrupt/haze_3 --model models/multiclass/multiclass_fp32.onnx
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

MC = Path(__file__).resolve().parent.parent / "multiclass"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=MC / "multiclass_int8.onnx")
    ap.add_argument("--data", type=Path, default=MC / "data")
    ap.add_argument("--out", type=Path, default=MC / "logits")
    ap.add_argument("--sets", nargs="*", default=["test", "val"])
    ap.add_argument("--limit", type=int, default=0, help="only the first N frames of each set (0 = all)")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    args = ap.parse_args()
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(args.model), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    for st in args.sets:
        frames = sorted((args.data / st / "images").glob("*.png"))
        if args.limit:
            frames = frames[:args.limit]
        out = args.out / st
        out.mkdir(parents=True, exist_ok=True)
        for p in frames:
            x = np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255.0
            z = s.run(None, {name: x})[0][0]
            np.save(out / f"{p.stem}.npy", z.astype(args.dtype))
        print(f"{len(frames)} logits [C,H,W] {args.dtype} -> {out}")


if __name__ == "__main__":
    main()
