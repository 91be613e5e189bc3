"""COCO mAP (pycocotools' COCOeval, mAP@[.5:.95]) of YOLO detections, against a COCO annotation file or against
the fp32 model's own detections (agreement, for unlabelled images).

Boxes are decoded with int8tune.yolo (normalised to the network input) and scaled to pixels with each image's
width and height from the annotation file (images matched by `file_name`), or to the network input size for
the agreement variant. Class index c maps to COCO category `category_ids[c]` (default c + 1).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from .errors import ConfigError
from .yolo import Detection


def _evaluate(ground_truth: dict, results: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(max(ev.stats[0], 0.0))  # -1 when there is no ground truth


def _result_rows(dets: list[list[Detection]], image_ids: list[int], sizes: list[tuple[int, int]],
                 category_ids: list[int]) -> list[dict]:
    rows = []
    for image_id, (w, h), image_dets in zip(image_ids, sizes, dets):
        for d in image_dets:
            x1, y1, x2, y2 = d.box
            rows.append({"image_id": image_id, "category_id": category_ids[d.label], "score": d.score,
                         "bbox": [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h]})
    return rows


def coco_map(dets: list[list[Detection]], annotations: str | Path, image_names: list[str],
             category_ids: list[int] | None = None) -> float:
    try:
        data = json.loads(Path(annotations).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"COCO annotations {annotations}: cannot read ({e})") from e
    by_name = {Path(im["file_name"]).name: im for im in data.get("images", [])}
    missing = [n for n in image_names if Path(n).name not in by_name]
    if missing:
        raise ConfigError(f"COCO annotations {annotations} have no image entry for {', '.join(missing[:5])}")
    images = [by_name[Path(n).name] for n in image_names]
    wanted = {im["id"] for im in images}
    gt = {"images": images, "categories": data.get("categories", []),
          "annotations": [a for a in data.get("annotations", []) if a["image_id"] in wanted]}
    classes = 1 + max((d.label for image in dets for d in image), default=0)
    cats = category_ids or list(range(1, classes + 1))
    return _evaluate(gt, _result_rows(dets, [im["id"] for im in images],
                                      [(im["width"], im["height"]) for im in images], cats))


def coco_map_agreement(truth: list[list[Detection]], dets: list[list[Detection]], size: tuple[int, int]) -> float:
    """COCO mAP of `dets` with `truth` (the fp32 detections) as ground truth; 1.0 when both are empty."""
    classes = 1 + max((d.label for image in truth + dets for d in image), default=0)
    cats = list(range(1, classes + 1))
    w, h = size
    annotations, k = [], 1
    for i, image in enumerate(truth):
        for d in image:
            x1, y1, x2, y2 = d.box
            bw, bh = (x2 - x1) * w, (y2 - y1) * h
            annotations.append({"id": k, "image_id": i + 1, "category_id": cats[d.label], "iscrowd": 0,
                                "area": float(bw * bh), "bbox": [x1 * w, y1 * h, bw, bh]})
            k += 1
    if not annotations:
        return 1.0 if not any(dets) else 0.0
    gt = {"images": [{"id": i + 1, "width": w, "height": h} for i in range(len(truth))],
          "categories": [{"id": c} for c in cats], "annotations": annotations}
    return _evaluate(gt, _result_rows(dets, list(range(1, len(dets) + 1)), [size] * len(dets), cats))

