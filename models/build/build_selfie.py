#!/usr/bin/env python3
"""Build MediaPipe Selfie Segmentation as ONNX (fp32 and int8) for Qualm.

Steps (all reproducible, no network besides PyPI):
  1. pip-download the mediapipe==0.10.14 wheel, extract selfie_segmentation.tflite, check its sha256.
  2. Convert it with tf2onnx (opset 14, NCHW input and output, batch fixed to 1). The MediaPipe custom
     op Convolution2DTransposeBias (2x2 kernel, stride 2, SAME, weights OHWI, bias) becomes a standard
     ONNX ConvTranspose (weights IOHW, bias in input B). The final Sigmoid (TFLite LOGISTIC) is cut
     off: the model outputs the pre-sigmoid logit z. onnx-simplifier folds the constants.
  3. Verify the ONNX model (onnxruntime) against TFLite (tf.lite.Interpreter) on the 40 sample frames.
     TFLite cannot run the custom op, so the reference is the same .tflite with the custom op
     rewritten to the builtin TRANSPOSE_CONV (same OHWI weights, bias as 4th input), which TFLite
     runs itself. That rewrite is also checked against a float64 numpy evaluation of the op.
  4. Quantize (onnxruntime.quantization, recipe in INT8_RECIPE) with calibration frames from vtest.avi
     that are not in the sample (index % 20 == 10).
  5. Measure int8 vs fp32 on the 40 sample frames and write the ONNX files and their model cards.

Usage (see README.md):  python models/build/build_selfie.py [--work DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import collections
import copy
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent

MEDIAPIPE_VERSION = "0.10.14"
TFLITE_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
TFLITE_SHA256 = "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"
OPSET = 14  # HardSwish is an opset-14 op
INPUT = "input_1"
OUTPUT = "segment"  # the custom op's output = pre-sigmoid logit
SIZE = 256

# The int8 recipe. The node list is the result of quant_search.py (sensitivity ranking of each Conv on
# selection frames index % 20 == 5, prefix search, then a greedy pass that adds the costliest remaining
# convs while the selection-set mean IoU stays >= 0.925). The other 26 convs stay float.
INT8_RECIPE = {
    "format": "QOperator",  # QLinearConv (standard ONNX domain), integer kernels in tract
    "op_types": ["Conv"],
    "per_channel": True,  # int8 symmetric weights, one scale per output channel
    "activation_type": "QUInt8",  # asymmetric uint8 activations
    "weight_type": "QInt8",
    "calibration": {"method": "Percentile", "percentile": 99.99, "num_bins": 2048, "symmetric": True},
    "nodes_to_quantize": [
        "conv2d_41", "conv2d_32", "conv2d_23", "conv2d_15", "conv2d_27", "conv2d_40", "conv2d_14",
        "conv2d_18", "conv2d_11", "conv2d_19", "conv2d_36", "conv2d_22", "conv2d_26", "conv2d_30",
        "conv2d_10", "conv2d_3", "conv2d_37", "conv2d_33", "conv2d_31", "conv2d_16", "conv2d_2",
        "conv2d_17", "depthwise_conv2d_9", "conv2d_21", "conv2d_8", "conv2d_29", "conv2d_39",
        "conv2d_35",
    ],
}
QUANT_DESCRIPTION = (
    "mixed precision, onnxruntime QOperator format: 28 of 54 Conv as QLinearConv (int8 symmetric per-channel "
    "weights, uint8 asymmetric activations, Percentile 99.99 calibration on 40 vtest frames, index % 20 == 10), "
    "about 26% of the conv MACs; quantized are the squeeze-excite 1x1 convs and most decoder convs; the stem, "
    "the depthwise convs, the encoder's expand/project convs, the last decoder convs, the ConvTranspose and "
    "all non-conv ops stay fp32"
)

# The table of attempts written into the int8 card comes from quant_search.py's output.
SEARCH_RESULTS = HERE / "quant_search_results.json"


def log(*a):
    print("[build_selfie]", *a, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- 1. fetch
def fetch_tflite(work: Path) -> Path:
    out = work / "selfie_segmentation.tflite"
    if out.exists() and sha256(out) == TFLITE_SHA256:
        return out
    wheel_dir = work / "wheel"
    wheels = sorted(wheel_dir.glob(f"mediapipe-{MEDIAPIPE_VERSION}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"mediapipe=={MEDIAPIPE_VERSION}",
             "--only-binary=:all:", "--platform", "manylinux_2_17_x86_64", "--python-version", "311",
             "--implementation", "cp", "--abi", "cp311", "-d", str(wheel_dir)],
            check=True,
        )
        wheels = sorted(wheel_dir.glob(f"mediapipe-{MEDIAPIPE_VERSION}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        out.write_bytes(z.read(TFLITE_MEMBER))
    got = sha256(out)
    if got != TFLITE_SHA256:
        raise SystemExit(f"unexpected sha256 of {TFLITE_MEMBER}: {got}")
    log("tflite", out, got)
    return out


# ----------------------------------------------------------------------------- 2. reference tflite
def make_reference_tflite(tflite: Path, out: Path) -> Path:
    """Rewrite the custom op to the builtin TRANSPOSE_CONV and expose both the logit and the sigmoid."""
    from tensorflow.lite.python import schema_py_generated as s
    from tensorflow.lite.tools import flatbuffer_utils as fu

    m = fu.read_model(str(tflite))
    g = m.subgraphs[0]
    idx = [k for k, op in enumerate(g.operators)
           if m.operatorCodes[op.opcodeIndex].customCode == b"Convolution2DTransposeBias"]
    assert len(idx) == 1, idx
    op = g.operators[idx[0]]
    # TfLiteTransposeConvParams {padding = SAME (1), stride_width = 2, stride_height = 2}
    assert bytes(op.customOptions) == bytes([1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0]), op.customOptions
    x, w, b = op.inputs
    out_t = op.outputs[0]
    assert g.tensors[out_t].name.decode() == OUTPUT
    last = g.operators[-1]
    assert m.operatorCodes[last.opcodeIndex].builtinCode == s.BuiltinOperator.LOGISTIC
    assert list(last.inputs) == [out_t] and list(last.outputs) == list(g.outputs), "graph must end in Logistic"

    buf = s.BufferT()
    buf.data = np.array(list(g.tensors[out_t].shape), np.int32).tobytes()
    m.buffers.append(buf)
    t = s.TensorT()
    t.shape = [4]
    t.type = s.TensorType.INT32
    t.buffer = len(m.buffers) - 1
    t.name = b"segment/output_shape"
    g.tensors.append(t)
    oc = s.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = s.BuiltinOperator.TRANSPOSE_CONV
    oc.version = 3
    m.operatorCodes.append(oc)
    op.opcodeIndex = len(m.operatorCodes) - 1
    op.inputs = [len(g.tensors) - 1, w, x, b]
    opt = s.TransposeConvOptionsT()
    opt.padding = s.Padding.SAME
    opt.strideW = 2
    opt.strideH = 2
    op.builtinOptionsType = s.BuiltinOptions.TransposeConvOptions
    op.builtinOptions = opt
    op.customOptions = None
    g.outputs = [out_t] + list(g.outputs)
    fu.write_model(m, str(out))
    return out


# ----------------------------------------------------------------------------- 3. convert
def _convtb_handler(ctx, node, name, args):
    """tf2onnx handler: TFL_Convolution2DTransposeBias(x NHWC, w OHWI, b) -> ConvTranspose (NCHW)."""
    x, w, _b = node.input
    for k in list(node.attr.keys()):
        del node.attr[k]
    node.type = "ConvTranspose"
    node.domain = ""
    node.set_attr("kernel_shape", [2, 2])
    node.set_attr("strides", [2, 2])
    node.set_attr("pads", [0, 0, 0, 0])  # SAME with k=2, s=2 needs no padding
    node.set_attr("dilations", [1, 1])
    node.set_attr("group", 1)
    ctx.insert_new_node_on_input(node, "Transpose", x, input_index=0, perm=[0, 3, 1, 2])  # NHWC->NCHW
    ctx.insert_new_node_on_input(node, "Transpose", w, input_index=1, perm=[3, 0, 1, 2])  # OHWI->IOHW
    out = node.output[0]
    shp, dt = ctx.get_shape(out), ctx.get_dtype(out)
    tr = ctx.insert_new_node_on_output("Transpose", out, perm=[0, 2, 3, 1])  # back to NHWC
    ctx.set_shape(tr.output[0], shp)
    ctx.set_dtype(tr.output[0], dt)
    ctx.set_shape(out, [shp[0], shp[3], shp[1], shp[2]])
    return node


def convert(tflite: Path):
    import onnx
    import onnxsim
    from tf2onnx import convert as tfconv
    from tf2onnx.optimizer import transpose_optimizer as to

    # tf2onnx's transpose optimizer does not know HardSwish is elementwise; without this it leaves
    # 28 Transposes (NCHW<->NHWC) around the 11 HardSwish nodes.
    orig = to.TransposeOptimizer._initialize_handlers

    def init(self):
        orig(self)
        self._handler_map["HardSwish"] = self._simple_through_handler

    to.TransposeOptimizer._initialize_handlers = init
    model, _ = tfconv.from_tflite(
        str(tflite), output_names=[OUTPUT], opset=OPSET,
        custom_op_handlers={"TFL_Convolution2DTransposeBias": (_convtb_handler, [])},
        inputs_as_nchw=[INPUT], outputs_as_nchw=[OUTPUT])
    to.TransposeOptimizer._initialize_handlers = orig
    model, ok = onnxsim.simplify(model)
    assert ok
    canonicalize(model)
    model.doc_string = ("MediaPipe Selfie Segmentation (general, 256x256), from mediapipe==" + MEDIAPIPE_VERSION +
                        " (Apache-2.0); output = pre-sigmoid person logit")
    onnx.checker.check_model(model, full_check=True)
    g = model.graph
    shp = lambda v: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
    assert [(i.name, shp(i)) for i in g.input] == [(INPUT, [1, 3, SIZE, SIZE])], g.input
    assert [(o.name, shp(o)) for o in g.output] == [(OUTPUT, [1, 1, SIZE, SIZE])], g.output
    hist = op_histogram(model)
    assert "Sigmoid" in hist and "Transpose" not in hist and "Reshape" not in hist, hist
    assert g.node[-1].op_type == "ConvTranspose", g.node[-1].op_type
    return model


def canonicalize(model):
    """Make the file byte-for-byte reproducible: tf2onnx names folded constants in an order that depends
    on Python's hash seed, so name every initializer after its first consumer; drop unused opset imports."""
    slots = {"Conv": ["X", "W", "B"], "ConvTranspose": ["X", "W", "B"], "Resize": ["X", "roi", "scales", "sizes"]}
    inits = {i.name: i for i in model.graph.initializer}
    rename = {}
    for n in model.graph.node:
        for k, name in enumerate(n.input):
            if name in inits and name not in rename:
                slot = slots.get(n.op_type, [])
                rename[name] = f"{n.name}/{slot[k] if k < len(slot) else 'in%d' % k}"
    assert len(set(rename.values())) == len(rename)
    for i in model.graph.initializer:
        i.name = rename.get(i.name, i.name)
    order = {name: k for k, name in enumerate(rename.values())}
    ordered = sorted(model.graph.initializer, key=lambda i: (order.get(i.name, len(order)), i.name))
    ordered = [copy.deepcopy(i) for i in ordered]
    del model.graph.initializer[:]
    model.graph.initializer.extend(ordered)
    for n in model.graph.node:
        for k, name in enumerate(n.input):
            n.input[k] = rename.get(name, name)
    for v in list(model.graph.value_info):
        if v.name in rename:
            model.graph.value_info.remove(v)
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model.graph.name = "selfie_segmentation"


def op_histogram(model) -> dict:
    c = collections.Counter(
        (n.domain + ":" if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


# ----------------------------------------------------------------------------- frames
def load_frame(path) -> np.ndarray:
    """RGB, stretched to 256x256 (PIL bilinear), scaled to [0,1]; HWC float32."""
    im = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(im, np.float32) / 255.0


def frames(all_dir: Path):
    sample = sorted((MODELS / "frames" / "vtest").glob("vtest_*.jpg"))
    assert len(sample) == 40, f"expected 40 sample frames in models/frames/vtest, got {len(sample)}"
    if not (all_dir / "vtest_0010.jpg").exists():
        subprocess.run(["bash", str(HERE / "extract_vtest.sh"), "all", str(all_dir)], check=True)
    calib = sorted(p for p in all_dir.glob("vtest_*.jpg") if int(p.stem[-4:]) % 20 == 10)
    assert len(calib) == 40, len(calib)
    return sample, calib


# ----------------------------------------------------------------------------- 4. verify
def ort_session(model_bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def run_onnx(model, xs_hwc):
    s = ort_session(model.SerializeToString())
    return [s.run(None, {INPUT: x.transpose(2, 0, 1)[None]})[0][0, 0] for x in xs_hwc]


def verify_against_tflite(ref_tflite: Path, model, xs_hwc) -> dict:
    import tensorflow as tf

    # reference: TFLite's builtin kernels (with preserve_all_tensors the XNNPACK delegate is not applied)
    it = tf.lite.Interpreter(str(ref_tflite), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    # the same model with the default XNNPACK delegate: how much TFLite differs from itself
    it2 = tf.lite.Interpreter(str(ref_tflite))
    it2.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    outs = {d["name"]: d["index"] for d in it.get_output_details()}
    det = {d["name"]: d["index"] for d in it.get_tensor_details()}
    zs = run_onnx(model, xs_hwc)
    r = dict(max_abs_logit=0.0, max_rel_logit=0.0, max_abs_logit_within_10=0.0, max_abs_prob=0.0,
             mask_disagreements=0, max_abs_transposeconv_vs_numpy=0.0,
             tflite_builtin_vs_xnnpack_max_abs_logit=0.0, tflite_builtin_vs_xnnpack_max_abs_logit_within_10=0.0,
             tflite_builtin_vs_xnnpack_mask_disagreements=0)
    sig = lambda z: 0.5 * (1.0 + np.tanh(0.5 * z.astype(np.float64)))
    for x, z_o in zip(xs_hwc, zs):
        it.set_tensor(inp, x[None])
        it.invoke()
        z_t = it.get_tensor(outs[OUTPUT])[0, :, :, 0]
        it2.set_tensor(it2.get_input_details()[0]["index"], x[None])
        it2.invoke()
        z_t2 = it2.get_tensor([d["index"] for d in it2.get_output_details() if d["name"] == OUTPUT][0])[0, :, :, 0]
        d2 = np.abs(z_t2.astype(np.float64) - z_t)
        r["tflite_builtin_vs_xnnpack_max_abs_logit"] = max(r["tflite_builtin_vs_xnnpack_max_abs_logit"], float(d2.max()))
        r["tflite_builtin_vs_xnnpack_max_abs_logit_within_10"] = max(
            r["tflite_builtin_vs_xnnpack_max_abs_logit_within_10"], float(d2[np.abs(z_t) <= 10].max(initial=0.0)))
        r["tflite_builtin_vs_xnnpack_mask_disagreements"] += int(((z_t2 > 0) != (z_t > 0)).sum())
        p_t = it.get_tensor(outs["activation_10"])[0, :, :, 0]
        # the rewritten TRANSPOSE_CONV vs a float64 evaluation of the MediaPipe op definition
        a = it.get_tensor(det["add_13__xeno_compat__1"])[0].astype(np.float64)  # NHWC input
        w = it.get_tensor(det["segment/Kernel_dequantize"]).astype(np.float64)  # OHWI
        b = it.get_tensor(det["segment/Bias_dequantize"]).astype(np.float64)
        zn = np.einsum("ijc,oabc->iajbo", a, w).reshape(SIZE, SIZE, -1)[:, :, 0] + b[0]
        d = np.abs(z_o.astype(np.float64) - z_t)
        r["max_abs_transposeconv_vs_numpy"] = max(r["max_abs_transposeconv_vs_numpy"], float(np.abs(zn - z_t).max()))
        r["max_abs_logit"] = max(r["max_abs_logit"], float(d.max()))
        r["max_rel_logit"] = max(r["max_rel_logit"], float((d / np.maximum(1.0, np.abs(z_t))).max()))
        near = np.abs(z_t) <= 10
        if near.any():
            r["max_abs_logit_within_10"] = max(r["max_abs_logit_within_10"], float(d[near].max()))
        r["max_abs_prob"] = max(r["max_abs_prob"], float(np.abs(sig(z_o) - p_t).max()))
        r["mask_disagreements"] += int(((z_o > 0) != (z_t > 0)).sum())
    r["logit_range"] = [float(min(z.min() for z in zs)), float(max(z.max() for z in zs))]
    return r


# ----------------------------------------------------------------------------- 5. quantize
def calibrate(fp32_path: Path, calib_hwc, calibration: dict, op_types):
    """Tensor ranges from onnxruntime's calibrator. calibration = {"method": "MinMax"|"Entropy"|"Percentile", ...}."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    class Reader(CalibrationDataReader):
        # Keeps the input arrays alive: the calibrator collects the graph input as an output, and
        # onnxruntime returns it without a copy, so freed inputs would turn into garbage (NaNs).
        def __init__(self):
            self.data = [{INPUT: x.transpose(2, 0, 1)[None].copy()} for x in calib_hwc]
            self.i = 0

        def get_next(self):
            self.i += 1
            return self.data[self.i - 1] if self.i <= len(self.data) else None

    cal = dict(calibration)
    method = getattr(CalibrationMethod, cal.pop("method"))
    # quantize_static() does the same, but (onnxruntime 1.19) it does not pass percentile/num_bins to
    # the calibrator, so the calibrator and the quantizer are driven directly.
    with tempfile.TemporaryDirectory() as d:
        calibrator = create_calibrator(fp32_path, list(op_types), augmented_model_path=os.path.join(d, "aug.onnx"),
                                       calibrate_method=method, extra_options=cal)
        reader = Reader()
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del reader
        return ranges


def quantize_with_ranges(fp32_path: Path, ranges, recipe):
    """recipe keys: format, op_types, per_channel, activation_type, weight_type, nodes_to_quantize
    (empty = all nodes of op_types), optional nodes_to_exclude, activation_symmetric."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, load_model_with_shape_infer

    ranges = copy.deepcopy(ranges)  # the quantizers may adjust the ranges in place
    model = load_model_with_shape_infer(fp32_path)
    args = (recipe["per_channel"], False)  # reduce_range = False
    wt, act = getattr(QuantType, recipe["weight_type"]), getattr(QuantType, recipe["activation_type"])
    extra = {"ActivationSymmetric": recipe.get("activation_symmetric", False), "WeightSymmetric": True}
    sel = (list(recipe.get("nodes_to_quantize", [])), list(recipe.get("nodes_to_exclude", [])), list(recipe["op_types"]))
    if recipe["format"] == "QOperator":
        q = ONNXQuantizer(model, *args, QuantizationMode.QLinearOps, True, wt, act, ranges, *sel, extra)
    else:
        q = QDQQuantizer(model, *args, wt, act, ranges, *sel, extra)
    q.quantize_model()
    m = q.model.model
    # drop opset imports of domains that no node uses (the quantizer adds com.microsoft)
    used = {n.domain for n in m.graph.node}
    keep = [o for o in m.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m


def calibrated_op_types():
    """All op types onnxruntime can quantize (its default). Calibrating only 'Conv' tensors hits a NaN
    histogram in the Percentile calibrator of onnxruntime 1.19; the ranges of the conv tensors are the same."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def quantize(fp32_path: Path, calib_hwc, recipe=INT8_RECIPE):
    import onnx

    ranges = calibrate(fp32_path, calib_hwc, recipe["calibration"], calibrated_op_types())
    m = quantize_with_ranges(fp32_path, ranges, recipe)
    m.producer_name, m.producer_version = "qualm models/build/build_selfie.py", "1"
    m.doc_string = "int8 (mixed precision) " + (onnx.load(str(fp32_path)).doc_string or "")
    onnx.checker.check_model(m, full_check=True)
    return m


def agreement(z_ref, z_q) -> dict:
    ious, inter, union, agree, mx, mae, empty = [], 0, 0, 0.0, 0.0, 0.0, 0
    for a_z, b_z in zip(z_ref, z_q):
        a, b = a_z > 0, b_z > 0
        i, u = int(np.logical_and(a, b).sum()), int(np.logical_or(a, b).sum())
        ious.append(1.0 if u == 0 else i / u)  # two empty masks agree perfectly
        empty += int(a.sum() == 0)
        inter, union = inter + i, union + u
        agree += float((a == b).mean())
        d = np.abs(a_z.astype(np.float64) - b_z)
        mx, mae = max(mx, float(d.max())), mae + float(d.mean())
    n = len(z_ref)
    return dict(mean_mask_iou=float(np.mean(ious)), min_mask_iou=float(np.min(ious)),
                pooled_mask_iou=inter / union if union else 1.0, pixel_agreement=agree / n,
                max_abs_logit_diff=mx, mean_abs_logit_diff=mae / n, frames=n, empty_ref_frames=empty,
                mean_person_fraction=float(np.mean([(z > 0).mean() for z in z_ref])))


# ----------------------------------------------------------------------------- 6. cards
def toml_list(xs):
    return "[" + ", ".join(json.dumps(x) for x in xs) + "]"


def card(kind: str, onnx_name: str, digest: str, header: list[str], agree: dict | None, runtime: str) -> str:
    import textwrap

    lines = []
    for h in header:
        if not h or h.startswith("  "):
            lines.append(("# " + h).rstrip())
        else:
            lines += ["# " + x for x in textwrap.wrap(h, 100)]
    lines.append("")
    lines.append(f'name = "selfie_segmentation_{kind}"')
    lines.append(f'file = "{onnx_name}"')
    lines.append(f'sha256 = "{digest}"')
    lines.append(f'precision = "{kind}"')
    if kind == "int8":
        lines.append(f"quantization = {json.dumps(QUANT_DESCRIPTION)}")
    lines.append('licence = "Apache-2.0"')
    lines.append(f'source = "PyPI wheel mediapipe=={MEDIAPIPE_VERSION}, {TFLITE_MEMBER}"')
    desc = ("MediaPipe Selfie Segmentation (general, 256x256) converted with tf2onnx (opset 14); the MediaPipe "
            "custom op Convolution2DTransposeBias replaced by a standard ConvTranspose; the final sigmoid "
            "removed so the output is the person logit")
    if kind == "int8":
        desc += "; then int8-quantized (mixed precision) with onnxruntime"
    lines.append(f"description = {json.dumps(desc)}")
    lines += ["", "[input]", f'name = "{INPUT}"', f"shape = [1, 3, {SIZE}, {SIZE}]", 'layout = "nchw"',
              'color = "rgb"', 'resize = "stretch"', "# value fed = (pixel / 255 - mean) / std, per channel",
              "mean = [0.0, 0.0, 0.0]", "std = [1.0, 1.0, 1.0]",
              "", "[output]", f'name = "{OUTPUT}"', f"shape = [1, 1, {SIZE}, {SIZE}]", 'layout = "nchw"',
              'kind = "sigmoid_logit"', 'classes = ["background", "person"]']
    if agree is not None:
        lines += ["", "[agreement]", 'reference = "selfie_fp32.onnx"', f"frames = {agree['frames']}",
                  'frames_dir = "../frames/vtest"']
        for k in ("mean_mask_iou", "pooled_mask_iou", "pixel_agreement", "max_abs_logit_diff", "mean_abs_logit_diff"):
            lines.append(f"{k} = {agree[k]:.6g}")
        lines.append(f'runtime = "{runtime}"')
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qualm-selfie-build")
    ap.add_argument("--out", type=Path, default=MODELS / "selfie")
    args = ap.parse_args()
    t0 = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    tflite = fetch_tflite(args.work)
    ref = make_reference_tflite(tflite, args.work / "reference_builtin_transposeconv.tflite")
    sample, calib = frames(args.work / "vtest_all")
    xs = [load_frame(p) for p in sample]
    cal = [load_frame(p) for p in calib]

    log("converting with tf2onnx", tf2onnx.__version__)
    fp32 = convert(tflite)
    fp32_path = args.out / "selfie_fp32.onnx"
    onnx.save(fp32, str(fp32_path))
    ver = verify_against_tflite(ref, fp32, xs)
    log("fp32 ONNX vs TFLite:", json.dumps(ver))
    # float32 round-off through a net whose logits reach ~900; TFLite differs from itself by more
    # (XNNPACK vs builtin kernels, reported as tflite_builtin_vs_xnnpack_*)
    assert ver["max_abs_prob"] < 1e-4 and ver["max_abs_logit_within_10"] < 1e-2 and ver["mask_disagreements"] <= 10, ver

    log("quantizing", json.dumps({k: v for k, v in INT8_RECIPE.items() if k != "nodes_to_quantize"}))
    q = quantize(fp32_path, cal)
    int8_path = args.out / "selfie_int8.onnx"
    onnx.save(q, str(int8_path))
    z32 = run_onnx(fp32, xs)
    zq = run_onnx(q, xs)
    agr = agreement(z32, zq)
    log("int8 vs fp32:", json.dumps(agr))
    h32, hq = op_histogram(fp32), op_histogram(q)
    assert all(":" not in k for k in hq), f"non-standard domain op in int8 model: {hq}"
    log("ops fp32:", h32)
    log("ops int8:", hq)

    runtime = f"onnxruntime {onnxruntime.__version__}"
    common = [
        "MediaPipe Selfie Segmentation (general model, 256x256 input) as ONNX. Segments people: one output",
        "channel, the pre-sigmoid 'person' logit z per pixel (person probability = sigmoid(z); as two classes",
        "the logits are [0, z]). Built by models/build/build_selfie.py; see models/selfie/README.md.",
        "Intended for selfie/video-call framing: on a fixed street camera with small people it is often unsure.",
        "",
    ]
    v = ver
    fp32_header = common + [
        f"Measured against TFLite ({tf.__version__}, tf.lite.Interpreter, builtin kernels; the custom op run as the",
        "builtin TRANSPOSE_CONV) on the 40 frames in ../frames/vtest, input stretched with PIL bilinear:",
        f"  max |z_onnx - z_tflite|            = {v['max_abs_logit']:.3g}  (logits range {v['logit_range'][0]:.0f} .. {v['logit_range'][1]:.0f})",
        f"  max |dz| / max(1, |z|)             = {v['max_rel_logit']:.3g}",
        f"  max |dz| where |z| <= 10           = {v['max_abs_logit_within_10']:.3g}",
        f"  max |sigmoid difference|           = {v['max_abs_prob']:.3g}",
        f"  pixels where the mask z > 0 differs = {v['mask_disagreements']} (of {len(xs)} x {SIZE} x {SIZE})",
        "For scale, TFLite's builtin kernels vs TFLite with XNNPACK differ by: max |dz| = "
        f"{v['tflite_builtin_vs_xnnpack_max_abs_logit']:.3g}, where |z| <= 10: "
        f"{v['tflite_builtin_vs_xnnpack_max_abs_logit_within_10']:.3g}, mask pixels: "
        f"{v['tflite_builtin_vs_xnnpack_mask_disagreements']}.",
        f"ONNX runtime used: {runtime}. Opset {OPSET}, standard domain only.",
    ]
    att = ["Quantization attempts (quant_search.py): mean mask IoU (z > 0) vs fp32 over the 40 sample frames;",
           "'k of 54 Conv' run as QLinearConv, the rest in fp32; MACs = share of the conv compute in int8:"]
    if SEARCH_RESULTS.exists():
        for row in json.loads(SEARCH_RESULTS.read_text())["attempts"]:
            macs = f", {row['conv_mac_fraction_int8']:.0%} MACs" if "conv_mac_fraction_int8" in row else ""
            shipped = "  <- shipped" if row.get("quantized_nodes") and sorted(row["quantized_nodes"]) == sorted(
                INT8_RECIPE["nodes_to_quantize"]) and row.get("recipe", {}).get("calibration", {}).get(
                "percentile") == INT8_RECIPE["calibration"]["percentile"] else ""
            att.append(f"  {row['mean_mask_iou']:.3f}  {row['name']}{macs}{shipped}")
    else:
        att.append("  (run quant_search.py to fill this table)")
    a = agr
    int8_header = common + [
        "Int8 recipe: " + QUANT_DESCRIPTION + ".",
        "Plain int8 of the whole model ruins it (its logits reach several hundred, and quantizing a single "
        "sensitive conv alone already drops the mask IoU to 0.6-0.8), so only the convs that tolerate it are "
        "quantized: see models/selfie/README.md.",
        "",
    ] + att + [
        "",
        f"Shipped model vs fp32: mean IoU {a['mean_mask_iou']:.4f} (min over frames {a['min_mask_iou']:.3f}), pooled IoU "
        f"{a['pooled_mask_iou']:.4f}, pixel agreement {a['pixel_agreement']:.5f}; frames with an empty fp32 mask: "
        f"{a['empty_ref_frames']} of {a['frames']} (two empty masks would count as IoU 1); the fp32 mask covers "
        f"{a['mean_person_fraction']:.1%} of the pixels on average. Selection frames (index % 20 == 5), calibration "
        "frames (% 20 == 10) and these 40 (% 20 == 0) are disjoint. Input stretched with PIL bilinear.",
    ]
    (args.out / "selfie_fp32.toml").write_text(card("fp32", "selfie_fp32.onnx", sha256(fp32_path), fp32_header, None, runtime))
    (args.out / "selfie_int8.toml").write_text(card("int8", "selfie_int8.onnx", sha256(int8_path), int8_header, agr, runtime))
    summary = dict(fp32=dict(file=str(fp32_path), bytes=fp32_path.stat().st_size, sha256=sha256(fp32_path), ops=h32,
                             vs_tflite=ver),
                   int8=dict(file=str(int8_path), bytes=int8_path.stat().st_size, sha256=sha256(int8_path), ops=hq,
                             vs_fp32=agr),
                   seconds=round(time.time() - t0, 1))
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))
    log("summary:", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
