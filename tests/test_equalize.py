"""Cross-layer equalization: the equalized net computes what the original does, the ranges it promises are
equal, the written caffemodel reads back, and a table is never paired with the wrong weights."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

import main as entry
from int8tune.caffe.equalize import MAX_SCALE, equalize_net, write_equalized_caffemodel
from int8tune.caffe.fold import fold_batchnorm_scale
from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.runtime import Engine

RNG = np.random.default_rng(5)
C = 6
PROTOTXT = (input_header((2, 3, 10, 10))
            # conv1 (no bias) -> BatchNorm -> Scale -> ReLU -> conv2: the affine chain takes the scaling along
            + layer("conv1", "Convolution", "data", "conv1",
                    f"convolution_param {{ num_output: {C} kernel_size: 3 pad: 1 bias_term: false }}")
            + layer("bn1", "BatchNorm", "conv1", "conv1")
            + layer("sc1", "Scale", "conv1", "conv1", "scale_param { bias_term: true }")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("conv2", "Convolution", "conv1", "conv2", f"convolution_param {{ num_output: {C} kernel_size: 1 }}")
            # leaky ReLU into a depthwise convolution
            + layer("relu2", "ReLU", "conv2", "conv2", "relu_param { negative_slope: 0.1 }")
            + layer("dw3", "Convolution", "conv2", "dw3",
                    f"convolution_param {{ num_output: {C} kernel_size: 3 pad: 1 group: {C} }}")
            # PReLU read by two convolutions
            + layer("prelu3", "PReLU", "dw3", "dw3")
            + layer("conv4", "Convolution", "dw3", "conv4", "convolution_param { num_output: 4 kernel_size: 1 }")
            + layer("conv5", "Convolution", "dw3", "conv5", "convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
            + layer("sum", "Eltwise", ["conv4", "conv5"], "sum")
            # not equalized: a grouped (not depthwise) reader, and a ReLU read by a pooling layer
            + layer("relu4", "ReLU", "sum", "sum")
            + layer("conv6", "Convolution", "sum", "conv6",
                    "convolution_param { num_output: 4 kernel_size: 1 group: 2 }")
            + layer("relu6", "ReLU", "conv6", "conv6")
            + layer("pool", "Pooling", "conv6", "pool", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"))


def _weights():
    def w(*s):
        return RNG.standard_normal(s).astype(np.float32)
    # channel ranges spread over two orders of magnitude, as in real depthwise-separable nets
    spread = np.logspace(-1, 1, C).astype(np.float32)
    return {"conv1": [w(C, 3, 3, 3) * spread[:, None, None, None]],
            "bn1": [w(C), np.abs(w(C)) + 0.5, np.array([2.0], np.float32)],
            "sc1": [w(C), w(C)],
            "conv2": [w(C, C, 1, 1) * spread[::-1, None, None, None], w(C)],
            "dw3": [w(C, 1, 3, 3), w(C)],
            "prelu3": [np.abs(w(C)) * 0.2],
            "conv4": [w(4, C, 1, 1), w(4)],
            "conv5": [w(4, C, 3, 3), w(4)],
            "conv6": [w(4, 2, 1, 1), w(4)]}


@pytest.fixture(scope="module")
def net_files(tmp_path_factory):
    return write_net(tmp_path_factory.mktemp("eq"), PROTOTXT, _weights())


X = RNG.standard_normal((2, 3, 10, 10)).astype(np.float32) * 2


def _outputs(net):
    converted = convert_net(fold_batchnorm_scale(net).net)
    x = X
    engine = Engine(converted, threads=1)
    return engine.run(x, ["pool", "sum"])


def test_equalized_net_computes_the_same_and_finds_exactly_the_homogeneous_conv_pairs(net_files):
    net = load_net(*net_files)
    eq = equalize_net(net)
    assert [(p.producer, p.activation, p.consumers) for p in eq.pairs] == [
        ("conv1", "relu1", ("conv2",)), ("conv2", "relu2", ("dw3",)), ("dw3", "prelu3", ("conv4", "conv5"))]
    assert {"conv1", "bn1", "sc1", "conv2", "dw3", "conv4", "conv5"} == set(eq.changed)
    assert not any(np.allclose(p.scale, 1.0) for p in eq.pairs)  # something really moved
    before, after = _outputs(net), _outputs(eq.net)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-4, atol=1e-4 * np.abs(before[name]).max())


def test_last_pair_ends_with_equal_weight_ranges_on_both_sides(net_files):
    eq = equalize_net(load_net(*net_files))
    folded = {l.name: l for l in fold_batchnorm_scale(eq.net).net.layers}
    last = eq.pairs[-1]  # its consumers are producers of no later pair, so nothing rescales them again
    r1 = np.abs(folded["dw3"].blobs[0].reshape(C, -1)).max(axis=1)
    r2 = np.max([np.abs(folded[q].blobs[0]).max(axis=(0, 2, 3)) for q in last.consumers], axis=0)
    free = (last.scale > 1 / MAX_SCALE) & (last.scale < MAX_SCALE)
    assert free.any()
    np.testing.assert_allclose(r1[free], r2[free], rtol=1e-5)


def test_written_caffemodel_reads_back_to_the_equalized_net(net_files, tmp_path):
    proto, model = net_files
    eq = equalize_net(load_net(proto, model))
    path = write_equalized_caffemodel(model, eq, tmp_path / "equalized.caffemodel")
    again = load_net(proto, path)
    for a, b in zip(again.layers, eq.net.layers):
        assert a.name == b.name and len(a.blobs) == len(b.blobs)
        for x, y in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def project(tmp_path_factory, net_files):
    root = tmp_path_factory.mktemp("eqcli")
    images = root / "images"
    images.mkdir()
    for i in range(6):
        cv2.imwrite(str(images / f"img{i}.png"), RNG.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    params = root / "params.json"
    params.write_text(json.dumps({"size": [10, 10], "color_format": "bgr", "scale": 0.02}))
    proto, model = net_files
    return root, ["--proto", str(proto), "--data_list", str(images), "--image_params", str(params)], model


def _difference(report: str) -> str:
    return next(l for l in report.splitlines() if l.startswith("model difference"))


def test_calibrate_equalize_writes_the_weights_and_a_table_only_runs_with_them(project, capsys):
    root, base, model = project
    capsys.readouterr()
    cal = root / "cal"
    # --no_bias_correction: the equalized weights alone (with the default bias correction test.sh would run the
    # corrected.caffemodel written beside the table, which is equalized too: tests/test_weight_levers.py)
    assert entry.main(["calibrate", *base, "--model", str(model), "--equalize", "--no_bias_correction",
                       "--output_path", str(cal)]) == 0
    report = (cal / "report.log").read_text()
    assert "equalized 3 Conv -> ReLU/PReLU -> Conv pair(s)" in report
    equalized = cal / "equalized.caffemodel"
    assert equalized.is_file()
    table = ["--calibration_proto", str(cal / "calibration_table.pb")]
    # the table on the original weights without --equalize: refused, naming the way out
    assert entry.main(["test", *base, "--model", str(model), *table, "--output_path", str(root / "t0")]) == 2
    message = capsys.readouterr().err
    assert "calibrated with --equalize" in message and "equalized.caffemodel" in message
    # --equalize on the original and --model on the written weights measure the same int8 model
    assert entry.main(["test", *base, "--model", str(model), "--equalize", *table,
                       "--output_path", str(root / "t1")]) == 0
    assert entry.main(["test", *base, "--model", str(equalized), *table, "--output_path", str(root / "t2")]) == 0
    one, two = ((root / t / "report.log").read_text() for t in ("t1", "t2"))
    assert _difference(one) == _difference(two)
    # the int8 prototxt alone records the weights too (its header), so it is refused the same way
    int8 = ["--calibration_model", str(cal / "int8.prototxt")]
    assert '"equalize": true' in (cal / "int8.prototxt").read_text().split("\nname", 1)[0]
    assert entry.main(["test", *base, "--model", str(model), *int8, "--output_path", str(root / "t4")]) == 2
    message = capsys.readouterr().err
    assert "int8.prototxt was calibrated with --equalize" in message
    assert entry.main(["test", *base, "--model", str(model), "--equalize", *int8,
                       "--output_path", str(root / "t5")]) == 0
    # int8.prototxt stores Intel's float32 scales (127/T), so its thresholds are the .pb's to float32 precision and
    # a rounding of the int8 model may flip: the same figure to 1e-4, not to the last digit
    from_prototxt = float(_difference((root / "t5" / "report.log").read_text()).rsplit(":", 1)[1])
    assert from_prototxt == pytest.approx(float(_difference(one).rsplit(":", 1)[1]), rel=1e-4)
    # a table calibrated without it is refused with --equalize
    plain = root / "plain"
    assert entry.main(["calibrate", *base, "--model", str(model), "--no_bias_correction",
                       "--output_path", str(plain)]) == 0
    assert "3 Conv -> ReLU/PReLU -> Conv pair(s) could be equalized first (--equalize" in \
        (plain / "report.log").read_text()
    assert not (plain / "equalized.caffemodel").exists()
    assert entry.main(["test", *base, "--model", str(model), "--equalize", "--calibration_proto",
                       str(plain / "calibration_table.pb"), "--output_path", str(root / "t3")]) == 2
    assert "without --equalize" in capsys.readouterr().err
    assert entry.main(["test", *base, "--model", str(model), "--equalize", "--calibration_model",
                       str(plain / "int8.prototxt"), "--output_path", str(root / "t6")]) == 2
    assert "int8.prototxt was calibrated on" in capsys.readouterr().err


@pytest.mark.parametrize("name, proto, model, size, mean", [
    ("squeezenet_v1.0", "deploy.prototxt", "squeezenet_v1.0.caffemodel", (227, 227), (104, 117, 123)),
    ("res10_ssd_face", "deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel", (300, 300), (104, 177, 123)),
])
def test_opencv_runs_the_written_caffemodel_to_the_same_outputs(assets, tmp_path, name, proto, model, size, mean):
    """An independent Caffe implementation (OpenCV's importer) reads the equalized caffemodel with the original
    prototxt and computes what the original computes."""
    proto, model = assets / "models" / name / proto, assets / "models" / name / model
    eq = equalize_net(load_net(proto, model))
    assert eq.pairs
    written = write_equalized_caffemodel(model, eq, tmp_path / "equalized.caffemodel")
    original = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    equalized = cv2.dnn.readNetFromCaffe(str(proto), str(written))
    moved = max(float(np.abs(a - b).max()) for l1, l2 in zip(load_net(proto, model).layers, eq.net.layers)
                for a, b in zip(l1.blobs, l2.blobs))
    assert moved > 1e-3  # the weights really changed
    for image in sorted((assets / "images" / "detection").iterdir())[:2]:
        blob = cv2.dnn.blobFromImage(cv2.imread(str(image)), 1.0, size, mean)
        original.setInput(blob)
        equalized.setInput(blob)
        a, b = original.forward(), equalized.forward()
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
