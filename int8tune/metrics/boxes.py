"""Detection agreement for nets whose outputs are per-anchor boxes and class scores (UltraFace / RFB face
detectors, SSD heads exported without DetectionOutput, most anchor-based detectors converted from other
frameworks): the `box_map` metric.

Both the fp32 and the int8 outputs are decoded the same way (boxes, per-class scores above conf_threshold, NMS
per class, top_k per image) and the int8 detections are scored as mAP@0.5 against the fp32 ones: 1.0 when int8
finds every fp32 detection and nothing else. --metric_params:

    boxes, scores      output names: boxes (N, A, 4), scores (N, A, C) (C = 1: one class scored by the value;
                       C >= 2: column `background` is not a class). Guessed when the model has exactly one
                       output ending in 4 and one other output with as many anchors.
    box_format         "xyxy" (default), "cxcywh", or "ssd": SSD regressions decoded against priors
                       (cx + l0 * v0 * w, cy + l1 * v0 * h, w * exp(l2 * v1), h * exp(l3 * v1))
    priors             for "ssd": a .npy file of (A, 4) priors (cx, cy, w, h), or UltraFace's generator
                       {"image_size": [W, H], "strides": [8, 16, 32, 64],
                        "min_boxes": [[10, 16, 24], [32, 48], [64, 96], [128, 192, 256]]}
    variances          for "ssd": [0.1, 0.2] (default)
    background         the background column of scores (default 0 when C >= 2; null: every column is a class)
    conf_threshold     0.5;  nms_threshold 0.45;  top_k 200
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..yolo import Detection, mean_average_precision, nms
from .core import register_metric

BOX_FORMATS = ("xyxy", "cxcywh", "ssd")


@dataclass(frozen=True)
class BoxParams:
    boxes: str
    scores: str
    box_format: str = "xyxy"
    priors: np.ndarray | None = None
    variances: tuple[float, float] = (0.1, 0.2)
    background: int | None = 0
    conf_threshold: float = 0.5
    nms_threshold: float = 0.45
    top_k: int = 200


@register_metric("box_map", "higher")
def box_map(fp32, int8, params):
    """mAP@0.5 of the int8 detections against the fp32 detections of a net that outputs per-anchor boxes and
    class scores (see int8tune/metrics/boxes.py for --metric_params)."""
    p = box_params(params, fp32)
    return mean_average_precision(box_detections(fp32, p), box_detections(int8, p), 0.5)


def box_params(params, outputs) -> BoxParams:
    names = list(outputs)
    boxes, scores = params.get("boxes"), params.get("scores")
    if boxes is None or scores is None:
        boxes, scores = _guess(outputs, boxes, scores)
    for key, name in (("boxes", boxes), ("scores", scores)):
        if name not in outputs:
            raise ConfigError(f'box_map: --metric_params "{key}": {name!r} is not an output of the model; its '
                              f"outputs: {', '.join(names)}")
    fmt = params.get("box_format", "xyxy")
    if fmt not in BOX_FORMATS:
        raise ConfigError(f'box_map: --metric_params "box_format" must be one of {", ".join(BOX_FORMATS)}, '
                          f"found {fmt!r}")
    anchors = np.shape(outputs[boxes])[1] if np.ndim(outputs[boxes]) == 3 else -1
    if np.ndim(outputs[boxes]) != 3 or np.shape(outputs[boxes])[2] != 4:
        raise ConfigError(f"box_map: output {boxes!r} must be (N, anchors, 4), found {np.shape(outputs[boxes])}")
    if np.ndim(outputs[scores]) != 3 or np.shape(outputs[scores])[1] != anchors:
        raise ConfigError(f"box_map: output {scores!r} must be (N, {anchors}, classes) like {boxes!r}, found "
                          f"{np.shape(outputs[scores])}")
    priors = None
    if fmt == "ssd":
        priors = _priors(params.get("priors"), anchors)
    classes = np.shape(outputs[scores])[2]
    background = params.get("background", 0 if classes >= 2 else None)
    if background is not None and not (isinstance(background, int) and 0 <= background < classes):
        raise ConfigError(f'box_map: --metric_params "background" must be a column of {scores!r} (0..{classes - 1}) '
                          f"or null, found {background!r}")
    variances = tuple(float(v) for v in params.get("variances", (0.1, 0.2)))
    if len(variances) != 2:
        raise ConfigError(f'box_map: --metric_params "variances" must be two numbers, found {variances!r}')
    return BoxParams(boxes, scores, fmt, priors, variances, background,  # type: ignore[arg-type]
                     float(params.get("conf_threshold", 0.5)), float(params.get("nms_threshold", 0.45)),
                     int(params.get("top_k", 200)))


def box_detections(outputs, p: BoxParams) -> list[list[Detection]]:
    """Per image: decoded boxes (x1, y1, x2, y2), per class above conf_threshold, NMS per class, best top_k."""
    boxes = np.asarray(outputs[p.boxes], dtype=np.float64)
    scores = np.asarray(outputs[p.scores], dtype=np.float64)
    out = []
    for i in range(len(boxes)):
        xyxy = _decode(boxes[i], p)
        dets: list[Detection] = []
        for c in range(scores.shape[2]):
            if c == p.background:
                continue
            idx = np.nonzero(scores[i, :, c] > p.conf_threshold)[0]
            for k in nms(xyxy[idx], scores[i, idx, c], p.nms_threshold) if idx.size else []:
                j = idx[k]
                dets.append(Detection(c, float(scores[i, j, c]), tuple(float(v) for v in xyxy[j])))
        dets.sort(key=lambda d: -d.score)
        out.append(dets[:p.top_k])
    return out


def _decode(b: np.ndarray, p: BoxParams) -> np.ndarray:
    if p.box_format == "xyxy":
        return b
    if p.box_format == "ssd":
        pr, (v0, v1) = p.priors, p.variances
        cx = pr[:, 0] + b[:, 0] * v0 * pr[:, 2]
        cy = pr[:, 1] + b[:, 1] * v0 * pr[:, 3]
        w = pr[:, 2] * np.exp(np.clip(b[:, 2] * v1, -20, 20))
        h = pr[:, 3] * np.exp(np.clip(b[:, 3] * v1, -20, 20))
    else:
        cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _guess(outputs, boxes, scores) -> tuple[str, str]:
    """The (boxes, scores) pair when the model has exactly one (N, A, 4) output and one other (N, A, C) one."""
    shaped = {n: np.shape(a) for n, a in outputs.items() if np.ndim(a) == 3}
    box_like = [n for n, s in shaped.items() if s[2] == 4] if boxes is None else [boxes]
    if len(box_like) == 1 and box_like[0] in shaped:
        anchors = shaped[box_like[0]][1]
        score_like = [n for n, s in shaped.items() if n != box_like[0] and s[1] == anchors] if scores is None \
            else [scores]
        if len(score_like) == 1:
            return box_like[0], score_like[0]
    raise ConfigError('box_map needs --metric_params "boxes" and "scores" (the output names of the per-anchor boxes '
                      "(N, A, 4) and scores (N, A, C)); the model's outputs: "
                      + ", ".join(f"{n} {tuple(np.shape(a))}" for n, a in outputs.items()))


def _priors(spec, anchors: int) -> np.ndarray:
    if spec is None:
        raise ConfigError('box_map with "box_format": "ssd" needs --metric_params "priors": a .npy file of (A, 4) '
                          'priors (cx, cy, w, h), or {"image_size": [W, H], "strides": [...], "min_boxes": [[...]]}')
    if isinstance(spec, str):
        path = Path(spec)
        try:
            priors = np.load(path, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError) as e:
            raise ConfigError(f'box_map: --metric_params "priors" {path}: cannot read a .npy array ({e})') from e
    elif isinstance(spec, dict):
        try:
            priors = _generated_priors(tuple(spec["image_size"]), tuple(spec["strides"]),
                                       tuple(tuple(m) for m in spec["min_boxes"]))
        except (KeyError, TypeError) as e:
            raise ConfigError('box_map: --metric_params "priors" as a generator needs "image_size" [W, H], '
                              f'"strides" and "min_boxes" (one list per stride); found {spec!r}') from e
    else:
        raise ConfigError(f'box_map: --metric_params "priors" must be a .npy path or a generator object, found '
                          f"{spec!r}")
    if priors.shape != (anchors, 4):
        raise ConfigError(f"box_map: the priors are {priors.shape}, the boxes output has {anchors} anchors: they must "
                          f"be ({anchors}, 4)")
    return priors


@lru_cache(maxsize=8)
def _generated_priors(image_size: tuple[int, int], strides: tuple[int, ...],
                      min_boxes: tuple[tuple[float, ...], ...]) -> np.ndarray:
    """UltraFace's priors: per stride, per feature-map row and column (ceil(size / stride)), per min box, a
    (cx, cy, w, h) normalised to the image and clipped to [0, 1]."""
    if len(strides) != len(min_boxes):
        raise ConfigError(f"box_map priors: {len(strides)} strides but {len(min_boxes)} lists of min_boxes")
    w_img, h_img = image_size
    out = []
    for stride, boxes in zip(strides, min_boxes):
        cols, rows = math.ceil(w_img / stride), math.ceil(h_img / stride)
        for j in range(rows):
            for i in range(cols):
                cx, cy = (i + 0.5) * stride / w_img, (j + 0.5) * stride / h_img
                for m in boxes:
                    out.append((cx, cy, m / w_img, m / h_img))
    return np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0)
