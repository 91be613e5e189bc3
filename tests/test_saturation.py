"""Pair saturation of onnxruntime's int8 kernels on x86 without VNNI: the numpy model, pair-safe thresholds,
host detection, and the real kernels checked bit for bit against the model.

The real-kernel tests expect the saturating model where host_int8_path() is AVX2 and the exact one on VNNI
and ARM. This machine has VNNI; scripts/emulate_avx2.sh runs them on emulated AVX2 (qemu -cpu Haswell).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from int8tune.errors import ConfigError
from int8tune.hostcpu import ENV_OVERRIDE, Int8Path, describe_host, host_int8_path
from int8tune.quant.saturation import (
    Pairing,
    exact_conv2d,
    exact_matmul,
    is_depthwise,
    kernel_order,
    pair_safe,
    pair_safe_thresholds,
    pair_saturating_matmul,
    saturating_conv2d,
)

RNG = np.random.default_rng(20240611)


# ---------------------------------------------------------------- the numpy model

def test_hand_examples():
    a = np.array([[255, 255]])
    assert pair_saturating_matmul(a, np.array([[127], [127]]))[0, 0] == 32767  # not 64770
    assert exact_matmul(a, np.array([[127], [127]]))[0, 0] == 64770
    assert pair_saturating_matmul(a, np.array([[-128], [-128]]))[0, 0] == -32768  # not -65280
    assert pair_saturating_matmul(a, np.array([[127], [-127]]))[0, 0] == 0  # mixed signs never saturate
    # int8 activations q = (2, 2) reach the kernel as a = q + 128 = 130: 130*127*2 = 33020 saturates, and the
    # exact correction -128 * (127 + 127) leaves 255 where q . w = 508.
    q, w = np.array([[2, 2]]), np.array([[127], [127]])
    assert pair_saturating_matmul(q + 128, w)[0, 0] - 128 * w.sum() == 255
    assert exact_matmul(q + 128, w)[0, 0] - 128 * w.sum() == 508
    # K = 5 pairs as (0,1) (2,3) (4,pad): both full pairs saturate, one each way; reordering K so that every
    # pair mixes signs makes it exact.
    a5, w5 = np.full((1, 5), 255), np.array([[127], [127], [-127], [-127], [127]])
    assert pair_saturating_matmul(a5, w5)[0, 0] == 32767 - 32768 + 255 * 127
    assert exact_matmul(a5, w5)[0, 0] == 255 * 127
    assert pair_saturating_matmul(a5[:, [0, 2, 1, 3, 4]], w5[[0, 2, 1, 3, 4]])[0, 0] == 255 * 127


def test_exact_matmul_is_integer_matmul_and_bad_input_raises():
    a, w = RNG.integers(0, 256, (7, 33)), RNG.integers(-128, 128, (33, 5))
    assert np.array_equal(exact_matmul(a, w), a.astype(np.int64) @ w.astype(np.int64))
    too_big, negative = a.copy(), a.copy()
    too_big[0, 0], negative[0, 0] = 256, -1
    for bad in ((too_big, w), (negative, w), (a, w * 2), (a[:, :5], w), (a.astype(float) + 0.5, w)):
        with pytest.raises(ConfigError):
            pair_saturating_matmul(*bad)
    signed = a - 128  # the exact model also takes int8 activations (the saturating one only what the kernel sees)
    assert np.array_equal(exact_matmul(signed, w), signed.astype(np.int64) @ w.astype(np.int64))


def test_pair_safe_rows_never_saturate():
    w = RNG.integers(-64, 65, (40, 12))  # any two sum to <= 128
    assert pair_safe(w.T).all()
    for a in (np.full((1, 40), 255), RNG.integers(0, 256, (50, 40))):
        assert np.array_equal(pair_saturating_matmul(a, w), exact_matmul(a, w))
    assert not pair_safe(np.array([[65, 64, 0]]))[0] and pair_safe(np.array([[64, 64, -128, 0]]))[0]
    assert not pair_safe(np.array([[-65, -64]]))[0] and pair_safe(np.array([[127, -128]]))[0]


def _quantize(matrix, t, rounding, qmax=127):
    """The project's weight arithmetic (quant/weights.py): float32 scale T/qmax, either rounding mode."""
    scale = (np.asarray(t, np.float32).reshape(-1) / np.float32(qmax)).astype(np.float32)
    x = matrix.astype(np.float32) / np.broadcast_to(scale, (matrix.shape[0],))[:, None]
    r = np.round(x) if rounding == "even" else np.sign(x) * np.floor(np.abs(x) + 0.5)
    return np.clip(r, -qmax, qmax).astype(np.int64)


def test_pair_safe_thresholds_property():
    """Several hundred random matrices, thresholds sometimes below absmax (clipping calibrators), random K
    orders: the raised thresholds quantize to pair-safe rows that never saturate, worst case included."""
    for trial in range(300):
        m, k = int(RNG.integers(1, 9)), int(RNG.integers(1, 40))
        w = RNG.standard_normal((m, k)) * RNG.uniform(0.01, 3)
        if trial % 3 == 0:
            w[:, : max(1, k // 4)] = np.abs(w[:, : max(1, k // 4)])  # a cluster of large positives
        absmax = np.abs(w).max(axis=1)
        t = absmax * RNG.uniform(0.5, 1.2, m)
        per_tensor = trial % 4 == 0
        if per_tensor:
            t = t.max(keepdims=True)
        raised = pair_safe_thresholds(w, t)
        assert raised.shape == t.shape and raised.dtype == np.float64 and np.all(raised >= t)
        for rounding in ("even", "away"):
            q = _quantize(w, raised, rounding)
            assert pair_safe(q).all(), (trial, rounding)
            order = RNG.permutation(k)
            qt = q[:, order].T
            for a in (np.full((1, k), 255), RNG.integers(0, 256, (8, k)), RNG.integers(200, 256, (8, k))):
                assert np.array_equal(pair_saturating_matmul(a, qt), exact_matmul(a, qt))
        if not per_tensor:  # rows already safe keep their threshold exactly
            safe = pair_safe(_quantize(w, t, "away"))
            assert np.array_equal(raised[safe], t[safe])


def test_absmax_weights_do_saturate():
    """Plain 127/absmax weights of a realistic layer are not pair-safe and do saturate for some input."""
    w = RNG.standard_normal((32, 288)) * 0.05
    q = _quantize(w, np.abs(w).max(axis=1), "even")
    assert not pair_safe(q).any()
    row = q[0]
    top = np.argsort(row)[-2:]  # its two largest positive weights, made adjacent (one pair)
    order = np.concatenate([top, np.setdiff1d(np.arange(row.size), top)])
    a = np.where(row[order] > 0, 255, 0)[None, :]
    assert pair_saturating_matmul(a, row[order][:, None])[0, 0] < exact_matmul(a, row[order][:, None])[0, 0]
    assert pair_safe(_quantize(w, pair_safe_thresholds(w, np.abs(w).max(axis=1)), "even")).all()


def test_pair_safe_thresholds_rejects_bad_input():
    w = RNG.standard_normal((3, 4))
    for args in ((w, np.ones(2)), (w, -np.ones(3)), (w[0], np.ones(1)), (w, np.ones(3), 200)):
        with pytest.raises(ConfigError):
            pair_safe_thresholds(*args)
    assert np.array_equal(pair_safe_thresholds(w, np.ones(3), qmax=63), np.ones(3))  # 63 + 63 < 128


def _float_conv(x, w, stride, pads, group):
    """An independent exact reference: onnxruntime's float Conv on integer-valued float32 (|sum| < 2**24)."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride, stride], pads=list(pads), group=group)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                                  ir_version=8).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0].astype(np.int64)


@pytest.mark.parametrize("c,m,k,stride,pads,group", [(16, 8, 3, 1, (1, 1, 1, 1), 1), (3, 5, 3, 2, (1, 0, 0, 1), 1),
                                                     (8, 6, 1, 1, (0, 0, 0, 0), 2), (6, 6, 3, 1, (1, 1, 1, 1), 6)])
def test_conv_model_matches_plain_conv(c, m, k, stride, pads, group):
    x = RNG.integers(0, 256, (2, c, 7, 6))
    w = RNG.integers(-64, 65, (m, c // group, k, k))  # pair-safe: saturating == exact
    ref = _float_conv(x, w, stride, pads, group)
    assert np.array_equal(exact_conv2d(x, w, stride, pads, 1, group), ref)
    assert np.array_equal(saturating_conv2d(x, w, stride, pads, 1, group), ref)
    big = np.full_like(w, 127)
    sat, exact = saturating_conv2d(x, big, stride, pads, 1, group), exact_conv2d(x, big, stride, pads, 1, group)
    assert np.array_equal(exact, _float_conv(x, big, stride, pads, group))
    if c // group == 1:  # depthwise: exact even with the worst weights
        assert np.array_equal(sat, exact) and is_depthwise("Conv", big.shape, group)
    else:
        assert (sat < exact).any() and not is_depthwise("Conv", big.shape, group)


def test_is_depthwise():
    assert is_depthwise("Conv", (32, 1, 3, 3), 32)
    assert not is_depthwise("Conv", (64, 1, 3, 3), 32)  # channel multiplier 2: a grouped GEMM
    assert not is_depthwise("Conv", (1, 1, 3, 3), 1) and not is_depthwise("Gemm", (8, 1), 8)


# ---------------------------------------------------------------- host detection

def test_host_detection(monkeypatch):
    monkeypatch.delenv(ENV_OVERRIDE, raising=False)
    assert isinstance(host_int8_path(), Int8Path) and describe_host()
    for path in Int8Path:
        monkeypatch.setenv(ENV_OVERRIDE, path.value.upper())
        assert host_int8_path() is path and path.value in describe_host()
    monkeypatch.setenv(ENV_OVERRIDE, "sse")
    with pytest.raises(ConfigError):
        host_int8_path()


# ---------------------------------------------------------------- the real kernels

def _expected_kind():
    path = host_int8_path()
    if path is Int8Path.OTHER:
        pytest.skip(f"no expectation for this CPU: {describe_host()}")
    return "saturating" if path is Int8Path.AVX2 else "exact"


def _requantize(acc, bias, x_scale, w_scale, y_scale, y_zero, lo, hi):
    """onnxruntime's requantization, in its float32 arithmetic: multiplier (x_scale * w_scale) / y_scale,
    float32(acc + bias) * multiplier clipped to [lo - zp, hi - zp], rounded half to even, plus zp."""
    mult = ((np.float32(x_scale) * w_scale.astype(np.float32)) / np.float32(y_scale)).astype(np.float32)
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    v = (acc + bias.reshape(shape)).astype(np.float32) * mult.reshape(shape)
    return np.rint(np.clip(v, np.float32(lo - y_zero), np.float32(hi - y_zero))).astype(np.int64) + y_zero


def _session(model, tmp_path=None):
    model.ir_version = 8
    opts = ort.SessionOptions()
    if tmp_path is not None:
        opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _conv_case(c, m, k, group, big_fraction=0.5):
    """Activations and per-channel int8 weights where about half the output channels saturate pairs."""
    w = RNG.integers(-127, 128, (m, c // group, k, k))
    big = RNG.random(m) < big_fraction
    w[big] = RNG.integers(90, 128, w[big].shape)
    return w.astype(np.int8)


def _scales_for(acc, x_scale, y_scale, levels=100.0):
    """Per-channel weight scales mapping each channel's exact range onto about +-levels output steps."""
    span = np.maximum(np.abs(acc).max(axis=tuple(i for i in range(acc.ndim) if i != 1)), 1)
    return (levels * y_scale / (x_scale * span) * RNG.uniform(0.9, 1.1, span.size)).astype(np.float32)


CONV_CASES = {  # (C, M, k, stride, pad, group): which MLAS path onnxruntime takes on AVX2
    "1x1 symmetric-conv kernel": (16, 16, 1, 1, 0, 1),
    "3x3 symmetric-conv kernel, padded": (16, 16, 3, 1, 1, 1),
    "3x3 im2col GEMM, odd C, pairs cross taps": (3, 8, 3, 2, 1, 1),
    "1x1 direct GEMM, odd K": (5, 6, 1, 1, 0, 1),
    "3x3 grouped GEMM": (8, 8, 3, 1, 1, 2),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_real_qlinearconv_uint8(case):
    c, m, k, stride, pad, group = CONV_CASES[case]
    x = RNG.integers(0, 256, (1, c, 6, 5)).astype(np.uint8)
    w = _conv_case(c, m, k, group)
    x_scale, y_scale, y_zero = np.float32(0.05), np.float32(0.1), 128
    sat = saturating_conv2d(x, w, stride, pad, 1, group)
    exact = exact_conv2d(x, w, stride, pad, 1, group)
    w_scale = _scales_for(exact, x_scale, y_scale)
    bias = RNG.integers(-3000, 3000, m).astype(np.int32)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.array(x_scale), "xs"), (np.array(0, np.uint8), "xz"), (w, "w"), (w_scale, "ws"),
        (np.zeros(m, np.int8), "wz"), (np.array(y_scale), "ys"), (np.array(y_zero, np.uint8), "yz"), (bias, "b"))]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4, group=group)
    graph = helper.make_graph([node], "qconv", [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    y = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])).run(None, {"x": x})[0]
    want = {kind: _requantize(acc, bias, x_scale, w_scale, y_scale, y_zero, 0, 255)
            for kind, acc in (("saturating", sat), ("exact", exact))}
    assert (want["saturating"] != want["exact"]).mean() > 0.1  # the test can tell the two apart
    np.testing.assert_array_equal(y.astype(np.int64), want[_expected_kind()])


def _qdq_conv(x, x_scale, w, w_scale, bias, y_scale, y_zero, stride, pad, group, act=TensorProto.INT8):
    """x -> Q/DQ -> Conv(DQ(w), DQ(bias)) -> Q/DQ: the QDQ layer int8tune exports (int8 activations)."""
    k, m = w.shape[-1], w.shape[0]
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.array(x_scale, np.float32), "xs"), (np.array(0, np.int8), "xz"), (w, "wq"), (w_scale, "ws"),
        (np.zeros(m, np.int8), "wz"), (bias, "bq"), ((np.float32(x_scale) * w_scale).astype(np.float32), "bs"),
        (np.zeros(m, np.int32), "bz"), (np.array(y_scale, np.float32), "ys"), (np.array(y_zero, np.int8), "yz"))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], kernel_shape=[k, k], strides=[stride] * 2,
                              pads=[pad] * 4, group=group),
             helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("case", ["3x3 symmetric-conv kernel, padded", "3x3 im2col GEMM, odd C, pairs cross taps"])
def test_real_qdq_conv_int8_activations(case, tmp_path):
    """int8 activations: onnxruntime rewrites them to uint8 + 128 on x86, so q near 0 already saturates."""
    c, m, k, stride, pad, group = CONV_CASES[case]
    q = RNG.integers(-40, 128, (1, c, 6, 5))
    x_scale, y_scale, y_zero = 2.0 ** -5, np.float32(0.1), 0  # x = q * 2**-5 quantizes back to q exactly
    w = _conv_case(c, m, k, group)
    sat = saturating_conv2d(q + 128, w, stride, pad, 1, group, pad_value=128)
    corr = 128 * w.astype(np.int64).reshape(m, -1).sum(axis=1)[None, :, None, None]  # exact zero-point fix
    exact = exact_conv2d(q, w, stride, pad, 1, group)  # int8 activations, zero padding
    assert np.array_equal(exact_conv2d(q + 128, w, stride, pad, 1, group, pad_value=128) - corr, exact)
    w_scale = _scales_for(exact, x_scale, y_scale)
    bias = RNG.integers(-3000, 3000, m).astype(np.int32)
    model = _qdq_conv((q * x_scale).astype(np.float32), x_scale, w, w_scale, bias, y_scale, y_zero, stride, pad, group)
    sess = _session(model, tmp_path)
    y = sess.run(None, {"x": (q * x_scale).astype(np.float32)})[0]
    fused = {(n.op_type, n.domain) for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert ("QLinearConv", "") in fused or ("QLinearConv", "com.microsoft") in fused, fused
    want = {kind: _requantize(acc, bias, x_scale, w_scale, y_scale, y_zero, -128, 127)
            for kind, acc in (("saturating", sat - corr), ("exact", exact))}
    assert (want["saturating"] != want["exact"]).mean() > 0.1
    expected = (want[_expected_kind()] - y_zero).astype(np.float32) * y_scale  # DequantizeLinear
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("rows,constant_b", [(7, True), (7, False), (1, False)])
def test_real_qlinearmatmul(rows, constant_b):
    """QLinearMatMul u8 x s8: packed B (constant), unpacked GEMM, and the M = 1 GEMV kernel."""
    k, n = 37, 12
    a = RNG.integers(0, 256, (rows, k)).astype(np.uint8)
    b = RNG.integers(-127, 128, (k, n))
    b[:, ::2] = RNG.integers(90, 128, (k, (n + 1) // 2))
    b = b.astype(np.int8)
    sat, exact = pair_saturating_matmul(a, b), exact_matmul(a, b)
    a_scale, y_scale, y_zero = np.float32(0.05), np.float32(0.1), 128
    b_scale = _scales_for(exact[:, :, None], a_scale, y_scale)
    consts = [numpy_helper.from_array(v, nm) for v, nm in (
        (np.array(a_scale), "as"), (np.array(0, np.uint8), "az"), (b_scale, "bs"), (np.zeros(n, np.int8), "bz"),
        (np.array(y_scale), "ys"), (np.array(y_zero, np.uint8), "yz"))]
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape)]
    if constant_b:
        consts.append(numpy_helper.from_array(b, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.INT8, b.shape))
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    graph = helper.make_graph([node], "qmm", inputs, [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
                              consts)
    feeds = {"a": a} if constant_b else {"a": a, "b": b}
    y = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])).run(None, feeds)[0]
    want = {kind: _requantize(acc, np.zeros(n, np.int64), a_scale, b_scale, y_scale, y_zero, 0, 255)
            for kind, acc in (("saturating", sat), ("exact", exact))}
    assert (want["saturating"] != want["exact"]).mean() > 0.1
    np.testing.assert_array_equal(y.astype(np.int64), want[_expected_kind()])


@pytest.mark.parametrize("channels", [16, 6])  # 16: the symmetric depthwise kernel; 6: the generic one
def test_real_depthwise_and_pair_safe_weights_are_exact(channels, tmp_path):
    """Depthwise convolutions, and any conv whose weights came from pair_safe_thresholds, are exact on every
    CPU: onnxruntime's result equals the exact model whatever host_int8_path() says."""
    q = RNG.integers(0, 128, (1, channels, 6, 5))
    x_scale, y_scale = 2.0 ** -5, np.float32(0.1)
    w_dw = np.full((channels, 1, 3, 3), 127, np.int8)
    float_w = RNG.standard_normal((channels, channels, 3, 3)) * 0.1
    float_w[:, :4] = np.abs(float_w[:, :4])  # adjacent large positives: unsafe at absmax thresholds
    matrix = float_w.transpose(0, 2, 3, 1).reshape(channels, -1)  # (M, K) in the kernel's K order
    t = pair_safe_thresholds(matrix, np.abs(matrix).max(axis=1))
    w_safe = np.clip(np.round(float_w / (t / 127)[:, None, None, None]), -127, 127).astype(np.int8)
    assert pair_safe(w_safe.reshape(channels, -1)).all()
    taps = (q[0, 0, :3, :3] + 128).reshape(1, 9)  # one depthwise output: pairing its taps would saturate
    assert pair_saturating_matmul(taps, np.full((9, 1), 127)) < exact_matmul(taps, np.full((9, 1), 127))
    for w, group in ((w_dw, channels), (w_safe, 1)):
        exact = exact_conv2d(q, w, 1, 1, 1, group)
        w_scale = _scales_for(exact, x_scale, y_scale)
        bias = np.zeros(channels, np.int32)
        model = _qdq_conv((q * x_scale).astype(np.float32), x_scale, w, w_scale, bias, y_scale, 0, 1, 1, group)
        y = _session(model).run(None, {"x": (q * x_scale).astype(np.float32)})[0]
        want = _requantize(exact, bias, x_scale, w_scale, y_scale, 0, -128, 127).astype(np.float32) * y_scale
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("case", ["3x3 symmetric-conv kernel, padded", "1x1 direct GEMM, odd K"])
def test_real_x64quantprecision_is_exact(case, tmp_path):
    """onnxruntime's documented remedy: session.x64quantprecision = 1 turns the int8 weights into uint8 + 128
    and runs the U8U8 kernels, which widen to 16 bits: exact on every CPU, still an int8 QLinearConv."""
    c, m, k, stride, pad, group = CONV_CASES[case]
    q = RNG.integers(-40, 128, (1, c, 6, 5))
    x_scale, y_scale = 2.0 ** -5, np.float32(0.1)
    w = _conv_case(c, m, k, group, big_fraction=1.0)
    exact = exact_conv2d(q, w, stride, pad, 1, group)
    w_scale = _scales_for(exact, x_scale, y_scale)
    bias = RNG.integers(-3000, 3000, m).astype(np.int32)
    model = _qdq_conv((q * x_scale).astype(np.float32), x_scale, w, w_scale, bias, y_scale, 0, stride, pad, group)
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.x64quantprecision", "1")
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": (q * x_scale).astype(np.float32)})[0]
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    want = _requantize(exact, bias, x_scale, w_scale, y_scale, 0, -128, 127).astype(np.float32) * y_scale
    np.testing.assert_array_equal(y, want)


def test_kernel_pairing_widens_less_and_stays_safe_on_the_kernels_pairs():
    """Pairing.KERNEL only bounds the pairs the kernel forms (adjacent in its K order): rows stay pair-safe for
    those pairs, and a row whose two big weights are not neighbours keeps its threshold."""
    w = np.zeros((2, 8))
    w[0, [0, 2]] = 1.0  # not neighbours: (0, 1) and (2, 3) each hold one
    w[1, [0, 1]] = 1.0  # neighbours: one pair holds both
    t = np.abs(w).max(axis=1)
    assert np.array_equal(pair_safe_thresholds(w, t, pairing=Pairing.KERNEL)[:1], t[:1])
    assert pair_safe_thresholds(w, t, pairing=Pairing.KERNEL)[1] >= 2 * 127 / 128
    assert (pair_safe_thresholds(w, t, pairing=Pairing.ANY) > t).all()
    rng = np.random.default_rng(5)
    for _ in range(100):
        m = rng.standard_normal((4, int(rng.integers(1, 40))))
        q = _quantize(m, pair_safe_thresholds(m, np.abs(m).max(axis=1), pairing=Pairing.KERNEL), "away")
        assert pair_safe(q, Pairing.KERNEL).all()


def test_kernel_order_is_channels_innermost_for_convolutions():
    w = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)  # (M, C, kh, kw)
    k = kernel_order(w, "Conv")
    assert k.shape == (2, 12) and list(k[0, :3]) == [w[0, 0, 0, 0], w[0, 1, 0, 0], w[0, 2, 0, 0]]
    assert np.array_equal(kernel_order(np.ones((5, 3)), "MatMul"), np.ones((3, 5)))


@pytest.mark.parametrize("channels", [16, 6])
def test_real_kernel_pairing_is_exact(channels, tmp_path):
    """Weights widened only for the kernel's own pairs (Pairing.KERNEL, the --target onnxruntime rule) are exact
    on every CPU. The big weights sit on channels 0 and 2 at every kernel position: in the kernel's K order
    (channels innermost) each pair holds one of them, so nothing is widened; in any other order, e.g. (c, kh, kw),
    pairs would hold two and saturate on AVX2 (scripts/emulate_avx2.sh runs this against the real kernels)."""
    q = np.full((1, channels, 6, 5), 127)  # int8 activations: stored as 255 (zero point 128) on x86
    x_scale, y_scale = 2.0 ** -5, np.float32(0.5)
    float_w = RNG.uniform(-0.02, 0.0, (channels, channels, 3, 3))  # a small negative beside each big one
    float_w[:, [0, 2]] = 1.0
    matrix = kernel_order(float_w, "Conv")
    absmax = np.abs(matrix).max(axis=1)
    t = pair_safe_thresholds(matrix, absmax, pairing=Pairing.KERNEL)
    assert np.array_equal(t, absmax) and not (pair_safe_thresholds(matrix, absmax) == absmax).all()
    w = np.clip(np.round(float_w / (t / 127)[:, None, None, None]), -127, 127).astype(np.int8)
    assert pair_safe(kernel_order(w, "Conv"), Pairing.KERNEL).all()
    assert not pair_safe(w.reshape(channels, -1), Pairing.KERNEL).all()  # (c, kh, kw) pairs would saturate
    exact = exact_conv2d(q, w, 1, 1, 1, 1)
    w_scale = _scales_for(exact, x_scale, y_scale)
    bias = np.zeros(channels, np.int32)
    model = _qdq_conv((q * x_scale).astype(np.float32), x_scale, w, w_scale, bias, y_scale, 0, 1, 1, 1)
    y = _session(model).run(None, {"x": (q * x_scale).astype(np.float32)})[0]
    want = _requantize(exact, bias, x_scale, w_scale, y_scale, 0, -128, 127).astype(np.float32) * y_scale
    np.testing.assert_array_equal(y, want)
