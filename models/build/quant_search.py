#!/usr/bin/env python3
"""Search for an int8 recipe for the selfie model (how build_selfie.py's INT8_RECIPE was chosen).

Needs models/selfie/selfie_fp32.onnx (run build_selfie.py first) and the frames build_selfie.py extracts.
Frame sets (all from vtest.avi, disjoint): calibration = index % 20 == 10, selection (used to rank
and choose nodes) = index % 20 == 5, evaluation = the 40 committed frames (index % 20 == 0).

  1. whole-model recipes: QDQ / QOperator, per-channel / per-tensor, uint8 asymmetric / int8 symmetric
     activations, MinMax / Entropy / Percentile calibration; and weights-only fake quantization;
  2. mixed precision, per calibration method (QOperator, Conv only): quantize each Conv alone and
     rank by the selection-set mean IoU; quantize the k least sensitive (growing k), keep the largest
     k with selection IoU >= 0.93; then try adding each remaining Conv, costliest (MACs) first, and
     keep it if the selection IoU stays >= 0.925. The same prefix search for QDQ over all op types
     with --qdq (slow).
Writes quant_search_results.json beside this file (build_selfie.py copies its table into the card).
Takes about 5 minutes on one core (15 with --qdq).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_selfie as B  # noqa: E402

CALIBRATIONS = {
    "MinMax": {"method": "MinMax"},
    "Entropy": {"method": "Entropy", "num_bins": 2048, "num_quantized_bins": 128},
    "Percentile99.999": {"method": "Percentile", "percentile": 99.999},
    "Percentile99.99": {"method": "Percentile", "percentile": 99.99},
    "Percentile99.9": {"method": "Percentile", "percentile": 99.9},
}
BASE = {"format": "QDQ", "op_types": None, "per_channel": True, "activation_type": "QUInt8", "weight_type": "QInt8"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qualm-selfie-build")
    ap.add_argument("--qdq", action="store_true", help="also run the (slow) QDQ mixed-precision search")
    args = ap.parse_args()
    t0 = time.time()
    import onnx
    from onnx import numpy_helper as nh

    fp32_path = B.MODELS / "selfie" / "selfie_fp32.onnx"
    fp32 = onnx.load(str(fp32_path))
    all_dir = args.work / "vtest_all"
    sample, calib = B.frames(all_dir)
    sel_files = sorted(p for p in all_dir.glob("vtest_*.jpg") if int(p.stem[-4:]) % 20 == 5)
    ev = [B.load_frame(p) for p in sample]
    cal = [B.load_frame(p) for p in calib]
    sel = [B.load_frame(p) for p in sel_files]
    ref_ev, ref_sel = B.run_onnx(fp32, ev), B.run_onnx(fp32, sel)
    all_ops = B.calibrated_op_types()
    ranges = {}

    def rng(name):
        if name not in ranges:
            ranges[name] = B.calibrate(fp32_path, cal, CALIBRATIONS[name], all_ops)
        return ranges[name]

    def q(cal_name, **kw):
        r = dict(BASE)
        r.update(kw)
        r["op_types"] = r["op_types"] or all_ops
        return B.quantize_with_ranges(fp32_path, rng(cal_name), r)

    def ev_iou(m, on_sel=False):
        xs, ref = (sel, ref_sel) if on_sel else (ev, ref_ev)
        return B.agreement(ref, B.run_onnx(m, xs))

    # conv MACs, to report how much of the compute a recipe runs in int8
    inferred = onnx.shape_inference.infer_shapes(fp32)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    inits = {i.name: nh.to_array(i) for i in fp32.graph.initializer}
    macs = {}
    for n in fp32.graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            o = shapes[n.output[0]]
            macs[n.name] = inits[n.input[1]].size * o[2] * o[3] // (4 if n.op_type == "ConvTranspose" else 1)
    total_macs = sum(macs.values())
    mac_frac = lambda nodes: sum(macs.get(x, 0) for x in nodes) / total_macs

    results = {"attempts": []}

    def record(name, m, recipe=None, nodes=None):
        a = ev_iou(m)
        row = {"name": name, "mean_mask_iou": round(a["mean_mask_iou"], 4), "pooled_mask_iou": round(a["pooled_mask_iou"], 4),
               "min_mask_iou": round(a["min_mask_iou"], 4), "pixel_agreement": round(a["pixel_agreement"], 5),
               "mean_abs_logit_diff": round(a["mean_abs_logit_diff"], 3)}
        if nodes is not None:
            row["quantized_nodes"] = nodes
            row["conv_mac_fraction_int8"] = round(mac_frac(nodes), 3)
        if recipe:
            row["recipe"] = recipe
        results["attempts"].append(row)
        print(f"{row['mean_mask_iou']:.4f}  {name}", flush=True)

    # 1. whole-model recipes
    record("QDQ, all supported ops, per-channel weights, uint8 asymmetric activations, MinMax", q("MinMax"))
    record("QDQ, all supported ops, per-tensor weights, MinMax", q("MinMax", per_channel=False))
    record("QDQ, all supported ops, per-channel, int8 symmetric activations, MinMax",
           q("MinMax", activation_type="QInt8", activation_symmetric=True))
    for c in ("Entropy", "Percentile99.999", "Percentile99.99"):
        record(f"QDQ, all supported ops, per-channel, {c}", q(c))
    record("QOperator, all 54 Conv (QLinearConv), per-channel, uint8 asymmetric, MinMax",
           q("MinMax", format="QOperator", op_types=["Conv"]))
    record("QOperator, all 54 Conv, per-channel, int8 symmetric activations, MinMax",
           q("MinMax", format="QOperator", op_types=["Conv"], activation_type="QInt8", activation_symmetric=True))
    for c in ("Entropy", "Percentile99.999", "Percentile99.99", "Percentile99.9"):
        record(f"QOperator, all 54 Conv, per-channel, {c}", q(c, format="QOperator", op_types=["Conv"]))

    # weights only: int8 symmetric per-output-channel fake quantization of every conv, activations float
    wq = onnx.load(str(fp32_path))
    ini = {i.name: i for i in wq.graph.initializer}
    for n in wq.graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            w = nh.to_array(ini[n.input[1]])
            axis = 0 if n.op_type == "Conv" else 1
            s = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=True) / 127
            s[s == 0] = 1
            ini[n.input[1]].CopyFrom(nh.from_array((np.clip(np.round(w / s), -127, 127) * s).astype(np.float32), n.input[1]))
    record("weights only (int8 per-channel fake quantization of all convs, activations float)", wq)

    # 2. mixed precision
    def search(fmt, cal_name, ops, tag):
        kw = dict(format=fmt, op_types=ops)
        cands = [n.name for n in fp32.graph.node if n.op_type in ops]
        sens = {n: ev_iou(q(cal_name, nodes_to_quantize=[n], **kw), True)["mean_mask_iou"] for n in cands}
        order = sorted(cands, key=lambda n: -sens[n])
        best = 0
        for k in range(1, len(order) + 1):
            s = ev_iou(q(cal_name, nodes_to_quantize=order[:k], **kw), True)["mean_mask_iou"]
            if s >= 0.93:
                best = k
            if s < 0.85:
                break
        nodes = order[:best]
        record(f"{fmt} mixed, {cal_name}, {len(nodes)} of {len(cands)} {tag} (least sensitive first, selection IoU >= 0.93)",
               q(cal_name, nodes_to_quantize=nodes, **kw), nodes=nodes)
        if fmt != "QOperator":
            return
        for n in sorted((n for n in order if n not in nodes), key=lambda n: -macs.get(n, 0)):
            if ev_iou(q(cal_name, nodes_to_quantize=nodes + [n], **kw), True)["mean_mask_iou"] >= 0.925:
                nodes = nodes + [n]
        record(f"{fmt} mixed, {cal_name}, {len(nodes)} of {len(cands)} {tag} (+ greedy by MACs, selection IoU >= 0.925)",
               q(cal_name, nodes_to_quantize=nodes, **kw), nodes=nodes,
               recipe={"format": fmt, "op_types": ops, "calibration": CALIBRATIONS[cal_name]})

    for c in ("MinMax", "Entropy", "Percentile99.99", "Percentile99.9"):
        search("QOperator", c, ["Conv"], "Conv")
    if args.qdq:
        for c in ("MinMax", "Percentile99.99"):
            search("QDQ", c, all_ops, "nodes")
    results["seconds"] = round(time.time() - t0, 1)
    out = Path(__file__).resolve().parent / "quant_search_results.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print("wrote", out, "in", results["seconds"], "s")


if __name__ == "__main__":
    main()
