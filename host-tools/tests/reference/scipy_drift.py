"""Reference values for `qualm drift --json`, computed independently with scipy and numpy.

The KS distance and its asymptotic p-value come from scipy.stats.ks_2samp (method "asymp");
the population stability index is written here from its definition: 10 bins cut at the
reference's inverted-CDF deciles (numpy.quantile, method "inverted_cdf"), bins closed on the
right, an empty share counted as EPSILON, PSI = sum (f - r) ln(f / r).

Usage: scipy_drift.py FIELD_JSON REFERENCE_JSON
  each file: {"statistic name": [values, ...], ...} (float32 values; NaN left out)
Prints {"statistic name": {"ks": .., "ks_p": .., "psi": ..}, ...} on stdout.
"""

import json
import sys

import numpy as np
from scipy.stats import ks_2samp

EPSILON = 1e-4
BINS = 10


def psi(reference, field):
    edges = np.quantile(reference, np.arange(1, BINS) / BINS, method="inverted_cdf")
    # searchsorted(side="left") counts the edges strictly below x: x on an edge falls left.
    r = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=BINS) / len(reference)
    f = np.bincount(np.searchsorted(edges, field, side="left"), minlength=BINS) / len(field)
    r, f = np.maximum(r, EPSILON), np.maximum(f, EPSILON)
    return float(np.sum((f - r) * np.log(f / r)))


def main():
    field = json.load(open(sys.argv[1]))
    reference = json.load(open(sys.argv[2]))
    out = {}
    for name, values in field.items():
        a = np.asarray(values, dtype=np.float32).astype(np.float64)
        b = np.asarray(reference[name], dtype=np.float32).astype(np.float64)
        test = ks_2samp(a, b, method="asymp")
        out[name] = {"ks": float(test.statistic), "ks_p": float(test.pvalue), "psi": psi(b, a)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
