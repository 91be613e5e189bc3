"""Runs an accuracy strategy: evaluates each candidate it proposes, logs it, keeps and saves the best.

Console output in Glow's model-tuner shape (`--progress print`): initial fp32 and int8 accuracy, the number of
nodes, per node `[i/N] Tuning node "name"`, per candidate `[k/K] Testing ...` with its accuracy, the best so far,
the iteration time and the estimated remaining time, then the final accuracy and the total time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm

from ..log import logger
from ..progress import ProgressMode
from ..quant.table import CalibrationTable
from .strategies import STRATEGIES, StrategyContext, estimated_evaluations, int8_share
from .trials import Trial, TrialLog

PROGRESS = tuple(p.value for p in ProgressMode)


@dataclass
class DriverResult:
    strategy: str
    best_table: CalibrationTable
    best_score: float
    initial_score: float
    fp32_score: float
    goal_met: bool
    evaluations: int
    seconds: float
    history: list[tuple[str, float]] = field(default_factory=list)


def _pct(metric, value: float) -> str:
    return f"{100 * value:.2f} %" if metric.higher_is_better and 0 <= value <= 1 else f"{value:.6g}"


def run_strategy(name: str, ctx: StrategyContext, log: TrialLog | None,
                 progress: ProgressMode | str = ProgressMode.PRINT,
                 save_best: Callable[[CalibrationTable], None] | None = None,
                 echo: Callable[[str], None] = print, tiebreak: str | None = None) -> DriverResult:
    """`tiebreak`: an objective of tune/objectives.py choosing among every candidate that meets the goal."""
    strategy = STRATEGIES.get(name)
    metric = ctx.metric
    progress = ProgressMode(progress)
    say = echo if progress is ProgressMode.PRINT else (lambda text: None)
    t_start = time.perf_counter()
    total = estimated_evaluations(name, ctx)
    bar = tqdm(total=total, desc=f"strategy {name}", unit="eval", disable=progress is not ProgressMode.BAR, leave=False)
    say(f"Strategy {name}: metric {metric.name} ({metric.direction.value} is better)")
    say(f"Initial accuracy: FP32 = {_pct(metric, ctx.fp32_score)}")
    say(f"Number of nodes: {len(ctx.tuner.blobs_in_order(ctx.start))} blobs, {len(ctx.start.layers)} layers")
    generator = strategy(ctx)
    history: list[tuple[str, float]] = []
    evaluations, count = 0, 0
    initial = None
    current_node = None
    times: list[float] = []
    meeting: list[tuple[CalibrationTable, float]] = []
    try:
        candidate = next(generator)
        while True:
            count += 1
            t0 = time.perf_counter()
            replay = log.lookup("strategy:" + name, candidate.label, 1.0, "accuracy") if log else None
            if replay is not None:
                score = replay.difference
                trial = replay
            else:
                score = ctx.tuner.difference(candidate.table)
                evaluations += 1
                trial = Trial(count, "strategy:" + name, candidate.label, 1.0, 0.0, score, time.perf_counter() - t0,
                              "accuracy", {"int8_layers": int8_share(candidate.table)[0]})
            if log is not None:
                log.append(trial)
            elapsed = time.perf_counter() - t0
            times.append(elapsed)
            history.append((candidate.label, score))
            if tiebreak and ctx.goal(score):
                meeting.append((candidate.table, score))
            if initial is None:
                initial = score
                say(f"Initial accuracy: INT8 = {_pct(metric, score)}")
            if ctx.best_score is None or metric.better(score, ctx.best_score):
                ctx.best_table, ctx.best_score = candidate.table, score
                if save_best is not None:
                    save_best(candidate.table)
            if candidate.node != current_node and candidate.step:
                current_node = candidate.node
                say(candidate.node)
            remaining = max(total - count, 0) * (sum(times) / len(times))
            if candidate.step:
                say(f"  [{candidate.step}] Testing {candidate.what or candidate.label}: "
                    f"accuracy = {_pct(metric, score)}, best = "
                    f"{_pct(metric, ctx.best_score)}, iteration time {elapsed:.2f}s, estimated remaining time "
                    f"{remaining:.0f}s")
            bar.update(1)
            candidate = generator.send(score)
    except StopIteration:
        pass
    finally:
        bar.close()
    if tiebreak and len(meeting) > 1:
        from .objectives import pick

        table, score, costs = pick(meeting, tiebreak, ctx.tuner.converted)
        say(f"{len(meeting)} candidates meet the goal; by {tiebreak}: " +
            ", ".join(f"{c:.4g}" for c in costs.values()) + f"; keeping the one at {min(costs.values()):.4g}")
        ctx.best_table, ctx.best_score = table, score
        if save_best is not None:
            save_best(table)
    seconds = time.perf_counter() - t_start
    goal = ctx.goal(ctx.best_score)
    int8, total_layers = int8_share(ctx.best_table)
    say(f"Final accuracy: FP32 = {_pct(metric, ctx.fp32_score)}, INT8 = {_pct(metric, ctx.best_score)} "
        f"({int8}/{total_layers} layers int8); goal {'met' if goal else 'NOT met'}")
    say(f"Total time: {seconds:.1f}s ({evaluations} evaluations, {count - evaluations} replayed)")
    logger.info("strategy %s: %s -> %s, goal %s", name, initial, ctx.best_score, "met" if goal else "not met")
    return DriverResult(name, ctx.best_table, ctx.best_score, initial if initial is not None else ctx.best_score,
                        ctx.fp32_score, goal, evaluations, seconds, history)
