"""Calibrators: pure functions from blob statistics (or weights) to clipping thresholds.

Activation calibrators take the |x| `Histogram` of one blob (stats.py: `bins` equal bins over [0, absmax], exact
zeros not binned but counted) and return one threshold T in the blob's units. Weight calibrators take an (C, K)
weight matrix, one output channel per row, and return one threshold per row. The grid a threshold implies is the
one of spec.py: scale = T / levels, q = clip(round(x / scale), -levels, levels), levels = 127 for signed 8-bit
(unsigned: q in [0, 255], levels = 255).

    T = calibrate_activation("kl", hist, CalibratorOptions())
    Tw = calibrate_weights("admm", w2d, CalibratorOptions())

Both entry points validate what the plug-in returned (finite, >= 0, <= absmax; lifted to MIN_THRESHOLD), so a
calibrator added with `@ACTIVATION_CALIBRATORS.register("name")` cannot hand the rest of the tool a NaN.

Sources: ncnn tools/quantize/ncnn2table.cpp (KL: `QuantNet::quantize_KL` since the 2021 rewrite, and the
2019-2020 `QuantizeData::threshold_distribution`); TNN tools/quantization/calibration.cc (ADMM weights:
`InitWeightScaleADMM`, `UpdateQuantizedWeightsADMM`, `UpdateAlphaADMM`, `Calibration::QuantizeConvParams`);
Banner, Nahshan, Soudry, "Post training 4-bit quantization of convolutional networks for rapid-deployment"
(NeurIPS 2019; arXiv:1810.05723, "ACIQ"), for the Gaussian clipping model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np

from ..errors import ConfigError, DataError, Int8TuneError
from ..registry import Registry
from .stats import MIN_THRESHOLD, Histogram

ActivationCalibrator = Callable[[Histogram, "CalibratorOptions"], float]
WeightCalibrator = Callable[[np.ndarray, "CalibratorOptions"], np.ndarray]

ACTIVATION_CALIBRATORS: Registry[ActivationCalibrator] = Registry("activation calibrator")
WEIGHT_CALIBRATORS: Registry[WeightCalibrator] = Registry("weight calibrator")


class CalibratorError(Int8TuneError):
    """A calibrator returned something that is not a usable threshold (names the calibrator and the value)."""


class KLVariant(str, Enum):
    """Which ncnn2table KL search `kl` reproduces (both in tools/quantize/ncnn2table.cpp, different years).

    NCNN: `QuantNet::quantize_KL` (2021 rewrite, what ncnn ships today): P and the expanded Q both get +1e-4 per
    bin, Q is expanded evenly over every bin of its interval (empty bins included).
    NCNN_2019: `QuantizeData::threshold_distribution` (2019-2020): every histogram bin starts at 1e-5 counts
    before normalisation, Q is expanded only over non-empty bins ("zero bins stay zero"), KL adds 1 where P > 0
    and Q = 0. Since no bin is ever empty after the 1e-5 start, the zero-keeping branch never fires in ncnn;
    it is kept here for fidelity.
    """

    NCNN = "ncnn"
    NCNN_2019 = "ncnn_2019"


@dataclass(frozen=True)
class CalibratorOptions:
    """Settings shared by the calibrators. Validated on construction (a bad value names the field).

    percentile: of the |x| distribution of ALL values, zeros included (as onnxruntime's percentile calibrator
        and pytorch-quantization's histogram calibrator do: "99.99" means 0.01 % of the values get clipped). On a
        post-ReLU blob that is 90 % zeros this clips 0.1 % of the non-zero values.
    kl_target_bins: quantized bins of the KL search for the signed 8-bit grid (128: |q| = 0..127, ncnn's value).
        Other grids scale it by (levels + 1) / 128: 256 for unsigned 8-bit (q = 0..255 covers [0, T] with twice as
        many levels), 8 for signed 4-bit.
    unsigned: the blob is >= 0 and quantized to [0, 2^bits - 1] (levels 255) instead of [-127, 127].
    bits: width of the integer grid.
    mse_candidates: activation mse tries T = absmax * k / mse_candidates, k = 1..mse_candidates; the default 2048
        makes every bin edge of the default histogram a candidate (the search is O(bins + candidates) from
        prefix sums, so the whole range costs nothing; optima well below 25 % of absmax are common with outliers).
    weight_mse_candidates: weight mse tries T = max|w_row| * k / weight_mse_candidates per row (exact error of
        each candidate, O(levels log K) per row from the sorted row; 100 gives 1 % of max|w| resolution).
    kl_variant: see KLVariant.
    """

    percentile: float = 99.99
    kl_target_bins: int = 128
    unsigned: bool = False
    bits: int = 8
    mse_candidates: int = 2048
    weight_mse_candidates: int = 100
    kl_variant: KLVariant = KLVariant.NCNN

    def __post_init__(self) -> None:
        if not (isinstance(self.percentile, (int, float)) and 0.0 < self.percentile <= 100.0):
            raise ConfigError(f"calibrator option percentile must be in (0, 100], got {self.percentile!r}")
        if not (isinstance(self.bits, int) and 2 <= self.bits <= 16):
            raise ConfigError(f"calibrator option bits must be an integer in [2, 16], got {self.bits!r}")
        for name, least in (("kl_target_bins", 2), ("mse_candidates", 1), ("weight_mse_candidates", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"calibrator option {name} must be an integer >= {least}, got {value!r}")
        if not isinstance(self.kl_variant, KLVariant):
            try:
                object.__setattr__(self, "kl_variant", KLVariant(self.kl_variant))
            except ValueError:
                raise ConfigError(f"calibrator option kl_variant must be one of "
                                  f"{', '.join(v.value for v in KLVariant)}, got {self.kl_variant!r}") from None

    @property
    def levels(self) -> int:
        """Largest |q| of the activation grid: 127 (signed 8-bit) or 255 (unsigned 8-bit)."""
        return (1 << self.bits) - 1 if self.unsigned else (1 << (self.bits - 1)) - 1

    @property
    def weight_levels(self) -> int:
        """Largest |q| of the weight grid; weights are always signed."""
        return (1 << (self.bits - 1)) - 1

    @property
    def effective_kl_target_bins(self) -> int:
        return max(2, self.kl_target_bins * (self.levels + 1) // 128)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero, C's roundf (ncnn, TNN, TensorRT): sign(x) * floor(|x| + 0.5).

    Computed as trunc(x) + sign(x) * (|x - trunc(x)| >= 0.5), which is exact for every float: floor(|x| + 0.5)
    rounds 0.49999999999999994 up because the addition itself rounds.
    """
    x = np.asarray(x)
    t = np.trunc(x)
    return t + np.where(np.abs(x - t) >= 0.5, np.sign(x), 0.0).astype(t.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------
# Activation calibrators: Histogram -> threshold
# ---------------------------------------------------------------------------------------------------------

def _is_empty(hist: Histogram) -> bool:
    """True for an all-zero blob (absmax 0). A positive absmax with an empty histogram means the two passes saw
    different data: an error, not something to guess around."""
    if hist.absmax <= 0:
        return True
    if int(np.sum(hist.counts)) == 0:
        raise DataError(f"histogram is empty but absmax is {hist.absmax:g}: the histogram pass saw no non-zero "
                        f"value although the range pass did (were both passes fed the same data?)")
    return False


@ACTIVATION_CALIBRATORS.register("minmax")
def minmax_threshold(hist: Histogram, options: CalibratorOptions) -> float:
    """T = absmax: nothing clipped."""
    return MIN_THRESHOLD if _is_empty(hist) else float(hist.absmax)


@ACTIVATION_CALIBRATORS.register("percentile")
def percentile_threshold(hist: Histogram, options: CalibratorOptions) -> float:
    """T = the `options.percentile`-th percentile of |x| over all values, zeros included (a point mass at 0),
    linearly interpolated inside the bin where the cumulative count crosses the target. 0 when more than that
    fraction of the blob is exactly zero (then lifted to MIN_THRESHOLD by the validator)."""
    if _is_empty(hist):
        return MIN_THRESHOLD
    counts = np.asarray(hist.counts, dtype=np.float64)
    zeros = float(max(hist.zeros, 0))
    cdf = zeros + np.cumsum(counts)  # cumulative count at the upper edge of each bin
    total = cdf[-1]
    target = options.percentile / 100.0 * total
    if target <= zeros:
        return 0.0
    k = int(np.searchsorted(cdf, target, side="left"))
    k = min(k, hist.bins - 1)
    below = cdf[k] - counts[k]
    inside = (target - below) / counts[k] if counts[k] > 0 else 1.0
    return float((k + min(max(inside, 0.0), 1.0)) * hist.width)


@ACTIVATION_CALIBRATORS.register("mse")
def mse_threshold(hist: Histogram, options: CalibratorOptions) -> float:
    """argmin over T = absmax * k / mse_candidates of the expected squared quantization error.

    Each bin is represented by its centre c with its count n. Clipped (c > T): error (c - T)^2. Not clipped:
    the uniform rounding noise s^2 / 12 of a grid of step s = T / levels (Widrow's model). The exact error at the
    bin centre, (c - s * round(c / s))^2, was rejected: the centre's offset from the grid is an artefact of the
    binning, and it makes the objective jagged with spurious minima, while with 2048 bins one step spans
    16 T / absmax bins, so values are spread over each step for any T that is not tiny, where the uniform model
    is accurate. Exact zeros cost nothing
    (they quantize to 0). Computed for all candidates at once from suffix sums of n, n c, n c^2.
    """
    if _is_empty(hist):
        return MIN_THRESHOLD
    n = np.asarray(hist.counts, dtype=np.float64)
    c = hist.centres
    # suffix sums S[j] = sum over bins >= j; S[bins] = 0
    s0 = np.concatenate([np.cumsum(n[::-1])[::-1], [0.0]])
    s1 = np.concatenate([np.cumsum((n * c)[::-1])[::-1], [0.0]])
    s2 = np.concatenate([np.cumsum((n * c * c)[::-1])[::-1], [0.0]])
    t = hist.absmax * np.arange(1, options.mse_candidates + 1, dtype=np.float64) / options.mse_candidates
    first_clipped = np.searchsorted(c, t, side="right")  # bins with centre > T
    clip = np.maximum(s2[first_clipped] - 2.0 * t * s1[first_clipped] + t * t * s0[first_clipped], 0.0)
    step = t / options.levels
    error = clip + (s0[0] - s0[first_clipped]) * step * step / 12.0
    return float(t[int(np.argmin(error))])


@ACTIVATION_CALIBRATORS.register("kl")
def kl_threshold(hist: Histogram, options: CalibratorOptions) -> float:
    """ncnn2table's entropy calibration: threshold = (i + 0.5) * bin width for the i minimising KL(P || Q).

    See `ncnn_kl_divergences` for the algorithm and the two ncnn versions. ncnn uses 2048 bins and 128 target
    bins; here the histogram's own bin count and `options.effective_kl_target_bins` (256 when unsigned).
    """
    if _is_empty(hist):
        return MIN_THRESHOLD
    candidates, divergences = ncnn_kl_divergences(hist.counts, options.effective_kl_target_bins,
                                                  options.kl_variant)
    best = int(candidates[int(np.argmin(divergences))])  # first minimum, as ncnn's strict '<'
    return float((best + 0.5) * hist.width)


def ncnn_kl_divergences(counts: np.ndarray, target_bins: int = 128, variant: KLVariant = KLVariant.NCNN,
                        block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(candidate bin counts i in [target_bins, bins), KL(P_i || Q_i) for each) as ncnn2table computes them.

    Source: Tencent/ncnn tools/quantize/ncnn2table.cpp. Common to both versions, for each i:
      P: the first i normalised bins, with the mass of bins i..end added to bin i-1 (outliers clipped to T).
      Q: bins 0..i-1 of the normalised histogram (WITHOUT the outliers) merged into `target_bins` intervals of
         i / target_bins bins each, fractional bins shared in proportion to their overlap (the `left_scale`,
         `right_scale` terms), then spread back over the i bins.
    KLVariant.NCNN (`QuantNet::quantize_KL`): normalised = counts / sum; each merged value is divided by the
        interval length and spread over every bin of the interval; P and the expansion each start from
        kl_eps = 1e-4 per bin; KL = sum P log(P / Q) over the i bins (no renormalisation).
    KLVariant.NCNN_2019 (`QuantizeData::threshold_distribution`, `compute_kl_divergence`): normalised =
        (counts + 1e-5) / sum (ncnn starts every bin at 0.00001); each merged value is divided by the length of
        the interval's non-empty part and spread over its non-empty bins only; KL adds p log(p / q) where p > 0
        and q > 0, and 1 where p > 0 and q = 0.
    Interval edges j * i / target_bins are computed in integers (exact, as ncnn's float math is for bins < 2^24).
    Arithmetic is float64 (ncnn: float32), so two candidates whose KL differ by < ~1e-7 can rank differently
    from ncnn. Candidates are evaluated `block` at a time as 2-D arrays, no Python loop over bins;
    KL is evaluated as sum P log P (prefix sums) - sum P log Q (a matrix-vector product), the same sum.
    ncnn's 2019 histogram was float32 and stopped counting past 2^24 per bin; exact integer counts are used here.
    """
    counts = np.asarray(counts, dtype=np.float64).ravel()
    bins = counts.size
    if target_bins < 2 or bins <= target_bins:
        raise ConfigError(f"the KL search needs more histogram bins than target bins; got {bins} bins and "
                          f"{target_bins} target bins (raise the histogram bins or lower kl_target_bins)")
    legacy = variant is KLVariant.NCNN_2019
    dist = counts + 1e-5 if legacy else counts
    dist = dist / dist.sum()
    eps = 0.0 if legacy else 1e-4
    nonzero = (dist != 0).astype(np.float64)
    dist_pad = np.concatenate([dist, [0.0]])  # value right of the last edge, for edge positions == bins
    nz_pad = np.concatenate([nonzero, [0.0]])
    beyond = np.concatenate([np.cumsum(dist[::-1])[::-1], [0.0]])  # beyond[k] = mass of bins >= k

    candidates = np.arange(target_bins, bins)
    # KL = sum P log P - sum P log Q. P is the same row for every candidate except its last bin, so sum P log P is
    # a prefix sum plus one term, and sum P log Q is one matrix-vector product per block.
    p_row = dist + eps
    p_last = dist[candidates - 1] + beyond[candidates] + eps  # outliers folded into bin i-1
    prefix_plogp = np.concatenate([[0.0], np.cumsum(_xlogx(p_row))])
    plogp = prefix_plogp[candidates - 1] + _xlogx(p_last)
    j = np.arange(target_bins + 1)
    stride = bins + 1
    out = np.empty(candidates.size)
    for start in range(0, candidates.size, block):
        t = candidates[start:start + block]
        tt = t[:, None]
        rows = np.arange(t.size)
        width_bins = int(t[-1])
        # merge (ncnn's quantize_distribution): interval j = [x_j, x_j+1), x_j = j t / target. Its mass is
        # left_scale * bin[ceil(x_j) - 1] + bins ceil(x_j) .. floor(x_j+1) - 1 + right_scale * bin[floor(x_j+1)],
        # the whole bins summed directly (np.add.reduceat over one copy of the histogram per candidate), so a tiny
        # interval keeps its relative accuracy (a cumulative-sum difference would not).
        num = j[None, :] * tt  # x_j * target_bins, exact integers
        left_upper = -((-num[:, :-1]) // target_bins)  # ceil(x_j)
        right_lower = num[:, 1:] // target_bins  # floor(x_j+1)
        left_scale = (left_upper * target_bins - num[:, :-1]) / target_bins
        right_scale = (num[:, 1:] - right_lower * target_bins) / target_bins
        base = (rows * stride)[:, None]
        bounds = np.stack([left_upper + base, right_lower + base], axis=2).ravel()
        q_sum = _interval_mass(np.tile(dist_pad, t.size), bounds, left_upper, right_lower, left_scale,
                               right_scale, dist_pad)
        if legacy:
            length = _interval_mass(np.tile(nz_pad, t.size), bounds, left_upper, right_lower, left_scale,
                                    right_scale, nz_pad)  # non-empty length of each interval
        else:
            length = np.broadcast_to(tt / target_bins, q_sum.shape)
        value = np.divide(q_sum, length, out=np.zeros_like(q_sum), where=length > 0)
        value = np.concatenate([value, np.zeros((t.size, 1))], axis=1).ravel()  # (B * (target + 1)), 0 past end
        # expand: bin k = [k, k+1) meets interval a = floor(k target / t) over min(x_a+1 - k, 1) and, when x_a+1
        # falls inside it, interval a + 1 over the rest (intervals are >= 1 bin long). float64 holding integers
        # < 2^53: exact, and faster than integer division.
        k = np.arange(width_bins, dtype=np.float64)[None, :]
        tf = tt.astype(np.float64)
        a = np.minimum(np.floor(k * target_bins / tf), target_bins)
        overlap = np.minimum((a + 1.0) * tf - k * target_bins, target_bins) * (1.0 / target_bins)
        flat = a.astype(np.intp) + (rows * (target_bins + 1))[:, None]
        nxt = np.minimum(a + 1.0, target_bins).astype(np.intp) + (rows * (target_bins + 1))[:, None]
        q = value[flat] * overlap + value[nxt] * (1.0 - overlap)
        if legacy:
            q = q * nonzero[None, :width_bins]
        q = q + eps
        inside = k < tt
        log_q = np.log(np.where(inside & (q > 0), q, 1.0))
        p_log_q = log_q @ p_row[:width_bins]
        last = t - 1
        p_log_q += (p_last[start:start + t.size] - p_row[last]) * log_q[rows, last]
        kl = plogp[start:start + t.size] - p_log_q
        if legacy:
            # compute_kl_divergence adds 1 where P > 0 and Q = 0; only the outlier bin can be such (an empty bin
            # i-1 that received the outliers): every other bin with P > 0 is non-empty, so Q > 0 there
            empty_last = (q[rows, last] <= 0) & (p_last[start:start + t.size] > 0)
            kl = kl + np.where(empty_last, 1.0 - _xlogx(p_last[start:start + t.size]), 0.0)
        out[start:start + t.size] = kl
    return candidates, out


def _interval_mass(tiled: np.ndarray, bounds: np.ndarray, left_upper: np.ndarray, right_lower: np.ndarray,
                   left_scale: np.ndarray, right_scale: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per interval: left_scale * values[left_upper - 1] + sum(values[left_upper:right_lower]) + right_scale *
    values[right_lower], as ncnn's loops add them. `tiled` holds one copy of `values` per candidate, `bounds` the
    interleaved (left_upper, right_lower) + copy offset, so reduceat's even outputs are the whole-bin sums."""
    sums = np.add.reduceat(tiled, bounds)[0::2].reshape(left_upper.shape)
    whole = np.where(right_lower > left_upper, sums, 0.0)  # reduceat returns values[i] for an empty [i, i)
    left = left_scale * values[np.maximum(left_upper - 1, 0)]
    right = right_scale * values[right_lower]
    return whole + left + right


def _xlogx(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


@lru_cache(maxsize=None)
def aciq_alpha(levels: int) -> float:
    """alpha* (in units of sigma) minimising the expected squared error of a Gaussian clipped at alpha and
    rounded on a grid of step alpha / levels.

    Banner et al. (arXiv:1810.05723, analytical clipping, Gaussian case): for X ~ N(0, sigma^2) clipped to
    [-alpha, alpha], E[(X - Q(X))^2] ~= (alpha^2 + sigma^2) * erfc(alpha / (sqrt(2) sigma))
    - sqrt(2 / pi) * alpha * sigma * exp(-alpha^2 / (2 sigma^2)) + Delta^2 / 12. The paper's grid has 2^M bins
    over 2 alpha (Delta = alpha / 2^(M-1)) and gives 3.92 sigma for M = 8 (ncnn's `alpha_gaussian` table holds
    its values: 1.71, 2.15, 2.56, 2.94, 3.29, 3.62, 3.92 for 2..8 bits); here Delta = alpha / levels, the grid
    int8 engines use (127 levels: 3.9206; 255 levels: 4.2147). The clipping term is the same for |X| of a
    half-normal, so one alpha serves signed and non-negative blobs. Minimised on a 1e-2 grid over [0.1, 20],
    then a 1e-5 grid around the best point.
    """
    erfc = np.frompyfunc(math.erfc, 1, 1)

    def error(a: np.ndarray) -> np.ndarray:
        tail = erfc(a / math.sqrt(2.0)).astype(np.float64)
        return (a * a + 1.0) * tail - math.sqrt(2.0 / math.pi) * a * np.exp(-a * a / 2.0) + (a / levels) ** 2 / 12.0

    coarse = np.arange(0.1, 20.0, 1e-2)
    best = float(coarse[int(np.argmin(error(coarse)))])
    fine = np.arange(max(best - 2e-2, 1e-3), best + 2e-2, 1e-5)
    return float(fine[int(np.argmin(error(fine)))])


@ACTIVATION_CALIBRATORS.register("aciq")
def aciq_threshold(hist: Histogram, options: CalibratorOptions) -> float:
    """ACIQ (Banner et al.): T = aciq_alpha(levels) * sigma, clamped to absmax.

    sigma is the RMS of the non-zero values, sqrt(sumsq / (count - zeros)), not the std about the mean: the
    quantizer is symmetric about 0, so the second moment about 0 is what clipping sees; for a zero-mean Gaussian
    blob it is sigma, and for a post-ReLU blob (zeros excluded) it is the scale of the half-normal of the
    positive part, whose clipping error at alpha * sigma equals the two-sided Gaussian's. So signed and
    non-negative blobs use the same alpha for the same number of levels (127 signed, 255 unsigned).
    """
    if _is_empty(hist):
        return MIN_THRESHOLD
    nonzero = hist.count - hist.zeros
    if nonzero <= 0:
        nonzero = int(np.sum(hist.counts))
    sigma = math.sqrt(max(hist.sumsq, 0.0) / nonzero)
    return float(min(aciq_alpha(options.levels) * sigma, hist.absmax))


def calibrate_activation(name: str, hist: Histogram, options: CalibratorOptions) -> float:
    """Threshold of one blob (or channel) by the named calibrator, validated: finite, >= 0 and <= absmax, lifted to
    MIN_THRESHOLD. An all-zero blob (absmax 0) gets MIN_THRESHOLD whatever the calibrator."""
    fn = ACTIVATION_CALIBRATORS.get(name)
    absmax = float(hist.absmax)
    if not math.isfinite(absmax) or absmax < 0:
        raise DataError(f"activation calibrator {name!r}: the histogram's absmax is {absmax!r}; expected a finite "
                        f"value >= 0")
    value = fn(hist, options)
    try:
        threshold = float(value)
    except (TypeError, ValueError) as e:
        raise CalibratorError(f"activation calibrator {name!r} returned {value!r}; expected a float") from e
    if not math.isfinite(threshold) or threshold < 0:
        raise CalibratorError(f"activation calibrator {name!r} returned {threshold!r} for a blob with absmax "
                              f"{absmax:g}; expected a finite threshold >= 0")
    if absmax == 0:
        return MIN_THRESHOLD
    if threshold > absmax * (1 + 1e-9):
        raise CalibratorError(f"activation calibrator {name!r} returned {threshold:g}, above the blob's absmax "
                              f"{absmax:g}; a threshold never exceeds the largest value seen")
    return max(min(threshold, absmax), MIN_THRESHOLD)


# ---------------------------------------------------------------------------------------------------------
# Weight calibrators: (C, K) matrix -> (C,) thresholds
# ---------------------------------------------------------------------------------------------------------

@WEIGHT_CALIBRATORS.register("minmax")
def minmax_weights(w: np.ndarray, options: CalibratorOptions) -> np.ndarray:
    """max |w| per row (ncnn2table's weight scales, TNN's MIN_MAX)."""
    return np.maximum(np.abs(w).max(axis=1).astype(np.float64), MIN_THRESHOLD)


class _SortedRows(NamedTuple):
    """|w| sorted per row, flattened with row offsets so that one searchsorted serves every row."""

    keys: np.ndarray  # (C*K,) |w| / scale + 2 * row: row r occupies [2r, 2r + 1]
    prefix: np.ndarray  # (C, K+1) prefix sums of the sorted |w| of each row
    scale: np.ndarray  # (C,) max|w| of the row (1 for all-zero rows)
    sumsq: np.ndarray  # (C,) sum of w^2 per row
    k: int


def _sort_rows(w: np.ndarray) -> _SortedRows:
    absw = np.abs(np.asarray(w, dtype=np.float64))
    rowmax = absw.max(axis=1)
    scale = np.where(rowmax > 0, rowmax, 1.0)
    ordered = np.sort(absw, axis=1)
    prefix = np.concatenate([np.zeros((absw.shape[0], 1)), np.cumsum(ordered, axis=1)], axis=1)
    offsets = 2.0 * np.arange(absw.shape[0])
    keys = (ordered / scale[:, None] + offsets[:, None]).ravel()
    return _SortedRows(keys, prefix, scale, np.einsum("ij,ij->i", absw, absw), absw.shape[1])


def _grid_sums(rows: _SortedRows, index: np.ndarray, step: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum |w| q, sum q^2) per row `index` for q = min(round_half_away(|w| / step), levels), step > 0.

    q >= m exactly when |w| >= (m - 0.5) step (half away from zero), so with sorted rows both sums follow from one
    searchsorted per boundary: sum q^2 = sum_m (2m - 1) #{q >= m}, sum |w| q = sum_m (sum of |w| with q >= m).
    O(levels log K) per row instead of O(K); boundaries are resolved to ~1e-12 of max|w| (the row offsets).
    """
    m = np.arange(1, levels + 1, dtype=np.float64)
    bounds = (m - 0.5)[None, :] * step[:, None] / rows.scale[index, None]
    base = 2.0 * index[:, None]
    queries = np.minimum(bounds, 1.5) + base  # past the row's largest key, never into the next row
    pos = np.searchsorted(rows.keys, queries.ravel(), side="left").reshape(queries.shape)
    pos = np.clip(pos - index[:, None] * rows.k, 0, rows.k)
    at_least = rows.k - pos  # (R, levels): elements with q >= m
    sum_qq = at_least @ (2.0 * m - 1.0)
    total = rows.prefix[index, rows.k]
    flat = rows.prefix.ravel()[index[:, None] * (rows.k + 1) + pos]
    sum_wq = (total[:, None] - flat).sum(axis=1)
    return sum_wq, sum_qq


# Rows are independent: work on blocks of about this many weights (a few float64 copies each), whatever the layer.
_BLOCK_ELEMENTS = 1 << 22


def _by_row_blocks(fn: Callable[..., np.ndarray], w: np.ndarray, *args) -> np.ndarray:
    w = np.asarray(w)
    step = max(1, _BLOCK_ELEMENTS // max(w.shape[1], 1))
    return np.concatenate([fn(w[i:i + step], *args) for i in range(0, w.shape[0], step)])


@WEIGHT_CALIBRATORS.register("admm")
def admm_weights(w: np.ndarray, options: CalibratorOptions, max_iter: int = 1000) -> np.ndarray:
    """TNN's ADMM weight quantization: alternate q = clip(roundf(w / (alpha + 1e-9)), -L, L) and the least-squares
    step alpha = sum(w q) / (sum(q q) + 1e-9) per row; T = alpha * L.

    Source: Tencent/TNN tools/quantization/calibration.cc. `InitWeightScaleADMM`: alpha_0 = max|w| / (L * 1.25)
    for more than 2 bits (the row's mean |w| otherwise); `UpdateQuantizedWeightsADMM`, `UpdateAlphaADMM`; the loop
    in `Calibration::QuantizeConvParams` runs exactly 1000 iterations with 8 bits (no convergence test). Here a
    row stops as soon as alpha repeats bit for bit: the iteration is deterministic, so every further step would
    reproduce the same alpha and the result equals TNN's 1000th. It typically takes a few hundred steps (alpha
    creeps up from its deliberately small start), so each step is computed from the sorted row (`_grid_sums`), not
    element by element. alpha is float32 as in TNN; the sums are float64 (TNN: float32, sequential) and an element
    is rounded by comparing |w| with (m - 0.5)(alpha + 1e-9) rather than after a float32 division, so alpha can
    differ from TNN's in its last bits. w q = |w| |q| and q^2 = |q|^2, so only |w| matters.
    """
    return _by_row_blocks(_admm_block, w, options, max_iter)


def _admm_block(w: np.ndarray, options: CalibratorOptions, max_iter: int) -> np.ndarray:
    levels = options.weight_levels
    w32 = np.asarray(w, dtype=np.float32)
    absw = np.abs(w32)
    if options.bits > 2:
        alpha = (absw.max(axis=1) / np.float32(levels * 1.25)).astype(np.float32)
    else:
        alpha = absw.mean(axis=1, dtype=np.float64).astype(np.float32)
    rows = _sort_rows(w32)
    eps = np.float32(1e-9)
    active = np.flatnonzero(absw.max(axis=1) > 0)  # all-zero rows stay at alpha = 0, as in TNN
    for _ in range(max_iter):
        if active.size == 0:
            break
        step = (alpha[active] + eps).astype(np.float64)
        sum_wq, sum_qq = _grid_sums(rows, active, step, levels)
        updated = (sum_wq / (sum_qq + 1e-9)).astype(np.float32)
        changed = updated != alpha[active]
        alpha[active] = updated
        active = active[changed]
    return np.maximum(alpha.astype(np.float64) * levels, MIN_THRESHOLD)  # all-zero rows end at alpha = 0


@WEIGHT_CALIBRATORS.register("mse")
def mse_weights(w: np.ndarray, options: CalibratorOptions) -> np.ndarray:
    """Per row, argmin over T = max|w| * k / weight_mse_candidates (k = 1..n) of the exact mean squared error
    mean((w - s * clip(round_half_away(w / s), -L, L))^2), s = T / L.

    The error of a candidate is sum w^2 - 2 s sum |w| q + s^2 sum q^2 with the two sums from the sorted rows
    (`_grid_sums`), the same value as quantizing every element, at O(L log K) per row. T = max|w| (min-max) is a
    candidate and ties keep the larger T, so the result never quantizes worse than min-max.
    """
    return _by_row_blocks(_mse_block, w, options)


def _mse_block(w: np.ndarray, options: CalibratorOptions) -> np.ndarray:
    levels = options.weight_levels
    rows = _sort_rows(w)
    rowmax = np.abs(np.asarray(w, dtype=np.float64)).max(axis=1)
    live = np.flatnonzero(rowmax > 0)
    n = options.weight_mse_candidates
    best_err = np.full(live.size, np.inf)
    best_t = rowmax[live].copy()
    for k in range(n, 0, -1):  # from min-max down: ties keep the larger threshold
        t = rowmax[live] * (k / n)
        s = t / levels
        sum_wq, sum_qq = _grid_sums(rows, live, s, levels)
        err = rows.sumsq[live] - 2.0 * s * sum_wq + s * s * sum_qq
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_t = np.where(better, t, best_t)
    out = np.full(rowmax.shape, MIN_THRESHOLD)
    out[live] = best_t
    return out


def calibrate_weights(name: str, w2d: np.ndarray, options: CalibratorOptions) -> np.ndarray:
    """Per-row thresholds of an (C, K) weight matrix by the named calibrator, validated: shape (C,), finite,
    >= 0, lifted to MIN_THRESHOLD (all-zero rows). Pass one row, w.reshape(1, -1), for a per-tensor threshold."""
    fn = WEIGHT_CALIBRATORS.get(name)
    w = np.asarray(w2d)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise DataError(f"weight calibrator {name!r}: expected a non-empty (channels, K) matrix, got shape "
                        f"{w.shape}")
    if not np.issubdtype(w.dtype, np.floating) or not np.isfinite(w).all():
        raise DataError(f"weight calibrator {name!r}: weights must be finite floats (dtype {w.dtype}, "
                        f"{int(np.size(w) - np.isfinite(w).sum()) if np.issubdtype(w.dtype, np.floating) else '?'} "
                        f"non-finite)")
    value = fn(w, options)
    thresholds = np.asarray(value, dtype=np.float64)
    if thresholds.shape != (w.shape[0],):
        raise CalibratorError(f"weight calibrator {name!r} returned shape {thresholds.shape}; expected "
                              f"({w.shape[0]},), one threshold per output channel")
    bad = ~np.isfinite(thresholds) | (thresholds < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CalibratorError(f"weight calibrator {name!r} returned {thresholds[i]!r} for channel {i} "
                              f"({int(bad.sum())} bad values); expected finite thresholds > 0")
    return np.maximum(thresholds, MIN_THRESHOLD)
