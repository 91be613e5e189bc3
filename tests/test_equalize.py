"""Cross-layer equalization: the equalized net computes what the original does, the ranges it promises are
equal, the written caffemodel reads back, and a table is never paired with the wrong weights."""

from __future__ import annotations

import json
import re
from dataclasses import replace

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
    # no levers: the equalized weights alone (with the default levers test.sh would run the corrected.caffemodel
    # written beside the table, which is equalized too: tests/test_weight_levers.py)
    assert entry.main(["calibrate", *base, "--model", str(model), "--equalize", "--no_bias_correction",
                       "--no_adaround", "--output_path", str(cal)]) == 0
    report = (cal / "report.log").read_text()
    assert "equalized 3 Conv -> ReLU/PReLU -> Conv pair(s)" in report
    equalized = cal / "equalized.caffemodel"
    assert equalized.is_file()
    table = ["--calibration_proto", str(cal / "calibration_table.pb")]
    # the table on the original weights with --no_equalize: refused, naming the way out
    assert entry.main(["test", *base, "--model", str(model), "--no_equalize", *table,
                       "--output_path", str(root / "t0")]) == 2
    message = capsys.readouterr().err
    assert "calibrated with --equalize" in message and "equalized.caffemodel" in message
    # --equalize on the original, the table's own record (no option) and --model on the written weights measure
    # the same int8 model
    assert entry.main(["test", *base, "--model", str(model), "--equalize", *table,
                       "--output_path", str(root / "t1")]) == 0
    assert entry.main(["test", *base, "--model", str(model), *table, "--output_path", str(root / "t7")]) == 0
    assert "equalizing it the same way" in capsys.readouterr().err
    assert entry.main(["test", *base, "--model", str(equalized), *table, "--output_path", str(root / "t2")]) == 0
    one, two, followed = ((root / t / "report.log").read_text() for t in ("t1", "t2", "t7"))
    assert _difference(one) == _difference(two) == _difference(followed)
    # the int8 prototxt alone records the weights too (its header): followed, and refused the same way
    int8 = ["--calibration_model", str(cal / "int8.prototxt")]
    assert '"equalize": true' in (cal / "int8.prototxt").read_text().split("\nname", 1)[0]
    assert entry.main(["test", *base, "--model", str(model), "--no_equalize", *int8,
                       "--output_path", str(root / "t4")]) == 2
    message = capsys.readouterr().err
    assert "int8.prototxt was calibrated with --equalize" in message
    assert entry.main(["test", *base, "--model", str(model), *int8, "--output_path", str(root / "t8")]) == 0
    assert entry.main(["test", *base, "--model", str(model), "--equalize", *int8,
                       "--output_path", str(root / "t5")]) == 0
    # int8.prototxt stores Intel's float32 scales (127/T), so its thresholds are the .pb's to float32 precision and
    # a rounding of the int8 model may flip: the same figure to 1e-4, not to the last digit
    from_prototxt = float(_difference((root / "t5" / "report.log").read_text()).rsplit(":", 1)[1])
    assert from_prototxt == pytest.approx(float(_difference(one).rsplit(":", 1)[1]), rel=1e-4)
    # a table calibrated without it is refused with --equalize
    plain = root / "plain"
    assert entry.main(["calibrate", *base, "--model", str(model), "--no_bias_correction", "--no_adaround",
                       "--no_equalize", "--output_path", str(plain)]) == 0
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


# --- --equalize left to its default: chosen by measurement (pipeline/equalize_choice.py) ----------------------------

def _images(n=4):
    from int8tune.pipeline.images import Images

    x = np.random.default_rng(11).uniform(-2, 2, (n, 3, 10, 10)).astype(np.float32)
    return Images(f"{n} random images", n, _batches=[x[:2], x[2:]])


@pytest.mark.parametrize("levers", [{"bias_correction": False}, {"bias_correction": True}])
def test_the_default_calibrates_both_ways_and_keeps_the_lower_difference(net_files, levers):
    """The two figures are those of calibrating each way alone, the one kept is the lower, and its workspace and
    provenance say which weights the table belongs to."""
    from int8tune.config import QuantConfig
    from int8tune.pipeline.calibration import calibrate
    from int8tune.pipeline.equalize_choice import calibrate_choosing
    from int8tune.pipeline.workspace import load_workspace

    images = _images()
    quant = QuantConfig(method="mse", bins=512, **levers)
    settings = {"quant": {"equalize": None}}
    kept = calibrate_choosing(load_workspace(*net_files), images, quant, measure=images, threads=1,
                              settings=settings)
    plain = calibrate(load_workspace(*net_files, equalize=False), images, quant, measure=images, threads=1)
    equal = calibrate(load_workspace(*net_files, equalize=True), images, quant, measure=images, threads=1)
    choice = kept.equalize_choice
    assert choice is not None and choice.pairs == 3 and choice.images == 4
    assert (choice.plain, choice.equalized) == (plain.model_difference, equal.model_difference)
    assert choice.plain != choice.equalized
    assert choice.equalize == (equal.model_difference < plain.model_difference)
    assert kept.model_difference == (equal.model_difference if choice.equalize else plain.model_difference)
    assert (kept.ws.equalization is not None) == choice.equalize
    assert kept.table.weights_record()["equalize"] == choice.equalize
    assert settings == {"quant": {"equalize": None}}  # the caller's settings are not changed
    words = choice.describe()
    assert f"{choice.plain:.6g}" in words and f"{choice.equalized:.6g}" in words
    assert ("kept the weights equalized" if choice.equalize else "kept the weights as given") in words


def test_with_adaround_both_ways_are_compared_before_it_and_it_rounds_the_weights_kept_once(net_files, monkeypatch):
    """AdaRound (on by default) is left out of the comparison, whose figures are those of each way with bias
    correction alone; then it learns the rounding of the weights kept, once, and the table kept is that of the
    weights kept with both levers, as calibrating that way alone gives."""
    from int8tune.config import QuantConfig
    from int8tune.pipeline import calibration, equalize_choice, levers
    from int8tune.pipeline.workspace import load_workspace

    rounded = []
    real = levers.adaround_workspace  # calibrate imports it when it runs
    monkeypatch.setattr(levers, "adaround_workspace", lambda ws, *a, **k: rounded.append(ws) or real(ws, *a, **k))
    images = _images()
    quant = QuantConfig(method="mse", bins=512, adaround=None, bias_correction=None).with_default_levers(True)
    assert quant.adaround and quant.bias_correction and quant.by_default == ("adaround", "bias_correction")
    kept = equalize_choice.calibrate_choosing(load_workspace(*net_files), images, quant, measure=images, threads=1)
    choice = kept.equalize_choice
    assert len(rounded) == 1 and (rounded[0].equalization is not None) == choice.equalize
    assert choice.before_adaround and "(before AdaRound)" in choice.describe()
    without = replace(quant, adaround=False, by_default=("bias_correction",))
    plain = calibration.calibrate(load_workspace(*net_files), images, replace(without, equalize=False),
                                  measure=images, threads=1)
    equal = calibration.calibrate(load_workspace(*net_files, equalize=True), images, replace(without, equalize=True),
                                  measure=images, threads=1)
    assert (choice.plain, choice.equalized) == (plain.model_difference, equal.model_difference)
    alone = calibration.calibrate(load_workspace(*net_files, equalize=choice.equalize), images,
                                  replace(quant, equalize=choice.equalize), measure=images, threads=1)
    assert kept.model_difference == alone.model_difference
    assert kept.ws.corrections.adaround and kept.ws.corrections.bias
    assert kept.ws.corrections.by_default == ("adaround", "bias_correction")


def test_with_adaround_the_two_trials_are_freed_before_the_weights_kept_are_calibrated(net_files, monkeypatch):
    """The trials' calibrations (their tuners and onnxruntime sessions, whose arenas hold a batch's activations) are
    not alive while the third calibration runs: on SqueezeNet the peak was 3984 MB with them, 2953 MB without."""
    import weakref

    from int8tune.config import QuantConfig
    from int8tune.pipeline import equalize_choice
    from int8tune.pipeline.workspace import load_workspace

    made, alive_at_third = [], []
    real = equalize_choice.calibrate

    def tracked(ws, *a, **k):
        if len(made) == 2:
            alive_at_third.extend(r() is not None for r in made)
        result = real(ws, *a, **k)
        made.append(weakref.ref(result))
        return result

    monkeypatch.setattr(equalize_choice, "calibrate", tracked)
    images = _images()
    quant = QuantConfig(method="mse", bins=512, adaround=None, bias_correction=None).with_default_levers(True)
    kept = equalize_choice.calibrate_choosing(load_workspace(*net_files), images, quant, measure=images, threads=1)
    assert len(made) == 3 and made[2]() is kept
    assert alive_at_third == [False, False]


@pytest.mark.parametrize("adaround", [True, False])
def test_only_the_calibration_kept_measures_its_layers(net_files, monkeypatch, adaround):
    """Each int8 layer's own difference (the report's per-layer table) is measured once, for the calibration kept,
    and is what calibrating that way alone gives."""
    from int8tune.config import QuantConfig
    from int8tune.pipeline import calibration, equalize_choice
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.tune.tuner import Tuner

    measured = []
    real = Tuner.layer_differences
    monkeypatch.setattr(Tuner, "layer_differences", lambda self, table: measured.append(table) or real(self, table))
    images = _images()
    quant = QuantConfig(method="mse", bins=512, adaround=None, bias_correction=None).with_default_levers(adaround)
    kept = equalize_choice.calibrate_choosing(load_workspace(*net_files), images, quant, measure=images, threads=1)
    assert measured == []  # nothing asked for them yet
    layers = kept.layer_differences
    assert len(measured) == 1 and measured[0] is kept.table and kept.layer_differences is layers
    alone = calibration.calibrate(load_workspace(*net_files, equalize=kept.equalize_choice.equalize), images,
                                  replace(quant, equalize=kept.equalize_choice.equalize), measure=images, threads=1)
    assert layers == alone.layer_differences
    assert set(layers) == {name for name, e in kept.table.layers.items() if e.int8}


@pytest.mark.parametrize("equalize", [True, False])
def test_an_explicit_equalize_calibrates_once(net_files, equalize, monkeypatch):
    from int8tune.config import QuantConfig
    from int8tune.pipeline import equalize_choice
    from int8tune.pipeline.workspace import load_workspace

    calls = []
    real = equalize_choice.calibrate
    monkeypatch.setattr(equalize_choice, "calibrate", lambda ws, *a, **k: calls.append(ws) or real(ws, *a, **k))
    images = _images()
    kept = equalize_choice.calibrate_choosing(load_workspace(*net_files, equalize=equalize), images,
                                              QuantConfig(method="mse", bins=512, equalize=equalize,
                                                          bias_correction=False), measure=images, threads=1)
    assert len(calls) == 1 and kept.equalize_choice is None
    assert (kept.ws.equalization is not None) == equalize


def test_a_net_without_pairs_is_calibrated_once_as_given(tmp_path, monkeypatch):
    from int8tune.config import QuantConfig
    from int8tune.pipeline import equalize_choice
    from int8tune.pipeline.workspace import load_workspace

    proto = (input_header((2, 3, 10, 10))
             + layer("conv1", "Convolution", "data", "conv1", "convolution_param { num_output: 4 kernel_size: 3 }")
             + layer("pool", "Pooling", "conv1", "pool", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"))
    files = write_net(tmp_path, proto, {"conv1": [RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                                  RNG.standard_normal(4).astype(np.float32)]})
    calls = []
    real = equalize_choice.calibrate
    monkeypatch.setattr(equalize_choice, "calibrate", lambda ws, *a, **k: calls.append(ws) or real(ws, *a, **k))
    images = _images()
    kept = equalize_choice.calibrate_choosing(load_workspace(*files), images, QuantConfig(method="mse", bins=512),
                                              measure=images, threads=1, settings={"quant": {"equalize": None}})
    assert len(calls) == 1 and kept.equalize_choice is None and kept.ws.equalization is None
    assert kept.table.weights_record() == {} or kept.table.weights_record()["equalize"] is False


def test_calibrate_by_default_reports_the_choice_and_test_follows_the_table(project, capsys):
    """No option: calibrate says what it measured and keeps it; test.sh on the original caffemodel, without
    --equalize, runs the weights the table records and reproduces calibrate's figure."""
    root, base, model = project
    cal = root / "chosen"
    assert entry.main(["calibrate", *base, "--model", str(model), "--no_bias_correction", "--no_adaround",
                       "--output_path", str(cal)]) == 0
    report = (cal / "report.log").read_text()
    line = next(l for l in report.splitlines() if "--equalize chosen by measurement" in l)
    plain, equal = (float(w) for w in re.search(r"by ([0-9.e+-]+) with the weights as given and ([0-9.e+-]+) "
                                                r"with 3 pair", line).groups())
    chosen = equal < plain
    assert ("kept the weights equalized" if chosen else "kept the weights as given") in line
    assert (cal / "equalized.caffemodel").is_file() == chosen
    assert json.loads((cal / "config.json").read_text())["settings"]["quant"]["equalize"] is chosen
    figure = _figure(report)
    assert figure == pytest.approx(equal if chosen else plain, rel=1e-5)
    capsys.readouterr()
    assert entry.main(["test", *base, "--model", str(model), "--calibration_proto", str(cal / "calibration_table.pb"),
                       "--output_path", str(root / "followed")]) == 0
    assert ("equalizing it the same way" in capsys.readouterr().err) == chosen
    assert _figure((root / "followed" / "report.log").read_text()) == figure


def _figure(report: str) -> float:
    """The model difference a calibrate or test report gives."""
    return float(next(l for l in report.splitlines() if l.strip().startswith("model difference")).rsplit(":", 1)[1])


def test_equalize_takes_true_false_or_nothing():
    from int8tune.config import QuantConfig
    from int8tune.errors import ConfigError

    with pytest.raises(ConfigError, match="equalize: true, false, or left out"):
        QuantConfig(equalize="auto")


def test_main_sh_by_default_decides_once_and_its_tables_carry_the_decision(project, capsys):
    """main.sh calibrates with the choice, reports it, tunes on the weights it kept, and test.sh runs its tuned
    table on the original caffemodel without options; a second run resumes its trial log."""
    root, base, model = project
    out = root / "auto_default"
    # --holdout 0: tune on every image (6 images would cross-validate, and the folds may decline the tuning)
    args = ["auto", *base, "--model", str(model), "--restarts", "1", "--holdout", "0", "--output_path", str(out)]
    assert entry.main(args) == 0
    report = (out / "report.log").read_text()
    line = next(l for l in report.splitlines() if "--equalize chosen by measurement" in l)
    chosen = "kept the weights equalized" in line
    assert (out / "equalized.caffemodel").is_file() == chosen
    for folder in ("calibration", "start", "tuned"):
        table = out / folder / "calibration_table.pb"
        from int8tune.quant.formats import read_table_pb

        assert read_table_pb(table).weights_record()["equalize"] is chosen, folder
    capsys.readouterr()
    assert entry.main(["test", *base, "--model", str(model), "--calibration_proto",
                       str(out / "tuned" / "calibration_table.pb"), "--output_path", str(root / "t_tuned")]) == 0
    first = report
    assert entry.main(args) == 0  # the same inputs resume: every trial replayed from the log
    second = (out / "report.log").read_text()
    assert "(0 replayed" in first and "(0 replayed" not in second


@pytest.mark.parametrize("plain, equal, kept", [(1.0, 0.99, True), (1.0, 1.0, False), (1.0, 1.2, False)])
def test_the_lower_difference_is_kept_and_a_tie_keeps_the_weights_as_given(net_files, monkeypatch, plain, equal,
                                                                           kept):
    """The rule itself, on stated differences."""
    from int8tune.config import QuantConfig
    from int8tune.pipeline import equalize_choice
    from int8tune.pipeline.calibration import Calibration
    from int8tune.pipeline.workspace import load_workspace

    def fake(ws, images, quant, **kw):
        return Calibration(None, images, "mse", {}, {}, {}, [], ws=ws,
                           model_difference=equal if ws.equalization is not None else plain)

    monkeypatch.setattr(equalize_choice, "calibrate", fake)
    images = _images()
    cal = equalize_choice.calibrate_choosing(load_workspace(*net_files), images, QuantConfig(), measure=images)
    assert cal.equalize_choice.equalize is kept and (cal.ws.equalization is not None) is kept
    assert cal.model_difference == (equal if kept else plain)
