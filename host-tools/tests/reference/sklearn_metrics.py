"""Reference values for `qualm evaluate --json`, computed independently in float64.

Ranking metrics come from scikit-learn (roc_auc_score, average_precision_score, roc_curve);
accuracy from accuracy_score; ECE, MCE, NLL, Brier and AURC are written here straight from
their definitions (scikit-learn has no multi-class ECE or AURC). The Rust test that calls this
script compares its output with qualm's.

Usage: sklearn_metrics.py LOGITS_DIR LABELS_NPY_DIR TEMPERATURE FAILED_IOU
  LOGITS_DIR      <stem>.npy float32 logits [C, H, W]
  LABELS_NPY_DIR  <stem>.npy uint8 labels [H, W], 255 = ignore
Prints one JSON object on stdout; a metric without a value is null.
"""

import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

IGNORE = 255
BINS = 15
SCORES = ("max_softmax", "entropy", "margin", "energy")


def pixel_scores(logits, temperature):
    """Per-pixel scores of [C, N] logits, each oriented so that larger = less certain."""
    z = logits.astype(np.float64) / temperature
    log_norm = logsumexp(z, axis=0)
    log_p = z - log_norm
    p = np.exp(log_p)
    top2 = np.sort(p, axis=0)[::-1][:2] if p.shape[0] > 1 else np.vstack([p, np.zeros_like(p)])
    entropy = -(p * np.where(p > 0, log_p, 0.0)).sum(axis=0) / np.log(p.shape[0])
    return {
        "max_softmax": top2[0],
        "entropy": entropy,
        "margin": top2[0] - top2[1],
        "energy": -temperature * log_norm,
    }, p


def uncertainty(name, values):
    return -values if name in ("max_softmax", "margin") else values


def ranking(positive, value):
    """AUROC, AP, FPR at 95% TPR and AURC of `value` (larger = flagged) for `positive`."""
    out = {"auroc": None, "aupr_error": None, "fpr_at_95_tpr": None, "aurc": None}
    n = len(value)
    if n == 0:
        return out
    both = 0 < positive.sum() < n
    if both:
        out["auroc"] = float(roc_auc_score(positive, value))
        fpr, tpr, _ = roc_curve(positive, value, drop_intermediate=False)
        out["fpr_at_95_tpr"] = float(fpr[np.argmax(tpr >= 0.95)])
    if positive.sum() > 0:
        out["aupr_error"] = float(average_precision_score(positive, value))

    # Risk-coverage: accept from the most certain up, one distinct value at a time; each step
    # adds (its share of items) x (positive rate among everything accepted so far).
    order = np.argsort(value, kind="stable")
    sorted_value, sorted_positive = value[order], positive[order]
    ends = np.append(np.nonzero(np.diff(sorted_value))[0], n - 1)
    accepted = ends + 1
    risk = np.cumsum(sorted_positive)[ends] / accepted
    share = np.diff(np.concatenate([[0], accepted])) / n
    out["aurc"] = float((share * risk).sum())
    return out


def miou(label, predicted, classes):
    ious = []
    for c in range(classes):
        tp = np.sum((label == c) & (predicted == c))
        union = np.sum((label == c) | (predicted == c))
        if union > 0:
            ious.append(tp / union)
    return float(np.mean(ious)) if ious else None


def main():
    logits_dir, labels_dir = Path(sys.argv[1]), Path(sys.argv[2])
    temperature, failed_iou = float(sys.argv[3]), float(sys.argv[4])

    pooled = {name: [] for name in SCORES}
    errors, confidences, correct, nll, brier = [], [], [], [], []
    labels_all, predicted_all = [], []
    frame_means = {name: [] for name in SCORES}
    frame_failed = []
    for path in sorted(logits_dir.glob("*.npy")):
        logits = np.load(path)
        classes = logits.shape[0]
        flat = logits.reshape(classes, -1)
        label = np.load(labels_dir / path.name).reshape(-1)
        finite = np.isfinite(flat).all(axis=0)
        scores, p = pixel_scores(np.where(finite, flat, 0.0), temperature)
        predicted = flat.argmax(axis=0)

        # Frame statistics are over every finite pixel, labeled or not, as on the camera.
        for name in SCORES:
            frame_means[name].append(scores[name][finite].mean())

        keep = finite & (label != IGNORE)
        y, yhat = label[keep].astype(np.int64), predicted[keep]
        for name in SCORES:
            pooled[name].append(scores[name][keep])
        errors.append(yhat != y)
        confidences.append(p[:, keep].max(axis=0))
        correct.append(yhat == y)
        z = flat[:, keep].astype(np.float64) / temperature
        nll.append(logsumexp(z, axis=0) - z[y, np.arange(len(y))])
        onehot = np.zeros_like(p[:, keep])
        onehot[y, np.arange(len(y))] = 1.0
        brier.append(((p[:, keep] - onehot) ** 2).sum(axis=0))
        labels_all.append(y)
        predicted_all.append(yhat)
        frame_miou = miou(y, yhat, classes)
        frame_failed.append(None if frame_miou is None else frame_miou < failed_iou)

    errors = np.concatenate(errors)
    confidence = np.concatenate(confidences)
    right = np.concatenate(correct)
    result = {
        "accuracy": float(accuracy_score(np.concatenate(labels_all), np.concatenate(predicted_all))),
        "nll": float(np.concatenate(nll).mean()),
        "brier": float(np.concatenate(brier).mean()),
    }

    # ECE / MCE: bins (i/15, (i+1)/15], a confidence of 0 in the first, empty bins skipped.
    edges = np.linspace(0.0, 1.0, BINS + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, BINS - 1)
    ece, mce = 0.0, 0.0
    for b in range(BINS):
        members = bins == b
        if members.any():
            gap = abs(right[members].mean() - confidence[members].mean())
            ece += members.mean() * gap
            mce = max(mce, gap)
    result["ece"], result["mce"] = float(ece), float(mce)

    judged = np.array([f is not None for f in frame_failed])
    failed = np.array([bool(f) for f in frame_failed])[judged]
    result["failed_frames"] = int(failed.sum())
    result["scores"] = {}
    for name in SCORES:
        pixel = ranking(errors, uncertainty(name, np.concatenate(pooled[name])))
        frame_value = uncertainty(name, np.array(frame_means[name]))[judged]
        frame = {"auroc": ranking(failed, frame_value)["auroc"]}
        result["scores"][name] = {"pixel": pixel, "frame": frame}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
