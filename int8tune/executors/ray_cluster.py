"""The Ray executor: the items of a call run on the workers of a Ray cluster (`pip install -e '.[ray]'`).

Each worker is a Ray actor of one core holding a `WorkerContext`: the shared objects it received (models, with the
onnxruntime sessions it made of them), so a session is made once per worker and model, not once per item. The
driver keeps every worker busy with up to `IN_FLIGHT` items (one running, one queued, so that no worker waits
while the driver merges), hands the next item to whichever worker finishes, and yields the results in item order.

What travels: a task by reference (the workers import this package: every node needs the same int8tune,
onnxruntime and numpy, checked when the workers start); a shared object once per worker; an input batch once into
the object store (`batches`), from which the workers of a node read it without copying; per item its partial
result back (statistics, or the few output tensors a metric reads). Results left on the cluster (`keep`) stay in
the object store of the node that made them until the driver drops their handles.

Faults: a worker that dies (killed, out of memory, its node lost) is restarted by Ray and the items it held are
run again (`max_task_retries`); a task computes the same partial result wherever it runs, so the run's result
does not change. An item whose worker died more than `MAX_TASK_RETRIES` times ends the run with a ClusterError.
"""

from __future__ import annotations

import logging
import socket
import weakref
from typing import Any, Iterable, Iterator

from .. import __version__
from ..errors import ClusterError, ConfigError, Int8TuneError
from ..log import logger
from ..progress import Progress
from .base import EXECUTORS, Executor, ExecutorKind, ExecutorSettings, Shared, Task, WorkerContext, as_args

INSTALL_HINT = "pip install -e '.[ray]'"
IN_FLIGHT = 2  # items queued per worker
MAX_TASK_RETRIES = 3  # runs of one item after its worker died: more is a batch that kills its worker, not bad luck
PROBE_SECONDS = 10.0  # to open a TCP connection to the cluster's head (ray.init itself retries for minutes)
READY_SECONDS = 120.0  # for the first worker to start (workers wait for a free core)
STRAGGLER_SECONDS = 10.0  # for the others, after the first
_END = object()


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"--executor ray needs Ray, an optional extra of int8tune: {INSTALL_HINT} "
                          f"(or run with --executor local)") from e
    return ray


def versions() -> dict[str, str]:
    """What must be equal on the driver and every worker for their numbers to be equal."""
    import platform

    import numpy
    import onnxruntime

    return {"int8tune": __version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


class RayWorker:
    """The actor: runs tasks in its context. (Made a Ray actor class by RayExecutor, so that importing this module
    needs no Ray.)"""

    def __init__(self, threads: int) -> None:
        import ray

        self.context = WorkerContext(ray.get, threads=threads)

    def describe(self) -> dict[str, Any]:
        import os

        return {**versions(), "pid": os.getpid(), "node": socket.gethostname()}

    def run(self, task: Task, shared: Any, *args: Any) -> Any:
        return task(self.context, shared, *args)


def probe(address: str) -> None:
    """Fail fast, naming the address, when nothing answers there: ray.init would retry for minutes."""
    target = address.removeprefix("ray://")
    if address in ("auto", "local") or ":" not in target:
        return  # Ray's own names, resolved by Ray
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            pass
    except (OSError, ValueError) as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({e}): start its head there with `ray start "
                           f"--head`, check --ray_address / RAY_ADDRESS, or leave both unset to start a cluster on "
                           f"this machine") from e


@EXECUTORS.register(ExecutorKind.RAY.value)
class RayExecutor(Executor):
    kind = ExecutorKind.RAY

    def __init__(self, settings: ExecutorSettings) -> None:
        ray = self._ray = _import_ray()
        self._started = False
        self.address = settings.address
        if ray.is_initialized():
            logger.info("ray: using the Ray session this process already opened")
        else:
            if settings.address:
                probe(settings.address)
            try:
                # Ray's own progress and worker logs stay in its session folder: the run reports through its logger
                ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ClusterError(f"cannot join the Ray cluster at {settings.address or 'this machine'}: {e}") from e
            self._started = True
        self._actors: list = []
        try:
            self._start_workers(settings.workers)
        except BaseException:
            self.close()
            raise
        self._puts: dict[int, tuple[weakref.ref, Any]] = {}
        self._shared: weakref.WeakValueDictionary[str, Shared] = weakref.WeakValueDictionary()
        self.finished = 0  # items done, over every call (tests and benchmarks watch it)

    def _start_workers(self, count: int | None) -> None:
        """One worker per core of the cluster (or `count`). Cores that other work holds are waited for: up to
        READY_SECONDS for the first worker, then STRAGGLER_SECONDS more for the others, which are dropped after."""
        ray = self._ray
        count = count or int(ray.cluster_resources().get("CPU", 0))
        if count <= 0:
            raise ClusterError(f"the Ray cluster at {self.address or 'this machine'} has no core for a worker "
                               f"(resources: {ray.cluster_resources()})")
        actor = ray.remote(RayWorker).options(num_cpus=1, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)
        actors = [actor.remote(1) for _ in range(count)]
        pings = {a.describe.remote(): a for a in actors}
        ready, waiting = ray.wait(list(pings), num_returns=1, timeout=READY_SECONDS)
        if ready and waiting:
            more, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=STRAGGLER_SECONDS)
            ready += more
        for ref in waiting:  # no free core for them: the run goes on with those that started
            ray.kill(pings[ref])
        if not ready:
            raise ClusterError(f"no Ray worker started within {READY_SECONDS:.0f}s on the cluster at "
                               f"{self.address or 'this machine'}: every core is busy? (resources: "
                               f"{ray.cluster_resources()}, free: {ray.available_resources()})")
        mine = versions()
        for info in self._fetch_all(ready, "starting the workers"):
            other = {k: (v, info.get(k)) for k, v in mine.items() if info.get(k) != v}
            if other:
                for a in actors:
                    ray.kill(a)
                raise ClusterError(f"a Ray worker on {info['node']} runs other versions than this driver ("
                                   + ", ".join(f"{k} {w} there, {v} here" for k, (v, w) in other.items())
                                   + f"): install the same int8tune ({INSTALL_HINT}) in the same environment on "
                                     f"every node")
        if waiting:
            logger.warning("ray: %d of %d workers found no free core; running with %d", len(waiting), count,
                           len(ready))
        self._actors = [pings[ref] for ref in ready]
        logger.info("ray: %d workers of one core each on %s", len(ready), self.address or "this machine's cluster")

    @property
    def workers(self) -> int:
        return len(self._actors)

    def describe_workers(self) -> list[dict[str, Any]]:
        """Each worker's versions, process id and node (tests kill a worker by its process id)."""
        return self._fetch_all([a.describe.remote() for a in self._actors], "describing the workers")

    def share(self, obj: Any, key: str | None = None) -> Shared:
        key = key or obj.digest
        shared = self._shared.get(key)
        if shared is None:
            # alive while the caller holds the Shared: a restarted worker can fetch it again
            shared = Shared(key, self._ray.put(obj))
            self._shared[key] = shared
        return shared

    def batches(self, arrays: list) -> list:
        return [self._put_batch(a) for a in arrays]

    def _put_batch(self, array) -> Any:
        # Keyed by the array's identity, with a weak reference that drops the entry when the array goes: a new
        # array at the same address is then a new entry, never a stale one.
        key = id(array)
        hit = self._puts.get(key)
        if hit is not None and hit[0]() is array:
            return hit[1]
        ref = self._ray.put(array)
        self._puts[key] = (weakref.ref(array, lambda _, k=key: self._puts.pop(k, None)), ref)
        return ref

    def imap(self, task: Task, items: Iterable, *, shared: Any = None, progress: Progress | None = None,
             keep: bool = False) -> Iterator[Any]:
        ray = self._ray
        shared_ref = ray.put(shared)  # one copy for every item of this call
        source = iter(items)
        pending: dict[Any, tuple[int, Any]] = {}  # result reference -> (item index, worker)
        done: dict[int, Any] = {}
        submitted = 0
        yielded = 0

        def submit(actor) -> None:
            nonlocal submitted
            item = next(source, _END)
            if item is _END:
                return
            pending[actor.run.remote(task, shared_ref, *as_args(item))] = (submitted, actor)
            submitted += 1

        for _ in range(IN_FLIGHT):
            for actor in self._actors:
                submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, fetch_local=not keep)
            for ref in ready:
                index, actor = pending.pop(ref)
                done[index] = ref if keep else self._fetch(ref, f"item {index}")
                self.finished += 1
                if progress is not None:
                    progress.update()
                submit(actor)
            while yielded in done:
                yield done.pop(yielded)
                yielded += 1

    def get(self, handles: list) -> list:
        return self._fetch_all(list(handles), "fetching results")

    def _fetch(self, ref, what: str) -> Any:
        return self._fetch_all([ref], what)[0]

    def _fetch_all(self, refs: list, what: str) -> list:
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(refs)
        except exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Int8TuneError):  # the task's own message is the news (a bad image, a blob...)
                logger.debug("on a Ray worker: %s", e)
                raise cause from None
            raise
        except exceptions.RayActorError as e:
            raise ClusterError(f"{what}: its Ray worker died {MAX_TASK_RETRIES + 1} times running it (a batch "
                               f"that crashes its worker, or workers out of memory): {e}") from e
        except exceptions.ObjectLostError as e:
            raise ClusterError(f"{what}: a result kept on the cluster was lost with its node: {e}") from e

    def close(self) -> None:
        ray = self._ray
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False
