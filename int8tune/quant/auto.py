"""The `auto` calibrator: per blob, the calibrator whose threshold measurably disturbs the network least.

For each blob, in the order its first int8 reader appears, every calibrator's threshold is tried with all blobs
before it already at their chosen thresholds; the one giving the smallest difference of the reading layers'
outputs (the `square` metric, fp32 vs int8) wins. Measuring instead of trusting one formula matters: a plain KL
clips some blobs too hard (onnxruntime's true 2048-bin KL cost about 20 top-1 points on SqueezeNet), min-max
wastes resolution on outliers, and the best one differs from blob to blob.
"""

from __future__ import annotations

from ..log import logger
from ..tune.tuner import Tuner
from .table import CalibrationTable


def choose_calibrators(tuner: Tuner, table: CalibrationTable, candidates: dict[str, dict[str, float]]
                       ) -> tuple[CalibrationTable, dict[str, dict[str, float]]]:
    """`candidates`: value -> {calibrator: threshold}. Returns the table with each blob at its best candidate,
    and value -> {calibrator: measured difference}."""
    scores: dict[str, dict[str, float]] = {}
    order = tuner.blobs_in_order(table)
    # fp32 references of every reading layer's output in one pass (instead of one full pass per blob)
    tuner.references(list(dict.fromkeys(n for v in order for n in tuner.objective_names(table, v, "layer"))))
    for value in order:
        options = candidates[value]
        measured = tuner.score_thresholds(table, value, options, objective="layer")
        best = min(measured, key=lambda k: (measured[k], k))
        table = table.with_threshold(value, options[best], calibrator=best)
        scores[value] = measured
        logger.info("auto: blob %s -> %s (T=%.5g; %s)", table.blobs[value].blob, best, options[best],
                    ", ".join(f"{k} {v:.3g}" for k, v in sorted(measured.items())))
    return table, scores
