"""caffe/reshape.with_input_shape: a fully convolutional net converted at another input size runs and gives
outputs of the size Caffe would; nets whose weights are bound to the input size, and bad shapes, are refused."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

from int8tune.caffe.loader import load_net
from int8tune.caffe.reshape import with_input_shape
from int8tune.convert.converter import convert_net
from int8tune.errors import ConfigError, ModelError
from int8tune.runtime import Engine

RNG = np.random.default_rng(11)

CONV_RELU_POOL = (
    input_header((1, 3, 8, 8))
    + layer("conv1", "Convolution", "data", "conv1", "convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
    + layer("relu1", "ReLU", "conv1", "conv1")
    + layer("pool1", "Pooling", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"))
CONV_WEIGHTS = {"conv1": [RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
                          RNG.standard_normal(4).astype(np.float32)]}


def _net(tmp_path, prototxt, weights, name="net"):
    return load_net(*write_net(tmp_path, prototxt, weights, name=name))


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_fully_convolutional_net_runs_at_a_larger_input(tmp_path):
    net = _net(tmp_path, CONV_RELU_POOL, CONV_WEIGHTS)
    big = with_input_shape(net, (2, 3, 17, 24))
    assert net.inputs == {"data": (1, 3, 8, 8)}  # the original is left as it was
    assert big.inputs == {"data": (2, 3, 17, 24)}

    original = convert_net(net)
    larger = convert_net(big)
    # Caffe's ceil-mode pooling: ceil((8 - 3) / 2) + 1 = 4; ceil((17 - 3) / 2) + 1 = 8, ceil((24 - 3) / 2) + 1 = 12
    assert original.shapes["pool1"] == (1, 4, 4, 4)
    assert larger.shapes["pool1"] == (2, 4, 8, 12)
    small_out = Engine(original).run(_x(1, 3, 8, 8))["pool1"]
    x = _x(2, 3, 17, 24)
    big_out = Engine(larger).run(x)["pool1"]
    assert small_out.shape == (1, 4, 4, 4)
    assert big_out.shape == (2, 4, 8, 12)

    # the numbers are those of the net at that size: a direct numpy conv + relu + Caffe ceil-mode max pool
    w, b = CONV_WEIGHTS["conv1"]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # (N, C, H, W, 3, 3)
    conv = np.maximum(np.einsum("nchwij,mcij->nmhw", windows, w) + b[None, :, None, None], 0)
    expected = np.empty_like(big_out)
    for i in range(8):
        for j in range(12):
            expected[:, :, i, j] = conv[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3))
    np.testing.assert_allclose(big_out, expected, rtol=1e-5, atol=1e-5)


def test_only_the_batch_changes(tmp_path):
    net = _net(tmp_path, CONV_RELU_POOL, CONV_WEIGHTS)
    four = with_input_shape(net, (4, 3, 8, 8))
    assert convert_net(four).shapes["pool1"] == (4, 4, 4, 4)


INNER_PRODUCT = (CONV_RELU_POOL
                 + layer("ip", "InnerProduct", "pool1", "ip", "inner_product_param { num_output: 5 }"))
IP_WEIGHTS = {**CONV_WEIGHTS, "ip": [RNG.standard_normal((5, 64)).astype(np.float32),
                                     np.zeros(5, np.float32)]}


def test_inner_product_after_a_spatial_blob_is_refused(tmp_path):
    net = _net(tmp_path, INNER_PRODUCT, IP_WEIGHTS)
    with pytest.raises(ConfigError, match=r"not fully convolutional: layer 'ip' \(type InnerProduct") as e:
        with_input_shape(net, (1, 3, 16, 16))
    assert "'pool1'" in str(e.value) and "net.prototxt" in str(e.value)
    # the same height and width (another batch) keeps the weights valid
    assert convert_net(with_input_shape(net, (3, 3, 8, 8))).shapes["ip"] == (3, 5)


def test_inner_product_after_global_pooling_is_fully_convolutional(tmp_path):
    prototxt = (CONV_RELU_POOL
                + layer("gap", "Pooling", "pool1", "gap", "pooling_param { pool: AVE global_pooling: true }")
                + layer("ip", "InnerProduct", "gap", "ip", "inner_product_param { num_output: 5 }"))
    weights = {**CONV_WEIGHTS, "ip": [RNG.standard_normal((5, 4)).astype(np.float32), np.zeros(5, np.float32)]}
    net = with_input_shape(_net(tmp_path, prototxt, weights), (1, 3, 32, 40))
    out = Engine(convert_net(net)).run(_x(1, 3, 32, 40))["ip"]
    assert out.shape == (1, 5)


@pytest.mark.parametrize("shape, message", [
    ((1, 1, 16, 16), r"has 1 channels, input 'data' of the net has 3"),
    ((1, 3, 0, 16), r"H is 0; every dimension must be positive"),
    ((1, 3, 16, -2), r"W is -2"),
    ((3, 16, 16), r"must be 4 integers"),
    ((1, 3, 16.0, 16), r"must be 4 integers"),
])
def test_bad_shapes_are_refused(tmp_path, shape, message):
    net = _net(tmp_path, CONV_RELU_POOL, CONV_WEIGHTS)
    with pytest.raises(ConfigError, match=message):
        with_input_shape(net, shape)


def test_several_inputs_are_refused_and_named(tmp_path):
    prototxt = (input_header((1, 3, 8, 8), "left") + input_header((1, 3, 8, 8), "right")
                + layer("sum", "Eltwise", ["left", "right"], "sum"))
    net = _net(tmp_path, prototxt, {})
    with pytest.raises(ConfigError, match=r"has 2: left, right"):
        with_input_shape(net, (1, 3, 16, 16))


def test_a_size_the_geometry_does_not_fit_is_reported_by_the_converter(tmp_path):
    """Upsample x2 of a stride-2 blob concatenated with its skip connection: odd heights do not line up."""
    prototxt = (input_header((1, 2, 8, 8))
                + layer("down", "Pooling", "data", "down", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
                + layer("up", "Upsample", "down", "up", "upsample_param { scale: 2 }")
                + layer("cat", "Concat", ["data", "up"], "cat"))
    net = _net(tmp_path, prototxt, {})
    assert convert_net(with_input_shape(net, (1, 2, 16, 24))).shapes["cat"] == (1, 4, 16, 24)
    with pytest.raises(ModelError, match="'cat'"):
        convert_net(with_input_shape(net, (1, 2, 15, 16)))  # pooling rounds 15 up to 8, upsampled to 16


# -- real models (skipped without ../shared/assets) -------------------------------------------------------------

def test_real_yolov3_nano_at_416(assets):
    """Fully convolutional (conv, BN, Scale, ReLU, Eltwise, Concat, Upsample): 320 -> 416 gives grids of 13 and 26."""
    folder = assets / "models" / "yolov3_nano_voc"
    net = load_net(folder / "MobileNetV2-YOLOv3-Nano-voc.prototxt", folder / "MobileNetV2-YOLOv3-Nano-voc.caffemodel")
    assert net.inputs["data"] == (1, 3, 320, 320)
    converted = convert_net(with_input_shape(net, (1, 3, 416, 416)))
    out = Engine(converted).run(RNG.uniform(0, 1, (1, 3, 416, 416)).astype(np.float32),
                                ["layer79-conv", "layer69-conv"])
    assert out["layer79-conv"].shape == (1, 75, 26, 26)
    assert out["layer69-conv"].shape == (1, 75, 13, 13)
    assert all(np.isfinite(v).all() for v in out.values())


def test_real_res10_ssd_at_another_size_matches_opencv(assets):
    """res10 has no learned size-bound weight: its PriorBox boxes are recomputed at conversion from the feature
    map and image sizes, as Caffe's Reshape does. At 240x320 the detections equal OpenCV's at that size."""
    cv2 = pytest.importorskip("cv2")
    folder = assets / "models" / "res10_ssd_face"
    proto, model = folder / "deploy.prototxt", folder / "res10_300x300_ssd_iter_140000.caffemodel"
    net = with_input_shape(load_net(proto, model), (1, 3, 240, 320))
    image = cv2.imread(str(assets / "images" / "detection" / "multiple-faces.jpg"))
    x = cv2.resize(image, (320, 240)).astype(np.float32) - np.float32([104, 177, 123])
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    converted = convert_net(net)
    ours = Engine(converted).run(x, ["mbox_priorbox", "detection_out"])
    ref_net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    ref_net.setInput(x, "data")
    ref_priors, ref_det = ref_net.forward(["mbox_priorbox", "detection_out"])
    assert ours["mbox_priorbox"].shape == ref_priors.shape != convert_net(load_net(proto, model)).shapes[
        "mbox_priorbox"]
    np.testing.assert_allclose(ours["mbox_priorbox"], ref_priors, rtol=0, atol=1e-5)
    rows = ours["detection_out"][0, 0]
    rows = rows[rows[:, 2] > 0.5]
    ref_rows = ref_det[0, 0]
    ref_rows = ref_rows[ref_rows[:, 2] > 0.5]
    assert len(rows) == len(ref_rows) > 0
    np.testing.assert_allclose(rows[:, 2:], ref_rows[:, 2:], rtol=0, atol=1e-3)


def test_real_lenet_is_not_fully_convolutional(assets):
    folder = assets / "models" / "lenet_mnist"
    net = load_net(folder / "lenet.prototxt", folder / "lenet_iter_10000.caffemodel")
    with pytest.raises(ConfigError, match=r"not fully convolutional: layer 'ip1'"):
        with_input_shape(net, (1, 1, 32, 32))
