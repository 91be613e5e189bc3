"""The registry of difference metrics. A metric turns fp32 and int8 outputs into one number, with a direction.

The built-in metrics (metrics/builtin.py) are registered when the package is imported; the user's own come from
evaluation_utils.py (main.py imports it) or any file given with --metric_module (load_metric_module). The package
only ever looks metrics up by name, and a metric carries its direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError, Int8TuneError
from ..registry import Registry

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

    @property
    def higher_is_better(self) -> bool:
        return self.direction is Direction.HIGHER

    def better(self, a: float, b: float) -> bool:
        """True when `a` is strictly better than `b`."""
        return a < b if self.direction is Direction.LOWER else a > b

    def gain(self, before: float, after: float) -> float:
        """How much better `after` is than `before` (positive: an improvement), in the metric's units."""
        return before - after if self.direction is Direction.LOWER else after - before

    def worst_first(self, values: list[float]) -> list[int]:
        """Indices of `values`, the worst first."""
        return sorted(range(len(values)), key=lambda i: values[i], reverse=self.direction is Direction.LOWER)

    def meets(self, score: float, target: float) -> bool:
        """True when `score` reaches `target` (at least it for a higher-is-better metric, at most it otherwise)."""
        return score >= target if self.direction is Direction.HIGHER else score <= target


METRICS: Registry[Metric] = Registry("metric")


def register_metric(name: str, direction: str | Direction = Direction.LOWER, description: str = ""):
    """Decorator over `fn(fp32, int8, params)`: `@register_metric("max_abs", Direction.LOWER)` (or "lower")."""
    direction = Direction(direction)

    def decorator(fn):
        METRICS.add(name, Metric(name, fn, direction, description or (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return decorator


def squared_error_parts(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """(sum (ref - test)^2, sum ref^2) in float64 accumulation without float64 copies. Additive over images, so
    the square metric can be accumulated batch by batch."""
    return squared_error(ref, test), squared_energy(ref)


def squared_error(ref: np.ndarray, test: np.ndarray) -> float:
    """sum (ref - test)^2, as squared_error_parts computes it (for many `test` against one `ref`, whose energy
    squared_energy gives once)."""
    diff = np.subtract(ref, test, dtype=np.float32)
    return float(np.square(diff, out=diff).sum(dtype=np.float64))


def squared_energy(ref: np.ndarray) -> float:
    """sum ref^2, as squared_error_parts computes it."""
    return float(np.square(ref, dtype=np.float32).sum(dtype=np.float64))


def normalised_square(err: float, energy: float) -> float:
    """err / energy, or the plain error when the reference is all zero."""
    return err / energy if energy > 0 else err


_LOADED: dict[Path, list[str]] = {}  # metric files imported by this process -> the names each registered


def load_metric_module(path: Path) -> list[str]:
    """--metric_module FILE.py: import a file of @register_metric functions from anywhere; returns the names it
    registered. A file that does not exist, does not import, or registers nothing is an error naming it. A file
    already loaded by this process (the API called again with the same metric_module) is not imported twice."""
    import importlib.util

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--metric_module {path}: no such file")
    if path.resolve() in _LOADED:
        return _LOADED[path.resolve()]
    before = set(METRICS.names())
    spec = importlib.util.spec_from_file_location(f"int8tune_user_metrics_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--metric_module {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Int8TuneError:
        raise
    except Exception as e:  # the user's code: any error it raises is reported with the file named
        raise ConfigError(f"--metric_module {path}: importing it failed: {type(e).__name__}: {e}") from e
    added = sorted(set(METRICS.names()) - before)
    if not added:
        raise ConfigError(f"--metric_module {path}: it registers no new metric (use @register_metric from "
                          f"int8tune.metrics); registered: {', '.join(METRICS.names())}")
    _LOADED[path.resolve()] = added
    return added
