"""The Caffe schema (proto/caffe.proto) and its generated bindings.

Checks that the bindings import, that well-known fields carry the BVLC / fork field numbers real files use,
and that every shipped model parses: the prototxt as text, the caffemodel as binary with no unknown fields
(an unknown field would mean weights or settings silently dropped by a wrong field number).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import text_format

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
MODELS = ASSETS / "models"


def _import_caffe_pb2() -> ModuleType:
    try:
        return importlib.import_module("int8tune.proto.caffe_pb2")
    except ModuleNotFoundError:
        pass
    # Source tree, package not installed.  The generated module registers "caffe.proto" in the global
    # descriptor pool, so executing the file a second time under another module name fails
    # ("duplicate file name caffe.proto"): reuse a copy some other module already loaded from this file
    # (it may be held only as an attribute, e.g. a module loaded by file path and not put in sys.modules).
    generated = (REPO_ROOT / "proto" / "caffe_pb2.py").resolve()
    for holder in list(sys.modules.values()):
        for module in [holder, *(v for v in vars(holder).values() if isinstance(v, ModuleType))] if holder else []:
            path = getattr(module, "__file__", None)
            if path and Path(path).resolve() == generated:
                return module
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from proto import caffe_pb2

    # Make the package name the code uses resolve to this same module (as an install would), so a later
    # `import int8tune.proto.caffe_pb2` in this process does not load the file a second time.
    sys.modules.setdefault("int8tune.proto", sys.modules["proto"])
    sys.modules.setdefault("int8tune.proto.caffe_pb2", caffe_pb2)
    return caffe_pb2


caffe_pb2 = _import_caffe_pb2()


def _number(message: type, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


# --- the bindings ---------------------------------------------------------------------------------------------


def test_bindings_import_and_package() -> None:
    assert caffe_pb2.DESCRIPTOR.package == "caffe"
    assert caffe_pb2.DESCRIPTOR.name == "caffe.proto"
    # proto2 semantics: optional scalars have presence (HasField works on them).
    assert caffe_pb2.ConvolutionParameter.DESCRIPTOR.fields_by_name["group"].has_presence
    for name in ("BlobShape", "BlobProto", "BlobProtoVector", "Datum", "FillerParameter", "NetParameter",
                 "NetState", "NetStateRule", "ParamSpec", "LayerParameter", "V1LayerParameter",
                 "V0LayerParameter", "TransformationParameter", "PriorBoxParameter", "DetectionOutputParameter",
                 "UpsampleParameter", "InterpParameter", "ShuffleChannelParameter", "ReLU6Parameter"):
        assert hasattr(caffe_pb2, name), name


@pytest.mark.parametrize(("message", "field", "number"), [
    # NetParameter, including the legacy input header and V1 layers
    ("NetParameter", "name", 1),
    ("NetParameter", "layers", 2),
    ("NetParameter", "input", 3),
    ("NetParameter", "input_dim", 4),
    ("NetParameter", "force_backward", 5),
    ("NetParameter", "state", 6),
    ("NetParameter", "debug_info", 7),
    ("NetParameter", "input_shape", 8),
    ("NetParameter", "layer", 100),
    # BlobProto
    ("BlobProto", "shape", 7),
    ("BlobProto", "data", 5),
    ("BlobProto", "double_data", 8),
    ("BlobProto", "num", 1),
    # LayerParameter: common fields and BVLC parameters
    ("LayerParameter", "blobs", 7),
    ("LayerParameter", "phase", 10),
    ("LayerParameter", "propagate_down", 11),
    ("LayerParameter", "transform_param", 100),
    ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "pooling_param", 121),
    ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142),
    ("LayerParameter", "input_param", 143),
    ("LayerParameter", "crop_param", 144),
    ("LayerParameter", "recurrent_param", 146),
    ("LayerParameter", "swish_param", 147),
    ("LayerParameter", "clip_param", 148),
    # SSD fork
    ("LayerParameter", "annotated_data_param", 200),
    ("LayerParameter", "multibox_loss_param", 201),
    ("LayerParameter", "permute_param", 202),
    ("LayerParameter", "prior_box_param", 203),
    ("LayerParameter", "detection_output_param", 204),
    ("LayerParameter", "detection_evaluate_param", 205),
    ("LayerParameter", "norm_param", 206),
    ("LayerParameter", "video_data_param", 207),
    ("TransformationParameter", "resize_param", 8),
    ("TransformationParameter", "emit_constraint", 10),
    ("TransformationParameter", "expand_param", 14),
    # other forks
    ("LayerParameter", "upsample_param", 149),
    ("LayerParameter", "mish_param", 150),
    ("LayerParameter", "shuffle_channel_param", 164),
    ("LayerParameter", "interp_param", 2143),
    ("LayerParameter", "relu6_param", 100000),
    # parameter messages
    ("ConvolutionParameter", "dilation", 18),
    ("ConvolutionParameter", "engine", 15),
    ("ConvolutionParameter", "axis", 16),
    ("ConvolutionParameter", "force_nd_im2col", 17),
    ("PoolingParameter", "global_pooling", 12),
    ("PoolingParameter", "round_mode", 13),
    ("EltwiseParameter", "stable_prod_grad", 3),
    ("UpsampleParameter", "scale", 1),
    # V1 and V0 layers
    ("V1LayerParameter", "bottom", 2),
    ("V1LayerParameter", "top", 3),
    ("V1LayerParameter", "name", 4),
    ("V1LayerParameter", "type", 5),
    ("V1LayerParameter", "blobs", 6),
    ("V1LayerParameter", "blobs_lr", 7),
    ("V1LayerParameter", "convolution_param", 10),
    ("V1LayerParameter", "pooling_param", 19),
    ("V1LayerParameter", "include", 32),
    ("V1LayerParameter", "transform_param", 36),
    ("V1LayerParameter", "loss_param", 42),
    ("V1LayerParameter", "param", 1001),
    ("V1LayerParameter", "layer", 1),
    ("V0LayerParameter", "kernelsize", 8),
    ("V0LayerParameter", "blobs", 50),
    ("V0LayerParameter", "hdf5_output_param", 1001),
])
def test_field_numbers(message: str, field: str, number: int) -> None:
    assert _number(getattr(caffe_pb2, message), field) == number


def test_layer_parameter_numbers_are_unique() -> None:
    numbers = [f.number for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields]
    assert len(numbers) == len(set(numbers))


def test_enums_and_defaults() -> None:
    v1 = caffe_pb2.V1LayerParameter
    assert v1.CONVOLUTION == 4 and v1.POOLING == 17 and v1.INNER_PRODUCT == 14 and v1.DECONVOLUTION == 39
    assert caffe_pb2.PriorBoxParameter.CORNER == 1 and caffe_pb2.PriorBoxParameter.CENTER_SIZE == 2
    assert caffe_pb2.EltwiseParameter.PROD == 0 and caffe_pb2.EltwiseParameter.SUM == 1
    assert caffe_pb2.LRNParameter.WITHIN_CHANNEL == 1
    assert caffe_pb2.PoolingParameter.FLOOR == 1
    assert caffe_pb2.ReductionParameter.MEAN == 4

    conv = caffe_pb2.ConvolutionParameter()
    assert conv.bias_term is True and conv.group == 1 and conv.axis == 1
    pool = caffe_pb2.PoolingParameter()
    assert pool.pool == caffe_pb2.PoolingParameter.MAX and pool.stride == 1
    assert pool.round_mode == caffe_pb2.PoolingParameter.CEIL
    bn = caffe_pb2.BatchNormParameter()
    assert bn.eps == pytest.approx(1e-5) and bn.moving_average_fraction == pytest.approx(0.999)
    assert caffe_pb2.EltwiseParameter().operation == caffe_pb2.EltwiseParameter.SUM
    assert caffe_pb2.LRNParameter().local_size == 5
    assert caffe_pb2.DetectionOutputParameter().keep_top_k == -1
    assert caffe_pb2.NonMaximumSuppressionParameter().nms_threshold == pytest.approx(0.3)
    assert caffe_pb2.PriorBoxParameter().offset == pytest.approx(0.5)
    assert caffe_pb2.NormalizeParameter().eps == pytest.approx(1e-10)
    assert caffe_pb2.UpsampleParameter().scale == 1
    assert caffe_pb2.InterpParameter().zoom_factor == 1
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert caffe_pb2.FillerParameter().type == "constant"


def test_v1_prototxt_parses() -> None:
    text = """
    name: "v1net"
    input: "data"
    input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32
    layers {
      name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
      blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
      convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } }
    }
    layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
    layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
             pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" inner_product_param { num_output: 10 } }
    """
    net = caffe_pb2.NetParameter()
    text_format.Merge(text, net)
    assert len(net.layer) == 0
    assert [layer.name for layer in net.layers] == ["conv1", "relu1", "pool1", "fc"]
    assert [layer.type for layer in net.layers] == [
        caffe_pb2.V1LayerParameter.CONVOLUTION, caffe_pb2.V1LayerParameter.RELU,
        caffe_pb2.V1LayerParameter.POOLING, caffe_pb2.V1LayerParameter.INNER_PRODUCT]
    assert list(net.layers[0].convolution_param.kernel_size) == [3]
    assert list(net.layers[0].blobs_lr) == [1.0, 2.0]
    assert list(net.input_dim) == [1, 3, 32, 32]
    again = caffe_pb2.NetParameter()
    again.ParseFromString(net.SerializeToString())
    assert again == net


def test_fork_layers_parse_from_text() -> None:
    text = """
    layer { name: "up" type: "Upsample" bottom: "x" top: "up" upsample_param { scale: 2 } }
    layer { name: "interp" type: "Interp" bottom: "x" top: "i" interp_param { zoom_factor: 8 pad_beg: 0 } }
    layer { name: "shuffle" type: "ShuffleChannel" bottom: "x" top: "s" shuffle_channel_param { group: 3 } }
    layer { name: "r6" type: "ReLU6" bottom: "x" top: "r6" relu6_param { negative_slope: 0 } }
    layer { name: "pb" type: "PriorBox" bottom: "x" bottom: "data" top: "pb"
            prior_box_param { min_size: 30 aspect_ratio: 2 flip: true variance: 0.1 step: 8 } }
    """
    net = caffe_pb2.NetParameter()
    text_format.Merge(text, net)
    assert net.layer[0].upsample_param.scale == 2
    assert net.layer[1].interp_param.zoom_factor == 8
    assert net.layer[2].shuffle_channel_param.group == 3
    assert net.layer[3].HasField("relu6_param")
    assert list(net.layer[4].prior_box_param.min_size) == [30.0]


# --- the shipped models ---------------------------------------------------------------------------------------


def _model_dirs() -> list[Path]:
    return sorted(p for p in MODELS.glob("*/") if p.is_dir()) if MODELS.is_dir() else []


def _model_id(path: Path) -> str:
    return path.name


def _unknown_field_paths(message, path: str = "") -> list[str]:
    """Paths of every (sub)message that holds fields the schema does not know."""
    found = []
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
        unknown = UnknownFieldSet(message)
    except ImportError:  # older protobuf
        unknown = message.UnknownFields()
    if len(unknown):
        numbers = sorted({field.field_number for field in unknown})
        found.append(f"{path or '<NetParameter>'}: field(s) {numbers}")
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                found += _unknown_field_paths(item, f"{path}.{field.name}[{i}]")
        else:
            found += _unknown_field_paths(value, f"{path}.{field.name}")
    return found


@pytest.fixture(scope="module")
def model_dirs() -> list[Path]:
    if not MODELS.is_dir():
        pytest.skip(f"real models not found at {MODELS} (clone the project beside ../shared)")
    dirs = _model_dirs()
    if not dirs:
        pytest.skip(f"no model directories under {MODELS}")
    return dirs


def _only(directory: Path, pattern: str) -> Path:
    matches = sorted(directory.glob(pattern))
    assert len(matches) == 1, f"expected one {pattern} in {directory}, found {[m.name for m in matches]}"
    return matches[0]


def test_every_model_parses(model_dirs: list[Path]) -> None:
    problems = []
    for directory in model_dirs:
        prototxt = _only(directory, "*.prototxt")
        caffemodel = _only(directory, "*.caffemodel")

        deploy = caffe_pb2.NetParameter()
        try:
            text_format.Merge(prototxt.read_text(encoding="utf-8"), deploy)
        except text_format.ParseError as e:
            problems.append(f"{prototxt}: {e}")
            continue
        if not deploy.layer and not deploy.layers:
            problems.append(f"{prototxt}: no layers")

        data = caffemodel.read_bytes()
        weights = caffe_pb2.NetParameter()
        weights.ParseFromString(data)
        if not weights.layer and not weights.layers:
            problems.append(f"{caffemodel}: no layers")
        unknown = _unknown_field_paths(weights)
        if unknown:
            problems.append(f"{caffemodel}: unknown fields at " + "; ".join(unknown[:5]))
        # Independent of the walk above: dropping unknown fields must not change the bytes, and the
        # re-serialised message must be as long as the file (nothing was left behind).
        serialised = weights.SerializeToString()
        stripped = caffe_pb2.NetParameter()
        stripped.CopyFrom(weights)
        stripped.DiscardUnknownFields()
        if stripped.SerializeToString() != serialised:
            problems.append(f"{caffemodel}: DiscardUnknownFields changed the serialised message")
        if len(serialised) != len(data):
            problems.append(f"{caffemodel}: re-serialised to {len(serialised)} bytes, file has {len(data)}")
        if not any(blob.data or blob.double_data for layer in weights.layer for blob in layer.blobs) and not any(
                blob.data or blob.double_data for layer in weights.layers for blob in layer.blobs):
            problems.append(f"{caffemodel}: no weight data found")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", [p.name for p in _model_dirs()] or ["<none>"])
def test_model_parses(name: str, model_dirs: list[Path]) -> None:
    """Per-model variant of test_every_model_parses, so a failure names the model in the test id."""
    directory = MODELS / name
    deploy = caffe_pb2.NetParameter()
    text_format.Merge(_only(directory, "*.prototxt").read_text(encoding="utf-8"), deploy)
    weights = caffe_pb2.NetParameter()
    weights.ParseFromString(_only(directory, "*.caffemodel").read_bytes())
    assert _unknown_field_paths(weights) == []
    # Every layer of the deploy net that has learned parameters finds them in the caffemodel by name.
    blobs_by_name = {layer.name: len(layer.blobs) for layer in weights.layer}
    blobs_by_name.update({layer.name: len(layer.blobs) for layer in weights.layers})
    for layer in deploy.layer:
        # (A Scale/Bias layer with two bottoms takes its factor from the second bottom and has no blobs.)
        learned = layer.type in ("Convolution", "InnerProduct", "BatchNorm", "PReLU", "Normalize") or (
            layer.type == "Scale" and len(layer.bottom) == 1)
        if learned:
            assert blobs_by_name.get(layer.name, 0) > 0, f"{name}: no blobs for layer {layer.name!r}"


def test_upsample_and_ssd_fields_carry_values(model_dirs: list[Path]) -> None:
    """Spot checks that fork fields land where they belong (not merely 'no unknown fields')."""
    seen = set()
    for directory in model_dirs:
        weights = caffe_pb2.NetParameter()
        weights.ParseFromString(_only(directory, "*.caffemodel").read_bytes())
        for layer in weights.layer:
            if layer.type == "Upsample":
                assert layer.upsample_param.scale == 2
                seen.add("Upsample")
            elif layer.type == "PriorBox":
                assert layer.prior_box_param.min_size and layer.prior_box_param.variance
                seen.add("PriorBox")
            elif layer.type == "Normalize":
                assert layer.HasField("norm_param") and layer.blobs
                seen.add("Normalize")
            elif layer.type == "Permute":
                assert sorted(layer.permute_param.order) == [0, 1, 2, 3]
                seen.add("Permute")
            elif layer.type == "Input":
                assert layer.input_param.shape and len(layer.input_param.shape[0].dim) == 4
                seen.add("Input")
    if not seen:
        pytest.skip("none of the shipped models uses fork layers")
