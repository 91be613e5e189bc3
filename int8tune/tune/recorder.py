"""Recording the trials of a run: each numbered in the order it was tried, appended to the trial log (the resume
log, trials.py) and handed to the caller; a trial the log already holds is replayed instead of evaluated."""

from __future__ import annotations

from typing import Callable

from .trials import Trial, TrialLog


class TrialRecorder:
    def __init__(self, log: TrialLog | None = None) -> None:
        self.log = log
        self.count = 0  # trials recorded so far: the next one's index
        self.restart = 0  # the tuning restart under way (tune/restarts.py): part of each trial's key in the log

    def replay(self, layer: str, value: str, multiplier: float, note: str) -> Trial | None:
        """The trial the log holds for this candidate in the current restart (None: not tried yet, or no log)."""
        if self.log is None:
            return None
        return self.log.lookup(layer, value, multiplier, note, self.restart)

    def record(self, trial: Trial, on_trial: Callable[[Trial], None] | None = None) -> None:
        trial.index = self.count
        self.count += 1
        if self.log is not None:
            self.log.append(trial)
        if on_trial is not None:
            on_trial(trial)
