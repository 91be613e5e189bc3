"""Plots from plain data (Agg backend; every figure is closed). Each PNG has a CSV/JSON twin written by the caller."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .outputs import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_layer_differences(layers: Sequence[str], before: Sequence[float], after: Sequence[float], path: Path,
                           metric: str, *, metric_before: Sequence[float] | None = None,
                           metric_after: Sequence[float] | None = None, metric_name: str | None = None) -> Path:
    """Per-layer own-output difference before and after tuning (log scale), layers in network order.

    `metric_before`/`metric_after` (optional, together): a second series per layer, e.g. the tuning metric when it
    is not the `metric` of the first panel, drawn in a second panel below under the label `metric_name`."""
    n = len(layers)
    second = metric_before is not None or metric_after is not None
    if second and (metric_before is None or metric_after is None):
        raise ValueError("plot_layer_differences: metric_before and metric_after must be given together")
    series = {"before": before, "after": after, **({"metric_before": metric_before, "metric_after": metric_after}
                                                   if second else {})}
    for name, values in series.items():
        if len(values) != n:
            raise ValueError(f"plot_layer_differences: {name} has {len(values)} values for {n} layers")
    width = max(8, 0.28 * n + 2)
    fig, axes = plt.subplots(2 if second else 1, 1, figsize=(width, 8.4 if second else 4.8), sharex=True,
                             squeeze=False)
    x = np.arange(n)
    panels = [(axes[0, 0], before, after, f"{metric} difference of the layer's output (fp32 vs int8)", True)]
    if second:
        b, a = np.asarray(metric_before, dtype=np.float64), np.asarray(metric_after, dtype=np.float64)
        both = np.concatenate([b, a])
        # A metric may be a similarity or a signed score: a log axis only when every value is positive, so that
        # no value is clamped out of sight
        log = bool(np.all(both[np.isfinite(both)] > 0))
        panels.append((axes[1, 0], b, a, f"{metric_name or 'metric'} of the layer's output (fp32 vs int8)", log))
    for ax, b, a, label, log in panels:
        b, a = np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)
        if log:
            b, a = np.maximum(b, 1e-12), np.maximum(a, 1e-12)
        ax.bar(x - 0.2, b, width=0.4, label="before tuning", color="#d62728")
        ax.bar(x + 0.2, a, width=0.4, label="after tuning", color="#2ca02c")
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.legend()
    bottom = axes[-1, 0]
    bottom.set_xticks(x)
    bottom.set_xticklabels(layers, rotation=90, fontsize=7)
    axes[0, 0].set_title("Per-layer int8 difference, everything upstream int8")
    return _save(fig, path)


def histogram_steps(counts: np.ndarray, absmax: float) -> tuple[np.ndarray, np.ndarray]:
    """The bin edges and the step heights `plot_histogram` draws: the counts, NaN for empty bins.

    On a log axis an empty bin has no height to draw. Clamping it to a small count (0.5) drew a solid band along
    the bottom wherever the histogram is sparse; a NaN step is left out by matplotlib's `stairs` instead."""
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.linspace(0.0, float(absmax), counts.size + 1)
    heights = np.where(counts > 0, counts, np.nan)
    return edges, heights


def plot_histogram(blob: str, counts: np.ndarray, absmax: float, thresholds: Mapping[str, float], path: Path) -> Path:
    """|x| histogram of a blob (log counts, empty bins not drawn) with vertical lines at the given thresholds."""
    edges, heights = histogram_steps(counts, absmax)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.set_yscale("log")
    drawn = heights[np.isfinite(heights)]
    if drawn.size:
        ax.stairs(heights, edges, fill=True, color="#1f77b4", alpha=0.6)
        # y range from the drawn counts only, a factor 2 of room below the smallest and above the largest
        ax.set_ylim(drawn.min() / 2, drawn.max() * 2)
    else:
        ax.set_ylim(0.5, 2)
        ax.text(0.5, 0.5, "every bin is empty (no non-zero |x| was observed)", transform=ax.transAxes,
                ha="center", va="center")
    # x from 0 to the largest of absmax and the thresholds (a threshold may lie past absmax); an all-zero blob
    # (absmax 0, no threshold) has no range of its own, and identical x limits are not a valid axis
    right = max([float(absmax), *(float(t) for t in thresholds.values() if np.isfinite(t))])
    ax.set_xlim(0, right * 1.02 if right > 0 else 1.0)
    styles = ["-", "--", ":", "-."]
    for i, (label, t) in enumerate(thresholds.items()):
        ax.axvline(t, color=f"C{(i + 1) % 10}", linestyle=styles[i % len(styles)], label=f"{label}: {t:.4g}")
    ax.set_xlabel("|x|")
    ax.set_ylabel("count (zeros excluded)")
    ax.set_title(f"blob {blob}")
    if thresholds:
        ax.legend(fontsize=8)
    return _save(fig, path)
