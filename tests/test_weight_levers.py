"""The weight levers (--adaround, --bias_correction) on a tiny net: bias correction leaves no mean int8 error per
channel beyond half an int32 bias step, AdaRound never rounds a layer worse than to nearest on its own inputs, the
exported integer weights are the learned ones bit for bit, the written caffemodel carries both, and the options
are refused where they mean nothing."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import cv2
import numpy as np
import onnx
import pytest
from netbuilder import input_header, layer, write_net
from onnx import numpy_helper

import main as entry
from int8tune.caffe.fold import fold_batchnorm_scale
from int8tune.caffe.loader import load_net
from int8tune.caffe.unfold import unfold_changes, with_blobs
from int8tune.config import QuantConfig
from int8tune.pipeline.calibration import calibrate
from int8tune.pipeline.images import Images
from int8tune.pipeline.levers import adaround_workspace
from int8tune.pipeline.workspace import load_workspace, save_corrected
from int8tune.quant.adaround import AdaRoundOptions, RoundedLayer
from int8tune.quant.bias_correction import CorrectedLayer
from int8tune.quant.calibrate import layer_weight, weight_thresholds
from int8tune.quant.calibrators import CalibratorOptions, minmax_weights
from int8tune.quant.emit import PRIVATE
from int8tune.quant.rounding_solver import Solver
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.weights import from_output_matrix, quantize_matrix, to_output_matrix
from int8tune.runtime import Engine
from int8tune.workflow import save_calibration

RNG = np.random.default_rng(11)
C = 16
PROTOTXT = (input_header((1, 3, 12, 12))
            # no bias of its own: the folded bias lives in the Scale after it
            + layer("conv1", "Convolution", "data", "conv1",
                    f"convolution_param {{ num_output: {C} kernel_size: 3 pad: 1 bias_term: false }}")
            + layer("bn1", "BatchNorm", "conv1", "conv1")
            + layer("sc1", "Scale", "conv1", "conv1", "scale_param { bias_term: true }")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("conv2", "Convolution", "conv1", "conv2", f"convolution_param {{ num_output: {C} kernel_size: 1 }}")
            + layer("relu2", "ReLU", "conv2", "conv2")
            + layer("dw3", "Convolution", "conv2", "dw3",
                    f"convolution_param {{ num_output: {C} kernel_size: 3 pad: 1 group: {C} }}")
            + layer("relu3", "ReLU", "dw3", "dw3")
            # no bias anywhere: bias correction has nowhere to put one
            + layer("conv4", "Convolution", "dw3", "conv4",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false }")
            + layer("relu4", "ReLU", "conv4", "conv4")
            + layer("pool", "Pooling", "conv4", "pool", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            # 288 weights per output, 8 images: too few samples for AdaRound to learn from
            + layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 10 }"))
IMAGES = 8


def _weights():
    def w(*s):
        return RNG.standard_normal(s).astype(np.float32)
    return {"conv1": [w(C, 3, 3, 3) * 0.3],
            "bn1": [w(C) * 0.2, np.abs(w(C)) + 0.5, np.array([1.0], np.float32)],
            "sc1": [np.abs(w(C)) + 0.5, w(C) * 0.1],
            "conv2": [w(C, C, 1, 1) * 0.3, w(C) * 0.1],
            "dw3": [w(C, 1, 3, 3) * 0.3, w(C) * 0.1],
            "conv4": [w(8, C, 3, 3) * 0.1],
            "fc": [w(10, 288) * 0.1, w(10) * 0.1]}


@pytest.fixture(scope="module")
def net_files(tmp_path_factory):
    return write_net(tmp_path_factory.mktemp("levers"), PROTOTXT, _weights())


@pytest.fixture(scope="module")
def images():
    x = RNG.uniform(0, 2, (IMAGES, 3, 12, 12)).astype(np.float32)
    return Images(f"{IMAGES} random images", IMAGES, _batches=[x[:4], x[4:]])


def _raw_output(graph, converted, layer: str) -> str:
    """The int8 graph's tensor holding a layer's output before its output point rounds it."""
    out = converted.records[layer].outputs[0]
    return out + PRIVATE if out + PRIVATE in graph.sources else out


def _mean_errors(ws, table, images, layers) -> dict[str, np.ndarray]:
    """Per layer, the mean over images and positions of int8 - fp32 per output channel (the int8 model as the
    simulation computes it, fp32 = the workspace's reference)."""
    graph = build_int8_graph(ws.converted, table)
    int8 = Engine(dataclasses.replace(graph.converted, model=graph.frozen(table)), threads=1, simulation=True)
    fp32 = Engine(ws.fp32, threads=1)
    names = {l: _raw_output(graph, ws.converted, l) for l in layers}
    out = {}
    x = np.concatenate(images.batches)
    got = int8.run_tensors(x, list(names.values()))
    ref = fp32.run_tensors(x, [ws.converted.records[l].outputs[0] for l in layers])
    for l in layers:
        d = got[names[l]].astype(np.float64) - ref[ws.converted.records[l].outputs[0]]
        out[l] = np.moveaxis(d, 1, 0).reshape(d.shape[1], -1).mean(axis=1)
    return out


@pytest.mark.parametrize("bias", ["int32", "fp32"])
def test_bias_correction_leaves_at_most_half_an_int32_step_of_mean_error_per_channel(net_files, images, tmp_path,
                                                                                      bias):
    proto, model = net_files
    ws = load_workspace(proto, model)
    cal = calibrate(ws, images, QuantConfig(bias_correction=True, bias=bias), measure=images, threads=1)
    done = {r.layer: r for r in cal.ws.corrections.bias}
    assert isinstance(done["conv4"], CorrectedLayer) is False and "no bias" in done["conv4"].reason
    corrected = [l for l, r in done.items() if isinstance(r, CorrectedLayer)]
    assert corrected == ["conv1", "conv2", "dw3", "fc"]
    # measured again, independently, on the weights as written and read back (the int32 biases must survive)
    written = save_corrected(cal.ws, tmp_path)
    again = load_workspace(proto, model, corrected_model=written)
    before = _mean_errors(ws, cal.table, images, corrected)
    after = _mean_errors(again, cal.table, images, corrected)
    spec = cal.table.spec
    for l in corrected:
        e = cal.table.layers[l]
        step = cal.table.blobs[e.input_value].scale(spec) * (np.asarray(e.weight_thresholds, np.float32) / 127)
        if bias == "fp32":  # nothing rounds the corrected bias: only float sums are left
            step = np.zeros_like(step)
            assert done[l].step is None
        assert np.all(np.abs(after[l]) <= 0.5 * step * (1 + 1e-4) + 1e-5), l
        np.testing.assert_allclose(after[l], done[l].residual, atol=1e-6)
    assert any(np.abs(before[l]).max() > 2 * np.abs(after[l]).max() for l in corrected)  # it did something


def _layer_output(converted, layer: str, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The layer's fp32 output on `x` with only its own weights replaced (everything upstream unchanged)."""
    model = onnx.ModelProto()
    model.CopyFrom(converted.model)
    name = converted.records[layer].weight
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(weight.astype(np.float32), name))
    engine = Engine(dataclasses.replace(converted, model=model), threads=1)
    out = converted.records[layer].outputs[0]
    return engine.run_tensors(x, [out])[out].astype(np.float64)


@pytest.mark.parametrize("solver", list(Solver))
def test_adaround_never_rounds_a_layer_worse_than_to_nearest_on_its_own_inputs(net_files, images, solver):
    proto, model = net_files
    ws = load_workspace(proto, model)
    quant = QuantConfig(adaround=True)
    # every im2col row of the 8 images: the learned rounding is judged on exactly the data it saw
    out = adaround_workspace(ws, images, quant, threads=1, options=AdaRoundOptions(rows=10 ** 6, solver=solver))
    results = {r.layer: r for r in out.corrections.adaround}
    assert not isinstance(results["fc"], RoundedLayer) and "too few" in results["fc"].reason
    x = np.concatenate(images.batches)
    spec = quant.spec()
    gains = []
    for name, r in results.items():
        if not isinstance(r, RoundedLayer):
            continue
        assert r.error <= r.error_nearest
        weight, op, group = layer_weight(ws.converted, name)
        t = weight_thresholds(weight, op, group, "minmax", spec, CalibratorOptions())
        q, s = quantize_matrix(to_output_matrix(weight, op, group), t, spec.rounding, spec.qmax)
        nearest = from_output_matrix(q * s[:, None], weight, op, group)
        ref = _layer_output(ws.converted, name, weight, x)
        near = ((_layer_output(ws.converted, name, nearest, x) - ref) ** 2).sum()
        learned = ((_layer_output(ws.converted, name, layer_weight(out.converted, name)[0], x) - ref) ** 2).sum()
        assert learned <= near * (1 + 1e-4), name
        gains.append(learned / near)
    assert min(gains) < 0.9  # and it does round better somewhere


def test_a_layer_whose_gram_matrix_cannot_be_factorized_is_skipped_by_name(net_files, images, monkeypatch):
    """The sequential solver failing on one layer's inputs leaves that layer to round-to-nearest, says which and why,
    and the other layers are still rounded."""
    import int8tune.quant.adaround as adaround_module

    real = adaround_module.sequential_rounding

    def failing_on_conv2(x, low, step, gram, groups, damping, block):
        if x.shape == (C, C):  # conv2: 16 x (16 x 1 x 1)
            raise np.linalg.LinAlgError("Matrix is not positive definite")
        return real(x, low, step, gram, groups, damping, block)

    monkeypatch.setattr(adaround_module, "sequential_rounding", failing_on_conv2)
    proto, model = net_files
    out = adaround_workspace(load_workspace(proto, model), images, QuantConfig(adaround=True), threads=1)
    results = {r.layer: r for r in out.corrections.adaround}
    assert not isinstance(results["conv2"], RoundedLayer)
    assert "cannot be factorized" in results["conv2"].reason and "round-to-nearest" in results["conv2"].reason
    assert isinstance(results["conv1"], RoundedLayer) and results["conv1"].rounded.any()


@pytest.mark.parametrize("solver", list(Solver))
def test_exported_integer_weights_are_the_learned_ones(net_files, images, tmp_path, solver):
    """--target onnxruntime (widened channels included): the QDQ model and a calibration of the written
    caffemodel both quantize the weights to AdaRound's integers, at AdaRound's scale."""
    proto, model = net_files
    ws = load_workspace(proto, model)
    cal = calibrate(ws, images, QuantConfig(adaround=True, adaround_solver=solver.value), measure=images, threads=1)
    save_calibration(cal, cal.ws, tmp_path, threads=1)
    qdq = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "model_int8_qdq.onnx")).graph.initializer}
    again = load_workspace(proto, model, corrected_model=tmp_path / "corrected.caffemodel")
    spec = cal.table.spec
    rounded = [r for r in cal.ws.corrections.adaround if isinstance(r, RoundedLayer) and r.rounded.any()]
    assert {r.layer for r in rounded} >= {"conv1", "conv2", "conv4"}
    widened_rounded = 0
    for r in rounded:
        weight, op, group = layer_weight(again.converted, r.layer)
        record = again.converted.records[r.layer]
        exported = to_output_matrix(qdq[f"{record.weight}/int8"].astype(np.float64), op, group)
        np.testing.assert_array_equal(exported, r.levels)
        t = weight_thresholds(weight, op, group, "minmax", spec, CalibratorOptions())
        levels, scale = quantize_matrix(to_output_matrix(weight, op, group), t, spec.rounding, spec.qmax)
        np.testing.assert_array_equal(levels, r.levels)
        if r.layer == "conv1":  # its BatchNorm/Scale fold rounds each weight once more: a few ulps at most
            np.testing.assert_allclose(scale[r.rounded], r.scale[r.rounded], rtol=4e-7)
        else:  # the weights are written as q * s exactly, and s is what the export derives back
            np.testing.assert_array_equal(scale[r.rounded], r.scale[r.rounded])
            np.testing.assert_array_equal(qdq[f"{record.weight}/scale"][r.rounded], r.scale[r.rounded])
        matrix = to_output_matrix(layer_weight(ws.converted, r.layer)[0], op, group).astype(np.float64)
        widened = weight_thresholds(layer_weight(ws.converted, r.layer)[0], op, group, "minmax", spec,
                                    CalibratorOptions()) > minmax_weights(matrix, CalibratorOptions()) * (1 + 1e-12)
        widened_rounded += int((widened & r.rounded).sum())
    assert widened_rounded > 0  # channels whose scale is set by an int16 pair were rounded too
    assert sum(r.flipped for r in rounded) > 0


def test_a_bias_change_goes_into_the_batchnorm_mean_when_nothing_else_holds_a_bias(tmp_path):
    proto_text = (input_header((1, 2, 4, 4))
                  + layer("conv", "Convolution", "data", "conv",
                          "convolution_param { num_output: 3 kernel_size: 1 bias_term: false }")
                  + layer("bn", "BatchNorm", "conv", "conv"))
    weights = {"conv": [RNG.standard_normal((3, 2, 1, 1)).astype(np.float32)],
               "bn": [RNG.standard_normal(3).astype(np.float32), np.array([0.5, 2.0, 1.0], np.float32),
                      np.array([2.0], np.float32)]}
    net = load_net(*write_net(tmp_path, proto_text, weights))
    fold = fold_batchnorm_scale(net)
    target = fold.net.layers[0].blobs[1] + np.array([0.25, -1.0, 3.0], np.float32)
    changed = unfold_changes(net, fold, biases={"conv": target})
    assert set(changed) == {"bn"}
    np.testing.assert_allclose(fold_batchnorm_scale(with_blobs(net, changed)).net.layers[0].blobs[1], target,
                               rtol=1e-6, atol=1e-6)


# --- the command line -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory, net_files):
    root = tmp_path_factory.mktemp("levers_cli")
    folder = root / "images"
    folder.mkdir()
    for i in range(IMAGES):
        cv2.imwrite(str(folder / f"img{i}.png"), RNG.integers(0, 256, (14, 14, 3), dtype=np.uint8))
    params = root / "params.json"
    params.write_text(json.dumps({"size": [12, 12], "color_format": "bgr", "scale": 0.008}))
    proto, model = net_files
    return root, ["--proto", str(proto), "--data_list", str(folder), "--image_params", str(params),
                  "--threads", "1"], model


def _difference(report: str) -> float:
    line = next(l for l in report.splitlines() if l.strip().startswith("model difference ("))
    return float(line.rsplit(":", 1)[1])


def test_calibrate_writes_the_corrected_weights_and_test_measures_them_against_the_original(project, capsys):
    root, base, model = project
    cal = root / "cal"
    assert entry.main(["calibrate", *base, "--model", str(model), "--equalize", "--adaround", "--bias_correction",
                       "--output_path", str(cal)]) == 0
    report = (cal / "report.log").read_text()
    # the report's own lever line (a log line "AdaRound: ..." may reach report.log too, depending on the tests before)
    assert re.search(r"^\s*AdaRound \(solver: sequential\): ", report, re.M)
    assert "bias correction:" in report and "--corrected_model" in report
    corrected = cal / "corrected.caffemodel"
    assert corrected.is_file() and (cal / "equalized.caffemodel").is_file()
    levers = (cal / "weight_levers.csv").read_text().splitlines()
    assert levers[0].startswith("layer,") and len(levers) == 1 + 5  # the five int8 weighted layers
    assert "too few" in next(l for l in levers if l.startswith("fc,"))
    settings = json.loads((cal / "config.json").read_text())["settings"]["quant"]
    assert settings["adaround"] and settings["bias_correction"] and settings["equalize"]
    assert '"adaround": true' in (cal / "int8.prototxt").read_text().split("\nname", 1)[0]
    capsys.readouterr()
    alone = root / "alone"  # the table without the corrected.caffemodel calibrate wrote beside it
    alone.mkdir()
    for name in ("calibration_table.pb", "int8.prototxt"):
        shutil.copy(cal / name, alone / name)
    for k, (option, name) in enumerate((("--calibration_proto", "calibration_table.pb"),
                                        ("--calibration_model", "int8.prototxt"))):
        table = [option, str(alone / name)]
        # the original weights alone: refused, naming the file to add
        assert entry.main(["test", *base, "--model", str(model), "--equalize", *table,
                           "--output_path", str(root / "t0")]) == 2
        assert "--corrected_model" in capsys.readouterr().err
        # the corrected weights as --model: the fp32 reference would be them, refused
        assert entry.main(["test", *base, "--model", str(corrected), *table, "--output_path", str(root / "t1")]) == 2
        assert "as --corrected_model" in capsys.readouterr().err
        # the table where calibrate wrote it: the corrected.caffemodel beside it is found, calibrate's figure
        found = root / f"found{k}"
        assert entry.main(["test", *base, "--model", str(model), "--equalize", option, str(cal / name),
                           "--output_path", str(found)]) == 0
        assert "corrected.caffemodel beside it" in capsys.readouterr().err
        if name == "calibration_table.pb":
            assert _difference((found / "report.log").read_text()) == _difference(report)
        else:  # int8.prototxt holds Intel's float32 scales 127/T: a rounding may flip (as in test_equalize.py)
            assert _difference((found / "report.log").read_text()) == pytest.approx(_difference(report), rel=1e-4)
    # the original (equalized) as the fp32 reference and the corrected weights for int8: calibrate's figure
    assert entry.main(["test", *base, "--model", str(model), "--equalize", "--corrected_model", str(corrected),
                       "--calibration_proto", str(alone / "calibration_table.pb"),
                       "--output_path", str(root / "t2")]) == 0
    assert _difference((root / "t2" / "report.log").read_text()) == _difference(report)


@pytest.mark.parametrize("options, words", [
    (["--adaround", "--granularity", "per_tensor"], "per_tensor"),
    (["--adaround", "--weight_method", "admm"], "--weight_method admm"),
    (["--bias_correction", "--simplified"], "--simplified"),
])
def test_calibrate_refuses_levers_where_they_mean_nothing(project, capsys, tmp_path, options, words):
    root, base, model = project
    capsys.readouterr()
    assert entry.main(["calibrate", *base, "--model", str(model), *options, "--output_path", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err


def test_main_refuses_levers_with_a_given_table_or_given_corrected_weights(project, capsys, tmp_path):
    root, base, model = project
    plain = tmp_path / "plain"
    assert entry.main(["calibrate", *base, "--model", str(model), "--output_path", str(plain)]) == 0
    capsys.readouterr()
    assert entry.main(["auto", *base, "--model", str(model), "--bias_correction", "--calibration_proto",
                       str(plain / "calibration_table.pb"), "--output_path", str(tmp_path / "a")]) == 2
    assert "with a given table" in capsys.readouterr().err
    assert entry.main(["auto", *base, "--model", str(model), "--adaround", "--corrected_model", str(model),
                       "--output_path", str(tmp_path / "b")]) == 2
    assert "give one or the other" in capsys.readouterr().err


def test_the_levers_are_settings_of_the_yaml_file_and_the_api(tmp_path):
    from int8tune.api import load_settings
    from int8tune.cli import build_parser, with_config_file
    from int8tune.errors import ConfigError

    assert load_settings({"adaround": True}, {"bias_correction": True}) == {"adaround": True, "bias_correction": True}
    config = tmp_path / "settings.yaml"
    config.write_text("adaround: true\nbias_correction: true\n")
    argv = with_config_file(["calibrate", "--config", str(config), "--proto", "p"], build_parser())
    assert "--adaround" in argv and "--bias_correction" in argv
    config.write_text("equalize: false\n")
    assert "--no_equalize" in with_config_file(["calibrate", "--config", str(config), "--proto", "p"], build_parser())
    # a switch given another value than true/false is refused, naming the file and the key (it read as true before)
    config.write_text("equalize: auto\n")
    with pytest.raises(ConfigError, match=r"settings.yaml: equalize takes true or false, found 'auto' \(leave it out"):
        with_config_file(["calibrate", "--config", str(config), "--proto", "p"], build_parser())
    # a value outside an option's choices names the file, the key and the valid values (argparse named neither file
    # nor key); a valid one goes through
    config.write_text("adaround_solver: gptq\n")
    with pytest.raises(ConfigError, match=r"settings.yaml: adaround_solver must be one of sequential, adam, "
                                          r"found 'gptq'"):
        with_config_file(["calibrate", "--config", str(config), "--proto", "p"], build_parser())
    config.write_text("adaround_solver: adam\n")
    assert "adam" in with_config_file(["calibrate", "--config", str(config), "--proto", "p"], build_parser())


def test_main_sh_calibrates_with_the_levers_tunes_and_delivers_the_corrected_weights(project, tmp_path):
    root, base, model = project
    out = tmp_path / "run"
    assert entry.main(["auto", *base, "--model", str(model), "--adaround", "--bias_correction", "--restarts", "1",
                       "--holdout", "0", "--steps", "2", "--output_path", str(out)]) == 0
    assert (out / "corrected.caffemodel").is_file() and (out / "calibration" / "corrected.caffemodel").is_file()
    assert (out / "corrected.caffemodel").read_bytes() == (out / "calibration" / "corrected.caffemodel").read_bytes()
    report = (out / "report.log").read_text()
    # the report's own lever line (calibrate indents it, main.sh does not)
    assert re.search(r"^\s*AdaRound \(solver: sequential\): ", report, re.M) and "bias correction:" in report
    # the tuned table runs on the corrected weights, measured against the original
    assert entry.main(["test", *base, "--model", str(model), "--corrected_model", str(out / "corrected.caffemodel"),
                       "--calibration_proto", str(out / "tuned" / "calibration_table.pb"),
                       "--output_path", str(tmp_path / "t")]) == 0
    # without --corrected_model: found one folder up from tuned/ (main.sh's layout), the same int8 model
    assert entry.main(["test", *base, "--model", str(model), "--calibration_proto",
                       str(out / "tuned" / "calibration_table.pb"), "--output_path", str(tmp_path / "t_found")]) == 0
    assert _difference((tmp_path / "t_found" / "report.log").read_text()) == \
        _difference((tmp_path / "t" / "report.log").read_text())


def test_bias_correction_is_on_by_default_where_a_table_is_calibrated(project, tmp_path, capsys):
    """calibrate and main.sh correct the biases unless told not to (--no_bias_correction, or bias_correction: false
    in --config); the report says it was the default; a run with a given table leaves the weights alone."""
    root, base, model = project
    on, off, yaml_off = tmp_path / "on", tmp_path / "off", tmp_path / "yaml_off"
    assert entry.main(["calibrate", *base, "--model", str(model), "--output_path", str(on)]) == 0
    assert (on / "corrected.caffemodel").is_file()
    quant = json.loads((on / "config.json").read_text())["settings"]["quant"]
    assert quant["bias_correction"] is True and quant["adaround"] is True and quant["by_default"] == [
        "adaround", "bias_correction"]
    assert "AdaRound (on by default; --no_adaround: off; solver: sequential):" in (on / "report.log").read_text()
    assert "bias correction (on by default; --no_bias_correction: off):" in (on / "report.log").read_text()
    assert entry.main(["calibrate", *base, "--model", str(model), "--no_bias_correction", "--no_adaround",
                       "--output_path", str(off)]) == 0
    assert not (off / "corrected.caffemodel").exists()
    assert json.loads((off / "config.json").read_text())["settings"]["quant"]["bias_correction"] is False
    config = tmp_path / "settings.yaml"
    config.write_text("bias_correction: false\nadaround: false\n")
    assert entry.main(["calibrate", "--config", str(config), *base, "--model", str(model), "--output_path",
                       str(yaml_off)]) == 0
    assert not (yaml_off / "corrected.caffemodel").exists()
    assert (off / "calibration_table.pb").read_bytes() != (on / "calibration_table.pb").read_bytes()
    # main.sh from calibrate's table (no levers asked): the weights that table belongs to are found beside it
    capsys.readouterr()
    run = tmp_path / "run"
    assert entry.main(["auto", *base, "--model", str(model), "--calibration_proto", str(on / "calibration_table.pb"),
                       "--restarts", "1", "--holdout", "0", "--steps", "2", "--output_path", str(run)]) == 0
    assert "corrected.caffemodel beside it" in capsys.readouterr().err
    assert not (run / "corrected.caffemodel").exists()  # nothing corrected in this run


def test_default_bias_correction_is_skipped_where_no_layer_has_a_bias_but_asked_for_it_is_an_error(tmp_path, capsys):
    proto_text = (input_header((1, 3, 8, 8))
                  + layer("conv", "Convolution", "data", "conv",
                          "convolution_param { num_output: 4 kernel_size: 3 bias_term: false }")
                  + layer("relu", "ReLU", "conv", "conv"))
    proto, model = write_net(tmp_path, proto_text, {"conv": [RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)]})
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"size": [8, 8], "scale": 0.01}))
    base = ["calibrate", "--proto", str(proto), "--model", str(model), "--data_list", str(folder), "--image_params",
            str(params), "--threads", "1"]
    capsys.readouterr()
    # the table records the levers that ran: test.sh runs it on the weights they wrote, or on the weights as given
    # when none did (it refused that table before: "calibrated with --bias_correction ... give --corrected_model")
    for way, options, adaround in (("default", [], True), ("rounded_to_nearest", ["--no_adaround"], False)):
        assert entry.main([*base, *options, "--output_path", str(tmp_path / way)]) == 0
        assert "bias correction (on by default) skipped: --bias_correction: no int8 layer" in capsys.readouterr().err
        assert (tmp_path / way / "corrected.caffemodel").exists() == adaround  # AdaRound's weights
        quant = json.loads((tmp_path / way / "config.json").read_text())["settings"]["quant"]
        assert quant["bias_correction"] is False and quant["adaround"] is adaround
        assert quant["by_default"] == (["adaround"] if adaround else [])
        assert entry.main(["test", *base[1:], "--calibration_proto", str(tmp_path / way / "calibration_table.pb"),
                           "--output_path", str(tmp_path / f"t_{way}")]) == 0
    assert entry.main([*base, "--bias_correction", "--output_path", str(tmp_path / "asked")]) == 2
    assert "no int8 layer" in capsys.readouterr().err


def test_corrected_weights_with_another_fp32_model_are_refused(project, tmp_path, capsys):
    """The corrected weights are measured against the caffemodel they were corrected from; another --model would
    make every difference wrong."""
    root, base, model = project
    cal = tmp_path / "cal"
    assert entry.main(["calibrate", *base, "--model", str(model), "--output_path", str(cal)]) == 0
    weights = _weights()
    weights["conv2"][1] = weights["conv2"][1] + 1.0
    (tmp_path / "other").mkdir()
    _, other = write_net(tmp_path / "other", PROTOTXT, weights)
    capsys.readouterr()
    assert entry.main(["test", *base, "--model", str(other), "--calibration_proto", str(cal / "calibration_table.pb"),
                       "--output_path", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "was calibrated on other weights than" in err and "bias_correction corrected a caffemodel" in err


def test_a_layer_that_cannot_have_enough_input_rows_is_skipped_before_its_gram_matrix_is_built(net_files, images,
                                                                                              monkeypatch):
    """On by default, AdaRound meets nets like VGG-16, whose fc6 (25088 weights per output) would need a 5 GB Gram
    matrix that round_layer then discards (too few samples): such a layer is skipped before the images run."""
    from int8tune.quant import adaround as module

    asked = []
    real = module.layer_inputs
    monkeypatch.setattr(module, "layer_inputs", lambda converted, layers, *a, **k: asked.extend(layers)
                        or real(converted, layers, *a, **k))
    ws = load_workspace(*net_files)
    results = {r.layer: r for r in adaround_workspace(ws, images, QuantConfig(adaround=True), threads=1)
               .corrections.adaround}
    assert "fc" not in asked and "conv2" in asked
    assert results["fc"].reason.startswith(f"at most {IMAGES} input sample(s) for 288 weights per channel: too few")
    assert isinstance(results["conv2"], RoundedLayer)


def test_passes_keep_the_gram_matrices_held_at_once_within_the_budget():
    from int8tune.quant.adaround import passes

    sizes = {"a": 40, "b": 50, "c": 20, "d": 200, "e": 10}
    assert passes(sizes, 100) == [["a", "b"], ["c"], ["d"], ["e"]]  # d alone is over the budget: a pass of its own
    assert passes(sizes, 1000) == [list(sizes)]
    assert passes({}, 100) == []


def test_a_small_gram_budget_rounds_in_several_passes_to_the_same_weights(net_files, images, monkeypatch):
    """A big net's Gram matrices do not all fit in memory: with a budget below two layers' matrices, each pass over
    the images holds at most that, and the rounding is the one a single pass gives (each layer samples its own
    rows, whatever else is rounded beside it)."""
    from int8tune.quant import adaround as module

    ws = load_workspace(*net_files)
    quant = QuantConfig(adaround=True)
    one = adaround_workspace(ws, images, quant, threads=1, options=AdaRoundOptions())
    held, real = [], module.layer_inputs
    monkeypatch.setattr(module, "layer_inputs", lambda converted, layers, *a, **k: held.append(list(layers))
                        or real(converted, layers, *a, **k))
    conv1 = 27 ** 2 * 8  # conv1's Gram matrix in bytes: K = 3 x 3 x 3, float64; conv2's (K = 16) is smaller
    split = adaround_workspace(ws, images, quant, threads=1, options=AdaRoundOptions(gram_budget_mb=conv1 / 2 ** 20))
    assert len(held) > 1 and all(len(p) == 1 or "conv1" not in p for p in held), held
    a = {r.layer: r for r in one.corrections.adaround}
    b = {r.layer: r for r in split.corrections.adaround}
    assert a.keys() == b.keys() and any(isinstance(r, RoundedLayer) for r in a.values())
    for name, r in a.items():
        assert type(r) is type(b[name]), name
        if isinstance(r, RoundedLayer):
            np.testing.assert_array_equal(r.levels, b[name].levels, err_msg=name)
            np.testing.assert_array_equal(layer_weight(one.converted, name)[0], layer_weight(split.converted, name)[0])


def test_a_layers_sampled_rows_do_not_depend_on_the_other_layers_rounded(net_files, images):
    from int8tune.quant.adaround import layer_inputs

    ws = load_workspace(*net_files)
    options = AdaRoundOptions(rows=40)  # fewer rows than positions: a sample
    alone = layer_inputs(ws.converted, ["conv2"], images.batches, options, threads=1)["conv2"]
    beside = layer_inputs(ws.converted, ["conv1", "conv2", "conv4"], images.batches, options, threads=1)["conv2"]
    np.testing.assert_array_equal(alone.gram, beside.gram)
    other = layer_inputs(ws.converted, ["conv2"], images.batches, AdaRoundOptions(rows=40, seed=1), threads=1)
    assert not np.array_equal(alone.gram, other["conv2"].gram)  # the seed still picks the rows
