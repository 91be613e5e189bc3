"""The seam between a run and where its per-batch work executes.

A run's heavy work is the same function applied to every batch of images (statistics of a pass, the outputs of
one table, a candidate threshold's suffix run). An executor runs such a *task* on each *item* (a batch, with what
else that batch needs) and hands back one partial result per item, in item order, whatever order they finished
in; the caller merges them in that order, so the result does not depend on where or when an item ran:

    results = executor.map(task, items, shared=job, progress=bar)

- `task(ctx, shared, *item)` is a top-level function (shipped by reference: every worker imports this package);
  `ctx` is the worker's `WorkerContext`, `shared` what every item of the call needs (small: names, feeds, and
  `Shared` references to big objects such as a model).
- `Shared(key, ...)` (from `executor.share(obj)`) is an object sent to each worker once, whatever the number of
  calls that use it: `ctx.get(shared)` returns the worker's copy. `key` names the content (`obj.digest`, a model's
  sha256, unless given), so a worker keeps its onnxruntime sessions from call to call.
- `executor.batches(arrays)` stores input batches once (Ray's object store) for runs that read them many times;
  `keep=True` leaves the results where they were made, as handles that later items take (the tuner's frontier
  tensors) and `executor.get` fetches.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterable, Iterator

from ..errors import ConfigError
from ..progress import Progress
from ..registry import Registry


class ExecutorKind(str, Enum):
    """Where the batches run: in this process (local) or on the workers of a Ray cluster (ray)."""

    LOCAL = "local"
    RAY = "ray"


EXECUTOR_KINDS = tuple(k.value for k in ExecutorKind)
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable: where `ray start --head` said the cluster is


@dataclass(frozen=True)
class ExecutorSettings:
    kind: ExecutorKind = ExecutorKind.LOCAL
    # ray: the cluster to join (host:port of its head, or ray://host:port); None: as Ray decides, the cluster
    # `ray start` last started on this machine, else a new one on this machine for the run
    address: str | None = None
    workers: int | None = None  # ray: worker processes (one core each); None: every core the cluster has free

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", ExecutorKind(self.kind))
        except ValueError:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTOR_KINDS)}, found {self.kind!r}") from None
        if self.workers is not None and self.workers <= 0:
            raise ConfigError(f"the number of Ray workers must be positive, found {self.workers}")


def resolve_address(kind: ExecutorKind | str, address: str | None) -> str | None:
    """--ray_address as given, else (for --executor ray) $RAY_ADDRESS, else None (this machine's cluster, see
    ExecutorSettings.address). Resolved once at the edge, so that the echoed settings say which cluster."""
    if address or ExecutorSettings(kind).kind is not ExecutorKind.RAY:
        return address or None
    return os.environ.get(RAY_ADDRESS_ENV) or None


@dataclass(frozen=True)
class Shared:
    """An object every worker needs, sent to each once. `key` names its content: equal keys, equal objects."""

    key: str
    handle: Any  # the object itself (local) or where it is stored (a Ray object reference)


class WorkerContext:
    """What a task sees of its worker: the shared objects it already holds (bounded, least recently used first
    out: each may hold onnxruntime sessions, a copy of the model's weights apiece) and its cores."""

    def __init__(self, resolve: Callable[[Any], Any], threads: int | None, capacity: int = 6) -> None:
        self._resolve = resolve
        self.threads = threads  # onnxruntime threads of this worker's sessions; None: as the driver said
        self.capacity = capacity
        self._held: OrderedDict[str, Any] = OrderedDict()

    def get(self, shared: Shared) -> Any:
        if shared.key in self._held:
            self._held.move_to_end(shared.key)
            return self._held[shared.key]
        obj = self._resolve(shared.handle)
        self._held[shared.key] = obj
        while len(self._held) > self.capacity:
            self._held.popitem(last=False)
        return obj

    def __len__(self) -> int:
        return len(self._held)


Task = Callable[..., Any]  # task(ctx, shared, *item) -> partial result


class Executor(ABC):
    kind: ExecutorKind

    @property
    @abstractmethod
    def workers(self) -> int:
        """Items that run at the same time."""

    @abstractmethod
    def share(self, obj: Any, key: str | None = None) -> Shared:
        """`obj` as every worker receives it, once; `key` names its content (default `obj.digest`, asked for only
        where the object travels: hashing a model costs a serialization)."""

    @abstractmethod
    def batches(self, arrays: list) -> list:
        """Handles of input batches, stored once however many calls read them (the arrays themselves locally)."""

    @abstractmethod
    def imap(self, task: Task, items: Iterable, *, shared: Any = None, progress: Progress | None = None,
             keep: bool = False) -> Iterator[Any]:
        """task(ctx, shared, *item) for each item (a tuple of arguments, or one argument), yielded in item order as
        soon as it and every earlier item are done; `progress` counts every finished item. `keep`: yield handles
        of the results, left where they were made (for later items), instead of the results."""

    def map(self, task: Task, items: Iterable, *, shared: Any = None, progress: Progress | None = None,
            keep: bool = False) -> list:
        return list(self.imap(task, items, shared=shared, progress=progress, keep=keep))

    @abstractmethod
    def get(self, handles: list) -> list:
        """The results behind handles from a `keep` map."""

    def close(self) -> None:
        """Release the workers."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


ExecutorFactory = Callable[[ExecutorSettings], Executor]
EXECUTORS: Registry[ExecutorFactory] = Registry("executor")


def open_executor(settings: ExecutorSettings | None = None) -> Executor:
    """The executor `settings` name (local by default); use it as a context manager to release its workers."""
    settings = settings or ExecutorSettings()
    return EXECUTORS.get(settings.kind.value)(settings)


def as_args(item: Any) -> tuple:
    return item if isinstance(item, tuple) else (item,)
