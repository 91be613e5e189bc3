"""box_map: detection agreement of nets that output per-anchor boxes and class scores (UltraFace-style)."""

from __future__ import annotations

import numpy as np
import pytest

from int8tune.errors import ConfigError
from int8tune.metrics import METRICS
from int8tune.metrics.boxes import _generated_priors, box_detections, box_params

ULTRAFACE = {"image_size": [320, 240], "strides": [8, 16, 32, 64],
             "min_boxes": [[10, 16, 24], [32, 48], [64, 96], [128, 192, 256]]}


def outputs(n=2, anchors=50, faces=((3, 0.9), (17, 0.8), (40, 0.7)), seed=0):
    """Two classes (background, face); a few confident anchors with distinct boxes; everything else background."""
    rng = np.random.default_rng(seed)
    scores = np.zeros((n, anchors, 2), np.float32)
    scores[..., 0] = 1.0
    cx, cy = rng.uniform(0.1, 0.9, (2, n, anchors))
    boxes = np.stack([cx - 0.05, cy - 0.05, cx + 0.05, cy + 0.05], axis=2).astype(np.float32)
    for image in range(n):
        for a, s in faces:
            scores[image, a] = (1 - s, s)
    return {"boxes": boxes, "scores": scores}


def test_identical_outputs_agree_fully_and_each_loss_costs():
    metric = METRICS.get("box_map")
    ref = outputs()
    assert metric(ref, ref, {}) == 1.0  # boxes and scores guessed from the shapes
    lost = {k: v.copy() for k, v in ref.items()}
    lost["scores"][0, 17] = (0.7, 0.3)  # one face of image 0 falls below conf_threshold
    moved = {k: v.copy() for k, v in ref.items()}
    moved["boxes"][1, 3] += 0.08  # one box drawn off (IoU < 0.5)
    extra = {k: v.copy() for k, v in ref.items()}
    extra["scores"][0, 25] = (0.1, 0.9)  # a face int8 sees and fp32 does not
    for worse in (lost, moved, extra):
        assert metric(ref, worse, {}) < 1.0
    assert metric.higher_is_better


def test_ssd_regressions_decode_against_ultraface_priors():
    priors = _generated_priors((320, 240), (8, 16, 32, 64), ((10, 16, 24), (32, 48), (64, 96), (128, 192, 256)))
    assert priors.shape == (4420, 4)  # RFB-320's anchor count
    np.testing.assert_allclose(priors[0], [4 / 320, 4 / 240, 10 / 320, 10 / 240])
    loc = np.zeros((1, 4420, 4), np.float32)
    scores = np.zeros((1, 4420, 2), np.float32)
    scores[..., 0] = 1
    scores[0, 100] = (0.05, 0.95)
    p = box_params({"box_format": "ssd", "priors": ULTRAFACE}, {"boxes": loc, "scores": scores})
    (det,), = box_detections({"boxes": loc, "scores": scores}, p)
    cx, cy, w, h = priors[100]
    np.testing.assert_allclose(det.box, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6)
    # a regression of (1, 0, 0, 0) moves the centre by variance 0.1 times the prior's width
    loc[0, 100, 0] = 1.0
    (moved,), = box_detections({"boxes": loc, "scores": scores}, p)
    assert moved.box[0] - det.box[0] == pytest.approx(0.1 * w)


@pytest.mark.parametrize("params, words", [
    ({"boxes": "nope", "scores": "scores"}, "'nope' is not an output"),
    ({"box_format": "yolo"}, "box_format"),
    ({"box_format": "ssd"}, "needs --metric_params \"priors\""),
    ({"box_format": "ssd", "priors": ULTRAFACE}, "4420"),  # priors for another anchor count
    ({"background": 5}, "background"),
])
def test_bad_params_are_refused_naming_what_is_wrong(params, words):
    with pytest.raises(ConfigError, match=words):
        box_params(params, outputs())


def test_ambiguous_outputs_ask_for_names():
    out = outputs()
    out["boxes2"] = out["boxes"].copy()
    with pytest.raises(ConfigError, match="boxes.*scores.*the model's outputs"):
        box_params({}, out)
