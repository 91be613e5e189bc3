"""`check` (int8tune/check.py): DetectionOutput tops compared as matched sets of rows, and blobs holding NaN/inf.

DetectionOutput: on res10 + astronaut.png our rows and OpenCV's are the same 126 detections, but two detections
with near-tied scores (0.0787451 / 0.0787406 ours, 0.0787450 / 0.0787404 OpenCV) were paired in a different order
by the old canonical sort (scores rounded to 1e-5: 0.0787451 -> 0.07875 but 0.0787450 -> 0.07874), which
reported a relative difference of 0.134. Rows are now matched as sets (by image, label, score and box).

NaN/inf: NaN - NaN is NaN and Python's max(0.0, nan) is 0.0, so a blob that was NaN on both sides used to
compare as "max abs 0" and pass. Any NaN/inf in either side's blob must make that blob fail.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import numpy_helper

from int8tune import check
from int8tune.caffe.loader import load_net
from int8tune.check import BlobDiff, compare_with_opencv
from int8tune.commands.check import format_report
from int8tune.convert.converter import convert_net
from int8tune.runtime import Engine
from tests.netbuilder import input_header, layer, write_net

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
RES10 = ASSETS / "models" / "res10_ssd_face"
ASTRONAUT = ASSETS / "images" / "natural" / "astronaut.png"

# ---------------------------------------------------------------------------------------------------------------
# DetectionOutput as matched sets
# ---------------------------------------------------------------------------------------------------------------

# The two rows of res10 on astronaut.png that the old comparison paired wrongly (float32 values as computed).
BOX_A = [0.7335453, 0.1489245, 0.9239001, 0.32385156]
BOX_B = [0.50554943, 0.71129775, 0.6282966, 0.99019504]


def _fake_detection_check(monkeypatch, ours_rows: np.ndarray, cv_rows: np.ndarray, tolerance: float = 1e-4):
    """compare_with_opencv over a one-layer net whose DetectionOutput top is `ours_rows` on our side and
    `cv_rows` on OpenCV's (no model files: both implementations are stand-ins)."""
    det = SimpleNamespace(name="detection_out", type="DetectionOutput", tops=("detection_out",))
    net = SimpleNamespace(layers=[det], blob_of={"detection_out": "detection_out"}, outputs=["detection_out"])
    engine = SimpleNamespace(net=net, run=lambda batch, values: {"detection_out": ours_rows.reshape(1, 1, -1, 7)})

    class CvNet:
        def getLayerNames(self):  # noqa: N802 - OpenCV's name
            return ["detection_out"]

        def setInput(self, *args):  # noqa: N802
            pass

        def forward(self, names):
            return [cv_rows.reshape(1, 1, -1, 7)]

    monkeypatch.setattr(check, "opencv_net", lambda proto, model: CvNet())
    x = np.zeros((1, 3, 4, 4), dtype=np.float32)
    return compare_with_opencv(engine, "p", "m", [(x, ["img"])], tolerance)


def test_near_tied_scores_are_matched_not_sorted(monkeypatch):
    """The astronaut pair: ours in Caffe's order (label, score), OpenCV's by score and padded with zero rows."""
    ours = np.array([[0, 1, 0.99, 0.1, 0.1, 0.2, 0.2],
                     [0, 1, 0.07874514162540436, *BOX_A],
                     [0, 1, 0.07874056696891785, *BOX_B]], dtype=np.float32)
    cv = np.zeros((6, 7), dtype=np.float32)
    cv[:3] = [[0, 1, 0.99, 0.1, 0.1, 0.2, 0.2],
              [0, 1, 0.07874499261379242, 0.7335452, 0.14892447, 0.9238999, 0.32385164],
              [0, 1, 0.07874038815498352, 0.5055494, 0.71129787, 0.6282967, 0.99019504]]
    report = _fake_detection_check(monkeypatch, ours, cv)
    d = report.diffs[0]
    assert report.passed, f"relative {d.rel}, max abs {d.max_abs}: the same detections did not line up"
    assert d.max_abs < 1e-6
    assert "matched as sets" in d.note
    assert "matched as sets" in format_report(report)


def test_detection_sets_that_differ_still_fail(monkeypatch):
    """Matching must not hide a real difference: a moved box, a changed label, a missing detection."""
    base = np.array([[0, 1, 0.9, 0.1, 0.1, 0.2, 0.2], [0, 1, 0.8, 0.5, 0.5, 0.7, 0.7]], dtype=np.float32)
    moved = base.copy()
    moved[1, 3] += 0.05
    assert _fake_detection_check(monkeypatch, base, moved).diffs[0].max_abs == pytest.approx(0.05, abs=1e-6)
    relabeled = base.copy()
    relabeled[1, 1] = 2
    assert not _fake_detection_check(monkeypatch, base, relabeled).passed
    report = _fake_detection_check(monkeypatch, base, base[:1])
    assert not report.passed
    assert "differ" in report.diffs[0].note


@pytest.fixture(scope="module")
def res10():
    if not (RES10 / "deploy.prototxt").is_file() or not ASTRONAUT.is_file():
        pytest.skip(f"real model res10_ssd_face or astronaut.png not found under {ASSETS} (the shared assets are "
                    f"not present beside this checkout)")
    return RES10 / "deploy.prototxt", RES10 / "res10_300x300_ssd_iter_140000.caffemodel"


def test_res10_astronaut_detection_out_passes(res10):
    """The reported failure: `check` on res10 + astronaut.png said detection_out relative 0.134 (126 rows)."""
    from int8tune.image_params import load_image_params
    from test_utils import prepare_image

    proto, model = res10
    params = load_image_params(Path(__file__).resolve().parents[1] / "examples/image_params/res10_ssd_face.json")
    x = np.asarray(prepare_image(ASTRONAUT, params), dtype=np.float32)
    x = x[None] if x.ndim == 3 else x
    engine = Engine(convert_net(load_net(proto, model)), expose_all=True)
    report = compare_with_opencv(engine, proto, model, [(x, [str(ASTRONAUT)])], tolerance=1e-4)
    det = next(d for d in report.diffs if d.value == "detection_out")
    assert det.shape == (126, 7), det.shape
    assert det.rel <= 1e-4, f"detection_out relative {det.rel:.3g}, max abs {det.max_abs:.3g} ({det.note})"
    assert "matched as sets" in det.note
    assert report.passed, [(d.value, d.rel, d.note) for d in report.failures]


# ---------------------------------------------------------------------------------------------------------------
# NaN / inf
# ---------------------------------------------------------------------------------------------------------------

PROTOTXT = (input_header((1, 2, 4, 4))
            + layer("conv", "Convolution", "data", "conv",
                    "convolution_param { num_output: 3 kernel_size: 3 pad: 1 }")
            + layer("relu", "ReLU", "conv", "relu"))


def _weights(fill: float | None = None) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    if fill is not None:
        w[0, 0, 1, 1] = fill
    return {"conv": [w, b]}


def _run(tmp_path, ours_fill=None, cv_fill=None, x=None):
    """Check a Convolution + ReLU net. Our side converts finite weights; when `ours_fill` is given, one weight of
    the converted ONNX model is overwritten afterwards, so no refusal of NaN weights at load or conversion time
    stands in the way. OpenCV reads a caffemodel holding `cv_fill` (it does not go through our loader)."""
    ours_proto, ours_model = write_net(tmp_path, PROTOTXT, _weights(), name="ours")
    cv_proto, cv_model = write_net(tmp_path, PROTOTXT, _weights(cv_fill), name="opencv")
    converted = convert_net(load_net(ours_proto, ours_model))
    if ours_fill is not None:
        (init,) = [t for t in converted.model.graph.initializer if tuple(t.dims) == (3, 2, 3, 3)]
        w = numpy_helper.to_array(init).copy()
        w[0, 0, 1, 1] = ours_fill
        init.CopyFrom(numpy_helper.from_array(w, init.name))
    engine = Engine(converted, expose_all=True)
    if x is None:
        x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    return compare_with_opencv(engine, cv_proto, cv_model, [(x, ["img"])], tolerance=1e-4)


def test_finite_net_passes(tmp_path):
    report = _run(tmp_path)
    assert report.passed, [(d.value, d.rel, d.note) for d in report.failures]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_on_both_sides_fails(tmp_path, value):
    """An input holding NaN (inf) gives NaN (inf/NaN) blobs on both sides: never "equal"."""
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    x[0, 0, 1, 1] = value
    report = _run(tmp_path, x=x)
    assert not report.passed
    failed = {d.value: d for d in report.failures}
    assert {"conv", "relu"} <= set(failed), [(d.value, d.rel, d.note) for d in report.diffs]
    for d in failed.values():
        assert "NaN/inf" in d.nonfinite and "both" in d.nonfinite, d.nonfinite
    text = format_report(report)
    assert text.splitlines()[1].startswith("WARNING: FAIL: ")  # the verdict comes first
    assert "NaN/inf found in both" in text


@pytest.mark.parametrize("side, kwargs", [("ours", {"ours_fill": np.nan}), ("OpenCV", {"cv_fill": np.nan}),
                                          ("ours", {"ours_fill": np.inf}), ("OpenCV", {"cv_fill": np.inf})])
def test_nonfinite_on_one_side_fails_and_names_it(tmp_path, side, kwargs):
    report = _run(tmp_path, **kwargs)
    assert not report.passed
    conv = next(d for d in report.diffs if d.value == "conv")
    assert not conv.passed(1e-4)
    assert conv.nonfinite.startswith(f"NaN/inf found in {side} only"), conv.nonfinite
    assert f"NaN/inf found in {side} only" in format_report(report)
    assert report.to_json()["blobs"][0]["passed"] is False


def test_nonfinite_message_counts():
    d = BlobDiff("v", "v", "l", "Convolution", (4,))
    check._count_nonfinite(d, np.array([np.nan, np.inf, -np.inf, 1.0]), np.array([np.nan, 0.0, 0.0, 1.0]))
    assert d.nonfinite == "NaN/inf found in both: ours 1 NaN, 2 inf; OpenCV 1 NaN (of 4 values)"
    assert d.rel == float("inf") and not d.passed(1.0)
