"""Your own difference metrics: THIS FILE IS YOURS TO EDIT.

The built-in metrics (square, yolo, yolo_map, top1, top5, their _agreement twins, f1, f1_agreement, coco_map,
coco_map_agreement) live in the package (int8tune/builtin_metrics.py); `python main.py auto --help` lists them.
A metric of yours compares the fp32 outputs with the int8 outputs of the same images and returns one number.
Register it with `@register_metric(name, direction)`; `--metric name` then selects it. `fp32` and `int8` are
dicts {blob name: array (N, ...)}, `params` is the parsed `--metric_params` JSON (a dict), plus "labels" (per
image, from a labelled data list) and "image_names" when available.

Contract: return a finite float; Direction.LOWER means 0 is a perfect match, Direction.HIGHER means larger is
better. main.py imports this file; a metric file elsewhere is loaded with `--metric_module path/to/file.py`.
"""

from __future__ import annotations

import numpy as np

from int8tune.metrics import Direction, register_metric


# Example: the largest absolute difference over all outputs (`--metric max_abs`).
@register_metric("max_abs", Direction.LOWER)
def max_abs(fp32, int8, params):
    """Largest absolute difference over every output element."""
    return max(float(np.abs(fp32[k] - int8[k]).max()) for k in fp32)
