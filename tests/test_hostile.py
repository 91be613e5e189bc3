"""Hostile and broken inputs: each is refused with an error naming the file, line, layer, blob or key at fault
(an Int8TuneError, or one `error:` line from the CLI), never accepted with a silently different meaning, never
a traceback, never a hang."""

from __future__ import annotations

import errno
import json
import os
import re

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

import main as entry
from int8tune.caffe.loader import load_net, read_caffemodel, read_prototxt
from int8tune.data import DataItem, check_params_fit, iter_batches
from int8tune.errors import ConfigError, ModelError
from int8tune.image_params import ColorFormat, ImageParams, load_image_params
from int8tune.pipeline.workspace import load_workspace
from int8tune.tune.trials import Trial, TrialLog

RNG = np.random.default_rng(5)


def conv_net(body: str = "convolution_param { num_output: 2 kernel_size: 3 }", bias: bool = True,
             extra_blobs: int = 0):
    prototxt = input_header((1, 3, 8, 8)) + layer("conv", "Convolution", "data", "conv", body)
    blobs = [RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)]
    blobs += [RNG.standard_normal(2).astype(np.float32)] if bias else []
    blobs += [np.ones(2, np.float32)] * extra_blobs
    return prototxt, {"conv": blobs}


def with_blob_value(model_bytes: bytes, layer_name: str, blob: int, index: int, value: float) -> bytes:
    net = read_caffemodel_bytes(model_bytes)
    target = next(lp for lp in net.layer if lp.name == layer_name)
    target.blobs[blob].data[index] = value
    return net.SerializeToString()


def read_caffemodel_bytes(data: bytes):
    from int8tune.caffe.schema import caffe_pb2

    net = caffe_pb2.NetParameter()
    net.ParseFromString(data)
    return net


# --- 1. prototxts and caffemodels Caffe refuses -----------------------------------------------------------

def test_a_singular_field_given_twice_is_refused_with_file_and_line(lenet, tmp_path):
    proto, model = lenet
    lines = proto.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == 'type: "ReLU"')
    lines.insert(at + 1, '  type: "Sigmoid"')  # Merge kept the last: a Sigmoid net
    bad = tmp_path / "lenet.prototxt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ModelError, match=rf'lenet\.prototxt:{at + 2}:\d+: .*multiple "type" fields'):
        load_net(bad, model)
    with pytest.raises(ModelError, match=rf"lenet\.prototxt:{at + 2}:"):
        read_prototxt(bad)


def test_a_repeated_sub_message_and_a_repeated_number_are_refused(tmp_path):
    prototxt, weights = conv_net("convolution_param { num_output: 2 kernel_size: 3 num_output: 4 }")
    proto, model = write_net(tmp_path, prototxt, weights)
    with pytest.raises(ModelError, match='multiple "num_output" fields'):
        load_net(proto, model)
    once, weights = conv_net()
    proto.write_text(once)
    load_net(proto, model)  # the same net without the repetition loads
    proto.write_text(once.replace('  convolution_param {', '  convolution_param { pad: 1 }\n  convolution_param {'))
    with pytest.raises(ModelError, match='multiple "convolution_param" fields'):
        load_net(proto, model)


def test_two_layers_writing_one_blob_not_in_place_are_refused(tmp_path):
    head = input_header((1, 3, 8, 8))
    relu = layer("relu_a", "ReLU", "data", "x")
    second = layer("relu_b", "Sigmoid", "data", "x")  # not in place: "x" produced by multiple sources
    proto, model = write_net(tmp_path, head + relu + second + layer("out", "Softmax", "x", "prob"))
    with pytest.raises(ModelError, match=r"layer 'relu_b' .* writes blob 'x' \(top 0\), which layer 'relu_a' "
                                         r"already produces"):
        load_net(proto, model)
    # in place (top 0 == bottom 0) stays fine, and so does a chain of in-place layers
    proto.write_text(head + relu + layer("relu_b", "Sigmoid", "x", "x") + layer("out", "Softmax", "x", "prob"))
    assert [lay.name for lay in load_net(proto, model).layers] == ["relu_a", "relu_b", "out"]
    # an input overwritten by a layer that does not read it in place
    proto.write_text(head + layer("relu_a", "ReLU", "x0", "data").replace('bottom: "x0"', 'bottom: "data"')
                     .replace('top: "data"', 'top: "y"\n  top: "data"'))
    with pytest.raises(ModelError, match=r"writes blob 'data' \(top 1\), which the net's input declaration"):
        load_net(proto, model)


def test_an_eltwise_writing_its_second_bottom_is_not_in_place(tmp_path):
    head = input_header((1, 3, 8, 8))
    body = (layer("a", "ReLU", "data", "a") + layer("b", "Sigmoid", "data", "b")
            + layer("sum", "Eltwise", ["a", "b"], "b"))  # top 0 'b' is bottom 1, not bottom 0
    proto, model = write_net(tmp_path, head + body)
    with pytest.raises(ModelError, match="layer 'sum' .* writes blob 'b'"):
        load_net(proto, model)


def test_an_input_declared_twice_is_refused(tmp_path):
    prototxt = (input_header((1, 3, 8, 8))
                + layer("in", "Input", [], "data", "input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } }")
                + layer("r", "ReLU", "data", "r"))
    proto, model = write_net(tmp_path, prototxt)
    with pytest.raises(ModelError, match="Input layer 'in' declares input 'data', which is already declared"):
        load_net(proto, model)


def test_a_caffemodel_layer_with_more_blobs_than_its_type_takes_is_refused(tmp_path):
    prototxt, weights = conv_net(extra_blobs=1)
    proto, model = write_net(tmp_path, prototxt, weights)
    with pytest.raises(ModelError, match=r"net\.caffemodel: layer 'conv' \(Convolution\) carries 3 blob\(s\) but a "
                                         r"Convolution layer with these settings takes 2 \(weights, bias\)"):
        load_net(proto, model)
    # bias_term: false takes one blob; a second one is refused, not ignored
    prototxt, weights = conv_net("convolution_param { num_output: 2 kernel_size: 3 bias_term: false }")
    proto, model = write_net(tmp_path, prototxt, weights)
    with pytest.raises(ModelError, match=r"carries 2 blob\(s\) .* takes 1 \(weights\)"):
        load_net(proto, model)


def test_weights_given_to_a_layer_type_without_parameters_are_refused(tmp_path):
    prototxt = input_header((1, 3, 8, 8)) + layer("conv", "ReLU", "data", "conv")  # was a Convolution
    proto, model = write_net(tmp_path, prototxt, conv_net()[1])
    with pytest.raises(ModelError, match=r"layer 'conv' \(ReLU\) carries 2 blob\(s\) .* takes none"):
        load_net(proto, model)


def test_two_caffemodel_layers_of_one_name_with_different_weights_are_refused(tmp_path):
    prototxt, weights = conv_net()
    proto, model = write_net(tmp_path, prototxt, weights)
    net = read_caffemodel(model)
    twin = net.layer.add()
    twin.CopyFrom(net.layer[0])
    twin.blobs[1].data[0] += 1.0
    model.write_bytes(net.SerializeToString())
    with pytest.raises(ModelError, match="two layers named 'conv' carry different weights"):
        load_net(proto, model)
    twin.blobs[1].CopyFrom(net.layer[0].blobs[1])  # an identical copy is harmless
    model.write_bytes(net.SerializeToString())
    load_net(proto, model)


def test_blob_sizes_the_prototxt_fixes_are_checked_before_folding(tmp_path):
    prototxt = (input_header((1, 3, 8, 8))
                + layer("conv", "Convolution", "data", "conv", "convolution_param { num_output: 2 kernel_size: 3 }")
                + layer("bn", "BatchNorm", "conv", "conv"))
    weights = {"conv": conv_net()[1]["conv"],
               "bn": [np.zeros(2, np.float32), np.ones(3, np.float32), np.ones(1, np.float32)]}
    proto, model = write_net(tmp_path, prototxt, weights)
    with pytest.raises(ModelError, match=r"layer 'bn' \(BatchNorm\) blob 1 \(variance\) holds 3 value\(s\), "
                                         r"expected 2"):
        load_workspace(proto, model)
    weights["bn"][1] = np.array([1.0, -0.5], np.float32)
    proto, model = write_net(tmp_path, prototxt, weights)
    with pytest.raises(ModelError, match=r"blob 1 \(variance\) holds 1 negative value"):
        load_workspace(proto, model)


def test_num_output_zero_is_refused_by_the_loader(tmp_path):
    prototxt, weights = conv_net("convolution_param { num_output: 0 kernel_size: 3 }")
    proto, model = write_net(tmp_path, prototxt, weights)
    with pytest.raises(ModelError, match=r"layer 'conv' .* convolution_param\.num_output 0"):
        load_workspace(proto, model)


# --- 2. NaN / inf weights -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, blob", [(float("nan"), 0), (float("inf"), 1), (float("-inf"), 0)])
def test_non_finite_weights_are_refused_at_load(lenet, tmp_path, value, blob):
    proto, model = lenet
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(with_blob_value(model.read_bytes(), "conv2", blob, 7, value))
    role = "weights" if blob == 0 else "bias"
    with pytest.raises(ModelError, match=rf"bad\.caffemodel: layer 'conv2' \(Convolution\) blob {blob} \({role}\) "
                                         rf"holds 1 NaN/inf value"):
        load_net(proto, bad)


def test_check_refuses_nan_weights_instead_of_passing(lenet, tmp_path, mnist_data, capsys):
    proto, model = lenet
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(with_blob_value(model.read_bytes(), "ip1", 0, 3, float("nan")))
    assert entry.main(["check", "--proto", str(proto), "--model", str(bad), *mnist_data]) == 2
    err = capsys.readouterr().err
    assert "layer 'ip1' (InnerProduct) blob 0 (weights) holds 1 NaN/inf value" in err
    assert "PASS" not in err


# --- 3. trial log lines of the wrong type -------------------------------------------------------------------

def _trial_log(tmp_path, n: int = 3):
    path = tmp_path / "trials.jsonl"
    log = TrialLog(path, {"model": "m"})
    for i in range(n):
        log.append(Trial(i, "conv1", "conv1", 1.0 + i / 10, 2.0, 0.5, 0.01, "", {"subset": 0.4}))
    return path


@pytest.mark.parametrize("field, value", [("multiplier", None), ("multiplier", "abc"), ("difference", "x"),
                                          ("layer", 3), ("extra", []), ("index", True), ("restart", -1)])
@pytest.mark.parametrize("line", [2, 4])  # a middle line and the last one (a complete last line is no kill)
def test_a_trial_line_of_the_wrong_type_is_refused_naming_file_and_line(tmp_path, field, value, line):
    path = _trial_log(tmp_path)
    lines = path.read_text().splitlines()
    trial = json.loads(lines[line - 1])
    trial[field] = value
    lines[line - 1] = json.dumps(trial)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"trials\.jsonl:{line}: unreadable trial \(field '{field}': expected"):
        TrialLog(path, {"model": "m"})


def test_a_trial_line_that_is_not_an_object_or_lacks_fields_is_refused(tmp_path):
    path = _trial_log(tmp_path)
    lines = path.read_text().splitlines()
    for replacement, message in (("[1, 2]", "expected a JSON object"), ('{"index": 1}', "missing field"),
                                 (lines[1][:-1] + ', "x": 1}', "unknown field")):
        path.write_text("\n".join([lines[0], replacement, *lines[2:]]) + "\n")
        with pytest.raises(ConfigError, match=rf"trials\.jsonl:2: unreadable trial \({message}"):
            TrialLog(path, {"model": "m"})


def test_a_trial_log_with_a_non_utf8_line_is_refused_naming_it(tmp_path):
    path = _trial_log(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'"conv1"', b'"conv\xff"', 2))
    with pytest.raises(ConfigError, match=r"trials\.jsonl:2: not UTF-8"):
        TrialLog(path, {"model": "m"})


def test_a_killed_run_still_resumes_from_its_partial_last_line(tmp_path):
    path = _trial_log(tmp_path)
    path.write_text(path.read_text()[:-20])
    assert TrialLog(path, {"model": "m"}).replayed == 2


# --- 4. a symlinked trial log -------------------------------------------------------------------------------

@pytest.mark.parametrize("resume", [True, False])
def test_a_symlinked_trial_log_is_refused_and_its_target_untouched(tmp_path, resume):
    outside = tmp_path / "precious.txt"
    out = tmp_path / "out"
    out.mkdir()
    source = _trial_log(tmp_path)  # a valid log with the same fingerprint: resuming would rewrite it
    outside.write_bytes(source.read_bytes())
    before = outside.read_bytes()
    (out / "trials.jsonl").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"trial log .*out/trials\.jsonl is a symbolic link \(to .*precious\.txt\)"):
        TrialLog(out / "trials.jsonl", {"model": "m"}, resume=resume)
    assert outside.read_bytes() == before


def test_a_dangling_trial_log_symlink_creates_nothing_outside(tmp_path):
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    (tmp_path / "trials.jsonl").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        TrialLog(tmp_path / "trials.jsonl", {"model": "m"})
    assert not target.exists()


def test_a_trial_log_replaced_by_a_symlink_while_running_is_not_followed(tmp_path):
    path = tmp_path / "trials.jsonl"
    log = TrialLog(path, {"model": "m"})
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(ConfigError, match="symbolic link"):
        log.append(Trial(0, "conv1", "conv1", 1.0, 2.0, 0.5, 0.01))
    assert outside.read_text() == "keep me\n"


# --- 5. absurd image sizes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("size", [100000, 100000]), ("size", [28, 16385]),
                                        ("resize", [20000, 20000]), ("resize_short", 50000)])
def test_absurd_image_sizes_are_refused_naming_file_and_key(tmp_path, key, value):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"size": [28, 28], key: value}))
    with pytest.raises(ConfigError, match=rf"params\.json: key '{key}': expected .*at most 16384"):
        load_image_params(path)


def test_image_params_that_do_not_give_the_network_input_are_refused_before_any_image(tmp_path):
    calls = []

    def prepare(path, params):
        calls.append(path)
        return np.zeros(params.output_shape, np.float32)

    items = [DataItem(tmp_path / "a.png")]
    big = ImageParams(size=(16384, 16384), color_format=ColorFormat.GRAY, source=str(tmp_path / "params.json"))
    with pytest.raises(ConfigError, match=r"params\.json: key 'size' is \[16384, 16384\] but the network input needs "
                                          r"\[28, 28\]"):
        next(iter_batches(items, prepare, big, (64, 1, 28, 28), 1))
    assert calls == []
    colour = ImageParams(size=(28, 28), source="p.json")
    with pytest.raises(ConfigError, match="key 'color_format' is 'bgr' \\(3 channel\\(s\\)\\) but the network input "
                                          "has 1"):
        check_params_fit(colour, (1, 1, 28, 28))
    check_params_fit(ImageParams(size=(20, 30), transpose=True, source="p.json"), (1, 3, 30, 20))
    with pytest.raises(ConfigError, match=r"transpose: true swaps"):
        check_params_fit(ImageParams(size=(20, 30), transpose=True, source="p.json"), (1, 3, 20, 30))


def test_check_with_a_huge_size_fails_fast_naming_the_key(lenet, tmp_path, mnist_data, capsys):
    proto, model = lenet
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"size": [16000, 16000], "color_format": "gray"}))
    assert entry.main(["check", "--proto", str(proto), "--model", str(model), *mnist_data]) == 2
    assert "key 'size' is [16000, 16000] but the network input needs [28, 28]" in capsys.readouterr().err


# --- 6. one error line instead of a traceback ---------------------------------------------------------------

@pytest.mark.parametrize("setting, message", [("stride: 0", r"stride \[0, 0\]"),
                                              ("kernel_size: 0", r"kernel_size \[0, 0\]"),
                                              ("dilation: 0", r"dilation \[0, 0\]")])
def test_zero_stride_kernel_or_dilation_is_refused_naming_the_layer(tmp_path, setting, message):
    body = "convolution_param { num_output: 2 kernel_size: 3 " + setting + " }"
    if setting.startswith("kernel"):
        body = "convolution_param { num_output: 2 " + setting + " }"
    prototxt, weights = conv_net(body)
    weights["conv"][0] = weights["conv"][0][:, :, :0, :0] if setting.startswith("kernel") else weights["conv"][0]
    proto, model = write_net(tmp_path, prototxt, weights)
    with pytest.raises(ModelError, match=rf"layer 'conv' \(type Convolution, #0 in the prototxt\): {message} must be "
                                         rf"positive"):
        load_workspace(proto, model)


def test_a_zero_stride_reaches_the_cli_as_an_error_line(lenet, tmp_path, mnist_data, capsys):
    proto, model = lenet
    bad = tmp_path / "lenet.prototxt"
    bad.write_text(proto.read_text().replace("stride: 1", "stride: 0", 1))
    assert entry.main(["check", "--proto", str(bad), "--model", str(model), *mnist_data]) == 2
    assert re.search(r"error: layer 'conv1' .*stride \[0, 0\] must be positive", capsys.readouterr().err)


@pytest.mark.parametrize("body, message", [
    ('layer { name: "i" type: "Interp" bottom: "data" top: "i" interp_param { shrink_factor: 0 } }',
     "interp_param.shrink_factor must be at least 1"),
    ('layer { name: "l" type: "Log" bottom: "data" top: "l" log_param { base: 1 } }', "log_param.base 1"),
    ('layer { name: "e" type: "Exp" bottom: "data" top: "e" exp_param { base: 0 } }', "exp_param.base must be"),
    ('layer { name: "c" type: "Concat" top: "c" }', r"has 0 bottom\(s\)"),
])
def test_other_divisions_by_a_setting_are_refused(tmp_path, body, message):
    proto, model = write_net(tmp_path, input_header((1, 3, 8, 8)) + body + "\n")
    with pytest.raises(ModelError, match=message):
        load_workspace(proto, model)


def test_a_directory_as_model_or_prototxt_is_called_a_directory(lenet, tmp_path):
    proto, _ = lenet
    with pytest.raises(ModelError, match="caffemodel .* is a directory"):
        load_net(proto, tmp_path)
    with pytest.raises(ModelError, match="prototxt .* is a directory"):
        load_net(tmp_path, None)
    with pytest.raises(ConfigError, match="is a directory"):
        load_image_params(tmp_path)


@pytest.fixture()
def calibrate_args(lenet, mnist_data):
    proto, model = lenet
    return ["calibrate", "--proto", str(proto), "--model", str(model), *mnist_data, "--method", "minmax"]


def test_an_output_path_that_is_a_file_or_under_one_is_an_error_line(tmp_path, calibrate_args, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert entry.main([*calibrate_args, "--output_path", str(afile)]) == 2
    assert f"error: {afile}: exists and is not a folder" in capsys.readouterr().err
    assert entry.main([*calibrate_args, "--output_path", str(afile / "sub")]) == 2
    assert f"error: {afile / 'sub'}: Not a directory ({afile} is a file)" in capsys.readouterr().err
    assert afile.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_an_error_line(tmp_path, calibrate_args, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert entry.main([*calibrate_args, "--output_path", str(folder / "out")]) == 2
    finally:
        folder.chmod(0o755)
    assert "Permission denied" in capsys.readouterr().err


def test_permission_denied_and_a_full_disk_are_error_lines(tmp_path, calibrate_args, capsys, monkeypatch):
    import int8tune.outputs as outputs

    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path.parent))

    monkeypatch.setattr(outputs, "_create_temp", denied)
    assert entry.main([*calibrate_args, "--output_path", str(tmp_path / "out")]) == 2
    assert f"error: {tmp_path / 'out'}: Permission denied" in capsys.readouterr().err

    def full_disk(path):  # /dev/full: every write fails with ENOSPC, as on a full file system
        return os.open("/dev/full", os.O_WRONLY), str(path) + ".never"

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    monkeypatch.setattr(outputs, "_create_temp", full_disk)
    assert entry.main([*calibrate_args, "--output_path", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: \S*int8.prototxt: No space left on device", err) and "Traceback" not in err


def test_an_opencv_error_in_check_is_an_error_line(tmp_path, mnist_data, capsys):
    # OpenCV's Caffe importer has no Threshold layer; int8tune has.
    prototxt = input_header((1, 1, 28, 28)) + layer("t", "Threshold", "data", "t")
    proto, model = write_net(tmp_path, prototxt)
    assert entry.main(["check", "--proto", str(proto), "--model", str(model), *mnist_data]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: OpenCV failed.*Threshold", err), err


def test_a_genuine_bug_still_shows_its_traceback(lenet, mnist_data, monkeypatch):
    import int8tune.commands.check as check

    def buggy(config, prepare_image):
        raise TypeError("a bug in int8tune")

    monkeypatch.setattr(check, "run_check", buggy)
    proto, model = lenet
    with pytest.raises(TypeError, match="a bug in int8tune"):
        entry.main(["check", "--proto", str(proto), "--model", str(model), *mnist_data])


def test_a_directory_given_as_model_on_the_command_line_is_called_one(lenet, tmp_path, capsys):
    proto, _ = lenet
    assert entry.main(["export", "--proto", str(proto), "--model", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert f"--model {tmp_path}: is a directory, expected a file" in capsys.readouterr().err
