"""Threshold search for one blob: a generator of candidate multipliers that the driver evaluates.

A strategy yields multipliers (relative to the blob's threshold when its search starts) and receives each
candidate's objective back through `send`; it stops when it has nothing left to try. The driver keeps the best.

- `both_directions` (the default): up by factors (1+r), (1+r)^2, ... while the objective improves, then down by
  1/(1+r), 1/(1+r)^2, ...; a direction stops after `patience` candidates in a row that do not improve on the best
  so far, or after `steps` candidates.
- `grid`: exactly the given multipliers (`--multipliers`), or `steps` evenly spaced each side of 1 at `step_ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

from ..registry import Registry

Search = Generator[float, float, None]  # yields a multiplier, is sent its objective


@dataclass(frozen=True)
class SearchSettings:
    step_ratio: float = 0.1
    steps: int = 8
    patience: int = 2
    multipliers: tuple[float, ...] = ()


SearchFactory = Callable[[SearchSettings, Callable[[float, float], bool], float], Search]
SEARCHES: Registry[SearchFactory] = Registry("threshold search")


@SEARCHES.register("both_directions")
def both_directions(settings: SearchSettings, better: Callable[[float, float], bool], baseline: float) -> Search:
    """`baseline` is the objective at multiplier 1 (already evaluated by the driver)."""
    best = baseline
    factor = 1.0 + settings.step_ratio
    for sign in (+1, -1):
        misses = 0
        for k in range(1, settings.steps + 1):
            value = yield factor ** (sign * k)
            if better(value, best):
                best = value
                misses = 0
            else:
                misses += 1
                if misses >= settings.patience:
                    break


@SEARCHES.register("grid")
def grid(settings: SearchSettings, better: Callable[[float, float], bool], baseline: float) -> Search:
    if settings.multipliers:
        values = list(settings.multipliers)
    else:
        values = [1.0 + settings.step_ratio * k for k in range(-settings.steps, settings.steps + 1) if k != 0]
        values = [v for v in values if v > 0]
    for m in values:
        yield m
