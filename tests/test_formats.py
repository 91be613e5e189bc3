"""Calibration table formats: each writer and reader round-trips a table built in code for a tiny net
(Convolution -> in-place ReLU -> InnerProduct), to the exactness each format allows; unmatched keys are
reported; the int8 prototxt parses with our caffe.proto; write_all is atomic and contained."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

from int8tune.caffe.loader import load_net, read_prototxt
from int8tune.caffe.net import CaffeNet
from int8tune.errors import ConfigError, RegistryError
from int8tune.outputs import provenance
from int8tune.quant.formats import (
    TABLE_FORMATS,
    apply_imported,
    read_int8_prototxt,
    read_ncnn_table,
    read_ort_cache,
    read_table_pb,
    read_tensorrt_cache,
    write_all,
    write_int8_prototxt,
    write_ncnn_table,
    write_ort_cache,
    write_table_pb,
    write_tensorrt_cache,
)
from int8tune.quant.formats.base import LayerShape
from int8tune.quant.formats.ncnn import ncnn_weight_thresholds
from int8tune.quant.formats.tensorrt import scale_hex
from int8tune.quant.spec import BiasMode, Granularity, QuantSpec, Rounding
from int8tune.quant.table import BlobEntry, CalibrationTable, LayerEntry

ALL_FILES = {"pb": "calibration_table.pb", "pbtxt": "calibration_table.pbtxt", "int8_prototxt": "int8.prototxt",
             "tensorrt": "tensorrt_calibration.cache", "ncnn": "ncnn.table",
             "onnxruntime": "onnxruntime_calibration.cache"}


# --- the tiny net and its table ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path, CaffeNet]:
    tmp = tmp_path_factory.mktemp("net")
    rng = np.random.default_rng(0)
    prototxt = ('name: "tiny"\n' + input_header((1, 3, 8, 8))
                + layer("conv1", "Convolution", "data", "conv1",
                        "convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
                + layer("relu1", "ReLU", "conv1", "conv1")
                + layer("ip", "InnerProduct", "conv1", "ip", "inner_product_param { num_output: 5 }"))
    weights = {"conv1": [rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)],
               "ip": [rng.normal(size=(5, 256)).astype(np.float32), rng.normal(size=5).astype(np.float32)]}
    proto, caffemodel = write_net(tmp, prototxt, weights, name="tiny")
    return proto, caffemodel, load_net(proto, caffemodel)


def _absmax_per_channel(w: np.ndarray) -> np.ndarray:
    return np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)


@pytest.fixture()
def table(model) -> CalibrationTable:
    proto, caffemodel, net = model
    assert net.layer("ip").bottoms == ("conv1",)  # the final (post-ReLU) version keeps the blob name
    assert net.layer("conv1").tops == ("conv1@conv1",)
    spec = QuantSpec(granularity=Granularity.MIX, rounding=Rounding.HALF_EVEN, bias=BiasMode.INT32, unsigned=True,
                     ignore_layer_types=("Deconvolution",))
    prov = provenance({"calibrator": "kl", "batch": 4, "mean": [104.0, 117.0, 123.0], "note": None},
                      files={"proto": proto, "model": caffemodel}, images=["a.jpg", "b.jpg"])
    t = CalibrationTable(model=net.name, spec=spec, provenance=prov)
    t.blobs["data"] = BlobEntry(value="data", blob="data", threshold=float(np.float32(2.7182817)),
                                channel_thresholds=np.array([2.5, 2.7182817, 0.1 + 0.2]), unsigned=False,
                                calibrator="kl", absmax=3.25)
    t.blobs["conv1"] = BlobEntry(value="conv1", blob="conv1", threshold=1.2345678901234567, unsigned=True,
                                 calibrator="percentile", absmax=None)
    conv_w = net.layer("conv1").blobs[0]
    ip_w = net.layer("ip").blobs[0]
    t.layers["conv1"] = LayerEntry(layer="conv1", type="Convolution", input_value="data",
                                   weight_thresholds=_absmax_per_channel(conv_w), weight_method="minmax")
    t.layers["ip"] = LayerEntry(layer="ip", type="InnerProduct", input_value="conv1",
                                weight_thresholds=_absmax_per_channel(ip_w), weight_method="minmax")
    return t


def _assert_tables_equal(a: CalibrationTable, b: CalibrationTable) -> None:
    assert a.model == b.model
    assert a.spec == b.spec
    assert a.provenance == b.provenance
    assert list(a.blobs) == list(b.blobs)
    for value, ea in a.blobs.items():
        eb = b.blobs[value]
        assert (ea.value, ea.blob, ea.unsigned, ea.calibrator, ea.absmax) == \
               (eb.value, eb.blob, eb.unsigned, eb.calibrator, eb.absmax), value
        assert ea.threshold == eb.threshold, value  # exact
        if ea.channel_thresholds is None:
            assert eb.channel_thresholds is None
        else:
            assert np.array_equal(ea.channel_thresholds, eb.channel_thresholds), value
    assert list(a.layers) == list(b.layers)
    for name, la in a.layers.items():
        lb = b.layers[name]
        assert (la.layer, la.type, la.input_value, la.extra_inputs, la.weight_method, la.int8, la.note) == \
               (lb.layer, lb.type, lb.input_value, lb.extra_inputs, lb.weight_method, lb.int8, lb.note), name
        if la.weight_thresholds is None:
            assert lb.weight_thresholds is None
        else:
            assert np.array_equal(la.weight_thresholds, lb.weight_thresholds), name


# --- protobuf table ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pb", ".pbtxt"])
def test_pb_round_trip_is_exact(table, tmp_path, suffix):
    table.layers["ip"].int8 = False
    table.layers["ip"].note = "fallback by tuner"
    table.layers["conv1"].extra_inputs = ("conv1",)  # not meaningful for a conv; exercises the field
    path = write_table_pb(table, tmp_path / f"t{suffix}")
    back = read_table_pb(path)
    _assert_tables_equal(table, back)
    assert back.blobs["data"].threshold == float(np.float32(2.7182817))  # a float32 value comes back bit-exact
    # deterministic bytes
    again = write_table_pb(table, tmp_path / f"u{suffix}")
    assert path.read_bytes() == again.read_bytes()


def test_pb_text_is_readable_and_binary_is_not_text(table, tmp_path):
    text = write_table_pb(table, tmp_path / "t.pbtxt").read_text()
    assert 'value: "data"' in text and "granularity: MIX" in text and "int8: true" in text
    not_a_table = tmp_path / "x.pb"
    not_a_table.write_bytes(b"\xff\xff not a table")
    with pytest.raises(ConfigError, match="x.pb is not a binary int8tune calibration table"):
        read_table_pb(not_a_table)


# --- TensorRT ---------------------------------------------------------------------------------------------

def test_tensorrt_hex_of_one_is_3c010204(table, tmp_path):
    assert scale_hex(1.0) == "3c010204"
    table.blobs["data"].threshold = 1.0
    lines = write_tensorrt_cache(table, tmp_path / "c.cache").read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    assert "data: 3c010204" in lines[1:]


def test_tensorrt_round_trip(table, tmp_path):
    path = write_tensorrt_cache(table, tmp_path / "c.cache", version=100300)
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    imported = read_tensorrt_cache(path)
    assert list(imported.blob_thresholds) == ["data", "conv1"]  # the values int8 layers read, in table order
    for value, t in imported.blob_thresholds.items():
        original = table.blobs[value].threshold
        # float32(T/127) survives exactly; T comes back as 127 * float32(T/127)
        assert struct.pack(">f", np.float32(original / 127)) == struct.pack(">f", np.float32(t / 127))
        assert t == 127 * float(np.float32(original / 127))
        assert f"{value}: {struct.pack('>f', np.float32(original / 127)).hex()}" in lines
    assert imported.weight_thresholds == {} and imported.input_thresholds == {}


def test_tensorrt_bad_files(tmp_path):
    bad_header = tmp_path / "a.cache"
    bad_header.write_text("data: 3c010204\n")
    with pytest.raises(ConfigError, match="a.cache:1"):
        read_tensorrt_cache(bad_header)
    duplicate = tmp_path / "b.cache"
    duplicate.write_text("TRT-8601-EntropyCalibration2\ndata: 3c010204\ndata: 3c010204\n")
    with pytest.raises(ConfigError, match="b.cache:3.*line 2"):
        read_tensorrt_cache(duplicate)


# --- onnxruntime ------------------------------------------------------------------------------------------

def test_ort_round_trip_is_exact(table, tmp_path):
    path = write_ort_cache(table, tmp_path / "calibration.cache")
    assert path.read_text() == "conv1 1.2345678901234567\ndata 2.7182817459106445\n"  # sorted, str(float)
    imported = read_ort_cache(path)
    assert imported.blob_thresholds == {v: table.blobs[v].threshold for v in ("conv1", "data")}


# --- ncnn -------------------------------------------------------------------------------------------------

def test_ncnn_lines_and_round_trip(table, tmp_path):
    path = write_ncnn_table(table, tmp_path / "t.table")
    lines = path.read_text().splitlines(keepends=True)
    w_conv = table.layers["conv1"].weight_thresholds
    w_ip = table.layers["ip"].weight_thresholds
    assert lines == [
        "conv1_param_0 " + "".join("%f " % (127 / t) for t in w_conv) + "\n",
        "ip_param_0 " + "".join("%f " % (127 / t) for t in w_ip) + "\n",
        "conv1 %f \n" % (127 / table.blobs["data"].threshold),
        "ip %f \n" % (127 / table.blobs["conv1"].threshold),
    ]
    imported = read_ncnn_table(path)
    for name, w in (("conv1", w_conv), ("ip", w_ip)):
        printed = np.array([float("%f" % (127 / t)) for t in w])
        assert np.array_equal(imported.weight_thresholds[name], 127 / printed)  # multipliers as printed
    for name, value in (("conv1", "data"), ("ip", "conv1")):
        assert imported.input_thresholds[name] == 127 / float("%f" % (127 / table.blobs[value].threshold))
        assert imported.input_thresholds[name] == pytest.approx(table.blobs[value].threshold, rel=1e-5)
    assert imported.blob_thresholds == {}


def test_ncnn_weight_thresholds_per_tensor_and_per_group():
    per_tensor = LayerEntry("c", "Convolution", "x", weight_thresholds=np.array([2.0]))
    with pytest.raises(ConfigError, match="num_output"):
        ncnn_weight_thresholds(per_tensor, None)
    assert np.array_equal(ncnn_weight_thresholds(per_tensor, LayerShape(3, 1)), [2.0, 2.0, 2.0])
    grouped = LayerEntry("g", "Convolution", "x", weight_thresholds=np.array([1.0, 3.0, 2.0, 0.5]))
    assert np.array_equal(ncnn_weight_thresholds(grouped, LayerShape(4, 2)), [3.0, 2.0])  # max per group
    assert np.array_equal(ncnn_weight_thresholds(grouped, LayerShape(4, 4)), [1.0, 3.0, 2.0, 0.5])  # depthwise


# --- int8 prototxt ----------------------------------------------------------------------------------------

def test_int8_prototxt_parses_and_annotates(table, model, tmp_path):
    proto, _, _ = model
    path = write_int8_prototxt(table, proto, tmp_path / "int8.prototxt")
    net = read_prototxt(path)  # our caffe.proto parses it
    by_name = {lp.name: lp for lp in net.layer}
    assert not by_name["relu1"].HasField("quantization_param")
    conv = by_name["conv1"].quantization_param
    assert conv.precision == conv.DYNAMIC_FIXED_POINT
    assert (conv.bw_layer_in, conv.bw_layer_out, conv.bw_params) == (8, 8, 8)
    assert list(conv.scale_in) == [np.float32(127 / table.blobs["data"].threshold)]
    assert conv.is_negative_input is True
    # conv1's output blob (the post-ReLU "conv1") is read by an int8 layer and is unsigned: 255/T
    assert list(conv.scale_out) == [np.float32(255 / table.blobs["conv1"].threshold)]
    assert np.array_equal(np.array(conv.scale_params, dtype=np.float32),
                          (127 / table.layers["conv1"].weight_thresholds).astype(np.float32))
    ip = by_name["ip"].quantization_param
    assert list(ip.scale_in) == [np.float32(255 / table.blobs["conv1"].threshold)]
    assert ip.is_negative_input is False and ip.HasField("is_negative_input")
    assert (ip.bw_layer_out, list(ip.scale_out)) == (32, [1.0])  # nothing quantized reads "ip": fp32 output
    assert len(ip.scale_params) == 5
    # everything else of the fp32 prototxt is unchanged
    fp32 = read_prototxt(proto)
    for lp in net.layer:
        lp.ClearField("quantization_param")
    assert net == fp32


def test_int8_prototxt_fallback_layer_has_no_quantization_param(table, model, tmp_path):
    proto, _, _ = model
    fallen = table.with_fallback(["ip"], note="fallback by tuner")
    net = read_prototxt(write_int8_prototxt(fallen, proto, tmp_path / "int8.prototxt"))
    by_name = {lp.name: lp for lp in net.layer}
    assert by_name["conv1"].HasField("quantization_param")
    assert not by_name["ip"].HasField("quantization_param")
    # "conv1" is no longer read by an int8 layer: conv1's output stays fp32
    assert (by_name["conv1"].quantization_param.bw_layer_out,
            list(by_name["conv1"].quantization_param.scale_out)) == (32, [1.0])


def test_int8_prototxt_round_trip(table, model, tmp_path):
    proto, _, _ = model
    imported = read_int8_prototxt(write_int8_prototxt(table, proto, tmp_path / "int8.prototxt"))
    assert imported.input_thresholds["conv1"] == pytest.approx(table.blobs["data"].threshold, rel=1e-6)
    assert imported.input_thresholds["ip"] == pytest.approx(table.blobs["conv1"].threshold, rel=1e-6)
    assert imported.input_unsigned == {"conv1": False, "ip": True}
    # conv1's top is rewritten in place by its ReLU: the scale_out is keyed by conv1's own version, and falls
    # back to the blob's final version (which the writer wrote, the table having no conv1@conv1 entry). No
    # quantized layer reads conv1@conv1, so the file does not say its sign: read as signed, and converted with
    # 255 when the table's entry is unsigned
    assert imported.blob_thresholds["conv1@conv1"] == pytest.approx(table.blobs["conv1"].threshold * 127 / 255,
                                                                     rel=1e-6)
    assert imported.fallback_names == {"conv1@conv1": "conv1"} and imported.assumed_signed == {"conv1@conv1"}
    imported.input_thresholds.pop("ip")  # so that conv1 comes from scale_out alone
    restored, unmatched = apply_imported(table, imported)
    assert unmatched == []
    assert restored.blobs["conv1"].threshold == pytest.approx(table.blobs["conv1"].threshold, rel=1e-6)
    for name in ("conv1", "ip"):
        np.testing.assert_allclose(imported.weight_thresholds[name], table.layers[name].weight_thresholds,
                                   rtol=1e-6)
        # exact for what the file holds: 127 / float32(127 / T_w)
        scales = (127 / table.layers[name].weight_thresholds).astype(np.float32).astype(np.float64)
        assert np.array_equal(imported.weight_thresholds[name], 127 / scales)


# --- importing: matching keys back to the table -----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL_FILES))
def test_every_format_applies_back_with_nothing_unmatched(table, model, tmp_path, name):
    proto, _, net = model
    fmt = TABLE_FORMATS.get(name)
    path = fmt.write(table, tmp_path / fmt.file_name, proto)
    imported = fmt.read(path)
    assert imported.format == name and imported.source == path
    shifted = table.with_threshold("data", 9.0).with_threshold("conv1", 7.0)
    back, unmatched = apply_imported(shifted, imported, net)
    assert unmatched == []
    for value in ("data", "conv1"):
        assert back.blobs[value].threshold == pytest.approx(table.blobs[value].threshold, rel=1e-5)
        assert back.blobs[value].calibrator == f"imported:{name}"
    # per-channel thresholds follow the per-tensor one proportionally
    np.testing.assert_allclose(back.blobs["data"].channel_thresholds, table.blobs["data"].channel_thresholds,
                               rtol=1e-5)
    if name in ("pb", "pbtxt", "int8_prototxt", "ncnn"):
        for layer_name in ("conv1", "ip"):
            np.testing.assert_allclose(back.layers[layer_name].weight_thresholds,
                                       table.layers[layer_name].weight_thresholds, rtol=1e-5)
            assert back.layers[layer_name].weight_method == f"imported:{name}"
    assert shifted.blobs["data"].threshold == 9.0  # the input table is not modified


@pytest.mark.parametrize(("name", "bogus", "expected"), [
    ("tensorrt", "bogus_tensor: 3c010204\n", ["bogus_tensor"]),
    ("onnxruntime", "bogus tensor 1.5\n", ["bogus tensor"]),
    ("ncnn", "bogus_param_0 1.000000 \nghost 2.000000 \nmha_param_1 1.0 \n",
     ["mha_param_1", "ghost", "bogus_param_0"]),
])
def test_unmatched_keys_are_reported(table, model, tmp_path, name, bogus, expected):
    proto, _, net = model
    fmt = TABLE_FORMATS.get(name)
    path = fmt.write(table, tmp_path / fmt.file_name, proto)
    with open(path, "a", encoding="utf-8") as f:
        f.write(bogus)
    back, unmatched = apply_imported(table, fmt.read(path), net)
    assert sorted(unmatched) == sorted(expected)
    assert back.blobs["data"].threshold == pytest.approx(table.blobs["data"].threshold, rel=1e-5)


def test_unmatched_keys_of_an_int8_prototxt(table, model, tmp_path):
    proto, _, net = model
    path = write_int8_prototxt(table, proto, tmp_path / "int8.prototxt")
    text = path.read_text().replace('name: "relu1"', 'name: "relu1"\n  quantization_param { bw_layer_in: 8 '
                                                     'scale_in: 10.0 is_negative_input: true }', 1)
    path.write_text(text)
    _, unmatched = apply_imported(table, read_int8_prototxt(path), net)
    assert unmatched == ["relu1.scale_in[0]"]  # relu1 is in the net, but what it reads has no table entry


def test_blob_key_matches_user_visible_name_and_conflicting_layer_key_wins(table, model, caplog):
    from int8tune.quant.formats import ImportedThresholds

    _, _, net = model
    imported = ImportedThresholds(format="test", blob_thresholds={"conv1": 3.0},
                                  input_thresholds={"ip": 4.0, "relu1": 1.0})
    back, unmatched = apply_imported(table, imported, net)
    assert back.blobs["conv1"].threshold == 4.0  # the per-layer key of the reader of "conv1" overrides
    assert "using ip" in caplog.text
    assert unmatched == ["relu1"]
    with pytest.raises(ConfigError, match="finite and positive"):
        apply_imported(table, ImportedThresholds(format="test", blob_thresholds={"data": 0.0}), net)


# --- write_all --------------------------------------------------------------------------------------------

def test_write_all_writes_every_format_atomically(table, model, tmp_path, monkeypatch):
    proto, _, _ = model
    out = tmp_path / "out"
    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr("int8tune.outputs.os.replace", recording_replace)
    written = write_all(table, proto, out)
    assert written == {name: out / file for name, file in ALL_FILES.items()}
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FILES.values())  # no stray temp files
    assert sorted(dst for _, dst in replaced) == sorted(written.values())
    for src, dst in replaced:  # each file was a temp file in the same directory, renamed into place
        assert src.parent == dst.parent == out and src.name.startswith(f".{dst.name}.")
    # rewriting over existing files leaves the same set
    write_all(table, proto, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FILES.values())


def test_write_all_needs_the_prototxt_for_the_int8_model(table, tmp_path):
    with pytest.raises(ConfigError, match="fp32 prototxt"):
        write_all(table, None, tmp_path / "out", formats=["int8_prototxt"])
    assert set(write_all(table, None, tmp_path / "out2", formats=["tensorrt", "onnxruntime"])) == {
        "tensorrt", "onnxruntime"}


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(RegistryError, match="valid names: int8_prototxt, ncnn, onnxruntime, pb, pbtxt, tensorrt"):
        TABLE_FORMATS.get("tflite")


def test_intel_quantization_param_field_numbers():
    """Intel Caffe's numbers (intel/caffe src/caffe/proto/caffe.proto); is_negative_input's 23 is ours."""
    from int8tune.caffe.schema import caffe_pb2

    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["quantization_param"].number == 158
    fields = {f.name: f.number for f in caffe_pb2.QuantizationParameter.DESCRIPTOR.fields}
    assert fields == {"precision": 1, "rounding_scheme": 2, "bw_layer_in": 3, "bw_layer_out": 4, "bw_params": 5,
                      "fl_layer_in": 6, "fl_layer_out": 7, "fl_params": 8, "scale_in": 20, "scale_out": 21,
                      "scale_params": 22, "is_negative_input": 23}
    q = caffe_pb2.QuantizationParameter()
    assert (q.bw_layer_in, q.is_negative_input, q.precision) == (32, False, q.DYNAMIC_FIXED_POINT)


def test_a_warning_about_a_table_is_logged_once_however_many_times_it_is_written(caplog):
    """main.sh writes the same table's ncnn.table under calibration/, start/ and tuned/: one warning, not three."""
    from int8tune.log import warn_once

    with caplog.at_level("WARNING", logger="int8tune"):
        for _ in range(3):
            warn_once("ncnn: layer(s) %s not quantized", "sum_test_once")
        warn_once("ncnn: layer(s) %s not quantized", "another_layer")
    texts = [r.getMessage() for r in caplog.records]
    assert texts.count("ncnn: layer(s) sum_test_once not quantized") == 1
    assert "ncnn: layer(s) another_layer not quantized" in texts
