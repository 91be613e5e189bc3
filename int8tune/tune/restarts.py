"""Tuning restarts: tune the whole net several times from the same table, each time in a different rounding
realization, and keep the restart whose table scores best on the tuning images (or, with pick "mean", the
geometric mean of the restarts' threshold moves; with pick "validation", the restart a Judge scores best on
images that were not tuned on).

Why: the int8 model's difference is chaotic at the level of the last bits of a threshold. Moving every threshold
by a relative 1e-6 (far below any effect on accuracy) changes the yolo difference of yolov3_nano_voc on its 10
tuning photos by ~5 % and the square distance by ~2 % (bench/objective_noise.py), and a tuning run started from such
a moved table takes other decisions: four runs from the same auto table, each moved by its own 1e-6 draw, scored
0.057 to 0.100 (yolo difference on 250 held-out photos; the start scored 0.092). A single run is one draw of that
spread; the restart with the lowest objective on the tuning images is a tested table, and the objective (the dense
square distance by default) ranked the restarts' held-out results well (docs/tuning.md, Restarts). The geometric
mean of the moves ("mean") is kept as an option: it is a table no restart tested, and in main.sh's yolov3_nano_voc
run it came out worse than every restart on the 18 held-out photos (perhaps by breaking moves that compensate each
other).

Restarts are numbered from 0 here (and in the trial log); reports and folders count from 1.

Restart 0 starts from the table itself (a single restart is exactly the plain loop). Restart k > 0 starts from it
with every tuned threshold multiplied by 1 + 1e-6 z, z ~ N(0, 1) drawn from a generator seeded with k, so a
resumed run sees the same starts. The mean applies to the unmoved start, per blob, the geometric mean over
restarts of (the restart's tuned threshold / the restart's own starting threshold): a blob no restart moved keeps
its threshold exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..config import RestartPick
from ..quant.table import CalibrationTable
from .tuner import BlobResult, Tuner

# A relative move of a threshold far below anything that changes accuracy, but enough to move which values round
# up or down (bench/objective_noise.py measures the objective's spread under it).
RESTART_JITTER = 1e-6


def restart_start(table: CalibrationTable, blobs: Sequence[str], restart: int,
                  jitter: float = RESTART_JITTER) -> CalibrationTable:
    """The table restart `restart` starts from: `table` itself for restart 0, else every blob of `blobs` moved by
    a relative `jitter` * N(0, 1) (generator seeded with the restart number; the calibrator names are kept)."""
    if restart == 0:
        return table
    rng = np.random.default_rng(restart)
    out = table
    for v in blobs:
        entry = table.blobs[v]
        out = out.with_threshold(v, entry.threshold * (1.0 + jitter * rng.standard_normal()), entry.calibrator)
    return out


def combine(start: CalibrationTable, runs: Sequence[tuple[CalibrationTable, CalibrationTable]],
            blobs: Sequence[str]) -> CalibrationTable:
    """`start` with each blob of `blobs` multiplied by the geometric mean over `runs` (each: its starting table, its
    tuned table) of tuned / starting threshold. A blob whose multiplier is 1 in every run keeps its threshold."""
    out = start
    for v in blobs:
        logs = [np.log(tuned.blobs[v].threshold / first.blobs[v].threshold) for first, tuned in runs]
        if not any(logs):
            continue
        out = out.with_threshold(v, start.blobs[v].threshold * float(np.exp(np.mean(logs))))
    return out


@dataclass
class Restart:
    number: int
    start: CalibrationTable
    table: CalibrationTable  # the best table of this restart (partial when it was interrupted)
    results: list[BlobResult] = field(default_factory=list)
    complete: bool = False
    seconds: float = 0.0
    validation: float | None = None  # the judge's score of the final table (pick "validation")


@dataclass
class RestartsResult:
    table: CalibrationTable  # the pick among the complete restarts (a partial first restart's table if none)
    restarts: list[Restart]
    interrupted: bool = False
    picked: int | None = None  # the restart number kept (None: the mean, or nothing complete)

    @property
    def complete(self) -> list[Restart]:
        return [r for r in self.restarts if r.complete]

    @property
    def results(self) -> list[BlobResult]:
        return [b for r in self.restarts for b in r.results]


PICKS = tuple(p.value for p in RestartPick)


@dataclass(frozen=True)
class Judge:
    """Scores a table on images that were not tuned on (pick "validation"): `score(table)` and the direction of
    its metric (`better(a, b)`: a is better than b)."""
    score: Callable[[CalibrationTable], float]
    better: Callable[[float, float], bool]


def tune_with_restarts(tuner: Tuner, start: CalibrationTable, order: Sequence[str], restarts: int = 1,
                       on_blob: Callable[[int, int, CalibrationTable], None] | None = None,
                       on_restart: Callable[[Restart, CalibrationTable], None] | None = None,
                       pick: RestartPick | str = RestartPick.BEST, judge: Judge | None = None) -> RestartsResult:
    """Tune the blobs of `order` in turn, `restarts` times (see the module docstring). `on_blob(restart, i, table)`
    after each blob, `on_restart(restart, pick so far)` after each complete restart (to save progress). A
    KeyboardInterrupt ends the run early: the result then holds what was complete, flagged `interrupted`. Pick
    "validation" keeps the complete restart `judge` scores best (each scored once, when it completes)."""
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {PICKS}, found {pick!r}")
    pick = RestartPick(pick)
    if pick is RestartPick.VALIDATION and judge is None:
        raise ValueError("pick 'validation' needs a judge")
    better = tuner.objective_metric()[0].better
    done: list[Restart] = []
    interrupted = False
    try:
        for k in range(restarts):
            first = restart_start(start, order, k)
            run = Restart(k, first, first)
            done.append(run)
            tuner.restart = k
            t0 = time.perf_counter()
            for i, value in enumerate(order):
                run.table, result = tuner.tune_blob(run.table, value)
                run.results.append(result)
                run.seconds = time.perf_counter() - t0
                if on_blob is not None:
                    on_blob(k, i, run.table)
            run.complete = True
            if judge is not None:
                run.validation = judge.score(run.table)
            if on_restart is not None:
                on_restart(run, _picked(start, done, order, pick, better, judge)[0])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        tuner.restart = 0
    table, number = _picked(start, done, order, pick, better, judge)
    return RestartsResult(table, done, interrupted, number)


def final_objective(run: Restart) -> float:
    """The objective of a restart's final table on every tuning image (the last blob's result)."""
    return run.results[-1].difference_after if run.results else float("nan")


def _picked(start: CalibrationTable, done: list[Restart], order: Sequence[str], pick: RestartPick,
            better: Callable[[float, float], bool], judge: Judge | None = None) -> tuple[CalibrationTable, int | None]:
    complete = [r for r in done if r.complete]
    if not complete:
        return (done[0].table if done else start), None  # the first restart, interrupted: its best so far
    if len(complete) == 1 and complete[0].number == 0:
        return complete[0].table, 0  # one plain run: its table as it is
    if pick is RestartPick.MEAN:
        return combine(start, [(r.start, r.table) for r in complete], order), None
    if pick is RestartPick.VALIDATION:
        score, better = (lambda r: r.validation), judge.better
    else:
        score = final_objective
    best = complete[0]
    for r in complete[1:]:
        if better(score(r), score(best)):  # ties keep the earlier restart
            best = r
    return best.table, best.number
