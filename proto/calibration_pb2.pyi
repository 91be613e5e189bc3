from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CalibrationTable(_message.Message):
    __slots__ = ("format_version", "header", "spec", "blobs", "layers")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    header: Header
    spec: QuantSpec
    blobs: _containers.RepeatedCompositeFieldContainer[BlobEntry]
    layers: _containers.RepeatedCompositeFieldContainer[LayerEntry]
    def __init__(self, format_version: _Optional[int] = ..., header: _Optional[_Union[Header, _Mapping]] = ..., spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., blobs: _Optional[_Iterable[_Union[BlobEntry, _Mapping]]] = ..., layers: _Optional[_Iterable[_Union[LayerEntry, _Mapping]]] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("tool", "tool_version", "model_name", "prototxt_sha256", "caffemodel_sha256", "image_list_sha256", "settings", "created", "files", "extra", "written_by")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOOL_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOTXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    CAFFEMODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    IMAGE_LIST_SHA256_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_BY_FIELD_NUMBER: _ClassVar[int]
    tool: str
    tool_version: str
    model_name: str
    prototxt_sha256: str
    caffemodel_sha256: str
    image_list_sha256: str
    settings: _containers.ScalarMap[str, str]
    created: str
    files: _containers.RepeatedCompositeFieldContainer[FileDigest]
    extra: _containers.ScalarMap[str, str]
    written_by: str
    def __init__(self, tool: _Optional[str] = ..., tool_version: _Optional[str] = ..., model_name: _Optional[str] = ..., prototxt_sha256: _Optional[str] = ..., caffemodel_sha256: _Optional[str] = ..., image_list_sha256: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ..., created: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileDigest, _Mapping]]] = ..., extra: _Optional[_Mapping[str, str]] = ..., written_by: _Optional[str] = ...) -> None: ...

class FileDigest(_message.Message):
    __slots__ = ("role", "path", "sha256")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    role: str
    path: str
    sha256: str
    def __init__(self, role: _Optional[str] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class QuantSpec(_message.Message):
    __slots__ = ("granularity", "rounding", "bias", "unsigned_activations", "bits", "quantize_types", "ignore_layer_names", "ignore_layer_types", "target")
    class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        GRANULARITY_UNSPECIFIED: _ClassVar[QuantSpec.Granularity]
        PER_TENSOR: _ClassVar[QuantSpec.Granularity]
        PER_CHANNEL: _ClassVar[QuantSpec.Granularity]
        MIX: _ClassVar[QuantSpec.Granularity]
    GRANULARITY_UNSPECIFIED: QuantSpec.Granularity
    PER_TENSOR: QuantSpec.Granularity
    PER_CHANNEL: QuantSpec.Granularity
    MIX: QuantSpec.Granularity
    class Rounding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ROUNDING_UNSPECIFIED: _ClassVar[QuantSpec.Rounding]
        HALF_AWAY_FROM_ZERO: _ClassVar[QuantSpec.Rounding]
        HALF_TO_EVEN: _ClassVar[QuantSpec.Rounding]
    ROUNDING_UNSPECIFIED: QuantSpec.Rounding
    HALF_AWAY_FROM_ZERO: QuantSpec.Rounding
    HALF_TO_EVEN: QuantSpec.Rounding
    class BiasMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        BIAS_UNSPECIFIED: _ClassVar[QuantSpec.BiasMode]
        INT32: _ClassVar[QuantSpec.BiasMode]
        FP32: _ClassVar[QuantSpec.BiasMode]
    BIAS_UNSPECIFIED: QuantSpec.BiasMode
    INT32: QuantSpec.BiasMode
    FP32: QuantSpec.BiasMode
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    UNSIGNED_ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_TYPES_FIELD_NUMBER: _ClassVar[int]
    IGNORE_LAYER_NAMES_FIELD_NUMBER: _ClassVar[int]
    IGNORE_LAYER_TYPES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    granularity: QuantSpec.Granularity
    rounding: QuantSpec.Rounding
    bias: QuantSpec.BiasMode
    unsigned_activations: bool
    bits: int
    quantize_types: _containers.RepeatedScalarFieldContainer[str]
    ignore_layer_names: _containers.RepeatedScalarFieldContainer[str]
    ignore_layer_types: _containers.RepeatedScalarFieldContainer[str]
    target: str
    def __init__(self, granularity: _Optional[_Union[QuantSpec.Granularity, str]] = ..., rounding: _Optional[_Union[QuantSpec.Rounding, str]] = ..., bias: _Optional[_Union[QuantSpec.BiasMode, str]] = ..., unsigned_activations: _Optional[bool] = ..., bits: _Optional[int] = ..., quantize_types: _Optional[_Iterable[str]] = ..., ignore_layer_names: _Optional[_Iterable[str]] = ..., ignore_layer_types: _Optional[_Iterable[str]] = ..., target: _Optional[str] = ...) -> None: ...

class BlobEntry(_message.Message):
    __slots__ = ("value", "blob", "threshold", "channel_thresholds", "unsigned", "calibrator", "absmax")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    UNSIGNED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATOR_FIELD_NUMBER: _ClassVar[int]
    ABSMAX_FIELD_NUMBER: _ClassVar[int]
    value: str
    blob: str
    threshold: float
    channel_thresholds: _containers.RepeatedScalarFieldContainer[float]
    unsigned: bool
    calibrator: str
    absmax: float
    def __init__(self, value: _Optional[str] = ..., blob: _Optional[str] = ..., threshold: _Optional[float] = ..., channel_thresholds: _Optional[_Iterable[float]] = ..., unsigned: _Optional[bool] = ..., calibrator: _Optional[str] = ..., absmax: _Optional[float] = ...) -> None: ...

class LayerEntry(_message.Message):
    __slots__ = ("layer", "type", "input_value", "extra_inputs", "weight_thresholds", "weight_method", "int8", "note")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_VALUE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_INPUTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_METHOD_FIELD_NUMBER: _ClassVar[int]
    INT8_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    layer: str
    type: str
    input_value: str
    extra_inputs: _containers.RepeatedScalarFieldContainer[str]
    weight_thresholds: _containers.RepeatedScalarFieldContainer[float]
    weight_method: str
    int8: bool
    note: str
    def __init__(self, layer: _Optional[str] = ..., type: _Optional[str] = ..., input_value: _Optional[str] = ..., extra_inputs: _Optional[_Iterable[str]] = ..., weight_thresholds: _Optional[_Iterable[float]] = ..., weight_method: _Optional[str] = ..., int8: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...
