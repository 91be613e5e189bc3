"""Difference metrics: the registry (core.py) and the built-in metrics (builtin.py, and boxes.py for per-anchor
box/score detectors; registered on import).

A metric turns fp32 and int8 outputs into one number and carries its direction. Users add theirs with
`@register_metric` in evaluation_utils.py or a file given with --metric_module.
"""

from . import boxes, builtin  # noqa: F401,E402  (registers the built-in metrics)
from .core import (
                   METRICS,
                   Direction,
                   Metric,
                   Outputs,
                   load_metric_module,
                   normalised_square,
                   register_metric,
                   squared_energy,
                   squared_error,
                   squared_error_parts,
)

__all__ = ["METRICS", "Direction", "Metric", "Outputs", "load_metric_module", "normalised_square", "register_metric",
           "squared_energy", "squared_error", "squared_error_parts"]
