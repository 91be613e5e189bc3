"""The plots of main.sh's report: per-layer differences before and after, and |x| histograms of the worst
layers' inputs with the thresholds marked (each PNG with a JSON twin of its data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..outputs import atomic_write_json
from ..pipeline.tuning import LayerwiseRun, Session
from ..plots import plot_histogram, plot_layer_differences
from ..quant.calibrate import collect_statistics
from ..runtime import Engine
from .document import Figure


def layer_figures(s: Session, run: LayerwiseRun, rows: list[dict], folder: Path) -> list[Figure]:
    layers = [r["layer"] for r in rows]
    # With another metric than square, a second panel: the objective on the model's outputs before and after
    # each layer's move (restart 1), so a metric that got worse where the square distance improved shows up.
    extra = {}
    if s.metric.name != "square":
        extra = dict(metric_before=[r["objective_before"] for r in rows],
                     metric_after=[r["objective_after"] for r in rows],
                     metric_name=f"objective ({s.cfg.measure.objective.value}) on the model outputs, before/after "
                                 f"each move")
    figures = [Figure(plot_layer_differences(layers, [r["difference_before"] for r in rows],
                                             [r["difference_after"] for r in rows],
                                             folder / "layer_differences.png", "square", **extra),
                      "each int8 layer's own output difference (square), before and after tuning")]
    worst = sorted(rows, key=lambda r: -(r["difference_before"] if np.isfinite(r["difference_before"]) else 0))
    values = list(dict.fromkeys(run.table.layers[r["layer"]].input_value for r in worst[: s.cfg.run.plots]))
    if not values:
        return figures
    # The histograms need the blobs' statistics on the tuning images: one more pass, over those blobs only.
    stats = collect_statistics(Engine(s.ws.converted, threads=s.cfg.run.threads), values,
                               lambda: iter(s.images.batches), 2048, False, progress=False, executor=s.executor)
    for v in values:
        st = stats[v]
        marks = {"before": run.start.blobs[v].threshold, "after": run.table.blobs[v].threshold, "absmax": st.absmax}
        safe = v.replace("/", "_").replace("@", "_at_")
        path = plot_histogram(st.value, st.histogram, st.absmax, marks, folder / f"histogram_{safe}.png")
        atomic_write_json(folder / f"histogram_{safe}.json",
                          {"blob": v, "absmax": st.absmax, "counts": st.histogram.tolist(), "thresholds": marks})
        figures.append(Figure(path, f"|x| of {run.table.blobs[v].blob} (input of a worst layer), thresholds marked"))
    return figures
