"""The trial log: every evaluated candidate, appended as one JSON line the moment it finishes.

The first line is a header with a fingerprint of the inputs (model files, images, settings). A run restarted
with the same inputs replays the log instead of re-evaluating (so it resumes where it stopped and reaches the
same result); a log whose fingerprint differs is refused with a message naming what changed, down to the
setting and its old and new value ("settings.quant.equalize: false -> true").
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


# What a fingerprint's top-level hashes stand for, in the refusal message.
_FINGERPRINT_PARTS = {"proto": "the prototxt file", "model": "the caffemodel file",
                      "images": "the tuning images or their order", "table": "the table tuning starts from"}


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts (and JSON text holding one, as the settings are stored) as {"a.b.c": leaf}."""
    if isinstance(value, str) and value[:1] == "{":
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one readable item per leaf: "settings.min_gain: 0.01 -> 0.5",
    "model (the caffemodel file)"."""
    a, b = _flat(old, ""), _flat(new, "")
    items = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        if key in _FINGERPRINT_PARTS:
            items.append(f"{key} ({_FINGERPRINT_PARTS[key]})")
            continue
        shown = [json.dumps(side[key]) if key in side else "absent" for side in (a, b)]
        items.append(f"{key}: {shown[0]} -> {shown[1]}" if max(map(len, shown)) <= 60 else key)
    return items


def refuse_other_inputs(path: Path, old: dict[str, Any], new: dict[str, Any]) -> ConfigError:
    return ConfigError(f"trial log {path} was written for different inputs (changed: "
                       f"{'; '.join(changed_inputs(old, new))}); refusing to resume from it. Use another "
                       f"--output_path, or delete the log to start afresh")


def read_header(path: Path) -> dict[str, Any]:
    """The fingerprint in a trial log's first line."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}:1: not a trial log (not UTF-8 text: {e}); delete it to start afresh") from e
    if not first.strip():
        raise ConfigError(f"trial log {path} is empty; delete it to start afresh")
    try:
        return json.loads(first).get("fingerprint", {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise ConfigError(f"{path}:1: not a trial log header ({e})") from e


class TrialLog:
    """Append-only JSONL log with a fingerprint header; `lookup` serves replayed trials on resume."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], resume: bool = True,
                 comparable: Callable[[dict], dict] | None = None) -> None:
        """`comparable(fingerprint)`: the part of a fingerprint that must match for a log to be resumed
        (default: all of it)."""
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._comparable = comparable or (lambda fp: fp)
        self.trials: list[Trial] = []
        self._replay: dict[tuple, Trial] = {}
        if self.path.exists() and resume:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"header": True, "fingerprint": fingerprint}) + "\n")

    def _load(self) -> None:
        old, new = self._comparable(read_header(self.path)), self._comparable(self.fingerprint)
        if old != new:
            raise refuse_other_inputs(self.path, old, new)
        lines = self.path.read_text(encoding="utf-8").splitlines()
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
