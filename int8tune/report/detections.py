"""The detection-agreement lines of report.log for a detection metric (yolo, yolo_map, ssd_map, box_map): mAP@0.5
of each table's int8 detections against the fp32 detections, and the counts behind it (found, missed, extra, and
the images where they are).

A mAP figure over a handful of photos moves in steps of one detection: with 60 fp32 detections of which 39 sit
in one crowd photo, 0.95 and 0.98 are two faces apart. The counts let a reader see that, and how many of the
misses (extras) scored just above the confidence threshold in fp32 (int8): those turn on or off under the
smallest change of a score, the same table moved by a relative 1e-6 flips them (docs/tuning.md, Metrics).
"""

from __future__ import annotations

from typing import Callable, Sequence

__all__ = ["YOLO_METRICS", "agreement_lines", "detection_lines"]

from ..metrics.boxes import box_detections, box_params
from ..metrics.builtin import ssd_detections
from ..pipeline.tuning import YOLO_METRICS, Detections
from ..yolo import (
    MOVED_IOU,
    NEAR_THRESHOLD,
    YoloParams,
    detection_agreement,
    detections_of,
    drawn_off,
    mean_average_precision,
    near_threshold,
)

IOU = 0.5


def detection_lines(d: Detections | None, show: int = 5, kind: str = "") -> list[str]:
    """report lines of the detection agreement the pipeline measured (none for a metric that is not about
    detections)."""
    if d is None:
        return []
    params = dict(d.params)
    if d.metric == "ssd_map":
        threshold = float(params.get("conf_threshold", 0.5))
        return _lines(lambda out: ssd_detections(out, params, threshold), threshold,
                      "the net's own DetectionOutput", d.fp32, d.tested, list(d.names), show, kind)
    if d.metric == "box_map":
        p = box_params(params, d.fp32)
        return _lines(lambda out: box_detections(out, p), p.conf_threshold, f"NMS {p.nms_threshold}", d.fp32,
                      d.tested, list(d.names), show, kind)
    return agreement_lines(d.fp32, d.tested, YoloParams.from_dict(params), list(d.names), show, kind)


def agreement_lines(fp32: dict, tested: Sequence[tuple[str, dict]], yolo: YoloParams, names: list[str],
                    show: int = 5, kind: str = "") -> list[str]:
    """The lines for fp32 outputs and each (label, outputs of an int8 model), images in the order of `names`:
    mAP@0.5, totals, and the `show` images where the detections differ most. `kind` qualifies the images in the
    header ("tuning ", "held-out ")."""
    return _lines(lambda out: detections_of(out, yolo), yolo.conf_threshold, f"NMS {yolo.nms_threshold}", fp32,
                  tested, names, show, kind)


def _lines(decode: Callable[[dict], list], conf_threshold: float, decoding: str, fp32: dict,
           tested: Sequence[tuple[str, dict]], names: list[str], show: int, kind: str) -> list[str]:
    truth = decode(fp32)
    names = names + [f"image {i + 1}" for i in range(len(names), len(truth))]
    total = sum(len(t) for t in truth)
    busiest = max(range(len(truth)), key=lambda i: len(truth[i]), default=None)
    where = f", {len(truth[busiest])} of them on {names[busiest]}" if total else ""
    lines = ["", f"detection agreement with fp32 (score > {conf_threshold}, {decoding}; a hit "
                 f"is IoU >= {IOU} with an fp32 box of the same class): the fp32 model makes {total} detection(s) "
                 f"on {len(truth)} {kind}image(s){where}"]
    for label, outputs in tested:
        predicted = decode(outputs)
        per_image = detection_agreement(truth, predicted, IOU)
        found = sum(a.found for a in per_image)
        extra = sum(a.extra for a in per_image)
        near_missed = near_threshold([x for a in per_image for x in a.missed_scores], conf_threshold)
        near_extra = near_threshold([x for a in per_image for x in a.extra_scores], conf_threshold)
        off = drawn_off(per_image)
        near = ""
        if total - found or extra:
            near = (f"; near the threshold (score < {conf_threshold + NEAR_THRESHOLD:g}): {near_missed} of the "
                    f"misses, {near_extra} of the extra; drawn off (an int8 box of the class at IoU "
                    f"{MOVED_IOU:g}-{IOU:g}): {off} of the misses")
        lines.append(f"  {label}: mAP@0.5 {mean_average_precision(truth, predicted, IOU):.4f}; finds {found} of "
                     f"{total}, misses {total - found}, {extra} extra{near}")
        differing = sorted(((n, a) for n, a in zip(names, per_image) if a.missed or a.extra),
                           key=lambda na: -(na[1].missed + na[1].extra))
        for n, a in differing[:show]:
            lines.append(f"    {n}: finds {a.found} of {a.reference}, {a.extra} extra")
        if len(differing) > show:
            lines.append(f"    ... and {len(differing) - show} more image(s) that differ")
    return lines
