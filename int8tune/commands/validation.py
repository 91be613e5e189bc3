"""main.sh's held-out check (--validation_list): the start table, the tuned one and every restart scored on images
that were not tuned on, with --metric (and the detection agreement for a YOLO metric), and each image's own
difference in validation.csv.

Tuning lowers the objective on its own images by construction; only images it did not see tell whether the int8
model got closer to fp32. With --restart_pick validation the kept restart is the one these images score best.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..config import TuneConfig
from ..log import logger
from ..metrics import Metric
from ..outputs import atomic_write_bytes
from ..quant.table import CalibrationTable
from ..tune.restarts import Judge, RestartsResult
from ..tune.tuner import Tuner
from .common import PrepareImage, Workspace, batch_labels, batch_names, data_items, prepared_batches
from .detections import YOLO_METRICS, detection_lines


def validation_tuner(cfg: TuneConfig, ws: Workspace, metric: Metric, tuner: Tuner, tuning_items: list,
                     prepare_image: PrepareImage) -> Tuner | None:
    """A tuner over the --validation_list images (same model, metric and preprocessing), or None without one.
    Images that are also tuning images are named in a warning: they do not measure anything held out."""
    if cfg.validation_list is None:
        return None
    data = replace(cfg.data, data_list=cfg.validation_list, data_limit=None)
    items = data_items(data)
    tuned_on = {Path(i.path).resolve() for i in tuning_items}
    shared = [str(i.path) for i in items if Path(i.path).resolve() in tuned_on]
    if shared:
        logger.warning("--validation_list: %d of its %d image(s) are tuning images too (%s): they are not held "
                       "out", len(shared), len(items), ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else ""))
    batches = prepared_batches(items, data, prepare_image, ws.input_shape)
    return Tuner(ws.converted, batches, metric, replace(tuner.settings, subset=0), labels=batch_labels(items, data),
                 names=batch_names(items, data))


def judge_of(val: Tuner) -> Judge:
    """--restart_pick validation: a restart's table scored with --metric on the validation images."""
    return Judge(score=val.difference, better=val.metric.better)


def validation_lines(val: Tuner, cfg: TuneConfig, start: CalibrationTable, table: CalibrationTable,
                     tuning: RestartsResult | None, out: Path) -> list[str]:
    """report.log lines of the held-out check; writes validation.csv (each image's difference per table).
    `tuning`: the layerwise restarts (each is scored too), None for the accuracy-driven strategies."""
    name = val.metric.name
    before, after = val.difference(start), val.difference(table)
    images = sum(len(n) for n in val.names) if val.names else len(val.batches)
    lines = ["", f"held-out check: {images} image(s) of --validation_list {cfg.validation_list} (not tuned on)",
             f"  model difference ({name}): start {before:.6g}, tuned {after:.6g}"
             + (f" ({after / before:.3f}x)" if before else "")]
    per_table = {"start": val.image_differences(start), "tuned": val.image_differences(table)}
    complete = tuning.complete if tuning is not None else []
    if len(complete) > 1:
        scores = []
        for run in complete:
            score = run.validation if run.validation is not None else val.difference(run.table)
            scores.append(f"restart {run.number + 1} {score:.6g}")
            per_table[f"restart_{run.number + 1}"] = val.image_differences(run.table)
        kept = ("the mean of the moves" if tuning.picked is None else f"restart {tuning.picked + 1}")
        lines.append(f"  each restart: {', '.join(scores)}; tuned/ holds {kept} (--restart_pick {cfg.restart_pick})")
    if val.metric.better(before, after):
        hint = (": for detectors of small, sparse objects (faces) --objective model had the lower yolo difference "
                "on some held-out photos than the dense default; compare both on these images (README, Tuning)" if name in YOLO_METRICS and cfg.objective in ("outputs", "guarded") else "")
        lines.append(f"  WARNING: on these images the tuned table is worse than the start ({name} {before:.6g} -> "
                     f"{after:.6g}); start/ holds the start table{hint}")
    lines += [("  " + line) if line else line
              for line in detection_lines(val, name, [("start", start), ("tuned", table)], kind="held-out ")]
    frame = pd.DataFrame({"image": [n for n, _ in per_table["start"]],
                          **{k: [d for _, d in v] for k, v in per_table.items()}})
    atomic_write_bytes(out / "validation.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    lines.append(f"  each image's {name} per table: {out / 'validation.csv'}")
    return lines
