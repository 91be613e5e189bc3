"""The SSD fork's layers (int8tune/convert/layers/ssd.py).

(a) The pure functions on hand-computed values: a 2x2 PriorBox, decodes of a known box, NMS on overlapping
    boxes (plain and adaptive), keep_top_k, the empty result.
(b) The converters on tiny synthetic nets, against OpenCV's Caffe importer with settings where OpenCV and Caffe
    agree (see the module docstring of ssd.py for where they do not).
(c) Fidelity on the real res10 SSD face detector (skipped without ../shared/assets): every PriorBox and
    Normalize blob within 1e-4 (max-abs relative difference) and the detections with conf > 0.5 equal.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from netbuilder import input_header, layer, write_net
from onnx import TensorProto, helper

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import ConvertedModel, convert_net
from int8tune.convert.layers.ssd import (
    CodeType,
    DetectionSpec,
    decode_boxes,
    detection_output,
    detection_rows,
    expand_aspect_ratios,
    jaccard_overlap,
    nms,
    normalize,
    prior_boxes,
)
from int8tune.errors import ModelError

cv2 = pytest.importorskip("cv2")

RNG = np.random.default_rng(7)
ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
S2 = math.sqrt(2.0)


# -- running a converted model: onnxruntime for the graph, then the post steps in order -------------------------

def run_converted(converted: ConvertedModel, feeds: dict[str, np.ndarray], extra: list[str] = ()) -> dict:
    """Every graph output plus `extra` values, then the post steps' results."""
    model = onnx.ModelProto()
    model.CopyFrom(converted.model)
    present = {o.name for o in model.graph.output}
    for name in extra:
        if name not in present and name not in converted.numpy_values:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            present.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for step in converted.post_steps:
        results = step.fn([values[v] for v in step.inputs])
        values.update(zip(step.outputs, results))
    return values


def convert_text(tmp_path, prototxt, weights=None):
    proto, model = write_net(tmp_path, prototxt, weights or {})
    return proto, model, convert_net(load_net(proto, model))


def opencv_forward(proto, model, feeds: dict[str, np.ndarray], names: list[str]) -> dict:
    net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    for name, array in feeds.items():
        net.setInput(array, name)
    return dict(zip(names, net.forward(names)))


def rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    """The `check` command's measure: max |ours - ref| over max |ref|."""
    ref = np.asarray(ref, np.float64).reshape(ours.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


# == (a) pure functions ==========================================================================================

def test_aspect_ratios_expanded_and_deduplicated():
    assert expand_aspect_ratios([2.0, 3.0], flip=True) == pytest.approx([1.0, 2.0, 0.5, 3.0, 1 / 3])
    # 0.5 is already there as the flip of 2; 1 is always there; 2.0000001 is within 1e-6 of 2.
    assert expand_aspect_ratios([2.0, 0.5, 1.0, 2.0000001], flip=True) == pytest.approx([1.0, 2.0, 0.5])
    assert expand_aspect_ratios([2.0, 0.5], flip=False) == pytest.approx([1.0, 2.0, 0.5])


def test_prior_boxes_2x2_hand_computed():
    # 2x2 feature map on a 20x20 image: step 10, centres (5, 5), (15, 5), (5, 15), (15, 15) in row-major order.
    # Per location: min box 4x4, sqrt(4*9) = 6 box, ratio 2 (4*sqrt2 x 4/sqrt2), ratio 1/2 (flipped).
    out = prior_boxes((2, 2), (20, 20), [4.0], [9.0], [2.0], flip=True, variances=[0.1, 0.1, 0.2, 0.2])
    assert out.shape == (1, 2, 2 * 2 * 4 * 4) and out.dtype == np.float32
    sizes = [(4, 4), (6, 6), (4 * S2, 4 / S2), (4 / S2, 4 * S2)]
    expected = []
    for cy in (5, 15):
        for cx in (5, 15):
            for w, h in sizes:
                expected += [(cx - w / 2) / 20, (cy - h / 2) / 20, (cx + w / 2) / 20, (cy + h / 2) / 20]
    np.testing.assert_allclose(out[0, 0], expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(out[0, 0, :16], [0.15, 0.15, 0.35, 0.35, 0.1, 0.1, 0.4, 0.4, 0.10857864, 0.17928932,
                                                0.39142136, 0.32071068, 0.17928932, 0.10857864, 0.32071068,
                                                0.39142136], atol=1e-7)
    np.testing.assert_array_equal(out[0, 1], np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), 16))


def test_prior_boxes_truncated_sizes_clip_and_default_variance():
    # Caffe truncates min_size to int (4.7 -> 4); clip limits to [0, 1]; no variance -> 0.1.
    out = prior_boxes((2, 2), (20, 20), [4.7])
    np.testing.assert_allclose(out[0, 0, :4], [0.15, 0.15, 0.35, 0.35], atol=1e-7)
    np.testing.assert_array_equal(out[0, 1], np.full(16, 0.1, np.float32))
    clipped = prior_boxes((2, 2), (20, 20), [15.0], clip=True)
    np.testing.assert_allclose(clipped[0, 0, :4], [0.0, 0.0, 12.5 / 20, 12.5 / 20], atol=1e-7)
    assert clipped.min() >= 0 and clipped[0, 0].max() <= 1


def test_prior_boxes_image_size_step_offset_and_several_min_sizes():
    # img_size 40 (not the image bottom), step 3, offset 0.25: first centre (0.75, 0.75), second x 3.75.
    out = prior_boxes((2, 2), (40, 40), [4.0], step_hw=(3.0, 3.0), offset=0.25)
    np.testing.assert_allclose(out[0, 0, :8], [(0.75 - 2) / 40, (0.75 - 2) / 40, (0.75 + 2) / 40, (0.75 + 2) / 40,
                                               (3.75 - 2) / 40, (0.75 - 2) / 40, (3.75 + 2) / 40, (0.75 + 2) / 40],
                               atol=1e-7)
    # Two min sizes: per location [min 4, sqrt(4*8), ratio 2 of 4, min 8, sqrt(8*12), ratio 2 of 8].
    out = prior_boxes((1, 1), (20, 20), [4.0, 8.0], [8.0, 12.0], [2.0], flip=False)
    widths = (out[0, 0, 2::4] - out[0, 0, 0::4]) * 20
    np.testing.assert_allclose(widths, [4, math.sqrt(32), 4 * S2, 8, math.sqrt(96), 8 * S2], rtol=1e-6)


PRIOR = np.float32([[0.1, 0.1, 0.3, 0.5]])  # width 0.2, height 0.4, centre (0.2, 0.3)
VAR = np.float32([[0.1, 0.1, 0.2, 0.2]])


def test_decode_center_size_known_box():
    loc = np.float32([[1.0, -0.5, 0.0, 5 * math.log(0.5)]])
    # cx = 0.1*1*0.2 + 0.2 = 0.22, cy = 0.1*-0.5*0.4 + 0.3 = 0.28, w = 0.2, h = exp(0.2*5*ln 0.5)*0.4 = 0.2
    box = decode_boxes(loc, PRIOR, VAR, CodeType.CENTER_SIZE)
    np.testing.assert_allclose(box, [[0.12, 0.18, 0.32, 0.38]], atol=1e-7)
    in_target = decode_boxes(loc * VAR, PRIOR, VAR, CodeType.CENTER_SIZE, variance_encoded_in_target=True)
    np.testing.assert_allclose(in_target, box, atol=1e-7)


def test_decode_corner_and_corner_size():
    loc = np.float32([[1.0, -0.5, 0.5, 2.0]])
    np.testing.assert_allclose(decode_boxes(loc, PRIOR, VAR, CodeType.CORNER),
                               [[0.1 + 0.1, 0.1 - 0.05, 0.3 + 0.1, 0.5 + 0.4]], atol=1e-7)
    np.testing.assert_allclose(decode_boxes(loc, PRIOR, VAR, CodeType.CORNER, True),
                               [[1.1, -0.4, 0.8, 2.5]], atol=1e-7)
    np.testing.assert_allclose(decode_boxes(loc, PRIOR, VAR, CodeType.CORNER_SIZE),  # offsets times w, h
                               [[0.1 + 0.02, 0.1 - 0.02, 0.3 + 0.02, 0.5 + 0.16]], atol=1e-7)


def test_jaccard_overlap():
    box = np.float32([0, 0, 1, 1])
    others = np.float32([[0.5, 0, 1.5, 1], [2, 2, 3, 3], [1, 0, 2, 1], [0, 0, 1, 1], [0.5, 0.5, 0.2, 0.2]])
    # half overlap: 0.5 / 1.5; disjoint: 0; touching edge (zero width): 0; same box: 1; inverted box: size 0.
    np.testing.assert_allclose(jaccard_overlap(box, others), [1 / 3, 0, 0, 1, 0], atol=1e-7)


BOXES = np.float32([[0, 0, 1, 1], [0.1, 0, 1.1, 1], [2, 2, 3, 3], [0, 0, 1, 1]])
SCORES = np.float32([0.9, 0.8, 0.7, 0.05])


def test_nms_overlapping_boxes():
    # box 1 overlaps box 0 by 0.9 / 1.1 = 0.818; box 3 is under the score threshold.
    assert nms(BOXES, SCORES, 0.1, 0.45).tolist() == [0, 2]
    assert nms(BOXES, SCORES, 0.1, 0.85).tolist() == [0, 1, 2]
    assert nms(BOXES, SCORES, 0.1, 0.45, top_k=1).tolist() == [0]
    assert nms(BOXES, SCORES, 0.1, 0.45, top_k=0).tolist() == []  # Caffe: top_k 0 keeps nothing
    assert nms(BOXES, SCORES, -3.4e38, 0.45).tolist() == [0, 2]  # box 3 (score 0.05) equals box 0
    # equal scores: the lower index first (stable sort)
    assert nms(BOXES[[2, 0]], np.float32([0.5, 0.5]), 0.0, 0.5).tolist() == [0, 1]


def test_nms_adaptive_eta():
    boxes = np.float32([[0, 0, 1, 1], [0, 0, 1, 0.4], [5, 5, 6, 6], [5, 5, 6, 5.4]])  # pairs with IoU 0.4
    scores = np.float32([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.0, 0.6).tolist() == [0, 1, 2, 3]
    # eta 0.5: after box 0 the threshold drops to 0.3 (0.6 > 0.5), then stays (0.3 <= 0.5): box 1 and 3 go.
    assert nms(boxes, scores, 0.0, 0.6, eta=0.5).tolist() == [0, 2]


def test_nms_fixed_threshold_shortcut_equals_caffe_loop():
    """With eta = 1 nms() suppresses from each kept box; eta just under 1 with a threshold <= 0.5 never adapts
    but runs ApplyNMSFast's literal candidate loop: both must keep the same boxes in the same order."""
    centres, sizes = RNG.uniform(0, 1, (500, 2)), RNG.uniform(0.02, 0.4, (500, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores = RNG.uniform(0, 1, 500).astype(np.float32)
    scores[::7] = scores[0]  # ties
    for threshold in (0.0, 0.3, 0.5):
        fast = nms(boxes, scores, 0.1, threshold, top_k=300)
        assert fast.tolist() == nms(boxes, scores, 0.1, threshold, top_k=300, eta=0.9999).tolist()


def _toy_inputs(n=1):
    """Four disjoint priors, CORNER code, zero offsets: decoded boxes equal the priors."""
    priors = np.float32([[0, 0, .1, .1], [.2, .2, .3, .3], [.4, .4, .5, .5], [.6, .6, .7, .7]])
    prior = np.stack([priors.reshape(-1), np.full(16, 0.1, np.float32)])[None]
    loc = np.zeros((n, 16), np.float32)
    scores = np.float32([[0.0, 0.9, 0.1], [0.0, 0.2, 0.8], [0.0, 0.6, 0.3], [0.0, 0.05, 0.7]])  # (prior, class)
    conf = np.repeat(scores.reshape(1, -1), n, axis=0)
    return loc, conf, prior, priors


def test_detection_output_order_and_keep_top_k():
    loc, conf, prior, priors = _toy_inputs()
    spec = DetectionSpec(num_classes=3, confidence_threshold=0.25, nms_threshold=0.45)
    out = detection_output(loc, conf, prior, spec)
    # by label, then score: label 1 keeps priors 0 (.9), 2 (.6); label 2 keeps 1 (.8), 3 (.7), 2 (.3)
    assert out.shape == (1, 1, 5, 7)
    np.testing.assert_allclose(out[0, 0, :, :3], [[0, 1, .9], [0, 1, .6], [0, 2, .8], [0, 2, .7], [0, 2, .3]])
    np.testing.assert_allclose(out[0, 0, :, 3:], priors[[0, 2, 1, 3, 2]])
    top3 = detection_output(loc, conf, prior, DetectionSpec(num_classes=3, confidence_threshold=0.25,
                                                            nms_threshold=0.45, keep_top_k=3))
    # the 3 best over all classes (.9, .8, .7), written again by label then score
    np.testing.assert_allclose(top3[0, 0, :, :3], [[0, 1, .9], [0, 2, .8], [0, 2, .7]])


def test_detection_output_batch_and_share_location_false():
    loc, conf, prior, priors = _toy_inputs(n=2)
    conf[1] = 0.01  # the second image keeps nothing: it contributes no row
    spec = DetectionSpec(num_classes=3, confidence_threshold=0.65, nms_threshold=0.45)
    out = detection_output(loc, conf, prior, spec)
    np.testing.assert_allclose(out[0, 0, :, :3], [[0, 1, .9], [0, 2, .8], [0, 2, .7]])
    # share_location false: one set of offsets per class (background's ignored); shift class 2's boxes by +1
    per_class = np.zeros((1, 4, 3, 4), np.float32)
    per_class[0, :, 0] = 99.0
    per_class[0, :, 2] = 1.0 / 0.1  # variance 0.1
    spec = DetectionSpec(num_classes=3, share_location=False, confidence_threshold=0.65, nms_threshold=0.45)
    out = detection_output(per_class.reshape(1, -1), conf[:1], prior, spec)
    np.testing.assert_allclose(out[0, 0, :, 3:], np.concatenate([priors[[0]], priors[[1, 3]] + 1]), atol=1e-6)


def test_detection_output_nothing_kept():
    loc, conf, prior, _ = _toy_inputs(n=2)
    out = detection_output(loc, conf, prior, DetectionSpec(num_classes=3, confidence_threshold=0.95))
    # Caffe: one row per image, [image_id, -1, -1, -1, -1, -1, -1]
    np.testing.assert_array_equal(out, np.float32([[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]]))


# == (b) converters on synthetic nets, against OpenCV ============================================================

@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("channel_shared", [True, False])
def test_normalize_converter(tmp_path, across_spatial, channel_shared):
    shape = (2, 5, 4, 3)
    scale = RNG.uniform(0.5, 20, 1 if channel_shared else 5).astype(np.float32)
    body = (f"norm_param {{ across_spatial: {str(across_spatial).lower()} "
            f"channel_shared: {str(channel_shared).lower()} eps: 1e-3 }}")
    proto, model, conv = convert_text(tmp_path, input_header(shape) + layer("n", "Normalize", "data", "n", body),
                                      {"n": [scale]})
    x = RNG.standard_normal(shape).astype(np.float32) * 0.05  # small: eps (inside the sqrt) matters
    ours = run_converted(conv, {"data": x})["n"]
    np.testing.assert_allclose(ours, normalize(x, scale, across_spatial, 1e-3), rtol=2e-6, atol=1e-6)
    if across_spatial and not channel_shared:
        return  # OpenCV asserts (scale.total() == numPlanes): it has no per-channel scale across spatial positions
    ref = opencv_forward(proto, model, {"data": x}, ["n"])["n"]
    assert rel_diff(ours, ref) < 1e-5


def test_normalize_scale_checks_and_filler(tmp_path):
    body = "norm_param { across_spatial: false channel_shared: false scale_filler { type: \"constant\" value: 20 } }"
    prototxt = input_header((1, 5, 2, 2)) + layer("n", "Normalize", "data", "n", body)
    with pytest.raises(ModelError, match="one value per channel"):
        convert_text(tmp_path, prototxt, {"n": [np.ones(3, np.float32)]})
    # Without a caffemodel, Caffe fills the scale from scale_filler (here the constant 20).
    (tmp_path / "nomodel.prototxt").write_text(prototxt)
    conv = convert_net(load_net(tmp_path / "nomodel.prototxt", None))
    x = RNG.standard_normal((1, 5, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(run_converted(conv, {"data": x})["n"], normalize(x, np.full(5, 20.0), False),
                               rtol=2e-6, atol=1e-6)


def test_prior_box_converter(tmp_path):
    header = input_header((1, 3, 3, 5), "feat") + input_header((1, 3, 30, 50), "img")
    body = ("prior_box_param { min_size: 8 min_size: 16 max_size: 16 max_size: 30 aspect_ratio: 2 aspect_ratio: 3 "
            "flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step_h: 10 step_w: 9 "
            "offset: 0.4 }")
    proto, model, conv = convert_text(tmp_path, header + layer("pb", "PriorBox", ["feat", "img"], "pb", body))
    assert conv.shapes["pb"] == (1, 2, 3 * 5 * 12 * 4)  # (5 ratios x 2 min sizes + 2 max sizes) priors
    feeds = {"feat": np.zeros((1, 3, 3, 5), np.float32), "img": np.zeros((1, 3, 30, 50), np.float32)}
    ours = run_converted(conv, feeds)["pb"]
    np.testing.assert_array_equal(ours, prior_boxes((3, 5), (30, 50), [8, 16], [16, 30], [2, 3], True, False,
                                                    [0.1, 0.1, 0.2, 0.2], (10, 9), 0.4))
    assert rel_diff(ours, opencv_forward(proto, model, feeds, ["pb"])["pb"]) < 1e-6


def test_prior_box_rejects_bad_parameters(tmp_path):
    header = input_header((1, 3, 2, 2), "feat") + input_header((1, 3, 20, 20), "img")
    for body, words in [("prior_box_param { min_size: 4 max_size: 3 }", "max_size"),
                        ("prior_box_param { min_size: 4 variance: 0.1 variance: 0.2 }", "variance"),
                        ("prior_box_param { min_size: 4 step: 2 step_h: 2 step_w: 2 }", "step")]:
        with pytest.raises(ModelError, match=words):
            convert_text(tmp_path, header + layer("pb", "PriorBox", ["feat", "img"], "pb", body))


def _prior_channels(body):
    """OpenCV wants a 1-channel prior blob (no variances) when they are encoded in the target."""
    return 1 if "variance_encoded_in_target: true" in body else 2


def _detection_net(n, n_priors, num_classes, body):
    header = (input_header((n, n_priors * 4 * (1 if "share_location: false" not in body else num_classes)), "loc")
              + input_header((n, n_priors * num_classes), "conf")
              + input_header((1, _prior_channels(body), n_priors * 4), "prior"))
    return header + layer("det", "DetectionOutput", ["loc", "conf", "prior"], "det",
                          f"detection_output_param {{ {body} }}")


def _random_detection_inputs(n, n_priors, num_classes, loc_classes, prior_channels):
    centres = RNG.uniform(0.1, 0.9, (n_priors, 2))
    sizes = RNG.uniform(0.05, 0.3, (n_priors, 2))
    priors = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    prior = np.stack([priors.reshape(-1), np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), n_priors)])[None]
    prior = np.ascontiguousarray(prior[:, :prior_channels])
    loc = RNG.normal(0, 0.5, (n, n_priors * loc_classes * 4)).astype(np.float32)
    logits = RNG.normal(0, 2, (n, n_priors, num_classes))
    conf = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32).reshape(n, -1)
    return {"loc": loc, "conf": conf, "prior": prior}


@pytest.mark.parametrize("body, loc_classes", [
    ("num_classes: 4 share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 50 } "
     "code_type: CENTER_SIZE keep_top_k: 30 confidence_threshold: 0.05", 1),
    ("num_classes: 4 share_location: false background_label_id: 0 nms_param { nms_threshold: 0.3 top_k: 40 } "
     "code_type: CORNER keep_top_k: 25 confidence_threshold: 0.1", 4),
    ("num_classes: 3 share_location: true background_label_id: 2 nms_param { nms_threshold: 0.5 } "
     "code_type: CENTER_SIZE variance_encoded_in_target: true keep_top_k: 500 confidence_threshold: 0.2", 1),
])
def test_detection_output_converter(tmp_path, body, loc_classes):
    n, n_priors, num_classes = 2, 60, int(body.split()[1])
    proto, model, conv = convert_text(tmp_path, _detection_net(n, n_priors, num_classes, body))
    assert conv.records["det"].runs_in == "numpy"
    keep_top_k = int(body.split("keep_top_k: ")[1].split()[0])
    assert conv.shapes["det"] == (1, 1, n * min(keep_top_k, (num_classes - 1) * n_priors), 7)
    feeds = _random_detection_inputs(n, n_priors, num_classes, loc_classes, _prior_channels(body))
    ours = run_converted(conv, feeds)["det"]
    ref = opencv_forward(proto, model, feeds, ["det"])["det"][0, 0]
    ref = ref[ref[:, 2] > 0]  # OpenCV pads with zero rows up to keep_top_k * N
    assert ours.shape == (1, 1, len(ref), 7) and len(ref) > 0
    ours = ours[0, 0]
    assert np.array_equal(ours, detection_rows(ours)), "rows not by image, then label, then score"
    # OpenCV 4.14 orders each image's rows by score across labels; Caffe groups them by label.
    np.testing.assert_allclose(ours, detection_rows(ref), rtol=0, atol=1e-6)


def test_detection_output_rejects_shared_boxes_as_background(tmp_path):
    body = "num_classes: 2 share_location: true background_label_id: -1 nms_param { nms_threshold: 0.45 }"
    with pytest.raises(ModelError, match="background_label_id -1"):
        convert_text(tmp_path, _detection_net(1, 4, 2, body))


# == (c) fidelity on the real res10 SSD face detector ===========================================================

RES10 = "models/res10_ssd_face"


def _res10_blob(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    x = cv2.resize(image, (300, 300)).astype(np.float32) - np.float32([104, 177, 123])
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@pytest.fixture(scope="module")
def res10():
    if not ASSETS.is_dir():
        pytest.skip(f"real models and images not found at {ASSETS} (clone the project beside ../shared)")
    proto = ASSETS / RES10 / "deploy.prototxt"
    model = ASSETS / RES10 / "res10_300x300_ssd_iter_140000.caffemodel"
    net = load_net(proto, model)
    ssd_blobs = [layer.tops[0] for layer in net.layers if layer.type in ("PriorBox", "Normalize")]
    return proto, model, convert_net(net), ssd_blobs


@pytest.mark.parametrize("image, faces", [("images/detection/multiple-faces.jpg", 18),
                                          ("images/natural/grace_hopper.jpg", 1)])
def test_res10_matches_opencv(res10, image, faces):
    proto, model, conv, ssd_blobs = res10
    blob = _res10_blob(ASSETS / image)
    names = ssd_blobs + ["mbox_priorbox", "detection_out"]
    ours = run_converted(conv, {"data": blob}, ssd_blobs + ["mbox_priorbox"])
    ref = opencv_forward(proto, model, {"data": blob}, names)
    assert len(ssd_blobs) == 7  # conv4_3_norm and six PriorBox layers
    for name in ssd_blobs + ["mbox_priorbox"]:
        assert ours[name].shape == ref[name].shape, name
        assert rel_diff(ours[name], ref[name]) < 1e-4, name
    confident = ours["detection_out"][0, 0]
    confident = confident[confident[:, 2] > 0.5]  # as written, in Caffe's order
    ref_confident = detection_rows(ref["detection_out"], 0.5)
    assert len(confident) == len(ref_confident) == faces
    np.testing.assert_array_equal(confident[:, :2], ref_confident[:, :2])
    np.testing.assert_allclose(confident[:, 2:], ref_confident[:, 2:], rtol=0, atol=1e-4)


def test_res10_batch_of_two(res10):
    """N = 2 through the graph and the post step: rows of image 0, then image 1, each as when run alone."""
    proto, model, conv, _ = res10
    blobs = [_res10_blob(ASSETS / p) for p in ("images/detection/multiple-faces.jpg",
                                                "images/natural/grace_hopper.jpg")]
    both = run_converted(conv, {"data": np.concatenate(blobs)})["detection_out"][0, 0]
    alone = [run_converted(conv, {"data": b})["detection_out"][0, 0] for b in blobs]
    assert both[:, 0].tolist() == [0.0] * len(alone[0]) + [1.0] * len(alone[1])
    np.testing.assert_allclose(both[:, 1:], np.concatenate(alone)[:, 1:], rtol=0, atol=1e-5)


def test_ssd_map_metric_on_the_real_face_detector(assets):
    """ssd_map runs the net's own DetectionOutput on fp32 and int8 outputs: identical outputs agree fully, and an
    int8 table measured on real photos agrees with fp32 almost fully."""
    from int8tune.metrics import METRICS
    from int8tune.pipeline.images import Images
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.tune.tuner import Tuner, TuneSettings

    d = assets / "models" / "res10_ssd_face"
    ws = load_workspace(d / "deploy.prototxt", d / "res10_300x300_ssd_iter_140000.caffemodel")
    photos = sorted((assets / "images" / "natural").glob("*.png"))[:3]
    import test_utils
    from int8tune.image_params import load_image_params

    repo = Path(__file__).resolve().parents[1]
    params = load_image_params(repo / "examples" / "image_params" / "res10_ssd_face.json")
    batches = [test_utils.prepare_image(p, params) for p in photos]
    metric = METRICS.get("ssd_map")
    tuner = Tuner(ws.converted, batches, metric, TuneSettings(metric_params={"conf_threshold": 0.3}))
    assert tuner.fp32_score() == 1.0
    from int8tune.config import QuantConfig
    from int8tune.pipeline.calibration import calibrate

    cal = calibrate(ws, Images("photos", len(batches), _batches=batches), QuantConfig(method="minmax"), measure=None)
    assert 0.5 <= tuner.difference(cal.table) <= 1.0
    # report.log's detection agreement lines decode with the same DetectionOutput
    from int8tune.pipeline.tuning import detections
    from int8tune.report.detections import detection_lines

    lines = detection_lines(detections(tuner, metric, [("this table", cal.table)]), kind="tuning ")
    assert "the net's own DetectionOutput" in lines[1] and "on 3 tuning image(s)" in lines[1]
    m = re.search(r"this table: mAP@0.5 ([0-9.]+); finds (\d+) of (\d+)", "\n".join(lines))
    assert m and float(m.group(1)) == pytest.approx(tuner.difference(cal.table), abs=1e-4)
    assert int(m.group(3)) > 0 and int(m.group(2)) <= int(m.group(3))


def test_box_map_agreement_lines_count_what_int8_finds_and_misses():
    from test_box_map import outputs

    from int8tune.pipeline.tuning import Detections
    from int8tune.report.detections import detection_lines

    ref = outputs()
    lost = {k: v.copy() for k, v in ref.items()}
    lost["scores"][0, 17] = (0.7, 0.3)
    lines = detection_lines(Detections(ref, [("tuned", lost)], {}, ["a.png", "b.png"], "box_map"))
    text = "\n".join(lines)
    assert "score > 0.5, NMS 0.45" in text and "makes 6 detection(s) on 2 image(s)" in text
    assert "tuned: mAP@0.5" in text and "finds 5 of 6, misses 1, 0 extra" in text and "a.png: finds 2 of 3" in text
