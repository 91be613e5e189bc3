"""Weights as an (output channel, rest) matrix, whatever the ONNX layout, and their quantization.

Per-channel weight thresholds are per *output* channel of the Caffe layer. The ONNX layouts differ:
Conv (M, C/g, k...) and Gemm(transB) (N, K) lead with it; MatMul (K, N) ends with it; ConvTranspose
(C, M/g, k...) interleaves it with the groups. These helpers move between the layout and the matrix.
"""

from __future__ import annotations

import numpy as np

from .spec import Rounding


def round_values(x: np.ndarray, rounding: Rounding) -> np.ndarray:
    if rounding is Rounding.HALF_EVEN:
        return np.round(x)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)  # C's roundf: half away from zero


def to_output_matrix(weight: np.ndarray, op_type: str, group: int = 1) -> np.ndarray:
    if op_type in ("Conv", "Gemm"):
        return weight.reshape(weight.shape[0], -1)
    if op_type == "MatMul":
        return weight.T
    if op_type == "ConvTranspose":
        c_in, m_per_group = weight.shape[:2]
        k = int(np.prod(weight.shape[2:]))
        w = weight.reshape(group, c_in // group, m_per_group, k).transpose(0, 2, 1, 3)
        return w.reshape(group * m_per_group, -1)
    raise ValueError(f"no output-channel layout known for ONNX op {op_type}")


def from_output_matrix(matrix: np.ndarray, like: np.ndarray, op_type: str, group: int = 1) -> np.ndarray:
    if op_type in ("Conv", "Gemm"):
        return matrix.reshape(like.shape)
    if op_type == "MatMul":
        return np.ascontiguousarray(matrix.T)
    if op_type == "ConvTranspose":
        c_in, m_per_group = like.shape[:2]
        k = int(np.prod(like.shape[2:]))
        w = matrix.reshape(group, m_per_group, c_in // group, k).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(w.reshape(like.shape))
    raise ValueError(f"no output-channel layout known for ONNX op {op_type}")


def quantize_matrix(matrix: np.ndarray, thresholds: np.ndarray, rounding: Rounding, qmax: int = 127):
    """(int8 values as float32, per-row scale float32) of an (M, K) matrix with per-row (or one) threshold."""
    t = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    scale = (t / np.float32(qmax)).astype(np.float32)
    if scale.size == 1:
        scale = np.full(matrix.shape[0], scale[0], dtype=np.float32)
    q = np.clip(round_values(matrix.astype(np.float32) / scale[:, None], rounding), -qmax, qmax)
    return q.astype(np.float32), scale


def quantize_bias(bias: np.ndarray, s_in: np.float32, s_w: np.ndarray, rounding: Rounding
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(int32 bias as int64, its float32 scale s_in * s_w): q_b = round(b / (s_in * s_w)), the division in float64
    of the float32 values. The simulation and the QDQ export both call this, so their integer biases are equal."""
    scale = (np.float32(s_in) * np.asarray(s_w, dtype=np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, np.shape(bias)).astype(np.float32)
    q = round_values(np.asarray(bias, dtype=np.float32).astype(np.float64) / scale.astype(np.float64), rounding)
    return np.clip(q, -(2 ** 31), 2 ** 31 - 1).astype(np.int64), scale


def fake_quantize_weights(weight: np.ndarray, op_type: str, group: int, thresholds: np.ndarray,
                          rounding: Rounding, qmax: int = 127) -> np.ndarray:
    """Weights after quantize-dequantize, in their ONNX layout."""
    matrix = to_output_matrix(weight, op_type, group)
    q, scale = quantize_matrix(matrix, thresholds, rounding, qmax)
    return from_output_matrix((q * scale[:, None]).astype(np.float32), weight, op_type, group)
