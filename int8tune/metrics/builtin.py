"""The built-in difference metrics, registered in METRICS when int8tune.metrics is imported.

A metric compares the fp32 outputs with the int8 outputs of the same images and returns one number: `fp32` and
`int8` map output blob names to arrays (N, ...), `params` is the parsed --metric_params (plus "labels" and
"image_names" when the data list gives them). Users add their own in evaluation_utils.py or any file given with
--metric_module; these stay here so that the API and the CLI see the same names without importing user files.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..yolo import Detection, YoloParams, detections_of, mean_average_precision, yolo_difference
from .core import normalised_square, register_metric, squared_error_parts


@register_metric("square", "lower")
def square(fp32, int8, params):
    """Normalised squared distance, summed over output blobs:
    sum over blobs b of  w_b * sum((fp32_b - int8_b)^2) / sum(fp32_b^2)
    (a blob that is all zero in fp32 contributes its plain squared error). Scale-free, so layers and models of
    different magnitude are comparable; 0.01 means the error carries 1 % of the signal's energy. The weights w_b
    are 1, or --metric_params {"outputs": {"blob": weight, ...}} (a list of names: those outputs, weight 1):
    an output left out does not count."""
    weights = output_weights(params, fp32)
    return sum(w * normalised_square(*squared_error_parts(fp32[name], int8[name])) for name, w in weights.items())


def output_weights(params, outputs) -> dict[str, float]:
    """{output: weight} from --metric_params "outputs" (every output at weight 1 without it)."""
    chosen = params.get("outputs")
    if chosen is None:
        return {name: 1.0 for name in outputs}
    if isinstance(chosen, list):
        chosen = {name: 1.0 for name in chosen}
    if not isinstance(chosen, dict) or not chosen:
        raise ConfigError('--metric_params "outputs" must be a list of output names or an object {name: weight}, '
                          f"found {chosen!r}")
    unknown = [n for n in chosen if n not in outputs]
    if unknown:
        raise ConfigError(f'--metric_params "outputs": {", ".join(map(str, unknown))} are not outputs of the model; '
                          f"its outputs: {', '.join(outputs)}")
    bad = [n for n, w in chosen.items() if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0]
    if bad:
        raise ConfigError(f'--metric_params "outputs": the weight of {", ".join(bad)} must be a number >= 0')
    return {n: float(w) for n, w in chosen.items()}


@register_metric("yolo", "lower")
def yolo(fp32, int8, params):
    """YOLO head difference: each output feature map decoded into (box, objectness, class probabilities) per
    cell and anchor for fp32 and int8, paired, squared differences weighted toward cells where either model
    sees an object; summed over heads. Formula: int8tune.yolo.head_difference. Needs --metric_params (anchors,
    classes, input size, layout) or --yolo_cfg."""
    return yolo_difference(fp32, int8, _yolo_params(params))


@register_metric("yolo_map", "higher")
def yolo_map(fp32, int8, params):
    """Detection agreement: mAP@0.5 of the int8 detections with the fp32 detections as ground truth, after the
    confidence threshold and NMS of --metric_params (conf_threshold, nms_threshold, score)."""
    p = _yolo_params(params)
    return mean_average_precision(detections_of(fp32, p), detections_of(int8, p), 0.5)


# --- task metrics (higher is better) ---------------------------------------------------------------------
# With a labelled data list (`path label` / `path,label,`, or --dataset_file), params["labels"] holds the class
# of every image in order. Each has an "_agreement" twin that uses the fp32 prediction as the label instead, for
# unlabelled data. They read the model's first output as per-image class scores.


@register_metric("top1", "higher")
def top1(fp32, int8, params):
    """Top-1 accuracy of the int8 model on the labels."""
    return topk_accuracy(_scores(int8), _labels(params, "top1"), 1)


@register_metric("top5", "higher")
def top5(fp32, int8, params):
    """Top-5 accuracy of the int8 model on the labels."""
    return topk_accuracy(_scores(int8), _labels(params, "top5"), int(params.get("k", 5)))


@register_metric("top1_agreement", "higher")
def top1_agreement(fp32, int8, params):
    """Share of images whose int8 top-1 class is the fp32 top-1 class (no labels needed)."""
    return topk_accuracy(_scores(int8), _scores(fp32).argmax(axis=1), 1)


@register_metric("top5_agreement", "higher")
def top5_agreement(fp32, int8, params):
    """Share of images whose fp32 top-1 class is among the int8 top-5 (no labels needed)."""
    return topk_accuracy(_scores(int8), _scores(fp32).argmax(axis=1), int(params.get("k", 5)))


@register_metric("f1", "higher")
def f1(fp32, int8, params):
    """Macro-averaged F1 of the int8 top-1 predictions on the labels (classes present in labels or predictions)."""
    return macro_f1(_scores(int8).argmax(axis=1), _labels(params, "f1"))


@register_metric("f1_agreement", "higher")
def f1_agreement(fp32, int8, params):
    """Macro F1 of the int8 predictions against the fp32 predictions (no labels needed)."""
    return macro_f1(_scores(int8).argmax(axis=1), _scores(fp32).argmax(axis=1))


def _scores(outputs) -> np.ndarray:
    first = next(iter(outputs.values()))
    return np.asarray(first).reshape(len(first), -1)


def _labels(params, metric: str) -> np.ndarray:
    if "labels" not in params:
        raise ConfigError(f"metric {metric} needs labels: give a labelled data list (`path label` per line, or "
                          f"--dataset_file), or use {metric}_agreement to compare with the fp32 predictions")
    return np.asarray(params["labels"])


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def macro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    classes = np.union1d(pred, truth)
    scores = []
    for c in classes:
        tp = np.sum((pred == c) & (truth == c))
        fp = np.sum((pred == c) & (truth != c))
        fn = np.sum((pred != c) & (truth == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return float(np.mean(scores))


@register_metric("coco_map", "higher")
def coco_map(fp32, int8, params):
    """COCO mAP@[.5:.95] (pycocotools) of the int8 YOLO detections against a COCO annotation file:
    --metric_params '{"cfg": "model.cfg", "annotations": "instances.json", "category_ids": [...]}'; images are
    matched to the annotation file by file name."""
    from ..coco import coco_map as score

    if "annotations" not in params or "image_names" not in params:
        raise ConfigError("coco_map needs --metric_params annotations (a COCO json) and a data list of files")
    p = _yolo_params({k: v for k, v in params.items() if k not in ("annotations", "category_ids", "image_names")})
    return score(detections_of(int8, p), params["annotations"], list(params["image_names"]),
                 params.get("category_ids"))


@register_metric("coco_map_agreement", "higher")
def coco_map_agreement(fp32, int8, params):
    """COCO mAP@[.5:.95] of the int8 YOLO detections with the fp32 detections as ground truth (no labels)."""
    from ..coco import coco_map_agreement as score

    p = _yolo_params({k: v for k, v in params.items() if k not in ("annotations", "category_ids", "image_names")})
    return score(detections_of(fp32, p), detections_of(int8, p), p.input_size)


_PARSED: dict[str, YoloParams] = {}


def _yolo_params(params) -> YoloParams:
    params = {k: v for k, v in params.items() if k not in ("labels", "image_names", "outputs", "post_steps")}
    key = repr(sorted(params.items()))
    if key not in _PARSED:
        _PARSED[key] = YoloParams.from_dict(dict(params))
    return _PARSED[key]


@register_metric("ssd_map", "higher")
def ssd_map(fp32, int8, params):
    """Detection agreement of an SSD-style net (its DetectionOutput run after the graph): mAP@0.5 of the int8
    detections with the fp32 detections as ground truth, detections above --metric_params conf_threshold
    (default 0.5). No parameters needed: the net's own DetectionOutput (priors, NMS, top-k) decodes both."""
    threshold = float(params.get("conf_threshold", 0.5))
    return mean_average_precision(ssd_detections(fp32, params, threshold), ssd_detections(int8, params, threshold),
                                  0.5)


def ssd_detections(outputs, params, threshold: float) -> list[list[Detection]]:
    """Per image, the rows [image, label, score, box] the net's DetectionOutput writes, above `threshold`."""
    steps = params.get("post_steps") or []
    if not steps:
        raise ConfigError("ssd_map needs a net ending in DetectionOutput (an SSD-style detector); this one has none: "
                          "use square, or yolo/yolo_map for YOLO heads")
    values = dict(outputs)
    for step in steps:
        for name, array in zip(step.outputs, step.fn([values[i] for i in step.inputs])):
            values[name] = array
    rows = np.asarray(values[steps[-1].outputs[0]]).reshape(-1, 7)
    images = len(next(iter(outputs.values())))
    out: list[list[Detection]] = [[] for _ in range(images)]
    for image, label, score, *box in rows:
        if score > threshold and 0 <= int(image) < images:
            out[int(image)].append(Detection(int(label), float(score), tuple(float(b) for b in box)))
    return out
