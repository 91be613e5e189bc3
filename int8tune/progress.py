"""Progress of a long step, with an estimate of the time left.

On a terminal: a tqdm bar. Anywhere else (a log file, CI): tqdm's carriage-return redraws are noise there, so
the progress goes to the library's logger instead, one INFO line at most every `interval` seconds and one at the
end, e.g. ``calibration statistics: 40/200 batches, 31s elapsed, about 124s left``. A step that took less than
`interval` logs nothing at all: short steps stay silent.

    with Progress(total=2 * n, desc="calibration statistics") as p:
        for batch in batches:
            ...
            p.update()

    for batch in track(batches, total=n, desc="evaluation"):
        ...

The estimate is linear: time so far / items done * items left (tqdm's own estimate is the same on average).
"""

from __future__ import annotations

import sys
import time
from enum import Enum
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

from .log import logger

T = TypeVar("T")

DEFAULT_INTERVAL = 10.0  # seconds between two log lines


class ProgressMode(str, Enum):
    """How a strategy reports its evaluations (--progress): a line each (print), a bar (bar), or nothing (none)."""

    PRINT = "print"
    BAR = "bar"
    NONE = "none"


class Progress:
    """Counts items of a step of `total` items (None: unknown) and reports as described in the module docstring.

    `enabled` False reports nothing. `clock` (seconds, monotonic) and `terminal` (default: sys.stderr.isatty()) are
    there for tests."""

    def __init__(self, total: int | None, desc: str, unit: str = "batch", enabled: bool = True,
                 interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 terminal: bool | None = None):
        if total is not None and total < 0:
            raise ValueError(f"progress {desc!r}: total must be >= 0 or None, got {total}")
        if interval <= 0:
            raise ValueError(f"progress {desc!r}: interval must be > 0 seconds, got {interval}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.interval = float(interval)
        self.done = 0
        self._clock = clock
        self._start = clock()
        self._last_line = self._start
        self._logged_done: int | None = None  # the count of the last line logged
        self._closed = False
        if terminal is None:
            terminal = _is_terminal()
        self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False) if enabled and terminal else None

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def eta(self) -> float | None:
        """Seconds left at the average pace so far; None without a total or before the first item."""
        if self.total is None or self.done <= 0:
            return None
        return max(0.0, self.elapsed / self.done * (self.total - self.done))

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled or self._closed:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._log()

    def line(self) -> str:
        """The log line for the current state."""
        unit = _plural(self.unit)
        elapsed = self.elapsed
        if self.total is None:
            return f"{self.desc}: {self.done} {unit}, {elapsed:.0f}s elapsed"
        eta = self.eta()
        left = f", about {eta:.0f}s left" if eta is not None else ""
        return f"{self.desc}: {self.done}/{self.total} {unit}, {elapsed:.0f}s elapsed{left}"

    def close(self) -> None:
        """End the progress: closes the bar, or logs the final line if the step took at least `interval` (unless
        the last line already said the same count)."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.elapsed >= self.interval and self._logged_done != self.done:
            self._log()

    def _log(self) -> None:
        self._logged_done = self.done
        logger.info("%s", self.line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable[T], total: int | None, desc: str, unit: str = "batch", enabled: bool = True,
          interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic,
          terminal: bool | None = None) -> Iterator[T]:
    """Yield the items of `iterable`, counting each once the consumer asks for the next one (it is then done)."""
    with Progress(total, desc, unit, enabled, interval, clock, terminal) as progress:
        for item in iterable:
            yield item
            progress.update()


def _is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def _plural(unit: str) -> str:
    # "batch" -> "batches", "image" -> "images": the format reads "{unit}s" in plain English
    return unit + ("es" if unit.endswith(("s", "x", "z", "ch", "sh")) else "s")
