#!/usr/bin/env python3
"""Tuning a classifier with the square metric on a few images, top-1 measured on the rest.

The first --tune images of the labelled list (file order) calibrate and tune (as `main.sh` does: calibrate with
every calibrator, start from the whole table with the smallest square difference, tune every blob --restarts
times and keep the restart with the lowest objective); top-1 and top-1 agreement with fp32 are measured on all
the other images, before and after tuning, and for each restart alone.

    python bench/tuning_classifier.py --model squeezenet_v1.0 --images imagenet_dev --tune 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import batches_of, labelled, model_paths, params_for, require_assets, split, top1

from int8tune.config import DeliveryConfig
from int8tune.metrics import METRICS
from int8tune.pipeline.workspace import load_workspace
from int8tune.quant.calibrate import all_thresholds, build_table, collect_statistics, plan_quantization, planned_values
from int8tune.quant.calibrators import CalibratorOptions
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.spec import QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.restarts import final_objective, tune_with_restarts
from int8tune.tune.start import best_start, choose_calibrators, tables_per_calibrator
from int8tune.tune.tuner import Tuner, TuneSettings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet_v1.0")
    ap.add_argument("--images", default="imagenet_dev")
    ap.add_argument("--tune", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--subset", type=int, default=3)
    ap.add_argument("--restarts", type=int, default=DeliveryConfig.restarts, help="as auto's --restarts (1: one run)")
    ap.add_argument("--equalize", action="store_true",
                    help="cross-layer equalization of the weights first (caffe/equalize.py), for every table")
    args = ap.parse_args()
    require_assets()
    proto, model = model_paths(args.model)
    ws = load_workspace(proto, model, args.equalize)
    params = params_for(args.model)
    tune_items, test_items = split(labelled(args.images), args.tune)
    tune_b = batches_of(tune_items, params, ws.input_shape, 1)
    test_b = batches_of(test_items, params, ws.input_shape, 25)
    labels = np.array([i.label for i in test_items])
    out = ws.net.outputs[0]
    fp32 = np.concatenate([Engine(ws.converted, threads=args.threads).run(b, [out])[out] for b in test_b])

    def test_top1(table):
        graph = build_int8_graph(ws.converted, table)
        engine = Engine(graph.converted, threads=args.threads, simulation=True)
        feeds = graph.feeds(table)
        int8 = np.concatenate([engine.run(b, [out], extra_feeds=feeds)[out] for b in test_b])
        agree = (int8.reshape(len(labels), -1).argmax(1) == fp32.reshape(len(labels), -1).argmax(1)).mean()
        return top1(int8, labels), agree

    plan = plan_quantization(ws.fold.net, QuantSpec())
    values = planned_values(plan)
    stats = collect_statistics(Engine(ws.converted, threads=args.threads), values, lambda: iter(tune_b), 2048, False,
                               progress=False)
    options = CalibratorOptions()
    per_blob = {v: all_thresholds(stats[v], options) for v in values}
    table = build_table(ws.fold.net, ws.converted, plan, stats, QuantSpec(), "mse", "minmax", options)
    square = METRICS.get("square")
    tuner = Tuner(ws.converted, tune_b, square, TuneSettings(threads=args.threads, subset=args.subset))
    table, _ = choose_calibrators(tuner, table, per_blob)
    tables = tables_per_calibrator(table, per_blob)
    start_name, scores = best_start(tuner, tables)
    start = tables[start_name]
    t0 = time.perf_counter()
    tuning = tune_with_restarts(tuner, start, tuner.blobs_in_order(start), args.restarts)
    tuned = tuning.table
    seconds = time.perf_counter() - t0
    print(f"{args.model}: tuning images 0..{args.tune - 1} of {args.images}/labels.txt, test images "
          f"{args.tune}..{args.tune + len(test_items) - 1} ({len(test_items)})")
    print("whole tables' square difference on the tuning images: "
          + ", ".join(f"{k} {v:.5f}" for k, v in scores.items()) + f"; start from {start_name}")
    print(f"square difference on the tuning images: {tuner.difference(start):.5f} -> {tuner.difference(tuned):.5f} "
          f"({tuner.trial_count} candidates, {seconds:.1f}s)")
    print(f"fp32 top-1 on the test images: {100 * top1(fp32, labels):.2f} %")
    for name, t in (("every calibrator's table", None), ("start", start), ("tuned", tuned)):
        if t is None:
            for k, tt in tables.items():
                acc, agree = test_top1(tt)
                print(f"  plain {k:<11} top-1 {100 * acc:.2f} %  agreement {100 * agree:.2f} %")
            continue
        acc, agree = test_top1(t)
        print(f"{name:<6} top-1 {100 * acc:.2f} %  agreement with fp32 {100 * agree:.2f} %")
    if len(tuning.restarts) > 1:
        print(f"kept restart {tuning.picked + 1} (the lowest objective on the tuning images); each alone:")
        for run in tuning.restarts:
            acc, agree = test_top1(run.table)
            print(f"  restart {run.number + 1}: objective {final_objective(run):.5f}; top-1 {100 * acc:.2f} %  "
                  f"agreement {100 * agree:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
