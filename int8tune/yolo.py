"""YOLO output decoding (darknet's [yolo] and [region] layers), detection post-processing and mAP@0.5.

Layout of one head's feature map (N, A*(5+C), H, W): channel = anchor*(5+C) + field, fields tx, ty, tw, th,
objectness, C class logits. Decode (darknet's yolo_layer.c, get_yolo_box; `scale_x_y` from the .cfg, 1 if
absent):
    x = (sigmoid(tx)*s - (s-1)/2 + col) / W          y = (sigmoid(ty)*s - (s-1)/2 + row) / H
    w = anchor_w * exp(tw) / input_w                h = anchor_h * exp(th) / input_h
    objectness = sigmoid(t4), class probabilities = sigmoid(logits)           (v3 "yolo" layout)
The v2 "region" layout uses anchors in grid units (w = anchor_w * exp(tw) / W) and a softmax over classes.
Boxes are (cx, cy, w, h) normalised to the network input. Pure functions: arrays in, arrays out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class YoloHead:
    blob: str  # the Caffe output blob holding this head's feature map
    anchors: tuple[tuple[float, float], ...]  # (w, h) in input pixels (v3) or grid cells (v2)
    classes: int
    layout: str = "v3"  # "v3" ([yolo]) or "v2" ([region])
    scale_x_y: float = 1.0


def parse_darknet_cfg(path: str | Path) -> tuple[list[YoloHead], tuple[int, int]]:
    """The YOLO heads of a darknet .cfg and its input size (w, h). darknet2caffe numbers the layers after
    [net] from 1 and names the convolution's blob `layer<k>-conv`, so the head at 0-based index i reads
    `layer<i>-conv` (the convolution just before it); that is the blob name given to each head."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"--yolo_cfg {path}: cannot read ({e})") from e
    sections: list[tuple[str, dict[str, str]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{path}:{lineno}: malformed section header {raw!r}")
            sections.append((line[1:-1].strip(), {}))
        elif "=" in line:
            if not sections:
                raise ConfigError(f"{path}:{lineno}: option before any [section]")
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
    if not sections or sections[0][0] not in ("net", "network"):
        raise ConfigError(f"{path}: expected a darknet .cfg starting with [net]")
    net = sections[0][1]
    size = (int(net.get("width", 0)), int(net.get("height", 0)))
    heads = []
    for index, (name, opts) in enumerate(sections[1:]):
        if name not in ("yolo", "region"):
            continue
        values = [float(v) for v in re.split(r"[,\s]+", opts.get("anchors", "").strip()) if v]
        pairs = list(zip(values[::2], values[1::2]))
        if name == "yolo":
            mask = [int(m) for m in opts.get("mask", ",".join(map(str, range(len(pairs))))).split(",") if m.strip()]
            chosen = tuple(pairs[m] for m in mask)
        else:
            chosen = tuple(pairs)
        heads.append(YoloHead(blob=f"layer{index}-conv", anchors=chosen, classes=int(opts.get("classes", 80)),
                              layout="v3" if name == "yolo" else "v2",
                              scale_x_y=float(opts.get("scale_x_y", 1.0))))
    if not heads:
        raise ConfigError(f"{path}: no [yolo] or [region] section")
    return heads, size


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def decode_head(feature: np.ndarray, head: YoloHead, input_size: tuple[int, int]):
    """(boxes (N, K, 4) cx,cy,w,h normalised; objectness (N, K); class probabilities (N, K, C)),
    K = anchors*H*W in (anchor, row, col) order, so fp32 and int8 decodes pair element by element."""
    n, channels, gh, gw = feature.shape
    a, c = len(head.anchors), head.classes
    if channels != a * (5 + c):
        raise ConfigError(f"blob {head.blob!r} has {channels} channels; {a} anchors x (5 + {c} classes) = "
                          f"{a * (5 + c)} expected")
    t = feature.reshape(n, a, 5 + c, gh, gw).astype(np.float64)
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    s = head.scale_x_y
    x = (_sigmoid(t[:, :, 0]) * s - (s - 1) / 2 + cols) / gw
    y = (_sigmoid(t[:, :, 1]) * s - (s - 1) / 2 + rows) / gh
    anchors = np.asarray(head.anchors, dtype=np.float64)
    if head.layout == "v3":
        w = anchors[:, 0, None, None] * np.exp(t[:, :, 2]) / input_size[0]
        h = anchors[:, 1, None, None] * np.exp(t[:, :, 3]) / input_size[1]
        probs = _sigmoid(t[:, :, 5:])
    else:
        w = anchors[:, 0, None, None] * np.exp(t[:, :, 2]) / gw
        h = anchors[:, 1, None, None] * np.exp(t[:, :, 3]) / gh
        logits = t[:, :, 5:] - t[:, :, 5:].max(axis=2, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    obj = _sigmoid(t[:, :, 4])
    boxes = np.stack([x, y, w, h], axis=-1).reshape(n, a * gh * gw, 4)
    return boxes, obj.reshape(n, -1), probs.transpose(0, 1, 3, 4, 2).reshape(n, a * gh * gw, c)


@dataclass(frozen=True)
class Detection:
    label: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 normalised


def iou_xyxy(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS: indices kept, highest score first (ties by index, for determinism)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        overlap = iou_xyxy(boxes[i], boxes[order[1:]])
        order = order[1:][overlap <= threshold]
    return keep


def detect(heads_out: list[tuple[np.ndarray, np.ndarray, np.ndarray]], conf_threshold: float = 0.5,
           nms_threshold: float = 0.45, score: str = "class") -> list[list[Detection]]:
    """Per image: thresholded candidates, NMS per class, sorted by score.

    score "class": one candidate per class with objectness * class probability > conf_threshold (darknet);
    score "objectness": one candidate per box, its best class, scored and thresholded by objectness alone
    (what the MobileNet-YOLO authors' demo does)."""
    if score not in ("class", "objectness"):
        raise ConfigError(f"detection score must be 'class' or 'objectness', found {score!r}")
    n = heads_out[0][0].shape[0]
    results = []
    for i in range(n):
        boxes = np.concatenate([h[0][i] for h in heads_out])
        obj = np.concatenate([h[1][i] for h in heads_out])
        probs = np.concatenate([h[2][i] for h in heads_out])
        if score == "class":
            scores = obj[:, None] * probs
        else:
            scores = np.zeros_like(probs)
            best = probs.argmax(axis=1)
            scores[np.arange(len(best)), best] = obj
        xyxy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                         boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], axis=1)
        dets: list[Detection] = []
        for label in range(scores.shape[1]):
            idx = np.nonzero(scores[:, label] > conf_threshold)[0]
            if idx.size == 0:
                continue
            for k in nms(xyxy[idx], scores[idx, label], nms_threshold):
                j = idx[k]
                dets.append(Detection(label, float(scores[j, label]), tuple(float(v) for v in xyxy[j])))
        dets.sort(key=lambda d: -d.score)
        results.append(dets)
    return results


# --- configuration of the YOLO metrics ------------------------------------------------------------------

@dataclass(frozen=True)
class YoloParams:
    heads: tuple[YoloHead, ...]
    input_size: tuple[int, int]  # (w, h) of the network input
    conf_threshold: float = 0.5
    nms_threshold: float = 0.45
    score: str = "class"  # "class" (objectness * class probability) or "objectness"
    background_weight: float = 0.01  # weight of cells where neither model sees an object (see head_difference)

    @staticmethod
    def from_dict(params: dict, source: str = "--metric_params") -> "YoloParams":
        """From `--metric_params` JSON: {"heads": [{"blob": ..., "anchors": [[w, h], ...], "classes": C,
        "layout": "v3", "scale_x_y": 1.0}], "input_size": [w, h], "conf_threshold": 0.5, ...}, or
        {"cfg": "model.cfg", ...} to read the heads and input size from a darknet .cfg."""
        known = {"heads", "input_size", "conf_threshold", "nms_threshold", "score", "background_weight", "cfg",
                 "classes", "layout"}
        unknown = set(params) - known
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                              f"valid: {', '.join(sorted(known))}")
        if "cfg" in params:
            heads, size = parse_darknet_cfg(params["cfg"])
        else:
            if "heads" not in params or "input_size" not in params:
                raise ConfigError(f"{source}: the yolo metric needs 'heads' and 'input_size' (or 'cfg', or --yolo_cfg)")
            heads, size = [], tuple(int(v) for v in params["input_size"])
            for i, h in enumerate(params["heads"]):
                try:
                    heads.append(YoloHead(blob=str(h["blob"]), anchors=tuple((float(a[0]), float(a[1]))
                                                                            for a in h["anchors"]),
                                          classes=int(h.get("classes", params.get("classes", 80))),
                                          layout=str(h.get("layout", params.get("layout", "v3"))),
                                          scale_x_y=float(h.get("scale_x_y", 1.0))))
                except (KeyError, TypeError, ValueError, IndexError) as e:
                    raise ConfigError(f"{source}: heads[{i}] needs 'blob' and 'anchors' [[w, h], ...] ({e})") from e
        for h in heads:
            if h.layout not in ("v2", "v3"):
                raise ConfigError(f"{source}: head {h.blob!r} layout must be 'v2' or 'v3', found {h.layout!r}")
        return YoloParams(tuple(heads), (int(size[0]), int(size[1])),
                          conf_threshold=float(params.get("conf_threshold", 0.5)),
                          nms_threshold=float(params.get("nms_threshold", 0.45)),
                          score=str(params.get("score", "class")),
                          background_weight=float(params.get("background_weight", 0.01)))


def head_difference(ref, test, background_weight: float) -> float:
    """Paired (cell, anchor) difference of two decoded heads (boxes, objectness, class probabilities):

        D = sum_k w_k * ( |b_k - b'_k|^2 + (o_k - o'_k)^2 + sum_c (p_kc - p'_kc)^2 ) / sum_k w_k
        w_k = max(o_k, o'_k) + background_weight

    with b = (cx, cy, sqrt(w), sqrt(h)) normalised to the input (square roots as in the YOLO loss, so small
    boxes count), o the objectness and p the class probabilities; primes are int8. The weight concentrates on
    cells where either model sees an object (a box lost by int8 and a box it invents both count)."""
    (b1, o1, p1), (b2, o2, p2) = ref, test
    def geo(b):
        return np.concatenate([b[..., :2], np.sqrt(np.clip(b[..., 2:], 0, None))], axis=-1)
    w = np.maximum(o1, o2) + background_weight
    per_cell = ((geo(b1) - geo(b2)) ** 2).sum(-1) + (o1 - o2) ** 2 + ((p1 - p2) ** 2).sum(-1)
    return float((w * per_cell).sum() / w.sum())


# The tuner scores hundreds of candidates against the same fp32 reference arrays: their decode is kept for the
# last few reference arrays seen (by identity; the array itself is held so that its id cannot be reused).
_REFERENCE_DECODES: dict[tuple[int, YoloHead, tuple[int, int]], tuple[np.ndarray, tuple]] = {}
_MAX_REFERENCE_DECODES = 8


def _decode_reference(feature: np.ndarray, head: YoloHead, input_size: tuple[int, int]):
    key = (id(feature), head, input_size)
    hit = _REFERENCE_DECODES.get(key)
    if hit is not None and hit[0] is feature:
        return hit[1]
    decoded = decode_head(feature, head, input_size)
    if len(_REFERENCE_DECODES) >= _MAX_REFERENCE_DECODES:
        _REFERENCE_DECODES.pop(next(iter(_REFERENCE_DECODES)))
    _REFERENCE_DECODES[key] = (feature, decoded)
    return decoded


def yolo_difference(fp32: dict, int8: dict, params: YoloParams) -> float:
    """Sum over heads of head_difference."""
    total = 0.0
    for head in params.heads:
        if head.blob not in fp32:
            raise ConfigError(f"yolo metric: head blob {head.blob!r} is not among the model outputs "
                              f"({', '.join(fp32)})")
        total += head_difference(_decode_reference(fp32[head.blob], head, params.input_size),
                                 decode_head(int8[head.blob], head, params.input_size), params.background_weight)
    return total


def detections_of(outputs: dict, params: YoloParams) -> list[list[Detection]]:
    return detect([decode_head(outputs[h.blob], h, params.input_size) for h in params.heads],
                  params.conf_threshold, params.nms_threshold, params.score)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC (2010+) all-point interpolated AP."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.nonzero(r[1:] != r[:-1])[0]
    return float(((r[idx + 1] - r[idx]) * p[idx + 1]).sum())


# A detection whose score is within this of the confidence threshold is "near the threshold": a change of the
# score this small (int8 rounding makes such changes) turns it on or off, so missing or adding it says little
# about a table (docs/tuning.md, Metrics).
NEAR_THRESHOLD = 0.1
# A missed reference box with a tested box of its class at least this close (IoU, below the hit threshold) is
# "drawn off": found a little off rather than lost.
MOVED_IOU = 0.3


@dataclass(frozen=True)
class Agreement:
    """One image's detections of a model under test against reference (fp32) detections."""
    reference: int  # reference detections
    found: int  # reference detections the tested model also makes (IoU >= threshold, same class)
    extra: int  # tested detections that match no reference detection
    missed_scores: tuple[float, ...] = ()  # the reference scores of the missed reference detections
    extra_scores: tuple[float, ...] = ()  # the scores of the extra detections
    # per missed reference detection, the largest IoU of a tested box of its class (0: none): a miss at IoU 0.4 is
    # a box drawn a little off, not a lost object
    missed_ious: tuple[float, ...] = ()

    @property
    def missed(self) -> int:
        return self.reference - self.found


def near_threshold(scores, conf_threshold: float, margin: float = NEAR_THRESHOLD) -> int:
    """How many of `scores` lie below conf_threshold + margin (all of them are above the threshold)."""
    return sum(1 for s in scores if s < conf_threshold + margin)


def drawn_off(agreements, moved_iou: float = MOVED_IOU) -> int:
    """How many missed reference detections of `agreements` have a tested box of their class at IoU >= moved_iou."""
    return sum(1 for a in agreements for iou in a.missed_ious if iou >= moved_iou)


def detection_agreement(truth: list[list[Detection]], predicted: list[list[Detection]],
                        iou_threshold: float = 0.5) -> list[Agreement]:
    """Per image, how many of the `truth` detections `predicted` reproduces, with the matching of
    mean_average_precision (VOC): each predicted box, highest score first, is a hit when the truth box of its
    class it overlaps most has IoU >= iou_threshold and no earlier hit. Counts say what a mAP figure hides:
    0.95 can be one missed face of twenty. The scores of the misses and extras say whether they sat at the
    confidence threshold."""
    out = []
    for gt, pred in zip(truth, predicted, strict=True):
        used = np.zeros(len(gt), bool)
        extra = []
        for d in sorted(pred, key=lambda d: -d.score):
            same = [j for j, g in enumerate(gt) if g.label == d.label]
            hit = False
            if same:
                ious = iou_xyxy(np.asarray(d.box), np.asarray([gt[j].box for j in same]))
                k = int(np.argmax(ious))
                if ious[k] >= iou_threshold and not used[same[k]]:
                    used[same[k]] = True
                    hit = True
            if not hit:
                extra.append(float(d.score))
        found = int(used.sum())
        missed = [g for g, u in zip(gt, used) if not u]
        ious = []
        for g in missed:
            boxes = [d.box for d in pred if d.label == g.label]
            ious.append(float(iou_xyxy(np.asarray(g.box), np.asarray(boxes)).max()) if boxes else 0.0)
        out.append(Agreement(len(gt), found, len(pred) - found, tuple(float(g.score) for g in missed), tuple(extra),
                             tuple(ious)))
    return out


def mean_average_precision(truth: list[list[Detection]], predicted: list[list[Detection]],
                           iou_threshold: float = 0.5) -> float:
    """mAP@iou of `predicted` against `truth` (per image lists), classes = those present in the truth.
    With the fp32 detections as truth this is the detection agreement of an int8 model. No truth at all: 1.0
    if nothing is predicted either, else 0.0."""
    classes = sorted({d.label for dets in truth for d in dets})
    if not classes:
        return 1.0 if not any(predicted) else 0.0
    aps = []
    for c in classes:
        gt = [[d for d in dets if d.label == c] for dets in truth]
        n_gt = sum(len(g) for g in gt)
        preds = sorted(((d.score, i, d) for i, dets in enumerate(predicted) for d in dets if d.label == c),
                       key=lambda t: -t[0])
        used = [np.zeros(len(g), bool) for g in gt]
        tp = np.zeros(len(preds))
        for k, (_, i, d) in enumerate(preds):
            if not gt[i]:
                continue
            ious = iou_xyxy(np.asarray(d.box), np.asarray([g.box for g in gt[i]]))
            j = int(np.argmax(ious))
            if ious[j] >= iou_threshold and not used[i][j]:
                used[i][j] = True
                tp[k] = 1
        cum_tp = np.cumsum(tp)
        recall = cum_tp / n_gt
        precision = cum_tp / np.arange(1, len(preds) + 1) if preds else np.zeros(0)
        aps.append(average_precision(recall, precision) if preds else 0.0)
    return float(np.mean(aps))
