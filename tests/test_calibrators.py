"""Calibrators on synthetic distributions with known answers, and ncnn's KL against a loop-by-loop transcription."""

from __future__ import annotations

import math

import numpy as np
import pytest

from int8tune.errors import ConfigError, RegistryError
from int8tune.quant.calibrators import (
    ACTIVATION_CALIBRATORS,
    WEIGHT_CALIBRATORS,
    CalibratorError,
    CalibratorOptions,
    KLVariant,
    aciq_alpha,
    admm_weights,
    calibrate_activation,
    calibrate_weights,
    ncnn_kl_divergences,
    round_half_away,
)
from int8tune.quant.stats import DEFAULT_BINS, MIN_THRESHOLD, Histogram, histogram_of

OPTIONS = CalibratorOptions()


def hist_of(x: np.ndarray, bins: int = DEFAULT_BINS) -> Histogram:
    """The Histogram stats.StatsCollector would build from one batch."""
    x = np.asarray(x, dtype=np.float64).ravel()
    absmax = float(np.abs(x).max()) if x.size else 0.0
    return Histogram(histogram_of(np.abs(x), absmax, bins), absmax, int(x.size), int(x.size - np.count_nonzero(x)),
                     float(x.sum()), float(np.dot(x, x)))


@pytest.fixture(scope="module")
def gaussian_with_outliers() -> Histogram:
    rng = np.random.default_rng(0)
    return hist_of(np.concatenate([rng.standard_normal(1_000_000), np.full(10, 50.0)]))


# --- ncnn's KL, transcribed loop by loop from tools/quantize/ncnn2table.cpp (slow, obviously right) ---------

def ncnn_quantize_kl_loops(counts, target_bin):
    """QuantNet::quantize_KL (ncnn 2021+): the KL of every threshold, in ncnn's order of operations."""
    num_bins = len(counts)
    total = float(sum(counts))
    normed = [c / total for c in counts]
    kls = []
    for threshold in range(target_bin, num_bins):
        kl_eps = 0.0001
        clip = [kl_eps] * threshold
        for j in range(threshold):
            clip[j] += normed[j]
        for j in range(threshold, num_bins):
            clip[threshold - 1] += normed[j]
        num_per_bin = threshold / target_bin
        quant = [0.0] * target_bin
        end = num_per_bin
        right_lower = math.floor(end)
        right_scale = end - right_lower
        if right_scale > 0:
            quant[0] += right_scale * normed[right_lower]
        for k in range(right_lower):
            quant[0] += normed[k]
        quant[0] /= right_lower + right_scale
        for j in range(1, target_bin - 1):
            start, end = j * num_per_bin, (j + 1) * num_per_bin
            left_upper = math.ceil(start)
            left_scale = left_upper - start
            right_lower = math.floor(end)
            right_scale = end - right_lower
            if left_scale > 0:
                quant[j] += left_scale * normed[left_upper - 1]
            if right_scale > 0:
                quant[j] += right_scale * normed[right_lower]
            for k in range(left_upper, right_lower):
                quant[j] += normed[k]
            quant[j] /= right_lower - left_upper + left_scale + right_scale
        start = threshold - num_per_bin
        left_upper = math.ceil(start)
        left_scale = left_upper - start
        if left_scale > 0:
            quant[target_bin - 1] += left_scale * normed[left_upper - 1]
        for k in range(left_upper, threshold):
            quant[target_bin - 1] += normed[k]
        quant[target_bin - 1] /= threshold - left_upper + left_scale
        expand = [kl_eps] * threshold
        end = num_per_bin
        right_lower = math.floor(end)
        right_scale = end - right_lower
        if right_scale > 0:
            expand[right_lower] += right_scale * quant[0]
        for k in range(right_lower):
            expand[k] += quant[0]
        for j in range(1, target_bin - 1):
            start, end = j * num_per_bin, (j + 1) * num_per_bin
            left_upper = math.ceil(start)
            left_scale = left_upper - start
            right_lower = math.floor(end)
            right_scale = end - right_lower
            if left_scale > 0:
                expand[left_upper - 1] += left_scale * quant[j]
            if right_scale > 0:
                expand[right_lower] += right_scale * quant[j]
            for k in range(left_upper, right_lower):
                expand[k] += quant[j]
        start = threshold - num_per_bin
        left_upper = math.ceil(start)
        left_scale = left_upper - start
        if left_scale > 0:
            expand[left_upper - 1] += left_scale * quant[target_bin - 1]
        for k in range(left_upper, threshold):
            expand[k] += quant[target_bin - 1]
        kls.append(sum(a * math.log(a / b) for a, b in zip(clip, expand)))
    return kls


def ncnn_threshold_distribution_loops(counts, target_bin):
    """QuantizeData::threshold_distribution + compute_kl_divergence (ncnn 2019-2020), with the histogram
    started at 0.00001 per bin and normalised (normalize_histogram) as ncnn did."""
    hist = [0.00001 + c for c in counts]
    total = sum(hist)
    distribution = [h / total for h in hist]
    length = len(distribution)
    threshold_sum = sum(distribution[target_bin:])
    kls = []
    for threshold in range(target_bin, length):
        t_distribution = distribution[:threshold]
        t_distribution[threshold - 1] += threshold_sum
        threshold_sum -= distribution[threshold]
        quant = [0.0] * target_bin
        num_per_bin = threshold / target_bin
        for i in range(target_bin):
            start = i * num_per_bin
            end = start + num_per_bin
            left_upper = math.ceil(start)
            if left_upper > start:
                quant[i] += (left_upper - start) * distribution[left_upper - 1]
            right_lower = math.floor(end)
            if right_lower < end:
                quant[i] += (end - right_lower) * distribution[right_lower]
            for j in range(left_upper, right_lower):
                quant[i] += distribution[j]
        expand = [0.0] * threshold
        for i in range(target_bin):
            start = i * num_per_bin
            end = start + num_per_bin
            count = 0.0
            left_upper = math.ceil(start)
            left_scale = 0.0
            if left_upper > start:
                left_scale = left_upper - start
                if distribution[left_upper - 1] != 0:
                    count += left_scale
            right_lower = math.floor(end)
            right_scale = 0.0
            if right_lower < end:
                right_scale = end - right_lower
                if distribution[right_lower] != 0:
                    count += right_scale
            for j in range(left_upper, right_lower):
                if distribution[j] != 0:
                    count += 1
            expand_value = quant[i] / count
            if left_upper > start and distribution[left_upper - 1] != 0:
                expand[left_upper - 1] += expand_value * left_scale
            if right_lower < end and distribution[right_lower] != 0:
                expand[right_lower] += expand_value * right_scale
            for j in range(left_upper, right_lower):
                if distribution[j] != 0:
                    expand[j] += expand_value
        kl = 0.0
        for a, b in zip(t_distribution, expand):
            if a != 0:
                kl += 1 if b == 0 else a * math.log(a / b)
        kls.append(kl)
    return kls


# A hand-built histogram: empty bins, a bump, a gap and a few outliers (non-integer bins per target bin).
HAND_BUILT = np.array([0, 40, 95, 120, 130, 90, 0, 70, 52, 33, 20, 0, 0, 14, 9, 6, 4, 0, 3, 2, 0, 1, 1, 0,
                       0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=np.int64)


@pytest.mark.parametrize("variant, loops", [(KLVariant.NCNN, ncnn_quantize_kl_loops),
                                            (KLVariant.NCNN_2019, ncnn_threshold_distribution_loops)])
@pytest.mark.parametrize("target", [8, 5])
def test_kl_matches_ncnn_loops_on_hand_built_histogram(variant, loops, target):
    candidates, kls = ncnn_kl_divergences(HAND_BUILT, target, variant)
    expected = loops(HAND_BUILT.tolist(), target)
    assert list(candidates) == list(range(target, HAND_BUILT.size))
    np.testing.assert_allclose(kls, expected, rtol=1e-9, atol=1e-15)
    hist = Histogram(HAND_BUILT, 4.8, int(HAND_BUILT.sum()), 0, 0.0, 0.0)
    t = calibrate_activation("kl", hist, CalibratorOptions(kl_target_bins=target, kl_variant=variant))
    best = target + int(np.argmin(expected))
    assert t == pytest.approx((best + 0.5) * 0.1)


@pytest.mark.parametrize("variant, loops", [(KLVariant.NCNN, ncnn_quantize_kl_loops),
                                            (KLVariant.NCNN_2019, ncnn_threshold_distribution_loops)])
def test_kl_matches_ncnn_loops_on_gaussian_histogram(variant, loops, gaussian_with_outliers):
    counts = gaussian_with_outliers.counts.reshape(256, 8).sum(axis=1)  # 256 bins, 32 targets: fast loops
    _, kls = ncnn_kl_divergences(counts, 32, variant)
    expected = loops(counts.tolist(), 32)
    # KL values near the minimum are differences of nearly equal terms: agree to ~1e-11 absolute
    np.testing.assert_allclose(kls, expected, rtol=1e-9, atol=1e-10)
    assert int(np.argmin(kls)) == int(np.argmin(expected))


def test_kl_matches_ncnn_loops_at_full_size():
    # ncnn's own sizes (2048 bins, 128 targets) on a sparse, long-tailed blob: many empty bins, both variants.
    x = np.maximum(np.random.default_rng(13).standard_normal(200_000), 0.0) ** 3
    counts = hist_of(x).counts
    for variant, loops in ((KLVariant.NCNN, ncnn_quantize_kl_loops),
                           (KLVariant.NCNN_2019, ncnn_threshold_distribution_loops)):
        _, kls = ncnn_kl_divergences(counts, 128, variant)
        expected = loops(counts.tolist(), 128)
        np.testing.assert_allclose(kls, expected, rtol=1e-9, atol=1e-11)
        assert int(np.argmin(kls)) == int(np.argmin(expected))


def test_kl_on_2048_bins_runs(gaussian_with_outliers):
    # No timing assertion: the speed is measured by benchmarks, this checks the full-size path end to end.
    for variant in KLVariant:
        t = calibrate_activation("kl", gaussian_with_outliers, CalibratorOptions(kl_variant=variant))
        assert gaussian_with_outliers.bins == 2048
        assert 2.5 < t < 10.0


def test_kl_needs_more_bins_than_targets():
    hist = Histogram(np.ones(100, dtype=np.int64), 1.0, 100, 0, 50.0, 33.0)
    with pytest.raises(ConfigError, match="target bins"):
        calibrate_activation("kl", hist, OPTIONS)


# --- known answers -------------------------------------------------------------------------------------------

def test_minmax_is_absmax():
    x = np.random.default_rng(1).uniform(-3.0, 2.0, 10_000)
    assert calibrate_activation("minmax", hist_of(x), OPTIONS) == pytest.approx(np.abs(x).max())


def test_percentile_of_uniform():
    x = np.random.default_rng(2).uniform(0.0, 1.0, 1_000_000)
    hist = hist_of(x)
    assert calibrate_activation("percentile", hist, CalibratorOptions(percentile=99.0)) == pytest.approx(0.99,
                                                                                                          abs=2e-3)
    assert calibrate_activation("percentile", hist, CalibratorOptions(percentile=50.0)) == pytest.approx(0.5, abs=2e-3)
    assert calibrate_activation("percentile", hist, CalibratorOptions(percentile=100.0)) == pytest.approx(hist.absmax)


def test_percentile_counts_zeros():
    # Half the values exactly zero: the 99th percentile of all values is the 98th of the non-zero ones.
    x = np.random.default_rng(3).uniform(0.0, 1.0, 500_000)
    hist = hist_of(np.concatenate([x, np.zeros(500_000)]))
    assert calibrate_activation("percentile", hist, CalibratorOptions(percentile=99.0)) == pytest.approx(0.98,
                                                                                                          abs=2e-3)
    # more zeros than the percentile: nothing but zeros below it, so the floor threshold
    assert calibrate_activation("percentile", hist, CalibratorOptions(percentile=40.0)) == MIN_THRESHOLD


def test_mse_keeps_almost_everything_of_a_uniform():
    x = np.random.default_rng(4).uniform(-1.0, 1.0, 200_000)
    t = calibrate_activation("mse", hist_of(x), OPTIONS)
    assert 0.99 < t <= np.abs(x).max()


@pytest.mark.parametrize("name", ["kl", "percentile", "aciq"])
def test_outliers_are_clipped(name, gaussian_with_outliers):
    t = calibrate_activation(name, gaussian_with_outliers, OPTIONS)
    assert 2.5 < t < 10.0 < gaussian_with_outliers.absmax


def test_mse_clips_outliers_where_the_model_says(gaussian_with_outliers):
    # 1e6 N(0,1) values and 10 at 50: expected error ~ 1e6 (T/127)^2/12 + 10 (50 - T)^2, minimal at
    # T = 1000 / (20 + 2e6 / (12 * 127^2)) = 32.97. Ten 50-sigma values are worth keeping partly under MSE.
    t = calibrate_activation("mse", gaussian_with_outliers, OPTIONS)
    assert 2.5 < t < gaussian_with_outliers.absmax
    n = 1_000_000
    assert t == pytest.approx(1000.0 / (20.0 + 2.0 * n / (12 * 127 ** 2)), abs=0.1)
    # at 4 bits rounding costs ~330x more, and the outliers are clipped to a Gaussian-like threshold
    t4 = calibrate_activation("mse", gaussian_with_outliers, CalibratorOptions(bits=4))
    assert 1.5 < t4 < 5.0


def test_aciq_alpha_for_8_bits():
    # 3.92: Banner et al. 2019 (ACIQ, arXiv:1810.05723), the Gaussian alpha* for 8 bits, also ncnn2table's
    # alpha_gaussian[7] = 3.92403714 (a grid of 2^8 bins over [-alpha, alpha], i.e. 128 levels per side).
    assert aciq_alpha(127) == pytest.approx(3.92, abs=0.05)
    ncnn_table = [1.71063519, 2.15159277, 2.55913646, 2.93620062, 3.28691474, 3.6151146, 3.92403714]
    for bits, expected in zip(range(2, 9), ncnn_table):
        assert aciq_alpha(1 << (bits - 1)) == pytest.approx(expected, abs=2e-3)
    assert aciq_alpha(255) > aciq_alpha(127)  # finer grid, less rounding noise, clip later


def test_aciq_on_gaussian_and_half_normal():
    rng = np.random.default_rng(5)
    x = 2.0 * rng.standard_normal(500_000)
    assert calibrate_activation("aciq", hist_of(x), OPTIONS) == pytest.approx(aciq_alpha(127) * 2.0, rel=0.01)
    relu = np.maximum(x, 0.0)  # half the values zero, the rest half-normal of scale 2
    t = calibrate_activation("aciq", hist_of(relu), CalibratorOptions(unsigned=True))
    assert t == pytest.approx(min(aciq_alpha(255) * 2.0, relu.max()), rel=0.01)


def test_unsigned_grid_clips_later(gaussian_with_outliers):
    for name in ("mse", "kl"):
        signed = calibrate_activation(name, gaussian_with_outliers, OPTIONS)
        unsigned = calibrate_activation(name, gaussian_with_outliers, CalibratorOptions(unsigned=True))
        assert unsigned >= signed
    assert CalibratorOptions(unsigned=True).effective_kl_target_bins == 256
    assert CalibratorOptions(unsigned=True).levels == 255


@pytest.mark.parametrize("unsigned", [False, True])
def test_all_zero_blob_gets_min_threshold(unsigned):
    options = CalibratorOptions(unsigned=unsigned)
    for hist in (hist_of(np.zeros(1000)), Histogram(np.zeros(2048, dtype=np.int64), 0.0, 0, 0, 0.0, 0.0)):
        for name in ACTIVATION_CALIBRATORS:
            direct = ACTIVATION_CALIBRATORS.get(name)(hist, options)
            assert direct == MIN_THRESHOLD, name
            assert calibrate_activation(name, hist, options) == MIN_THRESHOLD, name


def test_every_calibrator_stays_within_absmax():
    rng = np.random.default_rng(6)
    for x in (rng.standard_normal(10_000), np.full(7, 3.0), np.array([1e-12, -2e-12]), rng.exponential(size=5000)):
        hist = hist_of(x)
        for name in ACTIVATION_CALIBRATORS:
            t = calibrate_activation(name, hist, OPTIONS)
            assert math.isfinite(t) and MIN_THRESHOLD <= t and (t <= hist.absmax or hist.absmax < MIN_THRESHOLD)


# --- the validator and the registries -----------------------------------------------------------------------

def test_validator_rejects_bad_thresholds(monkeypatch):
    hist = hist_of(np.linspace(-1.0, 1.0, 101))
    monkeypatch.setitem(ACTIVATION_CALIBRATORS._items, "broken_nan", lambda h, o: float("nan"))
    monkeypatch.setitem(ACTIVATION_CALIBRATORS._items, "broken_big", lambda h, o: 2.0 * h.absmax)
    monkeypatch.setitem(ACTIVATION_CALIBRATORS._items, "tiny", lambda h, o: 1e-20)
    with pytest.raises(CalibratorError, match="'broken_nan' returned nan"):
        calibrate_activation("broken_nan", hist, OPTIONS)
    with pytest.raises(CalibratorError, match="'broken_big' returned 2.*absmax"):
        calibrate_activation("broken_big", hist, OPTIONS)
    assert calibrate_activation("tiny", hist, OPTIONS) == MIN_THRESHOLD


def test_registry_errors_list_valid_names():
    hist = hist_of(np.ones(10))
    with pytest.raises(RegistryError) as e:
        calibrate_activation("entropy", hist, OPTIONS)
    assert "activation calibrator 'entropy'" in str(e.value)
    assert "aciq, kl, minmax, mse, percentile" in str(e.value)
    with pytest.raises(RegistryError, match="weight calibrator 'kl'.*admm, minmax, mse"):
        calibrate_weights("kl", np.ones((2, 3)), OPTIONS)
    with pytest.raises(RegistryError, match="already registered"):
        ACTIVATION_CALIBRATORS.register("kl")(lambda h, o: 1.0)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="percentile"):
        CalibratorOptions(percentile=0.0)
    with pytest.raises(ConfigError, match="mse_candidates"):
        CalibratorOptions(mse_candidates=0)
    with pytest.raises(ConfigError, match="kl_variant"):
        CalibratorOptions(kl_variant="tensorrt")
    assert CalibratorOptions(kl_variant="ncnn_2019").kl_variant is KLVariant.NCNN_2019


# --- weights -----------------------------------------------------------------------------------------------

def test_round_half_away():
    x = np.array([-2.5, -1.5, -0.5, -0.4, 0.0, 0.4, 0.5, 1.5, 2.5, 0.49999999999999994])
    np.testing.assert_array_equal(round_half_away(x), [-3, -2, -1, 0, 0, 0, 1, 2, 3, 0])


def quant_error(w: np.ndarray, t: np.ndarray) -> np.ndarray:
    s = (t / 127.0)[:, None]
    return np.mean((w - s * np.clip(round_half_away(w / s), -127, 127)) ** 2, axis=1)


def test_weight_calibrators_on_gaussian_weights():
    w = np.random.default_rng(7).standard_normal((32, 288)) * 0.05
    minmax = calibrate_weights("minmax", w, OPTIONS)
    np.testing.assert_allclose(minmax, np.abs(w).max(axis=1))
    admm = calibrate_weights("admm", w, OPTIONS)
    mse = calibrate_weights("mse", w, OPTIONS)
    for t in (admm, mse):
        assert t.shape == (32,) and np.isfinite(t).all() and (t > 0).all()
        assert (t <= minmax * (1 + 1e-6)).all()
    assert (quant_error(w, mse) <= quant_error(w, minmax)).all()


def test_mse_weights_beat_minmax_on_heavy_tails():
    # Student-t(3) weights, many per row (per-tensor): the largest few are worth clipping.
    w = np.random.default_rng(8).standard_t(df=3, size=(2, 50_000)) * 0.01
    minmax = calibrate_weights("minmax", w, OPTIONS)
    mse = calibrate_weights("mse", w, OPTIONS)
    assert (mse < minmax).all()
    assert (quant_error(w, mse) < 0.9 * quant_error(w, minmax)).all()
    # short rows: a clip rarely pays, but mse never does worse than min-max (it is one of its candidates)
    w = np.random.default_rng(11).standard_t(df=2, size=(16, 1024)) * 0.01
    assert (quant_error(w, calibrate_weights("mse", w, OPTIONS))
            <= quant_error(w, calibrate_weights("minmax", w, OPTIONS))).all()


def test_admm_equals_tnn_fixed_1000_iterations():
    # TNN runs exactly 1000 iterations; stopping at the fixed point must give the same alpha.
    w = (np.random.default_rng(9).laplace(size=(6, 200)) * 0.02).astype(np.float32)
    alpha = (np.abs(w).max(axis=1) / np.float32(127 * 1.25)).astype(np.float32)
    for _ in range(1000):
        q = np.clip(round_half_away(w / (alpha[:, None] + np.float32(1e-9))), -127, 127).astype(np.float64)
        alpha = ((w.astype(np.float64) * q).sum(axis=1) / ((q * q).sum(axis=1) + 1e-9)).astype(np.float32)
    np.testing.assert_array_equal(admm_weights(w, OPTIONS), alpha.astype(np.float64) * 127)


def test_zero_rows_get_min_threshold():
    w = np.random.default_rng(10).standard_normal((4, 50))
    w[1] = 0.0
    for name in WEIGHT_CALIBRATORS:
        t = calibrate_weights(name, w, OPTIONS)
        assert t[1] == MIN_THRESHOLD and np.isfinite(t).all() and (t[[0, 2, 3]] > 1.0).all(), name
        assert calibrate_weights(name, np.zeros((1, 9)), OPTIONS)[0] == MIN_THRESHOLD


def test_weight_input_is_validated(monkeypatch):
    with pytest.raises(Exception, match="finite"):
        calibrate_weights("minmax", np.array([[1.0, np.nan]]), OPTIONS)
    with pytest.raises(Exception, match="matrix"):
        calibrate_weights("minmax", np.ones(5), OPTIONS)
    monkeypatch.setitem(WEIGHT_CALIBRATORS._items, "one_only", lambda w, o: np.ones(1))
    with pytest.raises(CalibratorError, match="'one_only' returned shape"):
        calibrate_weights("one_only", np.ones((3, 4)), OPTIONS)
