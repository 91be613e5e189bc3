"""The trial log: every evaluated candidate, appended as one JSON line the moment it finishes.

The first line is a header with a fingerprint of the inputs (model files, images, settings). A run restarted
with the same inputs replays the log instead of re-evaluating (so it resumes where it stopped and reaches the
same result); a log whose fingerprint differs is refused with a message naming what changed, down to the
setting and its old and new value ("settings.quant.equalize: false -> true").
"""

from __future__ import annotations

import errno
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
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

    @classmethod
    def from_json(cls, value: Any) -> Trial:
        """A trial from one parsed log line; a field of the wrong type is a ValueError naming the field (a log
        edited by hand or by another tool must not crash the replay, nor replay a wrong decision)."""
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, found {type(value).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        missing = [f.name for f in fields(cls) if f.name not in value and f.name not in ("note", "extra", "restart")]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        for name, check, expected in _FIELD_TYPES:
            if name in value and not check(value[name]):
                raise ValueError(f"field {name!r}: expected {expected}, found {json.dumps(value[name])[:40]}")
        for key in _NUMERIC_EXTRA:
            if key in value.get("extra", {}) and not (value["extra"][key] is None or _is_number(value["extra"][key])):
                raise ValueError(f"field 'extra.{key}': expected a number or null, found "
                                 f"{json.dumps(value['extra'][key])[:40]}")
        return cls(**value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A JSON number (json.dumps writes NaN and Infinity for non-finite floats, and reads them back)."""
    return _is_int(v) or isinstance(v, float)


# (field, check, what it must be): what Trial's writers (tuner.py, driver.py) put in the log.
_FIELD_TYPES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("index", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("layer", lambda v: isinstance(v, str), "a string"),
    ("blob", lambda v: isinstance(v, str), "a string"),
    ("multiplier", lambda v: _is_number(v) and math.isfinite(v), "a finite number"),
    ("threshold", _is_number, "a number"),
    ("difference", _is_number, "a number"),
    ("seconds", _is_number, "a number"),
    ("note", lambda v: isinstance(v, str), "a string"),
    ("extra", lambda v: isinstance(v, dict), "a JSON object"),
    ("restart", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
)
# Keys of `extra` that a replay compares as numbers (tuner.py's guarded objective and subset search).
_NUMERIC_EXTRA = ("subset", "metric", "metric_subset", "int8_layers")


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
    refuse_symlink(path)
    try:
        with open(path, "rb") as f:  # bytes: a text reader would decode (and choke on) the lines after it too
            first = f.readline().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}:1: not a trial log (not UTF-8 text: {e}); delete it to start afresh") from e
    if not first.strip():
        raise ConfigError(f"trial log {path} is empty; delete it to start afresh")
    try:
        fingerprint = json.loads(first).get("fingerprint", {})
    except (json.JSONDecodeError, AttributeError, RecursionError) as e:
        raise ConfigError(f"{path}:1: not a trial log header ({type(e).__name__}: {e})") from e
    if not isinstance(fingerprint, dict):
        raise ConfigError(f"{path}:1: not a trial log header (its fingerprint is not a JSON object)")
    return fingerprint


def refuse_symlink(path: Path) -> None:
    """The trial log is written in place (appended to, rewritten on resume): a symlink there would make the run
    overwrite whatever file it points to, outside the output folder."""
    if path.is_symlink():
        raise ConfigError(f"trial log {path} is a symbolic link (to {os.readlink(path)}); refusing to write "
                          f"through it. Remove the link, or use another --output_path")


def _open_for_writing(path: Path, append: bool):
    """open(path, "a"/"w") that never follows a symlink (O_NOFOLLOW where the platform has it)."""
    refuse_symlink(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:  # the link appeared after the check above
            refuse_symlink(path)
        raise
    return os.fdopen(fd, "a" if append else "w", encoding="utf-8")


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
        refuse_symlink(self.path)
        if self.path.exists() and resume:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _open_for_writing(self.path, append=False) as f:
                f.write(json.dumps({"header": True, "fingerprint": fingerprint}) + "\n")

    def _load(self) -> None:
        old, new = self._comparable(read_header(self.path)), self._comparable(self.fingerprint)
        if old != new:
            raise refuse_other_inputs(self.path, old, new)
        data = self.path.read_bytes()
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            lineno = data[:e.start].count(b"\n") + 1
            raise ConfigError(f"{self.path}:{lineno}: not UTF-8 text ({e.reason}); delete the log to start "
                              f"afresh") from e
        good = 1
        for lineno, line in enumerate(lines[1:], 2):
            try:
                parsed = json.loads(line)
            except RecursionError as e:
                raise ConfigError(f"{self.path}:{lineno}: unreadable trial (nested too deeply)") from e
            except json.JSONDecodeError as e:
                # A run killed mid-write leaves at most one partial last line; anything else is corruption.
                if lineno == len(lines):
                    logger.warning("%s:%d: incomplete last line dropped (the run was killed while writing it)",
                                   self.path, lineno)
                    break
                raise ConfigError(f"{self.path}:{lineno}: unreadable trial ({e})") from e
            try:
                # A complete line of the wrong shape was not cut by a kill: it is refused wherever it is.
                trial = Trial.from_json(parsed)
            except ValueError as e:
                raise ConfigError(f"{self.path}:{lineno}: unreadable trial ({e}); delete the log to start "
                                  f"afresh") from e
            self._replay[trial.key()] = trial
            good = lineno
        # Rewrite without a partial tail so appends start on a clean line.
        with _open_for_writing(self.path, append=False) as f:
            f.write("\n".join(lines[:good]) + "\n")
        logger.info("resuming: %d trial(s) replayed from %s", len(self._replay), self.path)

    def lookup(self, layer: str, blob: str, multiplier: float, note: str = "", restart: int = 0) -> Trial | None:
        return self._replay.get((layer, blob, round(multiplier, 9), note, restart))

    def append(self, trial: Trial) -> None:
        self.trials.append(trial)
        if trial.key() in self._replay:
            return  # already on disk
        with _open_for_writing(self.path, append=True) as f:
            f.write(json.dumps(asdict(trial)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @property
    def replayed(self) -> int:
        return len(self._replay)
