"""The SSD fork's layers (weiliu89/caffe, branch ssd): Normalize, PriorBox and DetectionOutput.

Normalize runs in the ONNX graph. PriorBox depends only on shapes, so it is computed here at conversion time and
emitted as a constant tensor named like its top. DetectionOutput (NMS, a row count known only at run time) runs
as a numpy post step. The math is in pure module-level functions (`normalize`, `prior_boxes`, `decode_boxes`,
`jaccard_overlap`, `nms`, `detection_output`); the converters only parse parameters and wire tensors.
`detection_rows` puts a DetectionOutput top (ours or OpenCV's) in a comparable form.

Sources of the formulas (cited below by the short name in brackets):
  [normalize] weiliu89/caffe src/caffe/layers/normalize_layer.cpp, Forward_cpu
  [priorbox]  weiliu89/caffe src/caffe/layers/prior_box_layer.cpp, LayerSetUp and Forward_cpu
  [detout]    weiliu89/caffe src/caffe/layers/detection_output_layer.cpp, LayerSetUp and Forward_cpu
  [bbox]      weiliu89/caffe src/caffe/util/bbox_util.cpp: DecodeBBox, BBoxSize, JaccardOverlap, GetMaxScoreIndex,
              ApplyNMSFast, GetLocPredictions, GetConfidenceScores, GetPriorBBoxes
  [cv-*]      opencv/opencv modules/dnn/src/layers/{normalize_bbox,prior_box,detection_output}_layer.cpp and
              modules/dnn/src/nms.inl.hpp (the `check` command's reference)

Caffe is followed where OpenCV (4.x, as installed) departs from it; the differences a comparison can meet:
  PriorBox: OpenCV clips when the prototxt omits `clip` (Caffe's default is false); OpenCV keeps fractional
    min_size/max_size (Caffe truncates them to int); OpenCV ignores img_size/img_h/img_w (always the size of the
    image bottom); OpenCV refuses a layer without `variance` (Caffe uses 0.1).
  DetectionOutput: OpenCV always returns (1, 1, keep_top_k * N, 7) padded with zero rows and all zeros when
    nothing is kept (Caffe returns (1, 1, num_kept, 7), or N rows [i, -1, -1, -1, -1, -1, -1] when nothing is kept
    in the whole batch); OpenCV 4.14 writes each image's rows by score across labels (Caffe: by label, then
    score); OpenCV's confidence_threshold defaults to 0 (Caffe: -FLT_MAX, every score), it ignores eta, reads
    CORNER_SIZE as CORNER, treats top_k 0 as "no limit" (Caffe keeps nothing), and wants a 1-channel prior blob
    when variance_encoded_in_target.
  Normalize: the same formula in both, but OpenCV fails on across_spatial with a per-channel scale (it expects
    one scale per C*H*W element there).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...errors import DataError, ModelError
from ...log import logger
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import enum_name

FLT_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------------------------------------------------
# Normalize
# ---------------------------------------------------------------------------------------------------------------

def normalize(x: np.ndarray, scale: np.ndarray, across_spatial: bool = True, eps: float = 1e-10) -> np.ndarray:
    """Caffe SSD's Normalize of an (N, C, ...) array; `scale` holds 1 value (channel_shared) or C values.

    [normalize]: per sample, across_spatial: norm = (sum over C,H,W of x^2 + eps)^0.5 and y = x * (1 / norm);
    otherwise, at each location: norm = (sum over C of x^2 + eps)^0.5 (norm_ is preset to eps, then the channel
    sum is added with beta 1) and y = x / norm. eps is inside the square root in both cases. Then y *= scale.
    """
    x = np.asarray(x, dtype=np.float32)
    axes = tuple(range(1, x.ndim)) if across_spatial else (1,)
    sq_sum = np.sum(x.astype(np.float64) ** 2, axis=axes, keepdims=True)
    norm = np.sqrt(sq_sum + eps)
    y = x * (1.0 / norm) if across_spatial else x / norm
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    if scale.size != 1:
        scale = scale.reshape((1, -1) + (1,) * (x.ndim - 2))
    return (y * scale).astype(np.float32)


@converter("Normalize")
def normalize_layer(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.norm_param
    shape = ctx.shapes[0]
    if not 2 <= len(shape) <= 4:
        # Caffe's NormalizeLayer reads channels()/height()/width(), the legacy accessors of blobs of 4 axes at most.
        raise ModelError(f"{ctx.layer.describe()}: Normalize needs a 2-D to 4-D input, found shape {shape}")
    channels = shape[1]
    scale = _normalize_scale(ctx, channels)
    x = ctx.inputs[0]
    eps = ctx.const("eps", float(p.eps))
    if p.across_spatial:
        sq_sum = ctx.node("ReduceSumSquare", [x], axes=list(range(1, len(shape))), keepdims=1)[0]
        norm = ctx.node("Sqrt", [ctx.node("Add", [sq_sum, eps])[0]])[0]
        # [normalize]: caffe_cpu_scale(dim, 1.0 / norm, x): a multiplication by the reciprocal.
        y = ctx.node("Mul", [x, ctx.node("Reciprocal", [norm])[0]])[0]
    else:
        sq_sum = ctx.node("ReduceSumSquare", [x], axes=[1], keepdims=1)[0]
        norm = ctx.node("Sqrt", [ctx.node("Add", [sq_sum, eps])[0]])[0]
        y = ctx.node("Div", [x, norm])[0]  # [normalize]: caffe_div(x, norm broadcast over channels)
    factor = scale.reshape(()) if scale.size == 1 else scale.reshape((channels,) + (1,) * (len(shape) - 2))
    ctx.node("Mul", [y, ctx.const("scale", factor)], ctx.outputs)
    return [shape]


def _normalize_scale(ctx: LayerContext, channels: int) -> np.ndarray:
    """The learned scale: 1 value when channel_shared, else one per channel ([normalize] LayerSetUp CHECK_EQs)."""
    p = ctx.param.norm_param
    expected = 1 if p.channel_shared else channels
    if not ctx.layer.blobs:
        # No caffemodel: Caffe fills the blob from scale_filler, by default the constant 1.0.
        filler = p.scale_filler
        if p.HasField("scale_filler") and filler.type != "constant":
            raise ModelError(f"{ctx.layer.describe()}: no learned scale in the caffemodel, and scale_filler "
                             f"{filler.type!r} is random; only a constant filler gives a reproducible scale")
        value = float(filler.value) if p.HasField("scale_filler") else 1.0
        return np.full(expected, value, dtype=np.float32)
    scale = np.asarray(ctx.weight(0, None, "scale"), dtype=np.float32).reshape(-1)
    if scale.size != expected:
        what = "channel_shared: true needs 1 value" if p.channel_shared else f"one value per channel ({channels})"
        raise ModelError(f"{ctx.layer.describe()}: the scale blob holds {scale.size} value(s); {what}")
    return scale


# ---------------------------------------------------------------------------------------------------------------
# PriorBox
# ---------------------------------------------------------------------------------------------------------------

def expand_aspect_ratios(aspect_ratios: Sequence[float], flip: bool) -> list[float]:
    """[priorbox] LayerSetUp: start from 1; add each ratio not within 1e-6 of one already present, and its
    reciprocal when flip. Values are float32 as in Caffe's vector<float>."""
    out = [np.float32(1.0)]
    for ar in aspect_ratios:
        ar = np.float32(ar)
        if any(abs(float(ar) - float(a)) < 1e-6 for a in out):
            continue
        out.append(ar)
        if flip:
            out.append(np.float32(1.0 / float(ar)))
    return [float(a) for a in out]


def num_priors(n_min_sizes: int, n_max_sizes: int, aspect_ratios: Sequence[float], flip: bool) -> int:
    """[priorbox]: num_priors_ = len(expanded aspect ratios) * len(min_size) + len(max_size)."""
    return len(expand_aspect_ratios(aspect_ratios, flip)) * n_min_sizes + n_max_sizes


def prior_boxes(layer_hw: tuple[int, int], image_hw: tuple[int, int], min_sizes: Sequence[float],
                max_sizes: Sequence[float] = (), aspect_ratios: Sequence[float] = (), flip: bool = True,
                clip: bool = False, variances: Sequence[float] = (), step_hw: tuple[float, float] = (0.0, 0.0),
                offset: float = 0.5) -> np.ndarray:
    """The PriorBox top, shape (1, 2, H*W*num_priors*4): channel 0 the boxes [xmin, ymin, xmax, ymax] normalised
    by the image size, channel 1 their variances. `image_hw` is img_h/img_w (or img_size) when given, else the
    image bottom's size; `step_hw` (0, 0) means image size / feature-map size.

    [priorbox] Forward_cpu, in its order: for each row h, column w, min_size s: the min_size square, then (with
    max_size) the sqrt(min_size * max_size) square, then each aspect ratio r != 1 (w = min_size * sqrt(r),
    h = min_size / sqrt(r)). Arithmetic as in the C++: min/max sizes truncated to int (`int min_size_ =
    min_sizes_[s]`), step and centres in float ((w + offset) * step_w), box sizes stored in float, coordinates
    (center - size / 2.) / img_width computed in double and stored in float; clip to [0, 1] when asked; variance
    0.1 when none is given, one value for all coordinates or one per coordinate.
    """
    layer_h, layer_w = (int(v) for v in layer_hw)
    img_h, img_w = (int(v) for v in image_hw)
    if step_hw[0] == 0 or step_hw[1] == 0:
        step_h = np.float32(np.float32(img_h) / np.float32(layer_h))
        step_w = np.float32(np.float32(img_w) / np.float32(layer_w))
    else:
        step_h, step_w = np.float32(step_hw[0]), np.float32(step_hw[1])
    ratios = [r for r in expand_aspect_ratios(aspect_ratios, flip) if abs(r - 1.0) >= 1e-6]
    sizes: list[tuple[float, float]] = []  # (width, height) of each prior of one location, in Caffe's order
    for s, min_size in enumerate(min_sizes):
        min_i = int(np.float32(min_size))  # C++ float -> int conversion truncates toward zero
        sizes.append((float(np.float32(min_i)), float(np.float32(min_i))))
        if len(max_sizes):
            side = float(np.float32(math.sqrt(min_i * int(np.float32(max_sizes[s])))))
            sizes.append((side, side))
        for r in ratios:
            sizes.append((float(np.float32(min_i * math.sqrt(r))), float(np.float32(min_i / math.sqrt(r)))))
    wh = np.asarray(sizes, dtype=np.float64)  # (P, 2)
    offset = np.float32(offset)
    cx = ((np.arange(layer_w, dtype=np.float32) + offset) * step_w).astype(np.float64)  # float in Caffe
    cy = ((np.arange(layer_h, dtype=np.float32) + offset) * step_h).astype(np.float64)
    cy_g, cx_g = np.meshgrid(cy, cx, indexing="ij")  # (H, W)
    cx_g, cy_g = cx_g[:, :, None], cy_g[:, :, None]
    boxes = np.stack([(cx_g - wh[:, 0] / 2.0) / img_w, (cy_g - wh[:, 1] / 2.0) / img_h,
                      (cx_g + wh[:, 0] / 2.0) / img_w, (cy_g + wh[:, 1] / 2.0) / img_h], axis=-1)
    boxes = boxes.astype(np.float32).reshape(-1)  # (H, W, P, 4) flattened: Caffe's idx order
    if clip:
        boxes = np.minimum(np.maximum(boxes, np.float32(0.0)), np.float32(1.0))
    variances = [float(v) for v in variances] or [0.1]
    if len(variances) == 1:
        var = np.full(boxes.size, variances[0], dtype=np.float32)
    else:
        var = np.tile(np.asarray(variances, dtype=np.float32), boxes.size // 4)
    return np.stack([boxes, var]).reshape(1, 2, boxes.size)


def _legacy_hw(shape: Shape) -> tuple[int, int]:
    """Blob::height()/width(): axes 2 and 3, 1 when the blob has fewer axes (at most 4 axes allowed)."""
    padded = tuple(shape) + (1,) * (4 - len(shape))
    return int(padded[2]), int(padded[3])


@converter("PriorBox")
def prior_box_layer(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(2)
    ctx.expect_tops(1)
    p = ctx.param.prior_box_param
    where = ctx.layer.describe()
    for name, shape in zip(ctx.inputs, ctx.shapes):
        if len(shape) > 4:
            raise ModelError(f"{where}: bottom {name!r} has shape {shape}; PriorBox reads the legacy height/width "
                             f"of blobs of at most 4 axes")
    # [priorbox] LayerSetUp checks, as errors that name the layer.
    min_sizes = [float(v) for v in p.min_size]
    max_sizes = [float(v) for v in p.max_size]
    if not min_sizes or any(v <= 0 for v in min_sizes):
        raise ModelError(f"{where}: PriorBox needs min_size, all positive; found {min_sizes}")
    if max_sizes and (len(max_sizes) != len(min_sizes) or any(b <= a for a, b in zip(min_sizes, max_sizes))):
        raise ModelError(f"{where}: max_size {max_sizes} must give one value per min_size {min_sizes}, each larger")
    if any(float(r) <= 0 for r in p.aspect_ratio):
        raise ModelError(f"{where}: aspect_ratio values must be positive, found {list(p.aspect_ratio)}")
    variances = [float(v) for v in p.variance]
    if len(variances) not in (0, 1, 4) or any(v <= 0 for v in variances):
        raise ModelError(f"{where}: variance must be absent, one positive value or four; found {variances}")
    if p.HasField("img_h") or p.HasField("img_w"):
        if p.HasField("img_size"):
            raise ModelError(f"{where}: give either img_size or img_h/img_w, not both")
        if p.img_h <= 0 or p.img_w <= 0:
            raise ModelError(f"{where}: img_h and img_w must both be given and positive ({p.img_h}, {p.img_w})")
        image_hw = (int(p.img_h), int(p.img_w))
    elif p.HasField("img_size"):
        if p.img_size <= 0:
            raise ModelError(f"{where}: img_size must be positive")
        image_hw = (int(p.img_size), int(p.img_size))
    else:
        image_hw = _legacy_hw(ctx.shapes[1])
    if p.HasField("step_h") or p.HasField("step_w"):
        if p.HasField("step"):
            raise ModelError(f"{where}: give either step or step_h/step_w, not both")
        if not (p.step_h > 0 and p.step_w > 0):
            raise ModelError(f"{where}: step_h and step_w must both be given and positive ({p.step_h}, {p.step_w})")
        step_hw = (float(p.step_h), float(p.step_w))
    elif p.HasField("step"):
        if not p.step > 0:
            raise ModelError(f"{where}: step must be positive")
        step_hw = (float(p.step), float(p.step))
    else:
        step_hw = (0.0, 0.0)
    layer_hw = _legacy_hw(ctx.shapes[0])
    priors = prior_boxes(layer_hw, image_hw, min_sizes, max_sizes, [float(r) for r in p.aspect_ratio],
                         flip=p.flip, clip=p.clip, variances=variances, step_hw=step_hw, offset=float(p.offset))
    # A constant, but a graph value named like the top (consumers, post steps and `check` look it up by name).
    ctx.identity(ctx.const("priors", priors), ctx.outputs[0])
    return [tuple(priors.shape)]


# ---------------------------------------------------------------------------------------------------------------
# DetectionOutput
# ---------------------------------------------------------------------------------------------------------------

class CodeType(enum.Enum):
    """PriorBoxParameter.CodeType."""

    CORNER = 1
    CENTER_SIZE = 2
    CORNER_SIZE = 3


@dataclass(frozen=True)
class DetectionSpec:
    """detection_output_param, with Caffe's defaults ([detout] LayerSetUp)."""

    num_classes: int
    share_location: bool = True
    background_label_id: int = 0
    code_type: CodeType = CodeType.CORNER
    variance_encoded_in_target: bool = False
    confidence_threshold: float = -FLT_MAX  # unset in the prototxt: -FLT_MAX, every score passes
    nms_threshold: float = 0.3
    top_k: int = -1  # unset: -1, no limit before NMS
    eta: float = 1.0
    keep_top_k: int = -1

    @property
    def num_loc_classes(self) -> int:
        return 1 if self.share_location else self.num_classes

    def max_rows_per_image(self, n_priors: int) -> int:
        """Upper bound of the rows one image contributes (the declared shape; the real count varies)."""
        per_class = n_priors if self.top_k < 0 else min(self.top_k, n_priors)
        classes = sum(1 for c in range(self.num_classes) if c != self.background_label_id)
        rows = per_class * classes
        return rows if self.keep_top_k < 0 else min(rows, self.keep_top_k)


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """[bbox] BBoxSize for normalised boxes: 0 when xmax < xmin or ymax < ymin, else width * height (float)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    valid = (boxes[..., 2] >= boxes[..., 0]) & (boxes[..., 3] >= boxes[..., 1])
    return np.where(valid, w * h, np.float32(0.0)).astype(np.float32)


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances: np.ndarray, code_type: CodeType,
                 variance_encoded_in_target: bool = False) -> np.ndarray:
    """Decode (P, 4) location predictions against (P, 4) priors [xmin, ymin, xmax, ymax] and their (P, 4)
    variances; float32 arithmetic in the C++ order. [bbox] DecodeBBox:

    CORNER:      prior + var * loc                     (var omitted when variance_encoded_in_target)
    CENTER_SIZE: pw = pxmax - pxmin, pcx = (pxmin + pxmax) / 2 (same for y);
                 cx = var0 * l0 * pw + pcx, w = exp(var2 * l2) * pw; box = cx -+ w / 2 (same for y)
    CORNER_SIZE: prior + var * loc * pw (x coordinates), * ph (y coordinates)
    No clipping: DetectionOutput calls DecodeBBoxesAll with clip_bbox = false ([detout] Forward_cpu).
    """
    loc = np.asarray(loc, dtype=np.float32).reshape(-1, 4)
    priors = np.asarray(priors, dtype=np.float32).reshape(-1, 4)
    variances = np.asarray(variances, dtype=np.float32).reshape(-1, 4)
    scaled = loc if variance_encoded_in_target else variances * loc
    if code_type is CodeType.CORNER:
        return (priors + scaled).astype(np.float32)
    pw = priors[:, 2] - priors[:, 0]
    ph = priors[:, 3] - priors[:, 1]
    if code_type is CodeType.CORNER_SIZE:
        size = np.stack([pw, ph, pw, ph], axis=1)
        return (priors + scaled * size).astype(np.float32)
    if code_type is not CodeType.CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type!r}")
    pcx = (priors[:, 0] + priors[:, 2]) / np.float32(2.0)
    pcy = (priors[:, 1] + priors[:, 3]) / np.float32(2.0)
    cx = scaled[:, 0] * pw + pcx
    cy = scaled[:, 1] * ph + pcy
    w = np.exp(scaled[:, 2]) * pw
    h = np.exp(scaled[:, 3]) * ph
    half_w, half_h = w / np.float32(2.0), h / np.float32(2.0)
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(np.float32)


def jaccard_overlap(box: np.ndarray, others: np.ndarray, box_size: np.float32 | None = None,
                    other_sizes: np.ndarray | None = None) -> np.ndarray:
    """IoU of one normalised box with each of `others` (K, 4). [bbox] JaccardOverlap: 0 when the boxes are
    disjoint (b2.xmin > b1.xmax, ...) or the intersection has no positive width/height, else
    inter / (size1 + size2 - inter), the sizes being BBoxSize of each box (0 for an inverted box), float32."""
    box = np.asarray(box, dtype=np.float32).reshape(4)
    others = np.asarray(others, dtype=np.float32).reshape(-1, 4)
    s1 = box_sizes(box[None])[0] if box_size is None else np.float32(box_size)
    s2 = box_sizes(others) if other_sizes is None else np.asarray(other_sizes, dtype=np.float32)
    disjoint = ((others[:, 0] > box[2]) | (others[:, 2] < box[0]) |
                (others[:, 1] > box[3]) | (others[:, 3] < box[1]))
    iw = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    ih = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    positive = ~disjoint & (iw > 0) & (ih > 0)
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / ((s1 + s2) - inter)
    return np.where(positive, iou, np.float32(0.0)).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float, top_k: int = -1,
        eta: float = 1.0, sizes: np.ndarray | None = None) -> np.ndarray:
    """Indices of the boxes kept, in the order kept (score descending). [bbox] ApplyNMSFast:

    candidates: scores > score_threshold, stably sorted by score descending, cut to top_k when top_k > -1
    (GetMaxScoreIndex); each candidate in turn is kept when its overlap with every box kept so far is
    <= the adaptive threshold; after each kept box, when eta < 1 and the threshold > 0.5, threshold *= eta.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"nms: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    sizes = box_sizes(boxes) if sizes is None else np.asarray(sizes, dtype=np.float32)
    candidates = np.flatnonzero(scores > np.float32(score_threshold))
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > -1:
        order = order[:top_k]
    threshold = np.float32(nms_threshold)
    eta = np.float32(eta)
    if not eta < 1:
        # Fixed threshold: "kept when overlap <= threshold with every kept box" equals "each kept box removes the
        # later candidates overlapping it by more" (the overlap is symmetric), which loops over kept boxes only.
        ordered, ordered_sizes = boxes[order], sizes[order]
        alive = np.ones(order.size, dtype=bool)
        for pos in range(order.size):
            if alive[pos]:
                later = pos + 1 + np.flatnonzero(alive[pos + 1:])
                overlap = jaccard_overlap(ordered[pos], ordered[later], ordered_sizes[pos], ordered_sizes[later])
                alive[later[overlap > threshold]] = False
        return order[alive].astype(np.int64)
    kept: list[int] = []
    for idx in order:
        keep = not kept or bool(np.all(jaccard_overlap(boxes[idx], boxes[kept], sizes[idx], sizes[kept])
                                       <= threshold))
        if keep:
            kept.append(int(idx))
            if eta < 1 and threshold > 0.5:
                threshold = np.float32(threshold * eta)
    return np.asarray(kept, dtype=np.int64)


def detection_output(loc: np.ndarray, conf: np.ndarray, prior: np.ndarray, spec: DetectionSpec) -> np.ndarray:
    """SSD's DetectionOutput forward for a batch of N images; returns (1, 1, rows, 7) float32 rows
    [image_id, label, score, xmin, ymin, xmax, ymax] (normalised, unclipped coordinates).

    loc (N, P * num_loc_classes * 4) and conf (N, P * num_classes) are read prior-major ([bbox]
    GetLocPredictions, GetConfidenceScores); prior (1, 2, P * 4) holds the boxes then the variances
    (GetPriorBBoxes). Per image ([detout] Forward_cpu): per non-background class, NMS of that class's scores
    over its boxes (the shared ones when share_location); when keep_top_k > -1 and more detections remain, the
    keep_top_k best over all classes (ties: stable order, label then NMS order; Caffe's std::sort leaves tie
    order unspecified). Rows are written by image, then label ascending, then score descending. When the
    whole batch keeps nothing: N rows [i, -1, -1, -1, -1, -1, -1].
    """
    loc = np.asarray(loc, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    prior = np.asarray(prior, dtype=np.float32)
    n = loc.shape[0]
    n_priors = _prior_count(prior.shape, spec.variance_encoded_in_target)
    loc = loc.reshape(n, n_priors, spec.num_loc_classes, 4)
    conf = conf.reshape(n, n_priors, spec.num_classes)
    flat_prior = prior.reshape(-1)
    priors = flat_prior[:n_priors * 4].reshape(n_priors, 4)
    if prior.shape[1] == 2:
        variances = flat_prior[n_priors * 4:n_priors * 8].reshape(n_priors, 4)
    else:  # variance_encoded_in_target: the variances are not used
        variances = np.ones((n_priors, 4), dtype=np.float32)
    rows: list[np.ndarray] = []
    for i in range(n):
        decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for c in range(spec.num_loc_classes):
            label = -1 if spec.share_location else c
            if label == spec.background_label_id:
                continue  # [bbox] DecodeBBoxesAll skips the background's location predictions
            boxes = decode_boxes(loc[i, :, c], priors, variances, spec.code_type, spec.variance_encoded_in_target)
            decoded[label] = (boxes, box_sizes(boxes))
        indices: dict[int, np.ndarray] = {}
        for c in range(spec.num_classes):
            if c == spec.background_label_id:
                continue
            boxes, sizes = decoded[-1 if spec.share_location else c]
            indices[c] = nms(boxes, conf[i, :, c], spec.confidence_threshold, spec.nms_threshold, spec.top_k,
                             spec.eta, sizes)
        num_det = sum(len(v) for v in indices.values())
        if spec.keep_top_k > -1 and num_det > spec.keep_top_k:
            labels = np.concatenate([np.full(len(v), c, dtype=np.int64) for c, v in sorted(indices.items())])
            idxs = np.concatenate([v for _, v in sorted(indices.items())])
            best = np.argsort(-conf[i, idxs, labels], kind="stable")[:spec.keep_top_k]
            indices = {}
            for label, idx in zip(labels[best], idxs[best]):  # per label, in descending score order
                indices.setdefault(int(label), []).append(int(idx))
        for label in sorted(indices):
            idx = np.asarray(indices[label], dtype=np.int64)
            if idx.size == 0:
                continue
            boxes = decoded[-1 if spec.share_location else label][0][idx]
            block = np.empty((idx.size, 7), dtype=np.float32)
            block[:, 0] = i
            block[:, 1] = label
            block[:, 2] = conf[i, idx, label]
            block[:, 3:] = boxes
            rows.append(block)
    if not rows:
        empty = np.full((n, 7), -1.0, dtype=np.float32)
        empty[:, 0] = np.arange(n)
        return empty.reshape(1, 1, n, 7)
    out = np.concatenate(rows)
    return out.reshape(1, 1, out.shape[0], 7)


def detection_rows(blob: np.ndarray, min_score: float = 0.0) -> np.ndarray:
    """The (K, 7) rows of a DetectionOutput top with score > min_score, in Caffe's order (image, label, score
    descending). Makes our top comparable with OpenCV's, which is zero-padded to keep_top_k * N rows and ordered
    by score within an image; Caffe's "nothing kept" rows (score -1) drop out as well."""
    rows = np.asarray(blob, dtype=np.float32).reshape(-1, 7)
    rows = rows[rows[:, 2] > min_score]
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


def _prior_count(prior_shape: Shape, variance_encoded_in_target: bool) -> int:
    """[detout] Reshape: num_priors_ = bottom[2]->height() / 4, height() being axis 2 of the (1, 2, P*4) blob.
    Caffe reads the variances (channel 1) in any case ([bbox] GetPriorBBoxes) but only uses them when they are not
    encoded in the target; then a 1-channel prior blob (what OpenCV requires in that case) is accepted."""
    channels = (1, 2) if variance_encoded_in_target else (2,)
    if len(prior_shape) < 3 or prior_shape[1] not in channels or prior_shape[2] % 4:
        raise ValueError(f"prior blob of shape {tuple(prior_shape)}; expected (1, 2, num_priors * 4)")
    return int(prior_shape[2]) // 4


def detection_spec(param, where: str) -> DetectionSpec:
    """detection_output_param -> DetectionSpec, with [detout] LayerSetUp's checks as errors naming the layer."""
    if not param.HasField("num_classes") or param.num_classes < 1:
        raise ModelError(f"{where}: DetectionOutput needs num_classes (at least 1)")
    nms_param = param.nms_param
    spec = DetectionSpec(
        num_classes=int(param.num_classes),
        share_location=bool(param.share_location),
        background_label_id=int(param.background_label_id),
        code_type=CodeType[enum_name(param, "code_type")],
        variance_encoded_in_target=bool(param.variance_encoded_in_target),
        confidence_threshold=float(param.confidence_threshold) if param.HasField("confidence_threshold")
        else -FLT_MAX,
        nms_threshold=float(nms_param.nms_threshold),
        top_k=int(nms_param.top_k) if nms_param.HasField("top_k") else -1,
        eta=float(nms_param.eta),
        keep_top_k=int(param.keep_top_k),
    )
    if spec.nms_threshold < 0:
        raise ModelError(f"{where}: nms_threshold must be >= 0, found {spec.nms_threshold}")
    if not 0 < spec.eta <= 1:
        raise ModelError(f"{where}: eta must be in (0, 1], found {spec.eta}")
    if spec.share_location and spec.background_label_id == -1:
        # [bbox] DecodeBBoxesAll skips loc label -1 when it equals background_label_id, then Forward_cpu finds
        # no shared boxes and stops (LOG(FATAL)); OpenCV fails the same way.
        raise ModelError(f"{where}: share_location with background_label_id -1 makes Caffe's DetectionOutput "
                         f"fail (the shared boxes, label -1, are skipped as background)")
    return spec


@converter("DetectionOutput")
def detection_output_layer(ctx: LayerContext) -> list[Shape]:
    """A numpy post step. Declared top shape: (1, 1, max_rows, 7), max_rows the most rows the batch can give
    (N * min(keep_top_k, classes * min(top_k, P))); at run time the row count is what Caffe writes."""
    ctx.expect_bottoms(3)
    ctx.expect_tops(1)
    where = ctx.layer.describe()
    spec = detection_spec(ctx.param.detection_output_param, where)
    p = ctx.param.detection_output_param
    if p.save_output_param.output_directory or p.visualize:
        logger.info("%s: save_output_param/visualize write files or windows in Caffe; not reproduced (the top is "
                    "unaffected)", where)
    loc_shape, conf_shape, prior_shape = ctx.shapes
    try:
        n_priors = _prior_count(prior_shape, spec.variance_encoded_in_target)
    except ValueError as e:
        raise ModelError(f"{where}: bottom {ctx.inputs[2]!r}: {e}") from e
    n = loc_shape[0]
    loc_count = int(np.prod(loc_shape[1:]))
    conf_count = int(np.prod(conf_shape[1:]))
    if loc_count != n_priors * spec.num_loc_classes * 4:
        raise ModelError(f"{where}: location bottom {ctx.inputs[0]!r} {loc_shape} holds {loc_count} values per "
                         f"image; {n_priors} priors x {spec.num_loc_classes} location classes x 4 expected")
    if conf_count != n_priors * spec.num_classes or conf_shape[0] != n:
        raise ModelError(f"{where}: confidence bottom {ctx.inputs[1]!r} {conf_shape} should hold {n} image(s) of "
                         f"{n_priors} priors x {spec.num_classes} classes")
    ctx.post_step(functools.partial(_run_detection_output, spec=spec, where=where))
    return [(1, 1, max(n * spec.max_rows_per_image(n_priors), n), 7)]


def _run_detection_output(inputs: list[np.ndarray], spec: DetectionSpec, where: str) -> list[np.ndarray]:
    """The post step: validate what the graph produced, then `detection_output`."""
    loc, conf, prior = (np.asarray(a) for a in inputs)
    n = loc.shape[0]
    try:
        n_priors = _prior_count(prior.shape, spec.variance_encoded_in_target)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from e
    if conf.shape[0] != n or loc.size != n * n_priors * spec.num_loc_classes * 4 or \
            conf.size != n * n_priors * spec.num_classes:
        raise DataError(f"{where}: inputs of shapes {loc.shape}, {conf.shape}, {prior.shape} do not match "
                        f"{n_priors} priors, {spec.num_classes} classes")
    return [detection_output(loc, conf, prior, spec)]
