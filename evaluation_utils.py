"""Difference metrics: THIS FILE IS YOURS TO EDIT.

A metric compares the fp32 outputs with the int8 outputs of the same images and returns one number.
Register it with `@register_metric(name, direction)`; `--metric name` then selects it. `fp32` and `int8` are
dicts {blob name: array (N, ...)}, `params` is the parsed `--metric_params` JSON (a dict).

Contract: return a finite float; "lower" means 0 is a perfect match, "higher" means larger is better.
"""

from __future__ import annotations

import numpy as np

from int8tune.metrics import register_metric


@register_metric("square", "lower")
def square(fp32, int8, params):
    """Normalised squared distance, summed over output blobs:
    sum over blobs b of  sum((fp32_b - int8_b)^2) / sum(fp32_b^2)
    (a blob that is all zero in fp32 contributes its plain squared error). Scale-free, so layers and models of
    different magnitude are comparable; 0.01 means the error carries 1 % of the signal's energy."""
    total = 0.0
    for name, ref in fp32.items():
        ref = np.asarray(ref, dtype=np.float64)
        err = np.sum((ref - np.asarray(int8[name], dtype=np.float64)) ** 2)
        energy = np.sum(ref ** 2)
        total += err / energy if energy > 0 else err
    return total


# --- Adding your own metric -------------------------------------------------------------------------------
# Example: the largest absolute difference over all outputs. Uncomment, then run with `--metric max_abs`.
#
# @register_metric("max_abs", "lower")
# def max_abs(fp32, int8, params):
#     """Largest absolute difference over every output element."""
#     return max(float(np.abs(fp32[k] - int8[k]).max()) for k in fp32)
