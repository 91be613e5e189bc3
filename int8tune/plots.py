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
                           metric: str) -> Path:
    """Per-layer own-output difference before and after tuning (log scale), layers in network order."""
    n = len(layers)
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * n + 2), 4.8))
    x = np.arange(n)
    ax.bar(x - 0.2, np.maximum(before, 1e-12), width=0.4, label="before tuning", color="#d62728")
    ax.bar(x + 0.2, np.maximum(after, 1e-12), width=0.4, label="after tuning", color="#2ca02c")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=7)
    ax.set_ylabel(f"{metric} difference of the layer's output (fp32 vs int8)")
    ax.set_title("Per-layer int8 difference, everything upstream int8")
    ax.legend()
    return _save(fig, path)


def plot_histogram(blob: str, counts: np.ndarray, absmax: float, thresholds: Mapping[str, float], path: Path) -> Path:
    """|x| histogram of a blob (log counts) with vertical lines at the given thresholds."""
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.linspace(0, absmax, counts.size + 1)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color="#1f77b4", alpha=0.6)
    ax.set_yscale("log")
    styles = ["-", "--", ":", "-."]
    for i, (label, t) in enumerate(thresholds.items()):
        ax.axvline(t, color=f"C{(i + 1) % 10}", linestyle=styles[i % len(styles)], label=f"{label}: {t:.4g}")
    ax.set_xlabel("|x|")
    ax.set_ylabel("count (zeros excluded)")
    ax.set_title(f"blob {blob}")
    ax.legend(fontsize=8)
    return _save(fig, path)
