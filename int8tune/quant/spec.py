"""What "the int8 model" computes: the settings that fix its arithmetic (see README, "Int8 semantics").

- Activations: symmetric, one threshold T per blob at the input of each quantized layer; scale = T/127 and
  q = clip(round(x / scale), -127, 127) (unsigned: scale = T/255, q in [0, 255], for blobs that are >= 0).
- Weights: symmetric; scale = T_w/127 per output channel or per tensor; q_w = clip(round(w / s_w), -127, 127).
- Bias: int32 at s_in * s_w (q_b = round(b / (s_in*s_w))), or left in fp32.
- The layer then computes with the dequantized values (q * scale): exactly the int32 accumulation of an int8
  engine, rescaled, up to fp32 rounding of the sum.
- Granularity: per_tensor (weights and activations per tensor), mix (weights per output channel, activations per
  tensor, TNN's "mix"; what TensorRT, ncnn and onnxruntime deploy), per_channel (TNN's per-channel: activation
  thresholds per input channel too; not deployable as int8 kernels by onnxruntime).
- Rounding: half_to_even (ONNX QuantizeLinear, onnxruntime, TensorRT; the default, simulated with
  QuantizeLinear/DequantizeLinear, 5x faster than the element-wise formula) or half_away_from_zero (C's roundf:
  ncnn, TNN). They differ only on exact ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DEFAULT_QUANTIZE_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
# Types whose weights are quantized (the others in quantize_types only get their input quantized).
WEIGHTED_TYPES = frozenset({"Convolution", "Deconvolution", "InnerProduct", "DepthwiseConvolution",
                            "ConvolutionDepthwise"})


class Granularity(str, Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    MIX = "mix"

    @property
    def weights_per_channel(self) -> bool:
        return self is not Granularity.PER_TENSOR

    @property
    def activations_per_channel(self) -> bool:
        return self is Granularity.PER_CHANNEL


class Rounding(str, Enum):
    HALF_AWAY = "half_away_from_zero"
    HALF_EVEN = "half_to_even"


class BiasMode(str, Enum):
    INT32 = "int32"
    FP32 = "fp32"


@dataclass(frozen=True)
class QuantSpec:
    """Which layers run int8 and the arithmetic they use."""

    quantize_types: tuple[str, ...] = DEFAULT_QUANTIZE_TYPES
    ignore_layer_names: tuple[str, ...] = ()
    ignore_layer_types: tuple[str, ...] = ()
    granularity: Granularity = Granularity.MIX
    rounding: Rounding = Rounding.HALF_EVEN
    bias: BiasMode = BiasMode.INT32
    unsigned: bool = False  # use T/255 and [0, 255] for blobs whose calibration minimum is >= 0
    bits: int = 8

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1  # 127

    @property
    def umax(self) -> int:
        return (1 << self.bits) - 1  # 255
