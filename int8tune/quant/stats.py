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


class StatsCollector:
    """Two-pass collector for a set of values. Feed every batch to `observe_range`, then every batch again to
    `observe_histogram`; `statistics` holds the results."""

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
        s = self.statistics[value]
        x = np.asarray(array, dtype=np.float32)
        if x.size == 0:
            return
        if not np.isfinite(x).all():
            raise DataError(f"blob {value!r} holds NaN or inf on the calibration data; the fp32 model itself "
                            f"overflows on these inputs (check the preprocessing)")
        lo, hi = float(x.min()), float(x.max())
        s.absmax = max(s.absmax, abs(lo), abs(hi))
        s.minimum = min(s.minimum, lo)
        s.maximum = max(s.maximum, hi)
        s.count += int(x.size)
        s.zeros += int(x.size - np.count_nonzero(x))
        s.sum += float(x.sum(dtype=np.float64))  # float64 accumulation without a float64 copy
        s.sumsq += float(np.square(x).sum(dtype=np.float64))
        if self.per_channel and x.ndim > self.channel_axis:
            xc = _channels_last(x.astype(np.float64), self.channel_axis)
            cabs = np.abs(xc).max(axis=1)
            if s.channel_absmax is None:
                c = xc.shape[0]
                s.channel_absmax = np.zeros(c)
                s.channel_count = np.zeros(c, dtype=np.int64)
                s.channel_zeros = np.zeros(c, dtype=np.int64)
                s.channel_sum = np.zeros(c)
                s.channel_sumsq = np.zeros(c)
            s.channel_absmax = np.maximum(s.channel_absmax, cabs)
            s.channel_count += xc.shape[1]
            s.channel_zeros += xc.shape[1] - np.count_nonzero(xc, axis=1)
            s.channel_sum += xc.sum(axis=1)
            s.channel_sumsq += (xc * xc).sum(axis=1)

    # -- pass 2 --------------------------------------------------------------------------------------
    def observe_histogram(self, value: str, array: np.ndarray) -> None:
        s = self.statistics[value]
        a = np.abs(np.asarray(array, dtype=np.float32))
        if s.histogram is None:
            s.histogram = np.zeros(self.bins, dtype=np.int64)
        s.histogram += histogram_of(a.ravel(), s.absmax, self.bins)
        if self.per_channel and a.ndim > self.channel_axis:
            ac = _channels_last(a, self.channel_axis)
            if s.channel_histograms is None:
                s.channel_histograms = np.zeros((ac.shape[0], self.bins), dtype=np.int64)
            for c in range(ac.shape[0]):
                s.channel_histograms[c] += histogram_of(ac[c], float(s.channel_absmax[c]), self.bins)


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
