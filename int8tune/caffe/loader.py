"""prototxt + caffemodel -> CaffeNet.

What happens here, in order:
1. read the prototxt (text format, parsed strictly as Caffe's TextFormat::Parse: a singular field given twice
   is an error, not "the last one wins") and the caffemodel (binary); upgrade the legacy V1 `layers` format;
2. find the inputs (all three header styles: `input`+`input_dim`, `input`+`input_shape`, `Input` layers);
3. keep the layers Caffe runs in the TEST phase (NetStateRule include/exclude) and drop train-only layers
   (losses, accuracy, silence), saying which;
4. refuse a blob written by two layers unless the second writes it in place (Caffe's "produced by multiple
   sources"), then give every written version of an in-place blob its own value name (see net.py);
5. attach weights by layer name; a parametric layer without weights is an error naming it, and so is (as in
   Caffe's CopyTrainedLayersFrom) a layer whose caffemodel blobs differ in number from what its type takes, and
   (unlike Caffe, which would run it) a blob holding NaN/inf or a BatchNorm variance below zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from ..errors import ModelError
from ..log import logger
from .net import VERSION_SEPARATOR, CaffeNet, Layer
from .schema import caffe_pb2
from .upgrade import upgrade_v1_net

# Layers that only make sense while training; Caffe's deploy nets do not run them.
TRAIN_ONLY_TYPES = frozenset({
    "Accuracy", "ContrastiveLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
    "SigmoidCrossEntropyLoss", "SoftmaxWithLoss", "MultiBoxLoss", "Silence", "DetectionEvaluate",
    "SmoothL1Loss", "FocalLoss",
})
# Layers that read a dataset from disk. A deploy prototxt declares inputs instead.
DATA_TYPES = frozenset({
    "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "AnnotatedData", "VideoData",
    "Python",
})
# Layer types whose learned parameters must come from the caffemodel (unless noted in _needs_weights).
PARAMETRIC_TYPES = frozenset({
    "Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "Scale", "Bias", "PReLU", "Normalize",
    "Embed", "DepthwiseConvolution", "ConvolutionDepthwise",
})
CONVOLUTION_TYPES = frozenset({"Convolution", "Deconvolution", "DepthwiseConvolution", "ConvolutionDepthwise"})
# Types without learned parameters that the converter knows; a caffemodel giving them blobs is inconsistent.
BLOBLESS_TYPES = frozenset({
    "ReLU", "ReLU6", "Clip", "Sigmoid", "TanH", "AbsVal", "BNLL", "ELU", "Swish", "Threshold", "Power", "Exp", "Log",
    "Dropout", "Split", "Eltwise", "LRN", "MVN", "Pooling", "Upsample", "Interp", "Concat", "Slice", "Flatten",
    "Reshape", "Permute", "Crop", "ShuffleChannel", "Tile", "Softmax", "ArgMax", "Reduction", "PriorBox",
    "DetectionOutput",
})


def read_prototxt(path: str | Path) -> "caffe_pb2.NetParameter":
    """Parse a text prototxt as Caffe does (TextFormat::Parse): a singular field given twice is an error.

    `text_format.Merge` would keep the last of the two silently (`type: "ReLU"` then `type: "Sigmoid"` builds a
    Sigmoid), a net Caffe itself refuses to load.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ModelError(f"prototxt {path} does not exist") from e
    except IsADirectoryError as e:
        raise ModelError(f"prototxt {path} is a directory, not a file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"prototxt {path} cannot be read as text: {e}") from e
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        # ParseError's message already carries "line:column"; name the file in front of it.
        raise ModelError(f"{path}:{_parse_error_text(e)}") from e
    return net


def _parse_error_text(e: text_format.ParseError) -> str:
    """"line:col: message" (protobuf writes "line:col : message")."""
    text = str(e)
    if e.GetLine() is not None:
        text = text.replace(f"{e.GetLine()}:{e.GetColumn()} : ", f"{e.GetLine()}:{e.GetColumn()}: ", 1)
    return text


def read_caffemodel(path: str | Path) -> "caffe_pb2.NetParameter":
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ModelError(f"caffemodel {path} does not exist") from e
    except IsADirectoryError as e:
        raise ModelError(f"caffemodel {path} is a directory, not a file") from e
    except OSError as e:
        raise ModelError(f"caffemodel {path} cannot be read: {e.strerror or e}") from e
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError as e:
        raise ModelError(
            f"caffemodel {path} is not a binary Caffe NetParameter ({e}); "
            f"did you swap --proto and --model, or pass a text prototxt?") from e
    if not net.layer and not net.layers:
        raise ModelError(f"caffemodel {path} holds no layers (is it a solverstate or an empty file?)")
    return net


def load_net(proto_path: str | Path, model_path: str | Path | None) -> CaffeNet:
    """Load a deploy net and its weights. `model_path` None gives a net without weights (structure only)."""
    net_param = read_prototxt(proto_path)
    weights_param = read_caffemodel(model_path) if model_path is not None else None
    return build_net(net_param, weights_param, proto_path=Path(proto_path),
                     model_path=Path(model_path) if model_path is not None else None)


def build_net(net_param, weights_param=None, *, proto_path: Path | None = None,
              model_path: Path | None = None) -> CaffeNet:
    """The loader's core, on already parsed messages (tests build these in code)."""
    where = str(proto_path) if proto_path else "<prototxt>"
    net_param = _upgraded(net_param, where)
    layers_param = list(net_param.layer)
    _name_unnamed_layers(layers_param)
    _refuse_duplicate_names(layers_param, where)

    inputs = _header_inputs(net_param, where)
    kept: list = []
    dropped: list[str] = []
    for index, lp in enumerate(layers_param):
        if not _runs_in_test_phase(lp):
            dropped.append(f"{lp.name} ({lp.type}): excluded from the TEST phase")
            continue
        if lp.type in TRAIN_ONLY_TYPES:
            dropped.append(f"{lp.name} ({lp.type}): train-only layer")
            continue
        if lp.type in DATA_TYPES:
            raise ModelError(
                f"{where}: layer {lp.name!r} is a {lp.type} layer (reads a dataset); give a deploy prototxt "
                f"whose inputs are declared with `input:` + `input_shape`/`input_dim` or an Input layer")
        if lp.type == "Input":
            for i, top in enumerate(lp.top):
                if top in inputs:
                    raise ModelError(f"{where}: Input layer {lp.name!r} declares input {top!r}, which is already "
                                     f"declared; Caffe refuses a blob produced by multiple sources")
                inputs[top] = _input_layer_shape(lp, i, where)
            continue
        kept.append((index, lp))
    if not inputs:
        raise ModelError(f"{where}: the net declares no input (expected `input:` with `input_dim`/"
                         f"`input_shape`, or an Input layer)")

    weights = _weights_by_layer(weights_param, model_path) if weights_param is not None else {}
    kept = _drop_dangling(kept, set(inputs), dropped)
    _refuse_multiple_sources(kept, inputs, where)
    for index, lp in kept:
        _check_settings(lp, index, where)
    layers, blob_of = _assign_values(kept, inputs, weights, where, check_weights=weights_param is not None)
    if weights_param is not None:
        model_where = str(model_path) if model_path else "<caffemodel>"
        for layer in layers:
            _check_blobs(layer, model_where)
    for note in dropped:
        logger.info("not run: %s", note)
    return CaffeNet(name=net_param.name or (proto_path.stem if proto_path else "net"), proto_path=proto_path,
                    model_path=model_path, inputs=inputs, layers=layers, blob_of=blob_of, dropped=dropped)


# --- format and header -----------------------------------------------------------------------------------

def _upgraded(net_param, where: str):
    if net_param.layers and net_param.layer:
        raise ModelError(f"{where}: uses both the V1 `layers` and the V2 `layer` field; use one format")
    if net_param.layers:
        logger.info("%s uses the legacy V1 `layers` format; upgrading it in memory", where)
        return upgrade_v1_net(net_param, where)
    return net_param


def _name_unnamed_layers(layers_param: list) -> None:
    """Caffe accepts layers without a name (res10's DetectionOutput); reports need one."""
    taken = {lp.name for lp in layers_param if lp.name}
    for index, lp in enumerate(layers_param):
        if lp.name:
            continue
        candidate = lp.top[0] if lp.top and lp.top[0] not in taken else f"{lp.type.lower()}_{index}"
        lp.name = candidate
        taken.add(candidate)
        logger.info("layer #%d (%s) has no name; calling it %r", index, lp.type, candidate)


def _refuse_duplicate_names(layers_param: list, where: str) -> None:
    seen: dict[str, int] = {}
    for index, lp in enumerate(layers_param):
        if lp.name in seen and _runs_in_test_phase(lp) and _runs_in_test_phase(layers_param[seen[lp.name]]):
            raise ModelError(f"{where}: layers #{seen[lp.name]} and #{index} are both named {lp.name!r}; "
                             f"weights are matched by name, so names must be unique")
        seen[lp.name] = index


def _header_inputs(net_param, where: str) -> dict[str, tuple[int, ...]]:
    names = list(net_param.input)
    if not names:
        if net_param.input_dim or net_param.input_shape:
            raise ModelError(f"{where}: `input_dim`/`input_shape` given without an `input:` name")
        return {}
    if net_param.input_shape:
        if len(net_param.input_shape) != len(names):
            raise ModelError(f"{where}: {len(names)} `input:` names but {len(net_param.input_shape)} "
                             f"`input_shape` blocks")
        shapes = [tuple(int(d) for d in s.dim) for s in net_param.input_shape]
    elif net_param.input_dim:
        dims = [int(d) for d in net_param.input_dim]
        if len(dims) != 4 * len(names):
            raise ModelError(f"{where}: {len(names)} `input:` names need {4 * len(names)} `input_dim` values "
                             f"(N, C, H, W each), found {len(dims)}")
        shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
    else:
        raise ModelError(f"{where}: `input: {names[0]!r}` has no `input_dim` or `input_shape`")
    for name, shape in zip(names, shapes):
        if any(d <= 0 for d in shape):
            raise ModelError(f"{where}: input {name!r} has a non-positive dimension {shape}")
    return dict(zip(names, shapes))


def _input_layer_shape(lp, top_index: int, where: str) -> tuple[int, ...]:
    shapes = list(lp.input_param.shape)
    if not shapes:
        raise ModelError(f"{where}: Input layer {lp.name!r} has no input_param.shape")
    if len(shapes) not in (1, len(lp.top)):
        raise ModelError(f"{where}: Input layer {lp.name!r} has {len(lp.top)} tops but {len(shapes)} shapes")
    shape = tuple(int(d) for d in shapes[top_index if len(shapes) > 1 else 0].dim)
    if not shape or any(d <= 0 for d in shape):
        raise ModelError(f"{where}: Input layer {lp.name!r} declares shape {shape}; expected positive dims")
    return shape


# --- phases ---------------------------------------------------------------------------------------------

def _rule_met(rule) -> bool:
    """Caffe's StateMeetsRule for the deploy state: phase TEST, level 0, no stages."""
    if rule.HasField("phase") and rule.phase != caffe_pb2.TEST:
        return False
    if rule.HasField("min_level") and 0 < rule.min_level:
        return False
    if rule.HasField("max_level") and 0 > rule.max_level:
        return False
    if list(rule.stage):  # a rule that needs a stage is not met: deploy runs with none
        return False
    return True  # not_stage rules are met when the stage is absent, which it always is here


def _runs_in_test_phase(lp) -> bool:
    if lp.include:
        return any(_rule_met(r) for r in lp.include)
    return not any(_rule_met(r) for r in lp.exclude)


def _drop_dangling(kept: list, available: set[str], dropped: list[str]) -> list:
    """Drop layers that read a blob nothing produces any more (e.g. a dropped data layer's "label")."""
    out = []
    for index, lp in kept:
        missing = [b for b in lp.bottom if b not in available]
        if missing and lp.type in TRAIN_ONLY_TYPES:
            dropped.append(f"{lp.name} ({lp.type}): its inputs {missing} are not produced")
            continue
        out.append((index, lp))
        available.update(lp.top)
    return out


def _refuse_multiple_sources(kept: list, inputs: dict[str, tuple[int, ...]], where: str) -> None:
    """Caffe's Net::AppendTop: a blob that exists already may be written again only in place, that is by top i
    of a layer whose bottom i is the same blob. Any other second writer is "produced by multiple sources"."""
    writer = {name: "the net's input declaration" for name in inputs}
    for index, lp in kept:
        for i, top in enumerate(lp.top):
            in_place = i < len(lp.bottom) and lp.bottom[i] == top
            if top in writer and not in_place:
                raise ModelError(
                    f"{where}: layer {lp.name!r} (#{index}, {lp.type}) writes blob {top!r} (top {i}), which "
                    f"{writer[top]} already produces; Caffe refuses a blob produced by multiple sources (a second "
                    f"write must be in place: top {i} equal to bottom {i}). Rename the top")
            writer[top] = f"layer {lp.name!r}"


# --- values and weights ---------------------------------------------------------------------------------

def _assign_values(kept: list, inputs: dict[str, tuple[int, ...]], weights: dict[str, list[np.ndarray]],
                   where: str, check_weights: bool) -> tuple[list[Layer], dict[str, str]]:
    # Count the writes of each blob so that the last one keeps the plain name.
    writes: dict[str, int] = {name: 1 for name in inputs}
    for _, lp in kept:
        for top in lp.top:
            writes[top] = writes.get(top, 0) + 1
    seen_writes: dict[str, int] = {name: 1 for name in inputs}
    current: dict[str, str] = {name: name for name in inputs}  # blob -> value holding it now
    blob_of: dict[str, str] = {name: name for name in inputs}
    layers: list[Layer] = []
    for index, lp in kept:
        bottoms = []
        for b in lp.bottom:
            if b not in current:
                raise ModelError(f"{where}: layer {lp.name!r} (#{index}, {lp.type}) reads blob {b!r}, which no "
                                 f"earlier layer or input produces")
            bottoms.append(current[b])
        tops = []
        for top in lp.top:
            seen_writes[top] = seen_writes.get(top, 0) + 1
            value = top if seen_writes[top] == writes[top] else f"{top}{VERSION_SEPARATOR}{lp.name}"
            if value in blob_of:
                raise ModelError(f"{where}: layer {lp.name!r} writes blob {top!r} twice in one layer")
            blob_of[value] = top
            tops.append(value)
        blobs = tuple(weights.get(lp.name, ()))
        if check_weights and not blobs and _needs_weights(lp):
            raise ModelError(f"{where}: layer {lp.name!r} ({lp.type}) has learned parameters but the caffemodel "
                             f"holds no weights for a layer of that name")
        layers.append(Layer(name=lp.name, type=lp.type, bottoms=tuple(bottoms), tops=tuple(tops), param=lp,
                            blobs=blobs, index=index, user_bottoms=tuple(lp.bottom), user_tops=tuple(lp.top)))
        for top, value in zip(lp.top, tops):
            current[top] = value
    return layers, blob_of


def _needs_weights(lp) -> bool:
    if lp.type not in PARAMETRIC_TYPES:
        return False
    if lp.type in ("Scale", "Bias") and len(lp.bottom) > 1:
        return False  # the factor comes from the second bottom; only an optional bias is learned
    return True


def blob_roles(lp) -> tuple[str, ...] | None:
    """The learned blobs Caffe's layer of this type and settings owns, by role and in Caffe order; None for a
    type this table does not know (its blobs are left to its converter). Caffe's CopyTrainedLayersFrom refuses a
    caffemodel layer whose blob count differs ("Incompatible number of blobs for layer")."""
    t = lp.type
    if t in CONVOLUTION_TYPES:
        return ("weights", "bias") if lp.convolution_param.bias_term else ("weights",)
    if t == "InnerProduct":
        return ("weights", "bias") if lp.inner_product_param.bias_term else ("weights",)
    if t == "Embed":
        return ("weights", "bias") if lp.embed_param.bias_term else ("weights",)
    if t == "BatchNorm":
        return ("mean", "variance", "moving-average factor")
    if t == "Scale":
        learned = ("scale",) if len(lp.bottom) == 1 else ()  # with two bottoms the factor is the second bottom
        return learned + (("bias",) if lp.scale_param.bias_term else ())
    if t == "Bias":
        return ("bias",) if len(lp.bottom) == 1 else ()
    if t == "PReLU":
        return ("slopes",)
    if t == "Normalize":
        return ("scale",)
    if t in BLOBLESS_TYPES:
        return ()
    return None



def _check_settings(lp, index: int, where: str) -> None:
    """Settings every later stage divides by (BatchNorm folding, equalization, the converter), checked once."""
    sub = {"InnerProduct": "inner_product_param", "Embed": "embed_param"}.get(
        lp.type, "convolution_param" if lp.type in CONVOLUTION_TYPES else None)
    if sub is not None and getattr(lp, sub).num_output <= 0:  # Caffe: CHECK_GT(num_output_, 0)
        raise ModelError(f"{where}: layer {lp.name!r} (#{index}, {lp.type}) has {sub}.num_output "
                         f"{getattr(lp, sub).num_output}; expected a positive number of outputs")


def _check_blobs(layer: Layer, where: str) -> None:
    """The caffemodel's blobs for `layer`: as many as Caffe's layer owns, and every value finite."""
    roles = blob_roles(layer.param)
    if layer.blobs and roles is not None and len(layer.blobs) != len(roles):
        takes = f"{len(roles)} ({', '.join(roles)})" if roles else "none"
        raise ModelError(f"{where}: layer {layer.name!r} ({layer.type}) carries {len(layer.blobs)} blob(s) but "
                         f"a {layer.type} layer with these settings takes {takes}; the caffemodel does not belong "
                         f"to this prototxt (Caffe refuses it: incompatible number of blobs)")
    if roles is not None and len(layer.blobs) == len(roles):
        _check_blob_sizes(layer, roles, where)
    for i, blob in enumerate(layer.blobs):
        role = f" ({roles[i]})" if roles is not None and i < len(roles) else ""
        _refuse_where(~np.isfinite(blob), blob, f"{where}: layer {layer.name!r} ({layer.type}) blob {i}{role}",
                      "NaN/inf", "the weights are corrupt (or training diverged), so no output of this model can be "
                      "trusted")
    bn = layer.param.batch_norm_param
    if layer.type == "BatchNorm" and len(layer.blobs) == 3 and not (bn.HasField("use_global_stats") and
                                                                     not bn.use_global_stats):
        # The stored statistics are used (the TEST-phase default). Caffe divides by sqrt(variance * factor + eps):
        # a negative variance or factor gives NaN outputs.
        for i in (1, 2):
            _refuse_where(layer.blobs[i] < 0, layer.blobs[i], f"{where}: layer {layer.name!r} (BatchNorm) blob "
                          f"{i} ({roles[i]})", "negative", "a variance and its moving-average factor cannot be "
                          "negative; the caffemodel is corrupt")


def _check_blob_sizes(layer: Layer, roles: tuple[str, ...], where: str) -> None:
    """The sizes the prototxt alone fixes (Caffe compares every blob's shape with the one it built; the rest of
    that comparison needs the input shape and is the converter's): one value per output for a bias, matching
    statistics for a BatchNorm, one moving-average factor."""
    sizes = dict(zip(roles, (b.size for b in layer.blobs)))
    expected: dict[str, int] = {}
    sub = {"InnerProduct": "inner_product_param", "Embed": "embed_param"}.get(
        layer.type, "convolution_param" if layer.type in CONVOLUTION_TYPES else None)
    if sub is not None and "bias" in sizes:
        expected["bias"] = int(getattr(layer.param, sub).num_output)
    if layer.type == "BatchNorm":
        expected["variance"] = sizes["mean"]
        expected["moving-average factor"] = 1
    if layer.type == "Scale" and "scale" in sizes and "bias" in sizes:
        expected["bias"] = sizes["scale"]
    for role, size in expected.items():
        if sizes[role] != size:
            raise ModelError(f"{where}: layer {layer.name!r} ({layer.type}) blob {roles.index(role)} ({role}) holds "
                             f"{sizes[role]} value(s), expected {size}; the caffemodel does not belong to this "
                             f"prototxt")


def _refuse_where(bad_mask: np.ndarray, blob: np.ndarray, what: str, kind: str, why: str) -> None:
    if not bad_mask.any():
        return
    bad = np.argwhere(bad_mask)
    first = tuple(int(k) for k in bad[0])
    raise ModelError(f"{what} holds {len(bad)} {kind} value(s) of {blob.size} (first at index {first}: "
                     f"{blob[first]}); {why}")


def _weights_by_layer(weights_param, model_path: Path | None) -> dict[str, list[np.ndarray]]:
    where = str(model_path) if model_path else "<caffemodel>"
    if weights_param.layers and not weights_param.layer:
        weights_param = upgrade_v1_net(weights_param, where)
    out: dict[str, list[np.ndarray]] = {}
    for lp in weights_param.layer:
        if not lp.blobs:
            continue
        arrays = [blob_to_array(b, f"{where}: layer {lp.name!r} blob {i}") for i, b in enumerate(lp.blobs)]
        if lp.name in out and not _same_arrays(out[lp.name], arrays):
            # Weights are matched by name: two different sets under one name leave it to chance which one runs.
            raise ModelError(f"{where}: two layers named {lp.name!r} carry different weights; weights are "
                             f"matched to the prototxt by layer name, so the names must be unique")
        out[lp.name] = arrays
    return out


def _same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


def blob_to_array(blob, where: str) -> np.ndarray:
    """A BlobProto as a float32 array with its declared shape (legacy num/channels/height/width kept 4-D)."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    elif any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = (len(blob.data) or len(blob.double_data),)
    if len(blob.data):
        data = np.array(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        data = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        data = np.zeros(0, dtype=np.float32)
    count = int(np.prod(shape)) if shape else 1
    if data.size != count:
        raise ModelError(f"{where}: declares shape {shape} ({count} values) but holds {data.size} values")
    return data.reshape(shape)


