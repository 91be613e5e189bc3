"""What "the int8 model" computes: the settings that fix its arithmetic (see docs/int8_semantics.md).

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
CONVOLUTION_TYPES = frozenset({"Convolution", "Deconvolution", "DepthwiseConvolution", "ConvolutionDepthwise"})
DEPTHWISE_TYPES = frozenset({"DepthwiseConvolution", "ConvolutionDepthwise"})  # forks: one group per channel
WEIGHTED_TYPES = CONVOLUTION_TYPES | {"InnerProduct"}


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


class Target(str, Enum):
    """Where the int8 model will run: the integer arithmetic the simulation must reproduce there.

    - onnxruntime (the default): onnxruntime on any CPU. Activations that cannot be negative (after ReLU) are
      uint8 (T/255), so that onnxruntime fuses each convolution with its ReLU and keeps pooling, Concat and
      Eltwise sums in int8. Weights are 8-bit except where a pair of them could overflow the int16 sums of the
      AVX2 kernels of x86 CPUs without VNNI (quant/saturation.py): those output channels get a wider weight
      threshold (at worst 7-bit weights), so the exported model computes the same numbers on every CPU.
    - onnxruntime_vnni: the same with plain 8-bit weights; exact on x86 with VNNI or AMX and on ARM, wrong on
      AVX2-only x86 (a large share of servers and laptops), where pairs of products saturate.
    - ncnn, tensorrt: signed int8 activations only (T/127), as those engines run them.
    """

    ONNXRUNTIME = "onnxruntime"
    ONNXRUNTIME_VNNI = "onnxruntime_vnni"
    NCNN = "ncnn"
    TENSORRT = "tensorrt"

    @property
    def onnxruntime(self) -> bool:
        return self in (Target.ONNXRUNTIME, Target.ONNXRUNTIME_VNNI)

    @property
    def unsigned_activations(self) -> bool:
        """Non-negative blobs as uint8 (T/255): what onnxruntime needs to fuse a ReLU into its int8 kernels."""
        return self.onnxruntime

    @property
    def pair_safe_weights(self) -> bool:
        """Weight thresholds widened where an int16 pair sum of an AVX2 kernel could saturate."""
        return self is Target.ONNXRUNTIME

    @property
    def int8_types(self) -> tuple[str, ...]:
        """Caffe types, beyond the weighted ones, whose inputs are quantized by default for this engine:
        onnxruntime adds in int8 (QLinearAdd) when both inputs and the output are quantized."""
        return ("Eltwise",) if self.onnxruntime else ()


DEFAULT_TARGET = Target.ONNXRUNTIME


@dataclass(frozen=True)
class QuantSpec:
    """Which layers run int8 and the arithmetic they use."""

    quantize_types: tuple[str, ...] = DEFAULT_QUANTIZE_TYPES
    ignore_layer_names: tuple[str, ...] = ()
    ignore_layer_types: tuple[str, ...] = ()
    granularity: Granularity = Granularity.MIX
    rounding: Rounding = Rounding.HALF_EVEN
    bias: BiasMode = BiasMode.INT32
    unsigned: bool = False  # use T/255 and [0, 255] for blobs that cannot be negative (always with onnxruntime)
    bits: int = 8
    target: Target = Target.ONNXRUNTIME  # the engine whose integer arithmetic is simulated

    @property
    def unsigned_blobs(self) -> bool:
        return self.unsigned or self.target.unsigned_activations

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1  # 127

    @property
    def qmin(self) -> int:
        """Lowest signed activation level: -128 for onnxruntime (its QuantizeLinear saturates there; the export has
        no clip in front of it), -127 for the symmetric engines (ncnn, TensorRT)."""
        return -self.qmax - 1 if self.target.onnxruntime else -self.qmax

    @property
    def umax(self) -> int:
        return (1 << self.bits) - 1  # 255
