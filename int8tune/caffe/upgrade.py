"""Upgrade of the legacy V1 `layers { type: CONVOLUTION }` format to V2 `layer { type: "Convolution" }`.

Follows what Caffe's own UpgradeV1Net does for deploy nets: the enum type becomes the type string, name,
bottoms, tops, blobs, phase rules and every `*_param` carry over unchanged. The even older V0 format (a
`layer` message nested in `layers`) is refused: Caffe's `upgrade_net_proto_text` tool converts it.
"""

from __future__ import annotations

from ..errors import ModelError
from .schema import caffe_pb2

# V1 enum name -> V2 type string (Caffe's UpgradeV1LayerType).
V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}


def upgrade_v1_net(net_param, where: str):
    """A copy of `net_param` with its V1 `layers` rewritten as V2 `layer` entries."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layers[:]
    v2_fields = {f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}
    for index, v1 in enumerate(net_param.layers):
        if v1.HasField("layer"):
            raise ModelError(f"{where}: layer #{index} uses the V0 format (a `layer` inside `layers`); convert "
                             f"it with Caffe's tools/upgrade_net_proto_text first")
        type_name = caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)
        if type_name not in V1_TYPE_NAMES:
            raise ModelError(f"{where}: V1 layer {v1.name!r} (#{index}) has type {type_name}, which has no V2 "
                             f"equivalent")
        v2 = out.layer.add()
        v2.name = v1.name
        v2.type = V1_TYPE_NAMES[type_name]
        v2.bottom.extend(v1.bottom)
        v2.top.extend(v1.top)
        v2.blobs.extend(v1.blobs)
        v2.include.extend(v1.include)
        v2.exclude.extend(v1.exclude)
        v2.loss_weight.extend(v1.loss_weight)
        for field, value in v1.ListFields():
            if field.name.endswith("_param") and field.name in v2_fields:
                getattr(v2, field.name).CopyFrom(value)
    return out
