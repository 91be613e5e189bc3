"""BatchNorm/Scale after an Eltwise sum fold into the convolutions feeding it (pre-activation ResNets such as
res10): same fp32 function, the sum stays an int8 Add in onnxruntime with nothing in float around it, and the
files other engines read keep the weight thresholds of the weights as the engines hold them."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

import main as entry
from int8tune.caffe.fold import fold_batchnorm_scale, fold_through_sums
from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.quant.census import census
from int8tune.quant.formats import read_int8_prototxt, read_ncnn_table, read_table_pb
from int8tune.quant.qdq import export_qdq
from int8tune.runtime import Engine

RNG = np.random.default_rng(8)
C = 4


def conv(name, bottom, top, n=C, k=3, pad=1):
    body = f"convolution_param {{ num_output: {n} kernel_size: {k} pad: {pad} }}"
    return layer(name, "Convolution", bottom, top, body)


def bn_scale(prefix, blob):
    return (layer(f"{prefix}_bn", "BatchNorm", blob, blob, "batch_norm_param { use_global_stats: true }")
            + layer(f"{prefix}_scale", "Scale", blob, blob, "scale_param { bias_term: true }"))


def net_text(eltwise_body: str = "", extra_reader: bool = False) -> str:
    """data -> conv0 -> relu -> (conv_a, conv_b) -> sum -> BN -> Scale -> ReLU -> head; optionally conv_a's output
    is read by another layer too (then nothing may fold)."""
    text = (input_header((1, 3, 8, 8)) + conv("conv0", "data", "c0") + layer("relu0", "ReLU", "c0", "c0")
            + conv("conv_a", "c0", "a") + conv("conv_b", "c0", "b", k=1, pad=0)
            + layer("sum", "Eltwise", ["a", "b"], "s", eltwise_body) + bn_scale("post", "s")
            + layer("relu1", "ReLU", "s", "s") + conv("head", "s", "out", n=2))
    if extra_reader:
        text += conv("side", "a", "side_out", n=2)
    return text


def weights(extra_reader: bool = False) -> dict:
    def w(n, c, k):
        return [RNG.standard_normal((n, c, k, k)).astype(np.float32) * 0.3, RNG.standard_normal(n).astype(np.float32)]
    out = {"conv0": w(C, 3, 3), "conv_a": w(C, C, 3), "conv_b": w(C, C, 1), "head": w(2, C, 3),
           "post_bn": [RNG.standard_normal(C).astype(np.float32), RNG.uniform(0.5, 2, C).astype(np.float32),
                       np.array([1.0], np.float32)],
           # a negative scale too: the fold must carry the sign into the weights, not only the magnitude
           "post_scale": [np.array([1.5, -0.7, 0.4, 2.0], np.float32), RNG.standard_normal(C).astype(np.float32)]}
    if extra_reader:
        out["side"] = w(2, C, 3)
    return out


@pytest.mark.parametrize("eltwise_body", ["", "eltwise_param { operation: SUM coeff: 0.5 coeff: 2.0 }"])
def test_fold_through_a_sum_computes_the_same(tmp_path, eltwise_body):
    proto, model = write_net(tmp_path, net_text(eltwise_body), weights())
    net = load_net(proto, model)
    folded = fold_through_sums(fold_batchnorm_scale(net))
    assert folded.through_sums == {"sum": ["post_bn", "post_scale"]}
    assert set(folded.sum_scales) == {"conv_a", "conv_b"}
    assert not {l.type for l in folded.net.layers} & {"BatchNorm", "Scale"}
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = Engine(convert_net(net)).run(x)
    got = Engine(convert_net(folded.net)).run(x)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5 * np.abs(ref[name]).max())


@pytest.mark.parametrize("case", ["prod", "extra_reader"])
def test_nothing_folds_where_it_would_change_the_function(tmp_path, case):
    body = "eltwise_param { operation: PROD }" if case == "prod" else ""
    proto, model = write_net(tmp_path, net_text(body, extra_reader=case == "extra_reader"),
                             weights(case == "extra_reader"))
    folded = fold_through_sums(fold_batchnorm_scale(load_net(proto, model)))
    assert folded.through_sums == {} and folded.sum_scales == {}
    assert {"BatchNorm", "Scale"} <= {l.type for l in folded.net.layers}


@pytest.fixture()
def calibrated(tmp_path):
    proto, model = write_net(tmp_path, net_text(), weights())
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        cv2.imwrite(str(images / f"{i}.png"), RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"size": [8, 8], "scale": 0.0078125, "r_mean": 127.5, "g_mean": 127.5,
                                  "b_mean": 127.5}))
    out = tmp_path / "cal"
    assert entry.main(["calibrate", "--proto", str(proto), "--model", str(model), "--data_list", str(images),
                       "--image_params", str(params), "--output_path", str(out), "--method", "minmax",
                       "--no_bias_correction", "--no_adaround"]) == 0  # the weights as given: the files' thresholds
    return proto, model, out


def test_the_sum_stays_int8_and_nothing_runs_in_float_around_it(calibrated):
    proto, model, out = calibrated
    from int8tune.pipeline.workspace import load_workspace

    ws = load_workspace(proto, model)
    table = read_table_pb(out / "calibration_table.pb")
    c = census(export_qdq(ws.converted, table)[0])
    assert c.int8.get("add") == 1 and c.int8.get("conv") == 4
    assert [i.op for i in c.float_islands if i.op in ("BatchNormalization", "Mul", "Add", "Relu")] == []
    assert "folded BatchNorm/Scale through Eltwise sums: sum (post_bn + post_scale)" in (out / "report.log").read_text()


def test_engine_files_hold_the_thresholds_of_the_unfolded_weights_and_read_back(calibrated):
    proto, model, out = calibrated
    from int8tune.pipeline.workspace import load_workspace

    ws = load_workspace(proto, model)
    table = read_table_pb(out / "calibration_table.pb")
    ncnn = read_ncnn_table(out / "ncnn.table")
    raw = {l.name: l.blobs[0] for l in load_net(proto, model).layers if l.blobs}
    for name in ("conv_a", "conv_b"):
        a = ws.fold.sum_scales[name]
        np.testing.assert_allclose(ncnn.weight_thresholds[name] * np.abs(a),
                                   np.asarray(table.layers[name].weight_thresholds).reshape(-1), rtol=1e-5)
        # the engine quantizes the weights it holds (unfolded) to the integers the folded model runs (the sign of
        # a negative a moves into the folded weights)
        folded = {l.name: l.blobs[0] for l in ws.fold.net.layers if l.blobs}[name].reshape(C, -1)
        t = np.asarray(table.layers[name].weight_thresholds).reshape(-1, 1)
        ours = np.rint(folded.astype(np.float64) * 127 / t)
        engine = np.rint(raw[name].reshape(C, -1).astype(np.float64) * 127 / ncnn.weight_thresholds[name][:, None])
        assert np.abs(ours).max() > 20  # not a degenerate all-zero grid
        np.testing.assert_array_equal(ours, np.sign(a)[:, None] * engine)
    # a layer that was not folded through a sum is written as it is
    np.testing.assert_allclose(ncnn.weight_thresholds["head"],
                               np.asarray(table.layers["head"].weight_thresholds).reshape(-1), rtol=1e-5)
    # the int8 prototxt read back (test.sh --calibration_model) lands on the folded weights' thresholds
    from int8tune.config import DataConfig, ModelConfig, QuantConfig, TuneConfig
    from int8tune.pipeline.tables import load_table

    cfg = TuneConfig(model=ModelConfig(proto, model), data=DataConfig(out, proto), quant=QuantConfig(),
                     output_path=out / "t", calibration_model=out / "int8.prototxt")
    back = load_table(cfg, ws)
    for name in ("conv_a", "conv_b", "head"):
        np.testing.assert_allclose(np.asarray(back.layers[name].weight_thresholds).reshape(-1),
                                   np.asarray(table.layers[name].weight_thresholds).reshape(-1), rtol=1e-5)
    assert read_int8_prototxt(out / "int8.prototxt").weight_thresholds


def test_weight_levers_write_back_through_a_sum_fold(tmp_path):
    """--adaround and --bias_correction change the folded convolutions feeding a folded sum: corrected.caffemodel
    (the weights as written, unfolded through the sum's BatchNorm/Scale) folds back to the learned integer
    weights and the corrected biases."""
    from int8tune.config import QuantConfig
    from int8tune.pipeline.calibration import calibrate
    from int8tune.pipeline.images import Images
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.quant.adaround import RoundedLayer
    from int8tune.quant.calibrate import layer_weight, weight_thresholds
    from int8tune.quant.calibrators import CalibratorOptions
    from int8tune.quant.weights import quantize_matrix, to_output_matrix
    from int8tune.workflow import save_calibration

    proto, model = write_net(tmp_path, net_text(), weights())
    x = RNG.uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    images = Images("16 random images", 16, _batches=[x[:8], x[8:]])
    ws = load_workspace(proto, model)
    assert set(ws.fold.sum_scales) == {"conv_a", "conv_b"}
    cal = calibrate(ws, images, QuantConfig(adaround=True, bias_correction=True), measure=images, threads=1)
    save_calibration(cal, cal.ws, tmp_path / "out", threads=1)
    again = load_workspace(proto, model, corrected_model=tmp_path / "out" / "corrected.caffemodel")
    rounded = {r.layer: r for r in cal.ws.corrections.adaround if isinstance(r, RoundedLayer)}
    assert {"conv_a", "conv_b"} <= set(rounded)
    spec = cal.table.spec
    for name in ("conv_a", "conv_b"):
        weight, op, group = layer_weight(again.converted, name)
        t = weight_thresholds(weight, op, group, "minmax", spec, CalibratorOptions())
        levels, _ = quantize_matrix(to_output_matrix(weight, op, group), t, spec.rounding, spec.qmax)
        np.testing.assert_array_equal(levels, rounded[name].levels)
        corrected = {l.name: l for l in cal.ws.fold.net.layers}[name].blobs[1]
        read_back = {l.name: l for l in again.fold.net.layers}[name].blobs[1]
        np.testing.assert_allclose(read_back, corrected, rtol=1e-5, atol=1e-6 * np.abs(corrected).max())
