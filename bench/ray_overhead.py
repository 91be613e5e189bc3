#!/usr/bin/env python3
"""The Ray executor next to the local one, in one run, at equal cores, on SqueezeNet and imagenet_dev photos.

The same work on both: calibration statistics (both passes) over the images, then the fp32 references and
--evaluations whole-model evaluations of candidate tables (the start table, then one blob's threshold halved at a
time, as an accuracy strategy proposes them), each scored with top-1 on the driver. Local: one process with
onnxruntime at --cores threads. Ray: a cluster of --cores cores started in this process (`ray.init(num_cpus=..)`),
one worker of one thread per core. Prints both wall times and their ratio (goal <= 1.10), checks that both
computed the same bits, then the Ray executor's own costs (per-task overhead, bytes moved per batch) and a
projection, with its assumptions, of an accuracy-driven tune over 50,000 images on 16 nodes of 8 cores.

    python bench/ray_overhead.py [--images 100] [--batch_size 10] [--evaluations 4] [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import time

import numpy as np
from common import batches_of, labelled, require_assets, workspace_of

from int8tune.executors import ExecutorKind, ExecutorSettings, LocalExecutor, open_executor
from int8tune.metrics import METRICS
from int8tune.quant.calibrate import build_table, collect_statistics, plan_quantization, planned_values
from int8tune.quant.calibrators import CalibratorOptions
from int8tune.quant.spec import QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.tuner import Tuner, TuneSettings, metric_outputs

MODEL = "squeezenet_v1.0"

# --- the projection's assumptions (printed with it) ------------------------------------------------------------
P_IMAGES = 50_000
P_NODES, P_CORES = 16, 8
P_BATCH = 32  # images per task: at batch 1 the driver's per-task cost, not the workers, would set the pace
P_NIC = 1.25e9  # bytes/s per node (10 Gb/s Ethernet)
P_BLOBS, P_LAYERS = 19, 26  # SqueezeNet's thresholds and quantized layers (mix granularity, onnxruntime target)
P_CALIBRATORS = 8  # whole tables the basic strategy tries model-wise (each also with per-tensor weights)


def noop(ctx, shared, item):
    return item


def workload(ws, batches, labels, table, candidates, executor, cores):
    """Statistics over every batch, then the references and each candidate's top-1: what both executors run."""
    t0 = time.perf_counter()
    plan = plan_quantization(ws.fold.net, QuantSpec())
    stats = collect_statistics(Engine(ws.converted, threads=cores), planned_values(plan), lambda: iter(batches), 2048,
                               False, progress=False, executor=executor)
    t_stats = time.perf_counter() - t0
    tuner = Tuner(ws.converted, batches, METRICS.get("top1"), TuneSettings(threads=cores), labels=labels,
                  executor=executor)
    tuner.references(metric_outputs(ws.converted))
    t_refs = time.perf_counter() - t0 - t_stats
    scores = [tuner.difference(t) for t in candidates]
    seconds = time.perf_counter() - t0
    return seconds, t_stats, t_refs, stats, scores, tuner


def candidates_of(table, count: int) -> list:
    out = [table]
    for value in list(table.active_blobs())[: count - 1]:
        out.append(table.with_threshold(value, table.blobs[value].threshold / 2))
    return out


def per_task_overhead(executor, items: int = 200) -> tuple[float, float]:
    """(seconds per task when tasks stream through every worker, seconds for one task's round trip): a task that
    does nothing, so what is measured is the executor's own cost."""
    executor.map(noop, range(executor.workers * 4))  # warm: the workers import the task's module
    t0 = time.perf_counter()
    executor.map(noop, range(items))
    throughput = (time.perf_counter() - t0) / items
    latency = []
    for i in range(20):
        t = time.perf_counter()
        executor.map(noop, [i])
        latency.append(time.perf_counter() - t)
    return throughput, statistics.median(latency)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch_size", type=int, default=10)
    ap.add_argument("--evaluations", type=int, default=4)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    require_assets()
    import ray

    ws, params = workspace_of(MODEL)
    items = labelled("imagenet_dev")[: args.images]
    t0 = time.perf_counter()
    batches = batches_of(items, params, ws.input_shape, args.batch_size)
    prepare = (time.perf_counter() - t0) / len(items)
    labels = [np.array([i.label for i in items[k:k + args.batch_size]]) for k in range(0, len(items), args.batch_size)]
    plan = plan_quantization(ws.fold.net, QuantSpec())
    start_stats = collect_statistics(Engine(ws.converted), planned_values(plan), lambda: iter(batches[:2]), 2048,
                                     False, progress=False)
    table = build_table(ws.fold.net, ws.converted, plan, start_stats, QuantSpec(), "kl", "minmax",
                        CalibratorOptions())
    candidates = candidates_of(table, args.evaluations)
    print(f"{MODEL}, {len(items)} imagenet_dev photos in batches of {args.batch_size}, {args.cores} cores; work: "
          f"statistics (2 passes), fp32 references, {len(candidates)} candidate tables scored (top-1); load average "
          f"{os.getloadavg()[0]:.1f} at the start (others' processes share these cores)")

    # The two runs alternate local, ray, local, ray: the machine's load changes over minutes (others share it)
    t = time.perf_counter()
    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    remote = open_executor(ExecutorSettings(ExecutorKind.RAY))
    startup = time.perf_counter() - t
    runs = {"local": [], "ray": []}
    results = {}
    for _ in range(2):
        for name, executor in (("local", LocalExecutor()), ("ray", remote)):
            seconds, t_stats, t_refs, stats, scores, tuner = workload(ws, batches, labels, table, candidates,
                                                                      executor, args.cores)
            runs[name].append((seconds, t_stats, t_refs))
            results[name] = (stats, scores, tuner)
    local, ray_ = (min(runs[k]) for k in ("local", "ray"))
    same = results["local"][1] == results["ray"][1] and all(
        a.absmax == b.absmax and a.sum == b.sum and np.array_equal(a.histogram, b.histogram)
        for a, b in zip(results["local"][0].values(), results["ray"][0].values()))
    print(f"local: {local[0]:.1f}s (statistics {local[1]:.1f}s, references {local[2]:.1f}s, evaluations "
          f"{local[0] - local[1] - local[2]:.1f}s)")
    print(f"ray:   {ray_[0]:.1f}s (statistics {ray_[1]:.1f}s, references {ray_[2]:.1f}s, evaluations "
          f"{ray_[0] - ray_[1] - ray_[2]:.1f}s); cluster and {remote.workers} workers started in {startup:.1f}s, "
          f"once per run")
    print(f"ratio ray / local wall time: {ray_[0] / local[0]:.3f} (goal <= 1.10; best of 2 runs each; load average "
          f"{os.getloadavg()[0]:.1f} at the end)")
    print(f"same bits (statistics, top-1 of every table): {'yes' if same else 'NO'}; top-1: "
          + ", ".join(f"{s:.3f}" for s in results["ray"][1]))

    # -- the executor's own costs ----------------------------------------------------------------------------------
    throughput, latency = per_task_overhead(remote)
    tuner = results["local"][2]
    names = metric_outputs(ws.converted)
    batch_bytes = batches[0].nbytes
    result_bytes = len(pickle.dumps(tuner.fp32.run_tensors(batches[0], names)))  # what a task sends back
    model_bytes = len(pickle.dumps(tuner.frozen_engine(table)))
    engine = tuner.frozen_engine(table)
    t = time.perf_counter()
    Engine(engine.converted, threads=1, simulation=True).run_tensors(batches[0][:1], names)
    session_seconds = time.perf_counter() - t
    # one worker at one thread: the per-image compute of an evaluation on the Ray side
    evaluations = ray_[0] - ray_[1] - ray_[2]
    image_seconds = evaluations * remote.workers / (len(candidates) * len(items))
    print(f"per-task overhead: {1e3 * throughput:.2f} ms per task streamed through {remote.workers} workers "
          f"(a task that does nothing), {1e3 * latency:.2f} ms for one task's round trip")
    print(f"bytes moved per batch of {args.batch_size}: {batch_bytes / 1e6:.2f} MB of images once per run into the "
          f"object store (read there by each pass), {result_bytes / 1e3:.1f} kB of outputs back per evaluation; per "
          f"candidate table {model_bytes / 1e6:.1f} MB of model once per worker (+ {session_seconds:.2f}s session)")
    ray.shutdown()

    # -- projection ------------------------------------------------------------------------------------------------
    workers = P_NODES * P_CORES
    tasks = -(-P_IMAGES // P_BATCH)
    evals_halving = 1 + 3 * P_BLOBS
    evals_basic = 2 * (1 + P_CALIBRATORS) + 2 * P_LAYERS
    compute = P_IMAGES * image_seconds / workers
    dispatch = tasks * throughput  # the driver hands out and collects every task itself
    # every batch pulled from another node each evaluation (dynamic dispatch; the worst case), in parallel over nodes
    moved = P_IMAGES * (batch_bytes / args.batch_size) * (P_NODES - 1) / P_NODES / P_NODES / P_NIC
    per_table = session_seconds + model_bytes * P_NODES / P_NIC  # a session per worker, the model to every node
    back = P_IMAGES * (result_bytes / args.batch_size) / P_NIC
    per_eval = max(compute, dispatch) + moved + per_table + back
    # the two statistics passes and the fp32 references: about one evaluation each
    once = P_IMAGES * prepare + P_IMAGES * (batch_bytes / args.batch_size) / P_NIC + 3 * per_eval
    one_node = P_IMAGES * image_seconds / P_CORES
    print(f"projection, {P_IMAGES} images on {P_NODES} nodes x {P_CORES} cores ({workers} workers), tasks of "
          f"{P_BATCH} images ({tasks} per evaluation):")
    print(f"  per evaluation: compute {compute:.1f}s, driver dispatch {dispatch:.1f}s (overlaps compute), images "
          f"moved between nodes {moved:.1f}s (worst case), new table {per_table:.2f}s, outputs back {back:.2f}s "
          f"-> {per_eval:.1f}s (one 8-core node: {one_node:.0f}s)")
    print(f"  once: images prepared on the driver {P_IMAGES * prepare:.0f}s (single process, {1e3 * prepare:.1f} "
          f"ms/image measured), put into the object store, statistics (2 passes), references -> {once:.0f}s")
    for name, n in (("halving (3 per blob)", evals_halving), ("basic (model-wise + fallback)", evals_basic)):
        total = once + n * per_eval
        print(f"  {name}: at most {n} evaluations -> {total / 60:.0f} min (one 8-core node: "
              f"{(n + 3) * one_node / 3600:.1f} h)")
    print(f"  assumptions: cores as fast as these ({1e3 * image_seconds:.1f} ms per image at one thread, "
          f"measured); {P_NIC * 8 / 1e9:.0f} Gb/s per node; driver on a node of its own holding every prepared "
          f"image ({P_IMAGES * batch_bytes / args.batch_size / 1e9:.0f} GB) and the object store a copy; no "
          f"worker lost; metric and merge on the driver negligible (top-1 on {P_IMAGES} x 1000 logits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
