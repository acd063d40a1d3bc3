#!/usr/bin/env python3
"""Joins the measurements of bench/run.sh into results.md (Markdown tables) and results.json.

Every number comes from files of the same run in --dir: tract.json and tract_mt.json (the Rust
floor bench: medians computed there), ort.jsonl (onnxruntime, medians computed there),
stats_after_inference.md (the existing statistics bench), qualmd.jsonl and qualmd_scaling.jsonl
(qualmd's summary line and GNU time's peak RSS). This script only picks, divides and formats.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def stem(path: str) -> str:
    return Path(path).stem


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.machine()}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--seconds", type=int, required=True)
    parser.add_argument("--scale-rounds", type=int, required=True)
    parser.add_argument("--scale-frames", type=int, required=True)
    args = parser.parse_args()
    d = args.dir

    tract = json.loads((d / "tract.json").read_text())
    tract += json.loads((d / "tract_scaling.json").read_text())
    tract_mt = json.loads((d / "tract_mt.json").read_text()) if (d / "tract_mt.json").exists() else []
    ort_rows = jsonl(d / "ort.jsonl")
    qualmd_rows = jsonl(d / "qualmd.jsonl")
    scaling_rows = jsonl(d / "qualmd_scaling.jsonl")
    stats_md = (d / "stats_after_inference.md").read_text()

    floor = {stem(r["card"]): r for r in tract if r["kind"] == "floor" and r["threads"] == 1}
    stages = {stem(r["card"]): r for r in tract if r["kind"] == "stages"}
    # The multithread file also holds the stage rows (no thread count): only floors count here.
    mt = {(stem(r["card"]), r["threads"]): r["median_ms"] for r in tract_mt if r["kind"] == "floor"}
    ort = {(stem(r["model"]), r["threads"]): r["median_ms"] for r in ort_rows}
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "rounds": args.rounds, "seconds": args.seconds}

    # ---- 1. the shipped model: floor, pipeline, statistics, memory, allocations
    shipped = "selfie_int8"
    floor_ms = floor[shipped]["median_ms"]
    floor_fps = 1e3 / floor_ms

    def median_fps(prefix: str) -> float | None:
        values = [r["frames_per_second"] for r in qualmd_rows if r["name"].startswith(prefix)]
        return statistics.median(values) if values else None

    gate_fps, observe_fps = median_fps("gate-"), median_fps("observe-")
    kept = [r["kept"] for r in qualmd_rows if r["name"].startswith("gate-")]
    uplinks = [r.get("uplink", "off") for r in qualmd_rows if r["name"].startswith("gate-")]
    rss = max((r["peak_rss_kib"] for r in qualmd_rows), default=0) * 1024
    frame_w, frame_h = Image.open(ROOT / "models/frames/vtest/vtest_0000.jpg").size
    model_bytes = (ROOT / "models/selfie/selfie_int8.onnx").stat().st_size
    rss_target = model_bytes + 3 * frame_w * frame_h * 3 + 32 * MIB

    ratios = {}
    for label, pattern in [("own", r"statistics of its output[^|]*\| ([\d.]+) \| ([\d.]+) \|"),
                           ("large", r"statistics of 512x512x21 logits \| ([\d.]+) \| ([\d.]+) \|"),
                           ("alone", r"not after inference \| ([\d.]+) \| ([\d.]+) \|")]:
        m = re.search(pattern, stats_md)
        ratios[label] = (float(m[1]), float(m[2])) if m else (None, None)
    inference_match = re.search(r"inference, selfie int8 256x256 \| ([\d.]+) \|", stats_md)
    s = stages[shipped]
    stage_sum = s["decode_ms"] + s["prepare_ms"] + s["infer_ms"] + s["analyze_gate_ms"]

    rows = [
        ["tract floor, 1 thread (bare loop, input prepared once)", f"{floor_ms:.2f} ms = "
         f"{floor_fps:.1f} frames/s", "", ""],
        ["qualmd pipeline with the committed gate (decode, resize, inference, statistics, gate, "
         f"spool, ledger; uplink: {uplinks[0] if uplinks else 'off'}), {args.frames} frames, "
         "median of 3 runs",
         f"{gate_fps:.1f} frames/s (kept {kept[0] if kept else '-'} frames)" if gate_fps else "-",
         "ratio to floor >= 0.97", ratio(gate_fps / floor_fps if gate_fps else None)],
        ["qualmd pipeline, observe only (nothing spooled)",
         f"{observe_fps:.1f} frames/s" if observe_fps else "-", "ratio to floor",
         ratio(observe_fps / floor_fps if observe_fps else None)],
        ["daemon stages (same code as qualmd): decode + prepare + infer + analyze/gate",
         f"{s['decode_ms']:.2f} + {s['prepare_ms']:.2f} + {s['infer_ms']:.2f} + "
         f"{s['analyze_gate_ms']:.3f} = {stage_sum:.2f} ms", "floor / sum",
         ratio(floor_ms / stage_sum)],
        ["statistics of the model's output right after an inference (stats_after_inference)",
         f"{ms(ratios['own'][0])} ms", "ratio to inference <= 0.01", f"{ratios['own'][1]:.4f}"
         if ratios["own"][1] is not None else "-"],
        ["statistics of 512x512x21 logits right after an inference",
         f"{ms(ratios['large'][0])} ms", "ratio to inference",
         f"{ratios['large'][1]:.4f}" if ratios["large"][1] is not None else "-"],
        ["qualmd peak resident memory (GNU time, max over the runs)", f"{rss / MIB:.1f} MiB",
         f"<= model + 3 frames + 32 MiB = {rss_target / MIB:.1f} MiB", ratio(rss / rss_target)],
        ["heap allocations per frame: tract run / prepare / infer (input copy + run) / "
         "analyze + gate", f"{floor[shipped]['allocations_per_run']:.0f} / "
         f"{s['prepare_allocations']:.0f} / {s['infer_allocations']:.0f} / "
         f"{s['analyze_gate_allocations']:.0f}", "analyze + gate = 0",
         "met" if s["analyze_gate_allocations"] == 0 else "missed"],
    ]
    part1 = table(["measure (selfie int8, the shipped model)", "value", "target", "ratio"], rows)
    results["pipeline"] = {
        "floor_ms": floor_ms, "floor_fps": floor_fps, "qualmd_gate_fps": gate_fps,
        "qualmd_observe_fps": observe_fps, "ratio_pipeline_floor": gate_fps / floor_fps
        if gate_fps else None, "stages": s, "stats_after_inference": ratios,
        "stats_inference_ms": float(inference_match[1]) if inference_match else None,
        "peak_rss_bytes": rss, "rss_target_bytes": rss_target,
        "allocations_tract_run": floor[shipped]["allocations_per_run"]}

    # ---- 2. tract vs onnxruntime, per model form
    forms = [("selfie_fp32", "selfie fp32"), ("selfie_qdq", "selfie int8 QDQ"),
             ("selfie_int8", "selfie int8 QOperator (shipped)"),
             ("multiclass_int8", "multiclass int8 QOperator")]
    rows, peer = [], []
    for key, label in forms:
        if key not in floor:
            continue
        t1 = floor[key]["median_ms"]
        o1, o2 = ort.get((key, 1)), ort.get((key, 2))
        row = [label, ms(t1), ms(mt.get((key, 2))), ms(mt.get((key, 4))), ms(o1), ms(o2),
               ratio(t1 / o1 if o1 else None)]
        rows.append(row)
        peer.append({"model": key, "tract_1": t1, "tract_mt_1": mt.get((key, 1)),
                     "tract_mt_2": mt.get((key, 2)), "tract_mt_4": mt.get((key, 4)),
                     "ort_1": o1, "ort_2": o2, "ratio_tract_ort_1": t1 / o1 if o1 else None})
    part2 = table(["model", "tract 1 thread ms", "tract mm 2 threads ms", "tract mm 4 threads ms",
                   "onnxruntime 1 thread ms", "onnxruntime 2 threads ms",
                   "tract / onnxruntime (1 thread; target <= 1.5)"], rows)
    selfie = [p for p in peer if p["model"].startswith("selfie")]
    if selfie:
        best_tract = min(selfie, key=lambda p: p["tract_1"])
        best_ort = min(selfie, key=lambda p: p["ort_1"] or float("inf"))
        part2 += (f"\nFastest selfie form: tract {best_tract['model']} ({best_tract['tract_1']:.2f} ms), "
                  f"onnxruntime {best_ort['model']} ({best_ort['ort_1']:.2f} ms); best against best, "
                  f"1 thread: tract / onnxruntime = {best_tract['tract_1'] / best_ort['ort_1']:.2f}.\n")
        results["fastest"] = {"tract": best_tract["model"], "onnxruntime": best_ort["model"],
                              "ratio_best_vs_best": best_tract["tract_1"] / best_ort["ort_1"]}
    results["peer"] = peer

    # ---- 3. scaling
    rows, scaling = [], []
    for r in scaling_rows:
        key = stem(r["card"])
        m = re.match(r"scale_r(\d+)_c(\d+)", key)
        size, classes = int(m[1]), int(m[2])
        f, st = floor.get(key, {}), stages.get(key, {})
        output_mib = size * size * classes * 4 / MIB
        rows.append([f"{size}x{size}", str(classes), ms(f.get("median_ms")), ms(ort.get((key, 1))),
                     ms(st.get("analyze_gate_ms")), f"{r['frames_per_second']:.1f}",
                     f"{r['peak_rss_kib'] / 1024:.0f}", f"{output_mib:.1f}"])
        scaling.append({"size": size, "classes": classes, "tract_floor_ms": f.get("median_ms"),
                        "ort_1_ms": ort.get((key, 1)), "analyze_gate_ms": st.get("analyze_gate_ms"),
                        "qualmd_fps": r["frames_per_second"], "peak_rss_kib": r["peak_rss_kib"]})
    part3 = (f"Scaling nets: tract and onnxruntime medians of {args.scale_rounds} rounds, qualmd "
             f"on {args.scale_frames} frames.\n\n")
    part3 += table(["input", "classes", "tract floor ms", "onnxruntime 1 thread ms",
                   "analyze + gate ms", "qualmd frames/s (observe)", "qualmd peak RSS MiB",
                   "f32 output MiB"], rows)
    results["scaling"] = scaling

    text = (f"Measured {results['date']} on {results['machine']}; medians of {args.rounds} rounds; "
            f"the whole run took {args.seconds} s.\n\n" + part1 + "\n" + part2 + "\n" + part3)
    (d / "results.md").write_text(text)
    (d / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
