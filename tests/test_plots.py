"""plots: what the histogram actually draws (no clamp band for empty bins) and that every plot writes a PNG."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.patches import StepPatch

from int8tune import plots
from int8tune.plots import histogram_steps, plot_histogram, plot_layer_differences

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sparse_counts() -> np.ndarray:
    counts = np.zeros(2048)
    counts[[0, 1, 2, 100, 101, 900, 2047]] = [5000, 300, 1, 7, 2, 1, 1]
    return counts


def test_histogram_steps_leave_empty_bins_undrawn():
    counts = _sparse_counts()
    edges, heights = histogram_steps(counts, 4.0)
    assert edges.shape == (2049,) and edges[0] == 0 and edges[-1] == 4.0
    empty = counts == 0
    assert np.isnan(heights[empty]).all()  # nothing drawn, not a clamped small count
    np.testing.assert_array_equal(heights[~empty], counts[~empty])
    assert not np.any(heights == 0.5)


def _drawn_steps(monkeypatch) -> list:
    """Record the StepPatch artists of every figure `plots` saves."""
    seen: list = []
    save = plots._save

    def recording_save(fig, path):
        seen.extend(a for ax in fig.axes for a in ax.patches if isinstance(a, StepPatch))
        seen.append(fig.axes[0].get_ylim())
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    return seen


def test_plot_histogram_draws_only_non_zero_bins(tmp_path, monkeypatch):
    seen = _drawn_steps(monkeypatch)
    counts = _sparse_counts()
    out = plot_histogram("conv1", counts, 4.0, {"before": 1.5, "after": 2.0, "absmax": 4.0}, tmp_path / "h.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    (step,), ylim = seen[:-1], seen[-1]
    values = step.get_data().values
    assert np.isnan(values[counts == 0]).all()
    finite = values[np.isfinite(values)]
    assert finite.min() == 1 and not np.any(finite < 1)  # the smallest drawn step is a real count of 1
    # the y range comes from the non-zero counts (not from a 0.5 clamp value)
    assert ylim[0] == pytest.approx(0.5) and ylim[1] == pytest.approx(10000)


def test_all_zero_histogram_still_gives_a_figure(tmp_path, monkeypatch):
    seen = _drawn_steps(monkeypatch)
    out = plot_histogram("zeros", np.zeros(64), 0.0, {}, tmp_path / "z.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert seen[:-1] == []  # no step drawn at all


def test_plot_layer_differences_writes_a_png(tmp_path):
    layers = ["conv1", "conv2", "fc"]
    out = plot_layer_differences(layers, [1e-3, 2e-2, np.nan], [1e-4, 1e-3, 5e-5], tmp_path / "d.png", "square")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_layer_differences_with_a_second_metric(tmp_path):
    layers = ["conv1", "conv2"]
    out = plot_layer_differences(layers, [1e-3, 2e-2], [1e-4, 1e-3], tmp_path / "d2.png", "square",
                                 metric_before=[0.9, 0.8], metric_after=[0.99, 0.97], metric_name="cosine")
    assert out.read_bytes()[:8] == PNG_MAGIC
    # a signed metric (an SNR in dB, ...) gets a linear axis instead of being clamped on a log one
    signed = plot_layer_differences(layers, [1e-3, 2e-2], [1e-4, 1e-3], tmp_path / "d3.png", "square",
                                    metric_before=[-3.0, 12.0], metric_after=[8.0, 20.0], metric_name="snr")
    assert signed.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="together"):
        plot_layer_differences(layers, [1, 2], [1, 2], tmp_path / "x.png", "square", metric_before=[1, 2])
    with pytest.raises(ValueError, match="metric_after has 1 values for 2 layers"):
        plot_layer_differences(layers, [1, 2], [1, 2], tmp_path / "x.png", "square", metric_before=[1, 2],
                               metric_after=[1])
