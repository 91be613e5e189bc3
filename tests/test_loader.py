"""The loader: header styles, V1 upgrade, phases, train-only layers, in-place naming, weight matching, errors."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.errors import ModelError
from int8tune.runtime import Engine

CONV = "convolution_param { num_output: 2 kernel_size: 1 }"
W = {"conv": [np.ones((2, 3, 1, 1), np.float32), np.zeros(2, np.float32)]}


@pytest.mark.parametrize("header", [
    'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 4\ninput_dim: 5\n',
    'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 5 }\n',
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 5 } } }\n',
])
def test_three_input_header_styles(tmp_path, header):
    proto, model = write_net(tmp_path, header + layer("conv", "Convolution", "data", "conv", CONV), W)
    net = load_net(proto, model)
    assert net.inputs == {"data": (1, 3, 4, 5)}
    assert [l.name for l in net.layers] == ["conv"]


def test_in_place_versions_keep_the_plain_name_for_the_last_write(tmp_path):
    prototxt = (input_header((1, 3, 4, 4)) + layer("conv", "Convolution", "data", "x", CONV)
                + layer("scale", "Power", "x", "x", "power_param { scale: -1 }")
                + layer("relu", "ReLU", "x", "x")
                + layer("pool", "Pooling", "x", "p", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"))
    proto, model = write_net(tmp_path, prototxt, {"conv": W["conv"]})
    net = load_net(proto, model)
    tops = [l.tops[0] for l in net.layers]
    assert tops == ["x@conv", "x@scale", "x", "p"]
    assert net.layer("pool").bottoms == ("x",)
    assert {net.blob_of[t] for t in tops[:3]} == {"x"}
    engine = Engine(convert_net(net))
    out = engine.run(np.ones((1, 3, 4, 4), np.float32), ["x@conv", "x@scale", "x"])
    assert (out["x@conv"] == 3).all() and (out["x@scale"] == -3).all() and (out["x"] == 0).all()


def test_v1_layers_format_is_upgraded(tmp_path):
    prototxt = (input_header((1, 3, 2, 2)) +
                'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" '
                'convolution_param { num_output: 2 kernel_size: 1 } }\n'
                'layers { name: "relu" type: RELU bottom: "conv" top: "conv" }\n')
    proto = tmp_path / "v1.prototxt"
    proto.write_text(prototxt)
    _, model = write_net(tmp_path, input_header((1, 3, 2, 2)) + layer("conv", "Convolution", "data", "conv", CONV),
                         W, name="weights")
    net = load_net(proto, model)
    assert [(l.name, l.type) for l in net.layers] == [("conv", "Convolution"), ("relu", "ReLU")]


def test_train_layers_and_phases_are_dropped(tmp_path):
    prototxt = (input_header((1, 3, 2, 2)) + layer("conv", "Convolution", "data", "conv", CONV)
                + 'layer { name: "drop_train" type: "Dropout" bottom: "conv" top: "conv" include { phase: TRAIN } }\n'
                + 'layer { name: "not_test" type: "ReLU" bottom: "conv" top: "conv" exclude { phase: TEST } }\n'
                + layer("prob", "Softmax", "conv", "prob")
                + layer("loss", "SoftmaxWithLoss", ["conv", "label"], "loss")
                + layer("acc", "Accuracy", ["prob", "label"], "acc"))
    proto, model = write_net(tmp_path, prototxt, W)
    net = load_net(proto, model)
    assert [l.name for l in net.layers] == ["conv", "prob"]
    assert net.outputs == ["prob"]
    assert len(net.dropped) == 4


def test_missing_weights_name_the_layer(tmp_path):
    proto, model = write_net(tmp_path, input_header((1, 3, 2, 2)) + layer("conv", "Convolution", "data", "c", CONV), {})
    with pytest.raises(ModelError, match=r"layer 'conv' \(Convolution\) has learned parameters but the caffemodel"):
        load_net(proto, model)


def test_unknown_bottom_and_duplicate_names(tmp_path):
    proto, model = write_net(tmp_path, input_header((1, 3, 2, 2)) + layer("r", "ReLU", "nothing", "y"), {})
    with pytest.raises(ModelError, match=r"layer 'r' .*reads blob 'nothing'"):
        load_net(proto, model)
    proto, model = write_net(tmp_path, input_header((1, 3, 2, 2)) + layer("r", "ReLU", "data", "y")
                             + layer("r", "ReLU", "y", "z"), {}, name="dup")
    with pytest.raises(ModelError, match="both named 'r'"):
        load_net(proto, model)


def test_data_layer_is_refused_with_advice(tmp_path):
    proto, model = write_net(tmp_path, 'layer { name: "d" type: "Data" top: "data" top: "label" }\n', {})
    with pytest.raises(ModelError, match="deploy prototxt"):
        load_net(proto, model)


def test_unnamed_layer_gets_its_top_name(tmp_path):
    proto, model = write_net(tmp_path, input_header((1, 3)) + 'layer { type: "Softmax" bottom: "data" top: "prob" }\n',
                             {})
    assert [l.name for l in load_net(proto, model).layers] == ["prob"]


def test_parse_errors_name_file_and_line(tmp_path):
    proto = tmp_path / "bad.prototxt"
    proto.write_text('input: "data"\nlayer {\n  name: "x"\n  typo_field: 3\n}\n')
    with pytest.raises(ModelError, match=r"bad.prototxt:4:"):
        load_net(proto, None)


def test_swapped_files_are_reported(tmp_path):
    proto, model = write_net(tmp_path, input_header((1, 3)) + layer("p", "Softmax", "data", "p"), {})
    with pytest.raises(ModelError, match="swap --proto and --model"):
        load_net(proto, proto)
