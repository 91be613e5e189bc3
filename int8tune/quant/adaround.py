"""Adaptive rounding of the weights (`--adaround`): each weight rounds up or down, whichever makes the layer's
output closer to fp32 on the calibration images, instead of to the nearest level.

The objective is AdaRound's layer-local one below; two solvers (`--adaround_solver`, rounding_solver.Solver) choose
the ups and downs from the same Gram matrices: `sequential` (the default, quant/sequential_rounding.py: one input
at a time, the error left fed forward) and `adam` (AdaRound's relaxation, this module's _optimize).

AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020): with the
weight scale s fixed, weight w becomes s * (floor(w/s) + h) with h in {0, 1} learned per weight. Relaxed,
h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1) (zeta = 1.1, gamma = -0.1: the rectified sigmoid, which
reaches 0 and 1 exactly), V learned by Adam on

    || W x - W~ x ||^2 / (the same for round-to-nearest) + lambda * sum(1 - |2h - 1|^beta)

per output channel, where x runs over the layer's fp32 inputs on the calibration images (the paper's local loss
before the activation: the output of a convolution is linear in its weights). The square error needs only the
Gram matrix G = sum x x^T of the inputs (im2col rows, subsampled), so an iteration costs (M x K) @ (K x K) and no
pass over the images. The regularizer, off for the first `warmup` share of the iterations, pushes each h to 0 or 1
as beta falls from 20 to 2 (the paper's annealing). Then h is rounded to {0, 1}.

What is written must quantize back to exactly these integers: calibrate derives the weight scale from the written
weights (`quant/calibrate.weight_thresholds`: max |w| per channel, and for --target onnxruntime a wider threshold
where two adjacent same-sign weights could saturate the int16 pair sums of AVX2 kernels, quant/saturation.py). So
each rounded channel keeps what made its scale:
- a channel whose threshold is its max |w| keeps that weight at +-127 (it is exactly a level), and for the
  pair-safe target no adjacent same-sign pair above 128 (the nearest rounding had none: such pairs get it back);
- a widened channel (threshold = its largest same-sign pair sum, so that pair is 127 levels) keeps that pair at
  127 exactly (one weight up, one down) and every other pair at most 127 (rounded toward zero where above).
Then every channel is checked with the export's own function on the weights as written (float32 q * s, where s
may move by a few float32 ulps so that it is exactly the scale derived back); a channel that does not come back
to its integers, or whose error on its own inputs is above round-to-nearest's, keeps its original weights (the
export then rounds it to nearest as without --adaround). Weights are per output channel: with one threshold per
tensor (--granularity per_tensor) the channels share their scale, and AdaRound is refused.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..convert.converter import ConvertedModel
from ..errors import ConfigError
from ..log import logger
from ..progress import Progress
from ..runtime import Engine
from .calibrate import layer_weight, weight_thresholds
from .calibrators import CalibratorOptions, minmax_weights
from .rounding_solver import Solver, solver_named
from .saturation import is_depthwise
from .sequential_rounding import sequential_rounding
from .spec import QuantSpec
from .weights import from_output_matrix, quantize_matrix, to_output_matrix

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound, section 3.2)
ROUNDED_OPS = ("Conv", "Gemm", "MatMul")
PAIR_LIMIT = 128  # quant/saturation.py: the largest same-sign pair sum that never saturates


@dataclass(frozen=True)
class AdaRoundOptions:
    solver: Solver = Solver.SEQUENTIAL  # the default since it measured closer and faster (sequential_rounding.py)
    damping: float = 0.01  # sequential: share of the Gram matrix's mean diagonal added to it (GPTQ's 1 %)
    block: int = 128  # sequential: columns whose fed-forward error is applied to the rest at once
    iterations: int = 400  # adam: steps per layer (the full Gram matrix is the exact gradient: no minibatches)
    rows: int = 8192  # im2col rows sampled per layer over the images (the Gram matrix's samples)
    regularization: float = 0.01  # lambda, against the channel's error relative to round-to-nearest's
    beta: tuple[float, float] = (20.0, 2.0)  # the regularizer's exponent, annealed from the first to the second
    warmup: float = 0.2  # share of the iterations without the regularizer (the paper's 20 %)
    learning_rate: float = 0.05
    seed: int = 0  # which im2col rows are sampled (with the layer's name: a layer's rows do not depend on the others)
    gram_budget_mb: float = 1024.0  # Gram matrices held at once; more layers take more passes over the images

    def __post_init__(self) -> None:
        if not isinstance(self.solver, Solver):
            object.__setattr__(self, "solver", solver_named(self.solver))
        if self.iterations < 1 or self.rows < 1 or self.block < 1 or self.damping <= 0 or self.gram_budget_mb <= 0:
            raise ConfigError(f"AdaRound needs iterations, rows and block >= 1, damping and gram_budget_mb > 0, "
                              f"found {self.iterations}, {self.rows}, {self.block}, {self.damping}, "
                              f"{self.gram_budget_mb}")
        if not 0 <= self.warmup < 1 or self.regularization < 0 or self.learning_rate <= 0:
            raise ConfigError("AdaRound: warmup in [0, 1), regularization >= 0 and learning_rate > 0 expected")


@dataclass(frozen=True)
class LayerInputs:
    """What AdaRound needs of a layer's inputs: the Gram matrix of its im2col rows, per group of channels."""

    gram: np.ndarray  # (groups, K, K) float64: sum over the sampled rows of x x^T
    rows: int  # rows summed


@dataclass(frozen=True)
class RoundedLayer:
    layer: str
    weight: np.ndarray  # ONNX layout, float32: q * scale on rounded channels, the original weights elsewhere
    levels: np.ndarray  # (M, K) the integer weights the export computes from `weight`
    scale: np.ndarray  # (M,) float32: the weight scale the export derives from `weight`
    rounded: np.ndarray  # (M,) bool: channels AdaRound rounded (the others: round-to-nearest, weights unchanged)
    error_nearest: float  # the square error of the layer's output on its own inputs, rounding to nearest
    error: float  # the same with the weights as written
    flipped: int  # weights whose level differs from round-to-nearest's

    def describe(self) -> str:
        ratio = self.error / self.error_nearest if self.error_nearest > 0 else 1.0
        return (f"{self.layer}: output error x{ratio:.3f} of round-to-nearest on its inputs, {self.flipped} "
                f"weight(s) rounded the other way, {int(self.rounded.sum())}/{self.rounded.size} channel(s)")


@dataclass(frozen=True)
class SkippedLayer:
    layer: str
    reason: str


def refuse_adaround(spec: QuantSpec, weight_method: str) -> str | None:
    """Why AdaRound cannot apply to these settings (None when it can)."""
    if not spec.granularity.weights_per_channel:
        return ("--adaround rounds each output channel on its own scale; with --granularity per_tensor every "
                "channel shares one (use mix or per_channel)")
    if weight_method != "minmax":
        return (f"--adaround keeps each channel's largest weight as its scale (--weight_method minmax); "
                f"--weight_method {weight_method} would derive another scale from the rounded weights")
    return None


# --- the layers' inputs ---------------------------------------------------------------------------------------

def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else a.i
    return default


def _conv_rows(x: np.ndarray, node, weight_shape, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(groups, R, K) im2col rows of a Conv at R sampled output positions, K in the weights' (C/g, kh, kw) order."""
    n, c, h, w = x.shape
    m, cg, kh, kw = weight_shape
    group = int(_attr(node, "group", 1))
    pads = _attr(node, "pads", [0, 0, 0, 0])
    sh, sw = _attr(node, "strides", [1, 1])
    dh, dw = _attr(node, "dilations", [1, 1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pads[1] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    total = n * oh * ow
    pick = np.sort(rng.choice(total, size=min(rows, total), replace=False))
    ni, rest = np.divmod(pick, oh * ow)
    oi, wi = np.divmod(rest, ow)
    hh = oi[:, None] * sh + np.arange(kh)[None, :] * dh  # (R, kh)
    ww = wi[:, None] * sw + np.arange(kw)[None, :] * dw  # (R, kw)
    patches = xp[ni[:, None, None, None], np.arange(c)[None, :, None, None], hh[:, None, :, None],
                 ww[:, None, None, :]]  # (R, C, kh, kw)
    return patches.reshape(len(pick), group, cg * kh * kw).transpose(1, 0, 2)


def _layer_rows(x: np.ndarray, node, weight_shape, rows: int, rng: np.random.Generator) -> np.ndarray:
    if node.op_type == "Conv":
        return _conv_rows(x, node, weight_shape, rows, rng)
    flat = x.reshape(-1, x.shape[-1]) if node.op_type == "MatMul" else x.reshape(x.shape[0], -1)
    if len(flat) > rows:
        flat = flat[np.sort(rng.choice(len(flat), size=rows, replace=False))]
    return flat[None]


def _layer_rng(seed: int, layer: str) -> np.random.Generator:
    """The generator that samples `layer`'s rows: seeded by its name, so that which rows a layer gets does not
    depend on which other layers are rounded, nor on how they are split into passes."""
    return np.random.default_rng([seed, zlib.crc32(layer.encode())])


def layer_inputs(converted: ConvertedModel, layers: list[str], batches: list[np.ndarray], options: AdaRoundOptions,
                 threads: int = 2, what: str = "AdaRound: the layers' inputs") -> dict[str, LayerInputs]:
    """The Gram matrices of the fp32 inputs of `layers` (2-D Conv, Gemm, MatMul) over `batches`, im2col rows
    sampled evenly over the images (`options.rows` per layer in all), in one pass."""
    nodes = {n.name: n for n in converted.model.graph.node}
    mains = {layer: nodes[converted.records[layer].main_node] for layer in layers}
    shapes = {layer: layer_weight(converted, layer)[0].shape for layer in layers}
    tensors = list(dict.fromkeys(mains[layer].input[0] for layer in layers))
    images = sum(len(b) for b in batches)
    rngs = {layer: _layer_rng(options.seed, layer) for layer in layers}
    grams: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(layers, 0)
    engine = Engine(converted, threads=threads)
    chunk = 2  # a few images per run: every requested input comes back at once (see quant/calibrate.STATS_CHUNK)
    with Progress(images, what, unit="image") as bar:
        for batch in batches:
            for start in range(0, len(batch), chunk):
                part = batch[start:start + chunk]
                got = engine.run_tensors(part, tensors)
                for layer in layers:
                    per_image = -(-options.rows // images)
                    x = _layer_rows(got[mains[layer].input[0]].astype(np.float64), mains[layer], shapes[layer],
                                    per_image * len(part), rngs[layer])
                    g = np.matmul(x.transpose(0, 2, 1), x)
                    grams[layer] = g if layer not in grams else grams[layer] + g
                    counts[layer] += x.shape[1]
                bar.update(len(part))
    return {layer: LayerInputs(grams[layer], counts[layer]) for layer in layers}


def passes(sizes: dict[str, int], budget: float) -> list[list[str]]:
    """`sizes` (layer -> bytes, in net order) cut into consecutive runs whose sum stays within `budget`; a layer
    larger than the budget alone gets a run of its own."""
    out: list[list[str]] = []
    held = budget + 1
    for layer, size in sizes.items():
        if held + size > budget:
            out.append([])
            held = 0
        out[-1].append(layer)
        held += size
    return out


# --- one layer ------------------------------------------------------------------------------------------------

def _kernel_permutation(op_type: str, weight_shape) -> np.ndarray:
    """Column order that puts an output-matrix row (K in the weights' (C/g, kh, kw) order) in the K order the
    int8 kernel pairs it (saturation.kernel_order: kernel positions outer, channels inner)."""
    if op_type != "Conv":
        return np.arange(int(np.prod(weight_shape[1:])) if op_type == "Gemm" else weight_shape[0])
    cg, p = weight_shape[1], int(np.prod(weight_shape[2:]))
    return np.arange(cg * p).reshape(cg, p).T.reshape(-1)


def _pair_sums(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, ceil(K/2)) sums of the positive and of the negative parts of the kernel-order pairs (k, k+1), k even."""
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), q.dtype)], axis=1)
    pos, neg = np.maximum(q, 0), np.maximum(-q, 0)
    return pos[:, 0::2] + pos[:, 1::2], neg[:, 0::2] + neg[:, 1::2]


def _losses(e: np.ndarray, gram: np.ndarray, groups: int) -> np.ndarray:
    """Per output channel e G e^T (e: (M, K) in levels, G: (groups, K, K))."""
    m, k = e.shape
    eg = e.reshape(groups, m // groups, k)
    return np.einsum("gmk,gmk->gm", np.matmul(eg, gram), eg).reshape(m)


def _optimize(x: np.ndarray, low: np.ndarray, step: np.ndarray, nearest: np.ndarray, gram: np.ndarray, groups: int,
              options: AdaRoundOptions) -> np.ndarray:
    """h in {0, 1} per weight (level = low + h * step), learned as in the module docstring. x: (M, K) the weights
    in levels; step 0 where the level is fixed (at the clip). float32 throughout, in place where it matters: the
    element-wise steps, not the (M, K) x (K, K) product, are most of an iteration."""
    m, k = x.shape
    g32 = gram.astype(np.float32)
    r = (x - low).astype(np.float32)
    norm = np.maximum(_losses(nearest - x, gram, groups), 1e-30)[:, None]
    stepf = step.astype(np.float32)
    coef = (2.0 * step / norm).astype(np.float32)  # d(e G e^T / norm)/de times de/dh
    reg_coef = (options.regularization * 2.0 * step).astype(np.float32)  # only where the rounding is free
    fixed_part = (low - x).astype(np.float32)
    p = np.clip((np.clip(r, 0, 1) - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p)).astype(np.float32)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    sig, h, e, grad = (np.empty_like(v) for _ in range(4))
    b1, b2, eps = 0.9, 0.999, 1e-8
    start = int(options.warmup * options.iterations)
    stretch = np.float32(ZETA - GAMMA)
    for it in range(options.iterations):
        np.negative(v, out=sig)
        np.exp(sig, out=sig)
        sig += 1.0
        np.reciprocal(sig, out=sig)  # sigmoid(v)
        np.multiply(sig, stretch, out=h)
        h += np.float32(GAMMA)
        inside = (h > 0) & (h < 1)
        np.clip(h, 0.0, 1.0, out=h)
        np.multiply(h, stepf, out=e)
        e += fixed_part
        np.matmul(e.reshape(groups, m // groups, k), g32, out=grad.reshape(groups, m // groups, k))
        grad *= coef
        if it >= start and options.regularization > 0:
            t = (it - start) / max(1, options.iterations - start)
            beta = np.float32(options.beta[0] + (options.beta[1] - options.beta[0]) * t)  # linear, as the paper
            d = 2.0 * h - 1.0  # d/dh of 1 - |2h - 1|^beta is -2 beta sign(d) |d|^(beta - 1)
            np.abs(d, out=e)
            np.power(e, beta - 1, out=e)
            e *= np.sign(d)
            e *= reg_coef * beta
            grad -= e
        grad *= stretch * sig * (1.0 - sig) * inside  # dh/dv
        m1 *= b1
        m1 += (1 - b1) * grad
        m2 *= b2
        m2 += (1 - b2) * grad * grad
        lr = float(options.learning_rate * np.sqrt(1 - b2 ** (it + 1)) / (1 - b1 ** (it + 1)))
        np.sqrt(m2, out=e)
        e += eps
        np.divide(m1, e, out=e)
        e *= lr
        v -= e
    h = np.clip((1.0 / (1.0 + np.exp(-v))) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
    return (h >= 0.5) & (step > 0)


def _keep_scale(q: np.ndarray, x: np.ndarray, nearest: np.ndarray, widened: np.ndarray, pair_safe: bool,
                perm: np.ndarray, qmax: int) -> np.ndarray:
    """The levels `q` changed as little as possible so that each channel keeps what made its scale (module
    docstring). x: the weights in levels; nearest: round-to-nearest's levels."""
    q = q.copy()
    rows = np.arange(q.shape[0])
    anchor = np.abs(x).argmax(axis=1)
    plain = ~widened
    q[rows[plain], anchor[plain]] = np.sign(x[rows[plain], anchor[plain]]) * qmax  # its max |w| is +-qmax exactly
    if not pair_safe:
        return q
    kq, kx, kn = q[:, perm], x[:, perm], nearest[:, perm]
    if kq.shape[1] % 2:
        kq, kx, kn = (np.concatenate([a, np.zeros((a.shape[0], 1), a.dtype)], axis=1) for a in (kq, kx, kn))
    pos, neg = _pair_sums(kq)
    limit = np.where(widened, qmax, PAIR_LIMIT)[:, None]
    bad = (pos > limit) | (neg > limit)
    if bad.any():
        r, j = np.nonzero(bad)
        # a plain channel gets round-to-nearest back on the pair (pair-safe, or it would have been widened); a
        # widened one rounds the pair toward zero (the pair's weights sum to at most 127 levels, the row's largest)
        back = np.where(widened[r, None], np.trunc(kx[r[:, None], np.stack([2 * j, 2 * j + 1], 1)]),
                        kn[r[:, None], np.stack([2 * j, 2 * j + 1], 1)])
        kq[r[:, None], np.stack([2 * j, 2 * j + 1], 1)] = back
    for r in np.flatnonzero(widened):  # the pair that set the scale: exactly 127 levels, one weight up, one down
        xs = kx[r].reshape(-1, 2)
        sums = np.maximum(xs, 0).sum(axis=1), np.maximum(-xs, 0).sum(axis=1)
        side = int(sums[1].max() > sums[0].max())
        j = int(sums[side].argmax())
        sign = -1.0 if side else 1.0
        a, b = np.abs(xs[j])
        options = [(np.floor(a), np.ceil(b)), (np.ceil(a), np.floor(b))]
        fit = [o for o in options if o[0] + o[1] == qmax]
        if fit:  # the one closer to what was learned
            cur = np.abs(kq[r, 2 * j:2 * j + 2])
            best = min(fit, key=lambda o: abs(o[0] - cur[0]) + abs(o[1] - cur[1]))
            kq[r, 2 * j:2 * j + 2] = sign * np.array(best)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size)
    return kq[:, :q.shape[1]][:, inverse]


def _written(q: np.ndarray, scale: np.ndarray, weight: np.ndarray, op_type: str, group: int, rows: np.ndarray,
             spec: QuantSpec, weight_method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ONNX weights, their scale per channel, channels that come back to `q`): channel r of `rows` written as
    float32 q * s with s the nearest float32 (within 3 ulps) that the export derives back from those weights."""
    matrix = to_output_matrix(weight, op_type, group).astype(np.float32)
    base = scale.astype(np.float32)
    found = np.zeros(q.shape[0], bool)
    out_scale = base.copy()
    out = matrix.copy()
    for k in (0, 1, -1, 2, -2, 3, -3):
        s = base.copy()
        for _ in range(abs(k)):
            s = np.nextafter(s, np.float32(np.inf if k > 0 else -np.inf)).astype(np.float32)
        trial = matrix.copy()
        trial[rows] = (q[rows] * s[rows, None]).astype(np.float32)
        w = from_output_matrix(trial, weight, op_type, group)
        t = weight_thresholds(w, op_type, group, weight_method, spec, CalibratorOptions())
        levels, derived = quantize_matrix(to_output_matrix(w, op_type, group), t, spec.rounding, spec.qmax)
        ok = rows & ~found & (derived == s) & (levels == q).all(axis=1)
        out[ok] = trial[ok]
        out_scale[ok] = s[ok]
        found |= ok
        if found[rows].all():
            break
    return from_output_matrix(out, weight, op_type, group).astype(np.float32), out_scale, found


def round_layer(converted: ConvertedModel, layer: str, spec: QuantSpec, weight_method: str, inputs: LayerInputs,
                options: AdaRoundOptions = AdaRoundOptions()) -> RoundedLayer | SkippedLayer:
    """AdaRound one weighted layer of `converted` (the folded net) on its inputs' Gram matrix."""
    weight, op_type, group = layer_weight(converted, layer)
    if op_type not in ROUNDED_OPS:
        return SkippedLayer(layer, f"{op_type} is left to round-to-nearest")
    weight = np.asarray(weight, dtype=np.float32)
    matrix = to_output_matrix(weight, op_type, group).astype(np.float64)
    m, k = matrix.shape
    groups = inputs.gram.shape[0]
    if inputs.gram.shape[1:] != (k, k) or m % groups:
        raise ConfigError(f"layer {layer!r}: input Gram matrix {inputs.gram.shape} does not fit weights {m}x{k}")
    if inputs.rows < k:
        return SkippedLayer(layer, f"{inputs.rows} input sample(s) for {k} weights per channel: too few to learn "
                                   f"the rounding without fitting the images; left to round-to-nearest")
    thresholds = weight_thresholds(weight, op_type, group, weight_method, spec, CalibratorOptions())
    nearest, scale = quantize_matrix(matrix, thresholds, spec.rounding, spec.qmax)
    x = matrix / scale.astype(np.float64)[:, None]
    low = np.clip(np.floor(x), -spec.qmax, spec.qmax)
    step = np.clip(np.floor(x) + 1, -spec.qmax, spec.qmax) - low
    gram = inputs.gram  # summed over the rows: the losses below are divided by them; the solver is scale-free
    if options.solver is Solver.SEQUENTIAL:
        try:
            up = sequential_rounding(x, low, step, gram, groups, options.damping, options.block)
        except np.linalg.LinAlgError as e:  # a sum of x x^T damped cannot be indefinite unless its inputs are broken
            return SkippedLayer(layer, f"its inputs' Gram matrix cannot be factorized ({e}); left to "
                                       f"round-to-nearest")
    else:
        up = _optimize(x, low, step, nearest.astype(np.float64), gram / inputs.rows, groups, options)
    q = low + up * step
    widened = thresholds > minmax_weights(matrix, CalibratorOptions()) * (1 + 1e-12)
    pair_safe = spec.target.pair_safe_weights and not is_depthwise(op_type, weight.shape, group)
    q = _keep_scale(q, x, nearest.astype(np.float64), widened, pair_safe, _kernel_permutation(op_type, weight.shape),
                    spec.qmax)
    error_nearest = _losses(nearest - x, gram, groups) / inputs.rows
    better = _losses(q - x, gram, groups) / inputs.rows <= error_nearest
    better &= (q != nearest).any(axis=1)
    written, out_scale, back = _written(q, scale, weight, op_type, group, better, spec, weight_method)
    rounded = better & back
    levels = np.where(rounded[:, None], q, nearest)
    scale_sq = scale.astype(np.float64) ** 2
    error = float((_losses(levels - x, gram, groups) / inputs.rows * scale_sq).sum())
    return RoundedLayer(layer, written, levels, out_scale, rounded, float((error_nearest * scale_sq).sum()), error,
                        int((levels != nearest).sum()))


def _rows_per_image(converted: ConvertedModel, layer: str, op_type: str) -> int:
    """How many im2col rows one image gives `layer`: its output positions (Conv), the rows of a MatMul's input,
    one for a Gemm."""
    shape = converted.shapes[converted.records[layer].outputs[0]]
    if op_type == "Conv":
        return int(np.prod(shape[2:]))
    return int(np.prod(shape[1:-1])) if op_type == "MatMul" else 1


def adaround(converted: ConvertedModel, layers: Iterable[str], batches: list[np.ndarray], spec: QuantSpec,
             weight_method: str, options: AdaRoundOptions = AdaRoundOptions(), threads: int = 2
             ) -> list[RoundedLayer | SkippedLayer]:
    """AdaRound every layer of `layers` (int8 weighted layers of the folded net, in net order) on the fp32 inputs
    of `batches`. Returns one result per layer; `converted` is not changed."""
    why = refuse_adaround(spec, weight_method)
    if why is not None:
        raise ConfigError(why)
    layers = list(layers)
    ops = {layer: layer_weight(converted, layer) for layer in layers}
    learn = [layer for layer in layers if ops[layer][1] in ROUNDED_OPS
             and (ops[layer][1] != "Conv" or ops[layer][0].ndim == 4)]
    # Known before any image runs: a layer with more weights per channel than input rows there can be is skipped
    # (round_layer would skip it), and its K x K Gram matrix never built: VGG-16's fc6 (K = 25088) would take 5 GB
    images = sum(len(b) for b in batches)
    too_few = {}
    for layer in learn:
        weight, op_type, group = ops[layer]
        k = to_output_matrix(weight, op_type, group).shape[1]
        most = min(images * _rows_per_image(converted, layer, op_type), options.rows + images)
        if most < k:
            too_few[layer] = (f"at most {most} input sample(s) for {k} weights per channel: too few to learn the "
                              f"rounding without fitting the images; left to round-to-nearest")
    learn = [layer for layer in learn if layer not in too_few]
    # The Gram matrices of a big net do not all fit at once (VGG-16's thirteen convolutions: 1.2 GB in float64, a
    # full YOLOv3 more): the layers are rounded in passes over the images, each holding at most the budget
    runs = passes({layer: ops[layer][2] * to_output_matrix(*ops[layer]).shape[1] ** 2 * 8 for layer in learn},
                  options.gram_budget_mb * 2 ** 20)  # (groups, K, K) float64 each
    done: dict[str, RoundedLayer | SkippedLayer] = {}
    for i, run in enumerate(runs):
        of = f" (pass {i + 1} of {len(runs)})" if len(runs) > 1 else ""
        inputs = layer_inputs(converted, run, batches, options, threads, f"AdaRound: the layers' inputs{of}")
        with Progress(len(run), f"AdaRound{of}", unit="layer") as bar:
            for layer in run:
                done[layer] = round_layer(converted, layer, spec, weight_method, inputs.pop(layer), options)
                logger.debug("AdaRound %s", done[layer].describe() if isinstance(done[layer], RoundedLayer)
                             else done[layer])
                bar.update()
    out: list[RoundedLayer | SkippedLayer] = []
    for layer in layers:
        if layer in too_few:
            out.append(SkippedLayer(layer, too_few[layer]))
        elif layer not in done:
            out.append(SkippedLayer(layer, f"{ops[layer][1]} with {ops[layer][0].ndim}-D weights is left to "
                                           f"round-to-nearest"))
        else:
            out.append(done[layer])
    return out
