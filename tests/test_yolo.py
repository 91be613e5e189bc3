"""YOLO decoding against the reference detections in the assets README, and the YOLO metrics' mechanics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import REPO_ROOT

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.errors import ConfigError
from int8tune.image_params import load_image_params
from int8tune.runtime import Engine
from int8tune.yolo import (
    Detection,
    YoloParams,
    decode_head,
    detect,
    head_difference,
    mean_average_precision,
    parse_darknet_cfg,
)
from test_utils import prepare_image

# (image, [(class name, objectness, [x, y, w, h] in pixels)]) as printed by OpenCV in ../shared/assets/README.md
EXPECTED = {
    "dog.jpg": [("dog", 0.991, [121, 203, 189, 356]), ("car", 0.984, [479, 87, 213, 82]), ("car", 0.663, None)],
    "person.jpg": [("person", 0.999, None), ("dog", 0.998, None), ("horse", 0.996, None)],
    "eagle.jpg": [("bird", 1.0, None)],
}


@pytest.fixture(scope="module")
def yolov3(assets):
    d = assets / "models" / "yolov3_nano_voc"
    engine = Engine(convert_net(load_net(d / "MobileNetV2-YOLOv3-Nano-voc.prototxt",
                                         d / "MobileNetV2-YOLOv3-Nano-voc.caffemodel")))
    heads, size = parse_darknet_cfg(d / "MobileNetV2-YOLOv3-Nano-voc.cfg")
    names = (d / "voc.names").read_text().split()
    params = load_image_params(REPO_ROOT / "examples" / "image_params" / "yolov3_nano_voc.json")
    return engine, heads, size, names, params


def detections(yolov3, image_path):
    """The authors' demo decode: the README formula (no scale_x_y), objectness as the score, threshold 0.5."""
    import cv2

    engine, heads, size, names, params = yolov3
    out = engine.run(prepare_image(image_path, params))
    plain = [replace(h, scale_x_y=1.0) for h in heads]
    dets = detect([decode_head(out[h.blob], h, size) for h in plain], 0.5, 0.45, score="objectness")[0]
    h, w = cv2.imread(str(image_path)).shape[:2]
    return [(names[d.label], d.score, [int(d.box[0] * w), int(d.box[1] * h), int((d.box[2] - d.box[0]) * w),
                                       int((d.box[3] - d.box[1]) * h)]) for d in dets]


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_yolov3_nano_reproduces_the_reference_detections(yolov3, assets, image):
    got = detections(yolov3, assets / "images" / "detection" / image)
    for name, score, box in EXPECTED[image]:
        match = [g for g in got if g[0] == name and abs(g[1] - score) < 0.0015]
        assert match, f"{image}: no {name} {score} in {got}"
        if box is not None:
            assert max(abs(a - b) for a, b in zip(match[0][2], box)) <= 1, (match[0][2], box)
    assert len(got) == len(EXPECTED[image])


def test_crowd_and_scream(yolov3, assets):
    crowd = detections(yolov3, assets / "images" / "detection" / "crowd_persons.jpg")
    assert [g[0] for g in crowd].count("person") == 10
    assert detections(yolov3, assets / "images" / "detection" / "scream.jpg") == []


def test_cfg_heads(assets):
    heads, size = parse_darknet_cfg(assets / "models" / "yolov3_nano_voc" / "MobileNetV2-YOLOv3-Nano-voc.cfg")
    assert size == (320, 320)
    assert [h.blob for h in heads] == ["layer69-conv", "layer79-conv"]
    assert heads[0].anchors == ((189, 126), (137, 236), (265, 259)) and heads[0].classes == 20


def test_metric_mechanics():
    rng = np.random.default_rng(0)
    head = YoloParams.from_dict({"heads": [{"blob": "out", "anchors": [[10, 14], [23, 27]], "classes": 3}],
                                 "input_size": [64, 64]}).heads[0]
    feat = rng.standard_normal((2, 16, 4, 4)).astype(np.float32)
    a = decode_head(feat, head, (64, 64))
    assert head_difference(a, a, 0.01) == 0.0
    noisy = decode_head(feat + 0.1 * rng.standard_normal(feat.shape).astype(np.float32), head, (64, 64))
    assert head_difference(a, noisy, 0.01) > 0
    with pytest.raises(ConfigError, match="unknown key"):
        YoloParams.from_dict({"heads": [], "input_size": [1, 1], "anchor": 1})


def test_map_agreement():
    gt = [[Detection(0, 0.9, (0.1, 0.1, 0.4, 0.4)), Detection(1, 0.8, (0.5, 0.5, 0.9, 0.9))]]
    assert mean_average_precision(gt, gt) == 1.0
    shifted = [[Detection(0, 0.9, (0.1, 0.1, 0.4, 0.4)), Detection(1, 0.8, (0.75, 0.75, 0.99, 0.99))]]
    assert mean_average_precision(gt, shifted) == pytest.approx(0.5)
    assert mean_average_precision([[]], [[]]) == 1.0


def test_coco_map_against_annotations_and_agreement(tmp_path):
    import json

    from int8tune.coco import coco_map, coco_map_agreement

    dets = [[Detection(0, 0.9, (0.1, 0.1, 0.5, 0.5))], [Detection(1, 0.8, (0.2, 0.2, 0.6, 0.9))]]
    ann = {"images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50},
                      {"id": 9, "file_name": "b.jpg", "width": 200, "height": 100}],
           "categories": [{"id": 1}, {"id": 2}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 40, 20], "area": 800,
                            "iscrowd": 0},
                           {"id": 2, "image_id": 9, "category_id": 2, "bbox": [40, 20, 80, 70], "area": 5600,
                            "iscrowd": 0}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(ann))
    assert coco_map(dets, path, ["dir/a.jpg", "b.jpg"]) == pytest.approx(1.0)
    moved = [[Detection(0, 0.9, (0.3, 0.3, 0.7, 0.7))], dets[1]]
    assert coco_map(moved, path, ["a.jpg", "b.jpg"]) < 0.6
    assert coco_map_agreement(dets, dets, (320, 320)) == pytest.approx(1.0)
    assert coco_map_agreement(dets, moved, (320, 320)) < 0.6
    with pytest.raises(ConfigError, match="no image entry for c.jpg"):
        coco_map(dets, path, ["a.jpg", "c.jpg"])


def _head_map(cells: dict[tuple[int, int], float]) -> np.ndarray:
    """A 1-anchor, 1-class v3 head on a 4x4 grid: objectness and class logits +8 at `cells` (row, col) with
    box offset `cells[cell]` (tw = th), -8 elsewhere."""
    f = np.zeros((1, 6, 4, 4), np.float32)
    f[0, 4:6] = -8.0
    for (r, c), t in cells.items():
        f[0, 4:6, r, c] = 8.0
        f[0, 2:4, r, c] = t
    return f


def test_detection_agreement_counts_found_missed_and_extra():
    from int8tune.report.detections import agreement_lines
    from int8tune.yolo import YoloHead, detection_agreement

    a, b, c = (0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 0.9, 0.9), (0.1, 0.6, 0.3, 0.9)
    truth = [[Detection(0, 0.9, a), Detection(0, 0.8, b)], [Detection(1, 0.7, a)]]
    # image 1: a found, b missed, c extra; image 2: the box is right but the class is not
    predicted = [[Detection(0, 0.95, a), Detection(0, 0.6, c)], [Detection(0, 0.7, a)]]
    got = detection_agreement(truth, predicted)
    assert [(g.reference, g.found, g.missed, g.extra) for g in got] == [(2, 1, 1, 1), (1, 0, 1, 1)]
    # a second box on a truth box already found is extra, as in mAP's matching
    twice = detection_agreement([[Detection(0, 0.9, a)]], [[Detection(0, 0.9, a), Detection(0, 0.8, a)]])
    assert (twice[0].found, twice[0].extra) == (1, 1)
    assert detection_agreement(truth, truth)[0].missed == 0
    # the scores behind the misses (fp32) and the extras (int8): 0.8 and 0.7 missed, 0.6 and 0.7 extra
    assert [(g.missed_scores, g.extra_scores) for g in got] == [((0.8,), (0.6,)), ((0.7,), (0.7,))]
    # the missed b has no tested box of its class near it (c does not overlap it); the wrong-class a has none
    assert [g.missed_ious for g in got] == [(0.0,), (0.0,)]
    off = detection_agreement([[Detection(0, 0.9, (0.0, 0.0, 0.4, 0.4))]], [[Detection(0, 0.9, (0.1, 0.1, 0.5, 0.5))]])
    assert off[0].found == 0 and off[0].missed_ious == pytest.approx((0.09 / 0.23,))
    from int8tune.yolo import near_threshold
    assert near_threshold([0.8, 0.7, 0.55], 0.5) == 1 and near_threshold([0.8, 0.7], 0.65, 0.1) == 1

    head = YoloHead("out", ((32.0, 32.0),), 1)
    yolo = YoloParams((head,), (128, 128))
    fp32 = {"out": _head_map({(0, 0): 0.0, (2, 2): 0.0, (3, 0): 0.0})}
    same = {"out": _head_map({(0, 0): 0.0, (2, 2): 0.0, (3, 0): 0.0})}
    moved = {"out": _head_map({(0, 0): 0.0, (2, 2): 2.0, (1, 3): 0.0})}  # (2,2) 7x wider: IoU < 0.5
    lines = agreement_lines(fp32, [("start", same), ("tuned", moved)], yolo, ["p.jpg"])
    text = "\n".join(lines)
    assert "the fp32 model makes 3 detection(s) on 1 image(s), 3 of them on p.jpg" in text
    assert "start: mAP@0.5 1.0000; finds 3 of 3, misses 0, 0 extra" in text
    assert "tuned: mAP@0.5" in text and "finds 1 of 3, misses 2, 2 extra" in text
    # every score of the head is sigmoid(8) * sigmoid(8) = 0.9993: far from the 0.5 threshold
    assert "misses 2, 2 extra; near the threshold (score < 0.6): 0 of the misses, 0 of the extra; drawn off (an " \
           "int8 box of the class at IoU 0.3-0.5): 0 of the misses" in text
    assert "misses 0, 0 extra\n" in text + "\n"  # nothing to qualify when the tables agree
    # a faint fp32 box (score sigmoid(1.1)^2 = 0.56) that int8 drops is a miss near the threshold
    faint = {"out": _head_map({(0, 0): 0.0, (3, 3): 0.0})}
    faint["out"][0, 4:6, 3, 3] = 1.1
    faint_lines = agreement_lines(faint, [("int8", {"out": _head_map({(0, 0): 0.0})})], yolo, ["p.jpg"])
    assert "finds 1 of 2, misses 1, 0 extra; near the threshold (score < 0.6): 1 of the misses, 0 of the extra" \
        in "\n".join(faint_lines)
    # a box drawn off: the fp32 box at (2, 2) is found by int8 1.5x wider (IoU 1/2.25 = 0.44)
    wide_lines = agreement_lines(fp32, [("int8", {"out": _head_map({(0, 0): 0.0, (2, 2): 0.405, (3, 0): 0.0})})],
                                 yolo, ["p.jpg"])
    assert "misses 1, 1 extra; near the threshold (score < 0.6): 0 of the misses, 0 of the extra; drawn off (an " \
           "int8 box of the class at IoU 0.3-0.5): 1 of the misses" in "\n".join(wide_lines)
    assert "    p.jpg: finds 1 of 3, 2 extra" in lines
    assert lines[3].startswith("  tuned:")  # the identical table lists no differing image


@pytest.mark.slow  # a real detector end to end: .ci/run runs it (pytest -m slow)
def test_test_command_reports_detection_agreement(assets, tmp_path):
    """test.sh with --metric yolo on yolov3_nano_voc: the fp32 detection count is the reference one (dog 3, person
    3, crowd 10), and the mAP next to the counts is the yolo_map metric of the same table."""
    import re

    import main as entry

    d = assets / "models" / "yolov3_nano_voc"
    photos = tmp_path / "photos.txt"
    photos.write_text("".join(f"{assets / 'images' / 'detection' / n}\n"
                              for n in ("dog.jpg", "person.jpg", "crowd_persons.jpg")))
    base = ["--proto", str(d / "MobileNetV2-YOLOv3-Nano-voc.prototxt"),
            "--model", str(d / "MobileNetV2-YOLOv3-Nano-voc.caffemodel"), "--data_list", str(photos),
            "--image_params", str(REPO_ROOT / "examples" / "image_params" / "yolov3_nano_voc.json")]
    assert entry.main(["calibrate", *base, "--method", "minmax", "--output_path", str(tmp_path / "cal")]) == 0
    table = ["--calibration_proto", str(tmp_path / "cal" / "calibration_table.pb")]
    cfg = ["--yolo_cfg", str(d / "MobileNetV2-YOLOv3-Nano-voc.cfg")]
    assert entry.main(["test", *base, *table, *cfg, "--metric", "yolo", "--output_path", str(tmp_path / "y")]) == 0
    report = (tmp_path / "y" / "report.log").read_text()
    assert "the fp32 model makes 16 detection(s) on 3 image(s), 10 of them on " in report
    found = re.search(r"this table: mAP@0\.5 ([0-9.]+); finds (\d+) of 16, misses (\d+), (\d+) extra", report)
    assert found and int(found[2]) + int(found[3]) == 16
    assert entry.main(["test", *base, *table, *cfg, "--metric", "yolo_map", "--output_path", str(tmp_path / "m")]) == 0
    m = re.search(r"model difference \(yolo_map\): ([0-9.]+)", (tmp_path / "m" / "report.log").read_text())
    assert float(found[1]) == pytest.approx(float(m[1]), abs=1e-4)
