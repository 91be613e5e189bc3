"""Streaming blob statistics: pass 1 absmax (and min, max, moments), pass 2 a fixed-bin histogram of |x|.

As ncnn's ncnn2table does: the histogram spans [0, absmax] in `bins` equal bins (2048 by default), zeros are
skipped (post-ReLU blobs are mostly zeros, which say nothing about where to clip), a value lands in bin
min(int(|x| / absmax * bins), bins - 1). Memory is one histogram per blob (per channel with per-channel
activations), independent of the number of images. Every calibrator is a pure function of a `Histogram`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

DEFAULT_BINS = 2048
# A blob that is all zero on the calibration data still needs a positive threshold; any value gives q = 0
# for it, and a tiny one would clip harder than anything seen. 1e-8 is the floor every calibrator respects.
MIN_THRESHOLD = 1e-8


@dataclass(frozen=True)
class Histogram:
    """|x| histogram of one blob (or one channel): counts[i] covers [i*width, (i+1)*width)."""

    counts: np.ndarray  # int64 (bins,), zeros not counted
    absmax: float
    count: int  # all elements seen, zeros included
    zeros: int
    sum: float  # of x
    sumsq: float  # of x^2

    @property
    def bins(self) -> int:
        return int(self.counts.size)

    @property
    def width(self) -> float:
        return self.absmax / self.bins if self.absmax > 0 else 0.0

    @property
    def centres(self) -> np.ndarray:
        return (np.arange(self.bins) + 0.5) * self.width

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        if not self.count:
            return 0.0
        return float(np.sqrt(max(self.sumsq / self.count - self.mean ** 2, 0.0)))


@dataclass
class BlobStatistics:
    """Everything the calibrators need about one blob, from the two passes."""

    value: str
    channels: int
    absmax: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf
    count: int = 0
    zeros: int = 0
    sum: float = 0.0
    sumsq: float = 0.0
    histogram: np.ndarray | None = None  # (bins,)
    channel_absmax: np.ndarray | None = None  # (C,)
    channel_histograms: np.ndarray | None = None  # (C, bins)
    channel_count: np.ndarray | None = None
    channel_zeros: np.ndarray | None = None
    channel_sum: np.ndarray | None = None
    channel_sumsq: np.ndarray | None = None

    @property
    def non_negative(self) -> bool:
        return self.count > 0 and self.minimum >= 0.0

    def tensor_histogram(self) -> Histogram:
        if self.histogram is None:
            raise DataError(f"blob {self.value!r}: the histogram pass has not run")
        return Histogram(self.histogram, self.absmax, self.count, self.zeros, self.sum, self.sumsq)

    def channel_histogram(self, c: int) -> Histogram:
        if self.channel_histograms is None:
            raise DataError(f"blob {self.value!r}: per-channel histograms were not collected")
        return Histogram(self.channel_histograms[c], float(self.channel_absmax[c]), int(self.channel_count[c]),
                         int(self.channel_zeros[c]), float(self.channel_sum[c]), float(self.channel_sumsq[c]))


def _channels_last(array: np.ndarray, axis: int) -> np.ndarray:
    """(C, rest) view for per-channel reductions."""
    return np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)


@dataclass(frozen=True)
class RangePart:
    """Pass 1 over some images of one blob: what `StatsCollector.add_range` folds into its statistics. Parts of
    disjoint images merge exactly when folded in image order (max and min; integer counts; the float64 sums are
    added in the same order a single process adds them)."""

    absmax: float
    minimum: float
    maximum: float
    count: int
    zeros: int
    sum: float
    sumsq: float
    channel_absmax: np.ndarray | None = None  # (C,) float64, with per-channel statistics
    channel_count: int = 0  # elements per channel
    channel_zeros: np.ndarray | None = None  # (C,) int64
    channel_sum: np.ndarray | None = None
    channel_sumsq: np.ndarray | None = None


def range_part(array: np.ndarray, value: str, per_channel: bool = False, channel_axis: int = 1) -> RangePart | None:
    """Pass 1 of one array of blob `value` (None when it is empty)."""
    x = np.asarray(array, dtype=np.float32)
    if x.size == 0:
        return None
    if not np.isfinite(x).all():
        raise DataError(f"blob {value!r} holds NaN or inf on the calibration data; the fp32 model itself "
                        f"overflows on these inputs (check the preprocessing)")
    lo, hi = float(x.min()), float(x.max())
    part = dict(absmax=max(abs(lo), abs(hi)), minimum=lo, maximum=hi, count=int(x.size),
                zeros=int(x.size - np.count_nonzero(x)),
                sum=float(x.sum(dtype=np.float64)),  # float64 accumulation without a float64 copy
                sumsq=float(np.square(x).sum(dtype=np.float64)))
    if per_channel and x.ndim > channel_axis:
        xc = _channels_last(x.astype(np.float64), channel_axis)
        part.update(channel_absmax=np.abs(xc).max(axis=1), channel_count=xc.shape[1],
                    channel_zeros=xc.shape[1] - np.count_nonzero(xc, axis=1), channel_sum=xc.sum(axis=1),
                    channel_sumsq=(xc * xc).sum(axis=1))
    return RangePart(**part)


@dataclass(frozen=True)
class HistogramPart:
    """Pass 2 over some images of one blob: integer counts, which add up exactly in any order."""

    counts: np.ndarray  # int64 (bins,)
    channel_counts: np.ndarray | None = None  # int64 (C, bins)

    def __add__(self, other: "HistogramPart") -> "HistogramPart":
        channels = None if self.channel_counts is None else self.channel_counts + other.channel_counts
        return HistogramPart(self.counts + other.counts, channels)


def histogram_part(array: np.ndarray, absmax: float, bins: int, channel_absmax: np.ndarray | None = None,
                   channel_axis: int = 1) -> HistogramPart:
    """Pass 2 of one array: |x| counted in `bins` bins over [0, absmax] (and per channel over [0, channel_absmax[c]]
    when given), the absmax being pass 1's over every image."""
    a = np.abs(np.asarray(array, dtype=np.float32))
    counts = histogram_of(a.ravel(), absmax, bins)
    channels = None
    if channel_absmax is not None and a.ndim > channel_axis:
        ac = _channels_last(a, channel_axis)
        channels = np.stack([histogram_of(ac[c], float(channel_absmax[c]), bins) for c in range(ac.shape[0])])
    return HistogramPart(counts, channels)


class StatsCollector:
    """Two-pass collector for a set of values. Feed every batch to `observe_range`, then every batch again to
    `observe_histogram`; `statistics` holds the results. The same folds take parts computed elsewhere
    (`add_range`, `add_histogram`: the workers of an executor), with the same result."""

    def __init__(self, values: list[str], channels: dict[str, int], bins: int = DEFAULT_BINS,
                 per_channel: bool = False, channel_axis: int = 1) -> None:
        if bins < 2:
            raise ValueError("a histogram needs at least 2 bins")
        self.bins = bins
        self.per_channel = per_channel
        self.channel_axis = channel_axis
        self.statistics = {v: BlobStatistics(v, channels[v]) for v in values}

    # -- pass 1 --------------------------------------------------------------------------------------
    def observe_range(self, value: str, array: np.ndarray) -> None:
        part = range_part(array, value, self.per_channel, self.channel_axis)
        if part is not None:
            self.add_range(value, part)

    def add_range(self, value: str, part: RangePart) -> None:
        s = self.statistics[value]
        s.absmax = max(s.absmax, part.absmax)
        s.minimum = min(s.minimum, part.minimum)
        s.maximum = max(s.maximum, part.maximum)
        s.count += part.count
        s.zeros += part.zeros
        s.sum += part.sum
        s.sumsq += part.sumsq
        if part.channel_absmax is not None:
            if s.channel_absmax is None:
                c = part.channel_absmax.size
                s.channel_absmax = np.zeros(c)
                s.channel_count = np.zeros(c, dtype=np.int64)
                s.channel_zeros = np.zeros(c, dtype=np.int64)
                s.channel_sum = np.zeros(c)
                s.channel_sumsq = np.zeros(c)
            s.channel_absmax = np.maximum(s.channel_absmax, part.channel_absmax)
            s.channel_count += part.channel_count
            s.channel_zeros += part.channel_zeros
            s.channel_sum += part.channel_sum
            s.channel_sumsq += part.channel_sumsq

    # -- pass 2 --------------------------------------------------------------------------------------
    def observe_histogram(self, value: str, array: np.ndarray) -> None:
        s = self.statistics[value]
        channel_absmax = s.channel_absmax if self.per_channel else None
        self.add_histogram(value, histogram_part(array, s.absmax, self.bins, channel_absmax, self.channel_axis))

    def add_histogram(self, value: str, part: HistogramPart) -> None:
        s = self.statistics[value]
        if s.histogram is None:
            s.histogram = np.zeros(self.bins, dtype=np.int64)
        s.histogram += part.counts
        if part.channel_counts is not None:
            if s.channel_histograms is None:
                s.channel_histograms = np.zeros(part.channel_counts.shape, dtype=np.int64)
            s.channel_histograms += part.channel_counts


def histogram_of(abs_values: np.ndarray, absmax: float, bins: int) -> np.ndarray:
    """Counts of non-zero |x| in `bins` equal bins over [0, absmax] (ncnn's binning)."""
    zeros = abs_values.size - np.count_nonzero(abs_values)
    if zeros == abs_values.size or absmax <= 0:
        return np.zeros(bins, dtype=np.int64)
    # Bin index in float32 as ncnn computes it (in place, one temporary). Values beyond absmax (never, within one
    # run) land in the last bin like ncnn's clamp. Zeros fall in bin 0 and are taken out afterwards: cheaper than
    # selecting the non-zeros first.
    idx = np.multiply(abs_values.ravel(), np.float32(bins / absmax), dtype=np.float32)
    idx = np.minimum(idx.astype(np.int32), bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.int64)
    counts[0] -= zeros
    return counts
