"""The `auto` calibrator: per blob, the calibrator whose threshold measurably disturbs the network least.

Each blob is measured alone: with only that blob quantized (every other one fp32), every calibrator's threshold
is tried and the one giving the smallest difference of the reading layers' outputs (the square metric, fp32 vs
int8, over the measurement images) wins. Measuring instead of trusting one formula matters: a plain KL clips
some blobs too hard (onnxruntime's true 2048-bin KL cost about 20 top-1 points on SqueezeNet), min-max wastes
resolution on outliers, and the best one differs from blob to blob. Measuring each blob alone needs no int8
prefix per blob: its fp32 value feeds a small graph of the reading layers (yolov3_nano_voc, 59 blobs, 10
images: 35 s for the greedy version with upstream blobs quantized, a few seconds this way).
"""

from __future__ import annotations

from ..log import logger
from ..quant.table import CalibrationTable
from .tuner import Tuner


def choose_calibrators(tuner: Tuner, table: CalibrationTable, candidates: dict[str, dict[str, float]]
                       ) -> tuple[CalibrationTable, dict[str, dict[str, float]]]:
    """`candidates`: value -> {calibrator: threshold}. Returns the table with each blob at its best candidate,
    and value -> {calibrator: measured difference}."""
    scores = tuner.score_isolated(table, candidates)
    for value, measured in scores.items():
        best = min(measured, key=lambda k: (measured[k], k))
        table = table.with_threshold(value, candidates[value][best], calibrator=best)
        logger.info("auto: blob %s -> %s (T=%.5g; %s)", table.blobs[value].blob, best, candidates[value][best],
                    ", ".join(f"{k} {v:.3g}" for k, v in sorted(measured.items())))
    return table, scores


def tables_per_calibrator(table: CalibrationTable,
                          per_blob: dict[str, dict[str, float]]) -> dict[str, CalibrationTable]:
    """One whole table per calibrator (every blob at that calibrator's threshold), plus `table` itself as
    "auto" when it came from the per-blob choice."""
    names = sorted({name for options in per_blob.values() for name in options})
    out = {}
    for name in names:
        t = table.copy()
        for value, entry in t.blobs.items():
            if value in per_blob and name in per_blob[value]:
                entry.threshold = float(per_blob[value][name])
                entry.calibrator = name
        out[name] = t
    out["auto"] = table
    return out


def best_start(tuner: Tuner, tables: dict[str, CalibrationTable]) -> tuple[str, dict[str, float]]:
    """Model-wise choice of the starting table: each whole table scored with the tuner's metric on the model's
    outputs over the tuning images (as Neural Compressor's basic strategy starts with global settings)."""
    scores = {name: tuner.difference(t) for name, t in tables.items()}
    better = tuner.metric.better
    best = next(iter(scores))
    for name, score in scores.items():
        if better(score, scores[best]):
            best = name
    logger.info("starting tables scored with %s: %s; starting from %s", tuner.metric.name,
                ", ".join(f"{k} {v:.5g}" for k, v in scores.items()), best)
    return best, scores
