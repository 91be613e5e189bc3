"""The deployed-model check: the QDQ export, in a default onnxruntime session, against the simulation.

A sound export agrees within rounding; a corrupted one (a scale 10 % off) is caught and the report says DIFFERS;
the advice names the cause that fits the host and the target; a real model calibrated by the CLI agrees on this
host."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from netbuilder import input_header, layer, write_net
from onnx import numpy_helper

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.hostcpu import ENV_OVERRIDE, Int8Path
from int8tune.quant.qdq import export_qdq
from int8tune.quant.spec import QuantSpec, Target
from int8tune.quant.table import BlobEntry, CalibrationTable, LayerEntry
from int8tune.quant.verify import (
    MAX_BEYOND_FRACTION,
    MAX_STEPS,
    ExportCheck,
    OutputCheck,
    check_export,
    render_export_check,
)
from int8tune.runtime import Engine

RNG = np.random.default_rng(11)
# Two heads: `fc` is an int8 layer's output (quantized, measured in its steps); `prob` is a Softmax (float,
# measured against its fp32 range).
PROTOTXT = (input_header((1, 3, 12, 12))
            + layer("conv1", "Convolution", "data", "conv1",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("conv2", "Convolution", "conv1", "conv2",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 }")
            + layer("relu2", "ReLU", "conv2", "conv2")
            + layer("pool", "Pooling", "conv2", "pool", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 10 }")
            + layer("fc_b", "InnerProduct", "pool", "fc_b", "inner_product_param { num_output: 6 }")
            + layer("prob", "Softmax", "fc_b", "prob"))
WEIGHTS = {"conv1": [RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
                     RNG.standard_normal(8).astype(np.float32) * 0.1],
           "conv2": [RNG.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5,
                     RNG.standard_normal(8).astype(np.float32) * 0.1],
           "fc": [RNG.standard_normal((10, 288)).astype(np.float32) * 0.1, RNG.standard_normal(10).astype(np.float32)],
           "fc_b": [RNG.standard_normal((6, 288)).astype(np.float32) * 0.1, RNG.standard_normal(6).astype(np.float32)]}
LAYERS = (("conv1", "Convolution", "data"), ("conv2", "Convolution", "conv1"), ("fc", "InnerProduct", "pool"),
          ("fc_b", "InnerProduct", "pool"))
NONNEGATIVE = ("conv1", "conv2", "pool")  # after ReLU


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    proto, model = write_net(tmp_path_factory.mktemp("verify"), PROTOTXT, WEIGHTS)
    return convert_net(load_net(proto, model))


@pytest.fixture(scope="module")
def batches():
    return [RNG.standard_normal((3, 3, 12, 12)).astype(np.float32) for _ in range(3)]


def table_for(converted, target: Target = Target.ONNXRUNTIME) -> CalibrationTable:
    """Thresholds at 0.9 of each blob's fp32 absmax; weight thresholds at twice each channel's absmax, i.e. 7-bit
    weights (|q| <= 64), so that no pair of u8 x s8 products reaches 2 * 255 * 64 > 32767 and the table is exact
    on AVX2 hosts too (what --target onnxruntime ensures by calibration)."""
    spec = QuantSpec(target=target)
    x = np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)
    values = Engine(converted).run(x, ["data", "conv1", "conv2", "pool", "fc", "fc_b"])
    table = CalibrationTable("t", spec)
    for v, array in values.items():
        unsigned = spec.unsigned_blobs and v in NONNEGATIVE
        table.blobs[v] = BlobEntry(v, v, float(np.abs(array).max()) * 0.9, unsigned=unsigned, calibrator="test")
    for name, type_, inp in LAYERS:
        w = WEIGHTS[name][0]
        table.layers[name] = LayerEntry(name, type_, inp,
                                        weight_thresholds=2 * np.abs(w).reshape(w.shape[0], -1).max(1))
    return table


def corrupted(model: onnx.ModelProto, factor: float = 1.1) -> onnx.ModelProto:
    """A copy of `model` whose first weight DequantizeLinear (conv1's) has its scale multiplied by `factor`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and numpy_helper.to_array(inits[n.input[0]]).dtype == np.int8)
    scale = inits[dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(factor), scale.name))
    return out


def test_a_sound_export_agrees_with_the_simulation(converted, batches):
    table = table_for(converted)
    model, _ = export_qdq(converted, table)
    check = check_export(converted, table, model, batches)
    assert check.agrees, render_export_check(check)
    assert check.images == 9
    assert check.target is Target.ONNXRUNTIME
    by_name = {o.name: o for o in check.outputs}
    assert set(by_name) == {"fc", "prob"}
    assert by_name["fc"].step == pytest.approx(table.blobs["fc"].threshold / 127)
    assert by_name["prob"].step is None and by_name["prob"].fp32_range > 0  # Softmax: float, against its range
    assert all(o.values == 9 * n for o, n in zip(check.outputs, (10, 6)))
    text = render_export_check(check)
    assert text[0].startswith("deployed model check: model_int8_qdq.onnx in a default onnxruntime session")
    assert "9 calibration image(s)" in text[0]
    assert "computes what was measured" in text[-1] and "DIFFERS" not in "\n".join(text)
    assert check.advice() == []


def test_statistics_do_not_depend_on_how_images_are_batched(converted, batches):
    table = table_for(converted)
    model, _ = export_qdq(converted, table)
    split = check_export(converted, table, model, batches)
    whole = check_export(converted, table, model, [np.concatenate(batches)])
    assert whole.images == split.images
    for a, b in zip(split.outputs, whole.outputs):
        assert (a.name, a.values, a.step) == (b.name, b.values, b.step)
        assert a.max_steps == pytest.approx(b.max_steps, abs=1e-6)
        assert a.square == pytest.approx(b.square, rel=1e-6, abs=1e-12)


def test_a_scale_ten_percent_off_is_detected(converted, batches):
    table = table_for(converted)
    model, _ = export_qdq(converted, table)
    check = check_export(converted, table, corrupted(model), batches)
    assert not check.agrees
    worst = max(check.outputs, key=lambda o: o.beyond_one_step)
    assert worst.beyond_one_step > MAX_BEYOND_FRACTION or worst.max_steps > MAX_STEPS
    text = "\n".join(render_export_check(check))
    assert "DIFFERS from what was measured" in text
    assert check.advice() and all(a in text for a in check.advice())


def test_avx2_host_with_a_vnni_table_is_told_about_saturation(converted, batches, monkeypatch):
    """The host is what INT8TUNE_INT8_PATH says (this machine's kernels still compute exactly, so the difference
    is made by corrupting the export): the advice must name the saturating pairs and both ways out."""
    monkeypatch.setenv(ENV_OVERRIDE, "avx2")
    table = table_for(converted, Target.ONNXRUNTIME_VNNI)
    model, _ = export_qdq(converted, table)
    check = check_export(converted, table, corrupted(model), batches)
    assert check.int8_path is Int8Path.AVX2 and check.target is Target.ONNXRUNTIME_VNNI
    assert "INT8TUNE_INT8_PATH=avx2" in check.host
    assert not check.agrees
    advice = " ".join(check.advice())
    assert "session.x64quantprecision=1" in advice and "--target onnxruntime" in advice
    assert "saturate pairs of products" in advice
    assert "x64quantprecision" in "\n".join(render_export_check(check))


def _failing(target: Target, path: Int8Path) -> ExportCheck:
    bad = OutputCheck("out", 0.1, max_steps=12.0, beyond_one_step=0.2, square=1e-2, values=100, unit=0.1)
    return ExportCheck((bad,), images=4, host="test host", int8_path=path, target=target)


@pytest.mark.parametrize("target", [Target.NCNN, Target.TENSORRT])
def test_signed_targets_are_told_the_qdq_file_is_an_approximation(target):
    advice = _failing(target, Int8Path.VNNI).advice()
    assert len(advice) == 1 and target.value in advice[0] and "approximation" in advice[0]
    # on an AVX2 host their 8-bit weights can saturate as well
    assert any("x64quantprecision" in a for a in _failing(target, Int8Path.AVX2).advice())


def test_other_disagreements_point_at_the_figures():
    advice = _failing(Target.ONNXRUNTIME, Int8Path.VNNI).advice()
    assert len(advice) == 1 and "out" in advice[0] and "figures per output" in advice[0]
    assert "x64quantprecision" not in advice[0]
    sound = dataclasses.replace(_failing(Target.ONNXRUNTIME, Int8Path.VNNI),
                                outputs=(OutputCheck("out", 0.1, 1.0, 0.001, 1e-7, 100, 0.1),))
    assert sound.agrees and sound.advice() == []


def test_bounds_are_inclusive_and_each_one_alone_fails():
    def output(max_steps, beyond):
        return OutputCheck("o", 1.0, max_steps, beyond, 0.0, 1, 1.0)

    assert output(MAX_STEPS, MAX_BEYOND_FRACTION).agrees
    assert not output(MAX_STEPS * 1.01, 0.0).agrees  # a few values far off: saturation, a wrong channel
    assert not output(1.0, MAX_BEYOND_FRACTION * 1.5).agrees  # many values a little off: a systematic error


def test_lenet_calibrated_by_the_cli_agrees_on_this_host(assets, tmp_path, capsys):
    """The real thing: `calibrate` on 8 MNIST digits writes the table and the QDQ file; the file in a default
    session computes what the simulation of that table computes."""
    from conftest import REPO_ROOT

    import main as entry
    import test_utils
    from int8tune.commands.common import data_items, prepared_batches
    from int8tune.config import DataConfig
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.quant.formats import read_table_pb

    model_dir = assets / "models" / "lenet_mnist"
    proto, weights = model_dir / "lenet.prototxt", model_dir / "lenet_iter_10000.caffemodel"
    params = REPO_ROOT / "examples" / "image_params" / "lenet_mnist.json"
    out = tmp_path / "cal"
    assert entry.main(["calibrate", "--proto", str(proto), "--model", str(weights), "--data_list",
                       str(assets / "images" / "mnist_dev"), "--image_params", str(params), "--data_limit", "8",
                       "--output_path", str(out)]) == 0
    capsys.readouterr()
    table = read_table_pb(out / "calibration_table.pb")
    qdq = onnx.load(str(out / "model_int8_qdq.onnx"))
    ws = load_workspace(proto, weights)
    data = DataConfig(data_list=assets / "images" / "mnist_dev", image_params=params, data_limit=8, batch_size=4)
    batches = prepared_batches(data_items(data), data, test_utils.prepare_image, ws.input_shape)
    check = check_export(ws.converted, table, qdq, batches)
    text = "\n".join(render_export_check(check))
    assert check.images == 8
    assert check.agrees, text
    assert "computes what was measured" in text


# A convolution left in fp32 between two int8 ones, wide enough (64 channels) for onnxruntime's highest level to run
# it with NCHWc kernels, which sum in another order than the simulation's session (ORT_ENABLE_EXTENDED).
FLOAT_C = 64
FLOAT_ISLAND = (input_header((1, 3, 32, 32))
                + "".join(layer(f"conv{k}", "Convolution", src, f"conv{k}",
                                f"convolution_param {{ num_output: {FLOAT_C} kernel_size: 3 pad: 1 }}")
                          + (layer(f"relu{k}", "ReLU", f"conv{k}", f"conv{k}") if k < 3 else "")
                          for k, src in ((1, "data"), (2, "conv1"), (3, "conv2"))))


def test_a_float_layer_s_rounding_flips_are_told_apart_from_int8_errors(tmp_path):
    """The default session may differ from the simulation in rounding flips after a layer left in fp32; the check
    then runs the same file at ORT_ENABLE_EXTENDED, which must compute the simulation exactly, says so, and gives
    the distance from fp32 of both."""
    rng = np.random.default_rng(3)
    weights = {f"conv{k}": [rng.standard_normal((FLOAT_C, c, 3, 3)).astype(np.float32) / np.sqrt(9 * c),
                            rng.standard_normal(FLOAT_C).astype(np.float32) * 0.1]
               for k, c in ((1, 3), (2, FLOAT_C), (3, FLOAT_C))}
    converted = convert_net(load_net(*write_net(tmp_path, FLOAT_ISLAND, weights)))
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    values = Engine(converted).run(x, ["data", "conv1", "conv2", "conv3"])
    table = CalibrationTable("t", QuantSpec())
    for v, array in values.items():
        table.blobs[v] = BlobEntry(v, v, float(np.abs(array).max()), unsigned=v in ("conv1", "conv2"),
                                   calibrator="test")
    for name, inp in (("conv1", "data"), ("conv3", "conv2")):
        w = weights[name][0]
        table.layers[name] = LayerEntry(name, "Convolution", inp,
                                        weight_thresholds=2 * np.abs(w).reshape(FLOAT_C, -1).max(1))
    table.layers["conv2"] = LayerEntry("conv2", "Convolution", "conv1", int8=False)
    model, _ = export_qdq(converted, table)
    check = check_export(converted, table, model, [x[:8], x[8:]])
    if check.exact:
        pytest.skip("the default session runs the fp32 layer with the simulation's kernels on this CPU (no NCHWc): "
                    "nothing to tell apart")
    assert check.float_layers == ("conv2",)
    assert check.extended is not None and check.extended_exact, render_export_check(check)
    (name, simulated, deployed), = check.fp32_square
    assert name == "conv3" and 0 < simulated and deployed == pytest.approx(simulated, rel=0.05)
    text = "\n".join(render_export_check(check))
    assert "the same file at graph_optimization_level ORT_ENABLE_EXTENDED: every value equal" in text
    assert "distance from fp32 on these images (square), measured -> deployed: conv3" in text


def test_flips_beyond_the_bounds_after_a_float_layer_get_the_float_kernel_advice():
    """Past the rounding bounds (yolov3_nano_voc with one early conv in fp32: 6 % of values beyond one step), the
    advice names the fp32 layers and ORT_ENABLE_EXTENDED, not saturation, when the extended session is exact."""
    failing = _failing(Target.ONNXRUNTIME, Int8Path.AVX2)
    exact = OutputCheck("out", 0.1, 0.0, 0.0, 0.0, 100, 0.1)
    check = dataclasses.replace(failing, extended=(exact,), fp32_square=(("out", 0.0034, 0.0035),),
                                float_layers=("layer2-conv",))
    advice = check.advice()
    assert len(advice) == 1 and "layer2-conv" in advice[0] and "ORT_ENABLE_EXTENDED" in advice[0]
    assert "x64quantprecision" not in advice[0]
    text = render_export_check(check)
    assert text[2].startswith("the deployed model DIFFERS") and "out 0.0034 -> 0.0035" in "\n".join(text)
    # when the extended session differs too, the int8 arithmetic is in question: the generic advice stays
    also = dataclasses.replace(check, extended=failing.outputs)
    assert "x64quantprecision" in also.advice()[0]


@pytest.mark.parametrize("agrees", [True, False])
def test_the_report_section_puts_the_verdict_first_and_the_second_look_after_it(agrees, tmp_path):
    from int8tune.pipeline.delivery import Delivery
    from int8tune.report.document import Level, Notice, Paragraph
    from int8tune.report.sections import delivery_section

    exact = OutputCheck("out", 0.1, 0.0, 0.0, 0.0, 100, 0.1)
    flips = OutputCheck("out", 0.1, 1.0, 0.0, 1e-7, 100, 0.1)
    first = flips if agrees else _failing(Target.ONNXRUNTIME, Int8Path.AVX2).outputs[0]
    check = ExportCheck((first,), 4, "test host", Int8Path.AVX2, Target.ONNXRUNTIME, extended=(exact,),
                        fp32_square=(("out", 0.01, 0.0101),), float_layers=("conv2",))
    d = Delivery(tmp_path, CalibrationTable("t", QuantSpec()), files={"qdq": tmp_path / "m.onnx"}, check=check,
                 check_images="tuning")
    items = delivery_section(d).items
    notice = next(i for i in items if isinstance(i, Notice))
    assert notice.level is (Level.GOOD if agrees else Level.WARNING)
    assert notice.text.startswith("the deployed model ")
    after = items[items.index(notice) + 1]
    assert isinstance(after, Paragraph) and "ORT_ENABLE_EXTENDED: every value equal" in after.lines[0]
