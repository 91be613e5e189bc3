"""The int16 pair saturation of onnxruntime's int8 kernels on x86 without VNNI, as pure numpy.

What the kernel does (onnxruntime's MLAS, U8S8 GEMM, QLinearConv and QLinearMatMul, AVX2 or AVX-512BW without
VNNI): activations are unsigned bytes a in [0, 255] and weights signed bytes w in [-128, 127]. `vpmaddubsw`
multiplies them and adds each *pair* of products adjacent along K, a[k]*w[k] + a[k+1]*w[k+1] for even k, into
an int16 with saturation to [-32768, 32767]; `vpmaddwd` with ones then adds the int16 pairs exactly into int32.
K is zero-padded to a multiple of 4 (so a trailing lone product pairs with 0). VNNI and AMX CPUs add four
products straight into int32 and ARM kernels are exact, so the same model gives different numbers there.

- Which a the kernel sees: a uint8 activation as stored (its zero point is corrected exactly afterwards from
  the weight sums). An int8 activation of a QDQ model is first rewritten by onnxruntime's graph optimiser into
  uint8 with zero point + 128 on x86, so a = q + 128: even q near 0 gives a near 128, which saturates with
  weights as small as 127 + 127 (e.g. q = (2, 2), w = (127, 127): a*w = 33020 -> 32767, then -128*254 gives
  255 instead of 508). The -128*sum(w) correction itself is exact int32. (A hand-built QLinearConv taking int8
  activations directly is exact on x86 without AVX-VNNI-INT8: MLAS's S8S8 GEMM there is its portable C
  kernel, slow but exact.)
- The K order: a convolution runs NHWC internally, the im2col row of one group is ordered (kh, kw, c_in) with
  channels innermost, so pairs are adjacent input channels (crossing kernel positions when C_in/group is odd);
  a 1x1 convolution has K = c_in; Gemm/MatMul have K = the input features.
- Depthwise convolutions (one input and one output channel per group) use a separate kernel that widens to
  32 bits: exact on every CPU.
- Padding of a convolution reads the input zero point (as stored: 0 for uint8 with zero point 0, 128 for
  rewritten int8), which takes part in the pairs like any activation.

A row of weights is *pair-safe*, exact under any pairing and any input, when its two largest positive weights
sum to at most 128 and its two most negative to at least -128: 255 * 128 = 32640 <= 32767, and a mixed-sign
pair lies within [-255*128, 255*127]. `pair_safe_thresholds` raises weight thresholds until that holds.

onnxruntime documents the problem in its quantization guide ("When and why do I need to try U8U8?": VPMADDUBSW
may saturate on x86-64 AVX2 and AVX-512 without VNNI; use reduce_range or U8U8) and offers the session option
`session.x64quantprecision` = "1", which makes those CPUs use the slower exact U8U8 kernels.

All accumulators here are int64 (the kernel's int32 never overflows for realistic K). Inputs are checked;
bad shapes or out-of-range values raise ConfigError.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

import numpy as np

from ..errors import ConfigError

INT16_MIN, INT16_MAX = -32768, 32767
PAIR_LIMIT = 128  # largest same-sign pair sum |w1 + w2| that can never saturate: 255 * 128 <= 32767
_CHUNK = 1 << 22  # elements of the (rows, K/2, N) pair tensor built at once


def _check_matmul(a: np.ndarray, w: np.ndarray, a_low: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a, w = np.asarray(a), np.asarray(w)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0]:
        raise ConfigError(f"activations (M, K) and weights (K, N) expected, got shapes {a.shape} and {w.shape}")
    for name, x, lo, hi in (("activations", a, a_low, 255), ("weights", w, -128, 127)):
        if not np.issubdtype(x.dtype, np.integer) and not np.array_equal(x, np.round(x)):
            raise ConfigError(f"{name} must be integers, got non-integral {x.dtype} values")
        if x.size and (x.min() < lo or x.max() > hi):
            raise ConfigError(f"{name} must lie in [{lo}, {hi}], got [{x.min()}, {x.max()}]")
    return a.astype(np.int64), w.astype(np.int64)


def exact_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """int64 (M, N) = a @ w exactly: the VNNI, AMX and ARM kernels. a: (M, K) uint8 or int8 values
    (-128..255), w: (K, N) int8."""
    a, w = _check_matmul(a, w, a_low=-128)
    return a @ w


def pair_saturating_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """int64 (M, N) accumulators as the AVX2 U8S8 kernel computes a @ w.

    a: (M, K) activations as the kernel stores them (uint8 values 0..255, any integer dtype);
    w: (K, N) int8 weights. Pairs (k, k+1), k even, are summed and clipped to int16, then added exactly.
    """
    a, w = _check_matmul(a, w)
    m, k = a.shape
    n = w.shape[1]
    if k % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        w = np.pad(w, ((0, 1), (0, 0)))
    half = a.shape[1] // 2
    a3 = a.reshape(m, half, 2)
    w3 = w.reshape(half, 2, n)
    out = np.empty((m, n), dtype=np.int64)
    rows = max(1, _CHUNK // max(1, half * n))
    for start in range(0, m, rows):
        pairs = np.einsum("mjt,jtn->mjn", a3[start:start + rows], w3)  # (rows, K/2, N) exact pair sums
        out[start:start + rows] = np.clip(pairs, INT16_MIN, INT16_MAX).sum(axis=1)
    return out


def _pairs(value, name: str, size: int) -> tuple[int, ...]:
    values = (value,) * size if np.isscalar(value) else tuple(value)
    if len(values) == size // 2 and size == 4:  # (ph, pw) -> symmetric pads
        values = values * 2
    if len(values) != size or any(int(v) != v or v < 0 for v in values):
        raise ConfigError(f"{name} must be a non-negative int or {size} of them, got {value!r}")
    return tuple(int(v) for v in values)


def _conv2d(x, w, stride, pad, dilation, group, pad_value, matmul: Callable, depthwise_exact: bool) -> np.ndarray:
    x, w = np.asarray(x), np.asarray(w)
    if x.ndim != 4 or w.ndim != 4:
        raise ConfigError(f"x (N, C, H, W) and w (M, C/group, kh, kw) expected, got {x.shape} and {w.shape}")
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    if group < 1 or c % group or m % group or c // group != cg:
        raise ConfigError(f"group={group} does not fit input channels {c} and weights {w.shape}")
    sh, sw = _pairs(stride, "stride", 2)
    dh, dw = _pairs(dilation, "dilation", 2)
    top, left, bottom, right = _pairs(pad, "pad", 4)  # ONNX order: begins, then ends
    if sh == 0 or sw == 0 or dh == 0 or dw == 0:
        raise ConfigError("stride and dilation must be >= 1")
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ConfigError(f"kernel {kh}x{kw} (dilation {dh}x{dw}) larger than the padded input {h}x{wd}")
    ih = (np.arange(oh) * sh)[:, None] + (np.arange(kh) * dh)[None, :]  # (OH, KH)
    iw = (np.arange(ow) * sw)[:, None] + (np.arange(kw) * dw)[None, :]  # (OW, KW)
    nhwc = xp.transpose(0, 2, 3, 1)
    cols = nhwc[:, ih[:, None, :, None], iw[None, :, None, :], :]  # (N, OH, OW, KH, KW, C): the NHWC im2col
    mg = m // group
    depthwise = cg == 1 and mg == 1  # onnxruntime's own test (any group count)
    multiply = exact_matmul if depthwise and depthwise_exact else matmul
    out = np.empty((n, m, oh, ow), dtype=np.int64)
    for g in range(group):
        a = cols[..., g * cg:(g + 1) * cg].reshape(n * oh * ow, kh * kw * cg)  # K ordered (kh, kw, c)
        wg = w[g * mg:(g + 1) * mg].transpose(2, 3, 1, 0).reshape(kh * kw * cg, mg)
        out[:, g * mg:(g + 1) * mg] = multiply(a, wg).reshape(n, oh, ow, mg).transpose(0, 3, 1, 2)
    return out


def saturating_conv2d(x_u8: np.ndarray, w_s8: np.ndarray, stride=1, pad=0, dilation=1, group: int = 1,
                      pad_value: int = 0) -> np.ndarray:
    """int64 (N, M, OH, OW) accumulators of onnxruntime's AVX2 QLinearConv (before bias and requantization).

    x_u8: (N, C, H, W) activations as the kernel stores them (0..255); w_s8: (M, C/group, kh, kw) int8.
    stride, dilation: int or (h, w); pad: int, (h, w) or ONNX (top, left, bottom, right); pad_value: the
    stored input zero point that padding reads. Pairs run over K ordered (kh, kw, c) within each group;
    depthwise layers (one input and one output channel per group) are exact, as onnxruntime computes them.
    """
    return _conv2d(x_u8, w_s8, stride, pad, dilation, group, pad_value, pair_saturating_matmul, True)


def exact_conv2d(x_u8: np.ndarray, w_s8: np.ndarray, stride=1, pad=0, dilation=1, group: int = 1,
                 pad_value: int = 0) -> np.ndarray:
    """The same convolution summed exactly: what VNNI, AMX and ARM kernels compute (x may also be int8)."""
    return _conv2d(x_u8, w_s8, stride, pad, dilation, group, pad_value, exact_matmul, True)


def _top2(values: np.ndarray) -> np.ndarray:
    """Per row, the sum of the two largest entries of a non-negative (M, K) array (one entry: itself)."""
    if values.shape[1] == 0:
        return np.zeros(values.shape[0], dtype=values.dtype)
    if values.shape[1] == 1:
        return values[:, 0].copy()
    part = np.partition(values, values.shape[1] - 2, axis=1)
    return part[:, -1] + part[:, -2]


class Pairing(str, Enum):
    """Which products the kernel may add in one int16. ANY: every two weights of a row (safe whatever the K
    order). KERNEL: the adjacent pairs (k, k+1), k even, of the K order onnxruntime's MLAS 1.32 packs
    (`kernel_order`; checked bit for bit against its AVX2 kernels under emulation, tests/test_saturation.py).
    KERNEL widens far fewer channels: yolov3_nano_voc, 0.35 bit of weight resolution lost on average instead of
    0.85 (measured on its 5446 non-depthwise conv channels)."""

    ANY = "any"
    KERNEL = "kernel"


def kernel_order(weight: np.ndarray, op_type: str, group: int = 1) -> np.ndarray:
    """(M, K) weights of an ONNX Conv (M, C/g, kh, kw), Gemm (N, K) or MatMul (K, N), one row per output channel,
    with K in the order the int8 kernel pairs it: (kh, kw, c) with channels innermost for a convolution (its
    NHWC im2col), the input features for a matrix product."""
    w = np.asarray(weight)
    if op_type == "Conv":
        return w.reshape(w.shape[0], w.shape[1], -1).transpose(0, 2, 1).reshape(w.shape[0], -1)
    if op_type == "Gemm":
        return w.reshape(w.shape[0], -1)
    if op_type == "MatMul":
        return w.T
    raise ConfigError(f"no int8 kernel order known for ONNX op {op_type}")


def _pair_sums(values: np.ndarray, pairing: Pairing) -> np.ndarray:
    """Per row of a non-negative (M, K) array, the largest sum of two entries that can meet in one int16."""
    if pairing is Pairing.ANY:
        return _top2(values)
    if values.shape[1] % 2:
        values = np.concatenate([values, np.zeros((values.shape[0], 1), values.dtype)], axis=1)
    if values.shape[1] == 0:
        return np.zeros(values.shape[0], dtype=values.dtype)
    return (values[:, 0::2] + values[:, 1::2]).max(axis=1)


def pair_safe(q_matrix: np.ndarray, pairing: Pairing = Pairing.ANY) -> np.ndarray:
    """bool (M,): True for rows of int weights (one row per output channel) that can never saturate a pair.

    The two largest positive weights must sum to <= 128 and the two most negative to >= -128; then any pair
    times any activations in [0, 255] stays within int16, whatever the K order.
    """
    q = np.asarray(q_matrix)
    if q.ndim != 2:
        raise ConfigError(f"weights (M, K) expected, got shape {q.shape}")
    q = q.astype(np.int64)
    return ((_pair_sums(np.maximum(q, 0), pairing) <= PAIR_LIMIT)
            & (_pair_sums(np.maximum(-q, 0), pairing) <= PAIR_LIMIT))


def _quantized_magnitudes(matrix: np.ndarray, t: np.ndarray, qmax: int) -> np.ndarray:
    """Signed ints of the weights with float32 scale T/qmax, rounding ties away from zero (the larger
    magnitude of the two rounding modes), so a row found safe here is safe under either mode."""
    scale = (t.astype(np.float32) / np.float32(qmax)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = matrix.astype(np.float32) / scale[:, None]
    x = np.where(scale[:, None] > 0, x, 0)
    return np.clip(np.sign(x) * np.floor(np.abs(x) + np.float32(0.5)), -qmax, qmax).astype(np.int64)


def pair_safe_thresholds(matrix: np.ndarray, thresholds: np.ndarray, qmax: int = 127,
                         pairing: Pairing = Pairing.ANY) -> np.ndarray:
    """float64 weight thresholds, raised where needed so the quantized rows are pair-safe.

    matrix: (M, K) float weights, one row per output channel; thresholds: (M,) per channel or (1,) per tensor,
    the calibrated T with scale T/qmax and q = clip(round(w / scale), -qmax, qmax). A row whose quantized
    weights are not pair-safe gets T' = max(T, p, n), with p the sum of its two largest positive weights (the
    weight itself when it has one) and n the sum of the magnitudes of its two most negative; for qmax < 127,
    p and n are scaled by qmax/127 (qmax <= 63 can never saturate).

    Why that is enough: round(x) <= x + 1/2 in either rounding mode, so for two positive weights
    q1 + q2 <= (w1 + w2) * qmax / T' + 1 <= qmax + 1 = 128, likewise for negatives; the bound survives float32
    arithmetic because q1 + q2 is an integer below qmax + 2. Rows already safe keep their T exactly (safety is
    checked with ties rounded away from zero, the worse of the two modes). Per-tensor input gives per-tensor
    output: the largest threshold any unsafe row needs (raising T never makes a safe row unsafe).
    """
    w = np.asarray(matrix, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if w.ndim != 2:
        raise ConfigError(f"weights (M, K) expected, got shape {w.shape}")
    if t.size not in (1, w.shape[0]):
        raise ConfigError(f"{t.size} thresholds for {w.shape[0]} weight rows: expected 1 or {w.shape[0]}")
    if not 1 <= qmax <= 127:
        raise ConfigError(f"qmax={qmax}: int8 weights need 1 <= qmax <= 127")
    if not np.all(np.isfinite(t)) or np.any(t < 0) or not np.all(np.isfinite(w)):
        raise ConfigError("weight thresholds must be finite and >= 0 and weights finite")
    rows_t = np.broadcast_to(t, (w.shape[0],)) if t.size == 1 else t
    unsafe = ~pair_safe(_quantized_magnitudes(w, rows_t, qmax), pairing)
    # q1 + q2 <= (w1 + w2) * qmax / T' + 1 <= PAIR_LIMIT  <=>  T' >= (w1 + w2) * qmax / (PAIR_LIMIT - 1)
    need = np.maximum(_pair_sums(np.maximum(w, 0), pairing), _pair_sums(np.maximum(-w, 0), pairing)) \
        * qmax / (PAIR_LIMIT - 1)
    raised = np.where(unsafe, np.maximum(rows_t, need), rows_t)
    if t.size == 1 and w.shape[0] != 1:
        return np.array([raised.max(initial=t[0])], dtype=np.float64)
    return raised.astype(np.float64)


def is_depthwise(op_type: str, weight_shape, group: int) -> bool:
    """True for an ONNX Conv with weights (M, C/group, kh, kw), group > 1 and one input and one output channel
    per group: onnxruntime runs it with its exact depthwise kernel, so pair saturation never applies.
    (onnxruntime's own test needs no group > 1: a group-1 Conv with one input and one output channel also
    takes that kernel; `saturating_conv2d` models that too.)"""
    shape = tuple(weight_shape)
    return op_type == "Conv" and group > 1 and len(shape) >= 3 and shape[1] == 1 and shape[0] == group
