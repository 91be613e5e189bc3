"""Where a run's per-batch work executes: in this process (`local`, the default) or on a Ray cluster (`ray`).

base.py holds the seam (`Executor.map`, `Shared`, `WorkerContext`) and the registry; each kind registers itself
from its own module. Importing this package never imports Ray: ray_cluster.py does when a Ray executor opens.
"""

from . import local, ray_cluster  # noqa: F401  (fill the registry)
from .base import (
    EXECUTOR_KINDS,
    EXECUTORS,
    Executor,
    ExecutorKind,
    ExecutorSettings,
    Shared,
    WorkerContext,
    open_executor,
    resolve_address,
)
from .local import LocalExecutor

__all__ = ["EXECUTORS", "EXECUTOR_KINDS", "Executor", "ExecutorKind", "ExecutorSettings", "LocalExecutor", "Shared",
           "WorkerContext", "open_executor", "resolve_address"]
