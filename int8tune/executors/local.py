"""The local executor: every item in this process, one after the other, in item order.

onnxruntime already uses every core given by --threads inside one run, so the items run one at a time. A handle
is the object itself: `share`, `batches` and `keep` cost nothing, and a task receives exactly the arrays the
caller holds.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from ..progress import Progress
from .base import EXECUTORS, Executor, ExecutorKind, ExecutorSettings, Shared, Task, WorkerContext, as_args


@EXECUTORS.register(ExecutorKind.LOCAL.value)
class LocalExecutor(Executor):
    kind = ExecutorKind.LOCAL

    def __init__(self, settings: ExecutorSettings | None = None) -> None:
        # A shared object is the caller's own, sessions included: nothing to keep here (keeping would hold the
        # sessions of every recent candidate table alive), nothing to override (the caller's --threads).
        self.context = WorkerContext(lambda handle: handle, threads=None, capacity=0)

    @property
    def workers(self) -> int:
        return 1

    def share(self, obj: Any, key: str | None = None) -> Shared:
        return Shared(key or "", obj)  # nothing is kept by key here

    def batches(self, arrays: list) -> list:
        return list(arrays)

    def imap(self, task: Task, items: Iterable, *, shared: Any = None, progress: Progress | None = None,
             keep: bool = False) -> Iterator[Any]:
        for item in items:
            result = task(self.context, shared, *as_args(item))
            if progress is not None:
                progress.update()
            yield result

    def get(self, handles: list) -> list:
        return list(handles)
