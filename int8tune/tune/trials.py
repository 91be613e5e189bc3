"""The trial log: every evaluated candidate, appended as one JSON line the moment it finishes.

The first line is a header with a fingerprint of the inputs (model files, images, settings). A run restarted
with the same inputs replays the log instead of re-evaluating (so it resumes where it stopped and reaches the
same result); a log whose fingerprint differs is refused with a message naming what changed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..log import logger


@dataclass
class Trial:
    index: int
    layer: str  # the layer being tuned (first int8 consumer of the blob)
    blob: str  # value whose threshold moves
    multiplier: float  # relative to the threshold the layer's search started from
    threshold: float
    difference: float  # the objective (metric value) for this candidate
    seconds: float
    note: str = ""  # "baseline", "kept", "fallback", ...
    extra: dict[str, Any] = field(default_factory=dict)
    restart: int = 0  # which tuning restart (tune/restarts.py) evaluated it

    def key(self) -> tuple:
        return (self.layer, self.blob, round(self.multiplier, 9), self.note, self.restart)


class TrialLog:
    """Append-only JSONL log with a fingerprint header; `lookup` serves replayed trials on resume."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], resume: bool = True,
                 same_inputs: Callable[[dict, dict], bool] | None = None) -> None:
        """`same_inputs(old, new)`: whether a log with fingerprint `old` may be resumed with `new` (default: equal)."""
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._same = same_inputs or (lambda a, b: a == b)
        self.trials: list[Trial] = []
        self._replay: dict[tuple, Trial] = {}
        if self.path.exists() and resume:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"header": True, "fingerprint": fingerprint}) + "\n")

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        if not lines:
            raise ConfigError(f"trial log {self.path} is empty; delete it to start afresh")
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.path}:1: not a trial log header ({e})") from e
        old = header.get("fingerprint", {})
        if not self._same(old, self.fingerprint):
            changed = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
            raise ConfigError(
                f"trial log {self.path} was written for different inputs (changed: {', '.join(changed)}); refusing "
                f"to resume from it. Use another --output_path, or delete the log to start afresh")
        good = 1
        for lineno, line in enumerate(lines[1:], 2):
            try:
                trial = Trial(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as e:
                # A run killed mid-write leaves at most one partial last line; anything else is corruption.
                if lineno == len(lines):
                    logger.warning("%s:%d: incomplete last line dropped (the run was killed while writing it)",
                                   self.path, lineno)
                    break
                raise ConfigError(f"{self.path}:{lineno}: unreadable trial ({e})") from e
            self._replay[trial.key()] = trial
            good = lineno
        # Rewrite without a partial tail so appends start on a clean line.
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines[:good]) + "\n")
        logger.info("resuming: %d trial(s) replayed from %s", len(self._replay), self.path)

    def lookup(self, layer: str, blob: str, multiplier: float, note: str = "", restart: int = 0) -> Trial | None:
        return self._replay.get((layer, blob, round(multiplier, 9), note, restart))

    def append(self, trial: Trial) -> None:
        self.trials.append(trial)
        if trial.key() in self._replay:
            return  # already on disk
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(trial)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @property
    def replayed(self) -> int:
        return len(self._replay)
