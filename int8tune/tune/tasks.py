"""The tuner's per-batch work, as an executor runs it (executors/): each task is a top-level function of (worker
context, job, *item) returning one batch's part, and the tuner merges the parts in batch order.

The job names what every batch of a call needs: `Shared` models (an Engine, a GraphSession; each worker keeps its
sessions of them from call to call) and small values (tensor names, the threshold feeds of one candidate table:
trying another threshold sends new feeds, not a new graph). What comes back per batch is what the merge needs:
the few tensors a metric reads, or sums that add up in batch order (the square distance's error and energy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..executors import Shared, WorkerContext
from ..metrics import squared_energy, squared_error, squared_error_parts
from ..runtime import input_feeds, on_worker


@dataclass(frozen=True)
class TensorsJob:
    engine: Shared  # an Engine: fp32, or the int8 model of one table (thresholds frozen in)
    names: tuple[str, ...]


def tensors(ctx: WorkerContext, job: TensorsJob, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The named tensors of one batch."""
    return on_worker(ctx, job.engine).run_tensors(batch, job.names)


@dataclass(frozen=True)
class SquareJob:
    fp32: Shared
    int8: Shared
    names: tuple[str, ...]


def square_parts(ctx: WorkerContext, job: SquareJob, batch: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per named tensor, (sum of squared errors, sum of squared fp32 values) of one batch: the square metric's sums,
    which add up over batches (the fp32 side is computed here too: shipping it would cost more than running it)."""
    ref = on_worker(ctx, job.fp32).run_tensors(batch, job.names)
    got = on_worker(ctx, job.int8).run_tensors(batch, job.names)
    return {v: squared_error_parts(ref[v], got[v]) for v in job.names}


@dataclass(frozen=True)
class FrontierJob:
    inputs: Mapping[str, tuple[int, ...]]  # the net's inputs and their shapes
    fetch: tuple[str, ...]  # what the base holds besides the inputs
    available: frozenset[str]  # of them, those every batch already knows (carried from the last blob)
    missing: tuple[str, ...]  # the others, computed by `prefix`
    prefix: Shared | None  # a GraphSession from the inputs and the known tensors to `missing`
    prefix_inputs: tuple[str, ...] = ()


def frontier(ctx: WorkerContext, job: FrontierJob, batch: np.ndarray, *known: Mapping[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
    """The base of one batch for a tuned blob: its frontier tensors and the outputs the blob cannot change, under
    the current table, taken from what the batch already knows (`known`, merged in order) or computed."""
    merged: dict[str, np.ndarray] = {}
    for part in known:
        merged.update(part)
    values = {f: merged[f] for f in job.fetch if f in job.available}
    values.update(input_feeds(job.inputs, batch))
    if job.prefix is not None:
        sources = {**values, **merged}
        prefix = on_worker(ctx, job.prefix)
        values.update(zip(job.missing, prefix.run(job.missing, {k: sources[k] for k in job.prefix_inputs})))
    return values


@dataclass(frozen=True)
class SuffixJob:
    suffix: Shared  # a GraphSession: the nodes that depend on the tuned blob's threshold
    frontier: tuple[str, ...]
    feeds: Mapping[str, np.ndarray]  # the candidate's threshold feeds
    wanted: tuple[str, ...]  # outputs the suffix computes
    outputs: tuple[str, ...]  # every requested output (the others are in the base)


def suffix_outputs(ctx: WorkerContext, job: SuffixJob, base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The requested outputs of one batch under a candidate threshold: one run of the suffix from the base."""
    feeds = {f: base[f] for f in job.frontier}
    feeds.update(job.feeds)
    got = dict(zip(job.wanted, on_worker(ctx, job.suffix).run(job.wanted, feeds))) if job.wanted else {}
    return {o: got[o] if o in got else base[o] for o in job.outputs}


@dataclass(frozen=True)
class IsolatedPlan:
    value: str
    names: tuple[str, ...]  # the reading layers' outputs
    frontier: tuple[tuple[str, str], ...]  # (suffix input, the fp32 tensor it reads)
    candidates: tuple[tuple[str, Mapping[str, np.ndarray]], ...]  # (calibrator, threshold feeds)


@dataclass(frozen=True)
class IsolatedJob:
    fp32: Shared
    needed: tuple[str, ...]  # fp32 tensors every plan reads
    suffixes: Shared  # a tuple of GraphSessions, one per plan
    plans: tuple[IsolatedPlan, ...]


def isolated_parts(ctx: WorkerContext, job: IsolatedJob, batch: np.ndarray
                   ) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Per (blob, calibrator), the square sums of each reading layer's output on one batch with that blob alone
    quantized (every other blob fp32): the suffix runs from the fp32 tensors."""
    fp32 = on_worker(ctx, job.fp32).run_tensors(batch, job.needed)
    suffixes = on_worker(ctx, job.suffixes)
    out = {}
    for plan, suffix in zip(job.plans, suffixes):
        energy = [squared_energy(fp32[name]) for name in plan.names]  # the same for every candidate: once
        for key, feeds in plan.candidates:
            run_feeds = {f: fp32[source] for f, source in plan.frontier}
            run_feeds.update(feeds)
            got = suffix.run(plan.names, run_feeds)
            out[(plan.value, key)] = [(squared_error(fp32[name], array), e)
                                      for name, array, e in zip(plan.names, got, energy)]
    return out
