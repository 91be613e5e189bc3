"""The registry of difference metrics. A metric turns fp32 and int8 outputs into one number, with a direction.

The metrics themselves live in the user's evaluation_utils.py, which registers them here; main.py imports that
file and the package only ever looks metrics up by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Mapping

import numpy as np

from .errors import ConfigError
from .registry import Registry

Outputs = Mapping[str, np.ndarray]


class Direction(str, Enum):
    LOWER = "lower"  # a difference: 0 is best
    HIGHER = "higher"  # an agreement or accuracy: larger is better


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Outputs, Outputs, Mapping[str, Any]], float]
    direction: Direction
    description: str = ""

    def __call__(self, fp32: Outputs, int8: Outputs, params: Mapping[str, Any] | None = None) -> float:
        value = self.fn(fp32, int8, params or {})
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"metric {self.name!r} returned {value!r}; a metric must return one number") from e
        if not np.isfinite(value):
            raise ConfigError(f"metric {self.name!r} returned {value}; a metric must return a finite number")
        return value

    def better(self, a: float, b: float) -> bool:
        """True when `a` is strictly better than `b`."""
        return a < b if self.direction is Direction.LOWER else a > b


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, direction: str | Direction = Direction.LOWER, description: str = ""):
    """Decorator for evaluation_utils.py: `@register_metric("square", "lower")` over `fn(fp32, int8, params)`."""
    direction = Direction(direction)

    def decorator(fn):
        METRICS.add(name, Metric(name, fn, direction, description or (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return decorator


def squared_error_parts(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """(sum (ref - test)^2, sum ref^2) in float64 accumulation without float64 copies. Additive over images, so
    the square metric can be accumulated batch by batch."""
    diff = np.subtract(ref, test, dtype=np.float32)
    return float(np.square(diff).sum(dtype=np.float64)), float(np.square(ref, dtype=np.float32).sum(dtype=np.float64))


def normalised_square(err: float, energy: float) -> float:
    """err / energy, or the plain error when the reference is all zero."""
    return err / energy if energy > 0 else err
