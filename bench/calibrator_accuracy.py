#!/usr/bin/env python3
"""Accuracy of every activation calibrator x granularity, for a classifier of the shared assets.

Calibrates on the first --calib images of the labelled list and measures top-1 on the next --test images (file
order, so the split is reproducible), fp32 and int8 for each calibrator (minmax, kl, percentile, mse, aciq and
the measured per-blob choice `auto`) and granularity (per_channel, per_tensor, mix). Statistics are collected
once (with per-channel histograms) and every table is a pure function of them.

    python bench/calibrator_accuracy.py --model squeezenet_v1.0 --images imagenet_dev --calib 100 --test 150
    python bench/calibrator_accuracy.py --model lenet_mnist --images mnist_dev --calib 500 --test 1500
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
from common import batches_of, labelled, model_paths, params_for, require_assets, split, top1

from int8tune.metrics import METRICS
from int8tune.pipeline.workspace import load_workspace
from int8tune.quant.calibrate import all_thresholds, build_table, collect_statistics, plan_quantization, planned_values
from int8tune.quant.calibrators import ACTIVATION_CALIBRATORS, CalibratorOptions
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.spec import Granularity, QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.start import choose_calibrators
from int8tune.tune.tuner import Tuner, TuneSettings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet_v1.0")
    ap.add_argument("--images", default="imagenet_dev")
    ap.add_argument("--calib", type=int, default=100)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--auto_images", type=int, default=32, help="images the auto choice measures on")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    require_assets()
    proto, model = model_paths(args.model)
    ws = load_workspace(proto, model)
    params = params_for(args.model)
    cal_items, test_items = split(labelled(args.images), args.calib, args.test)
    cal = batches_of(cal_items, params, ws.input_shape)
    test = batches_of(test_items, params, ws.input_shape)
    labels = np.array([i.label for i in test_items])
    output = ws.net.outputs[0]
    fp32_engine = Engine(ws.converted, threads=args.threads)
    fp32 = np.concatenate([fp32_engine.run(b, [output])[output] for b in test])
    print(f"{args.model}: calibration images 0..{len(cal_items) - 1}, test images {len(cal_items)}.."
          f"{len(cal_items) + len(test_items) - 1} of {args.images}/labels.txt (file order)")
    print(f"fp32 top-1 on the {len(test_items)} test images: {100 * top1(fp32, labels):.2f} %")

    t0 = time.perf_counter()
    plan = plan_quantization(ws.fold.net, QuantSpec())
    values = planned_values(plan)
    stats = collect_statistics(fp32_engine, values, lambda: iter(cal), 2048, per_channel=True, progress=False)
    print(f"statistics of {len(values)} blobs on {len(cal_items)} images: {time.perf_counter() - t0:.1f}s")
    options = CalibratorOptions()
    methods = ACTIVATION_CALIBRATORS.names() + ["auto"]
    rows = []
    for gran in Granularity:
        spec = QuantSpec(granularity=gran)
        for method in methods:
            if method == "auto" and gran is Granularity.PER_CHANNEL:
                continue  # auto chooses one threshold per blob
            t1 = time.perf_counter()
            table = build_table(ws.fold.net, ws.converted, plan, stats, spec, "mse" if method == "auto" else method,
                                "minmax", options)
            if method == "auto":
                tuner = Tuner(ws.converted, cal[: max(1, args.auto_images // 10)], METRICS.get("square"),
                              TuneSettings(threads=args.threads))
                per_blob = {v: all_thresholds(stats[v], replace(options)) for v in values}
                table, _ = choose_calibrators(tuner, table, per_blob)
            graph = build_int8_graph(ws.converted, table)
            engine = Engine(graph.converted, threads=args.threads)
            feeds = graph.feeds(table)
            int8 = np.concatenate([engine.run(b, [output], extra_feeds=feeds)[output] for b in test])
            acc = top1(int8, labels)
            agree = float((int8.reshape(len(labels), -1).argmax(1) == fp32.reshape(len(labels), -1).argmax(1)).mean())
            rows.append((gran.value, method, acc, agree, time.perf_counter() - t1))
            print(f"  {gran.value:<12} {method:<11} top-1 {100 * acc:6.2f} %   agreement with fp32 "
                  f"{100 * agree:6.2f} %   ({time.perf_counter() - t1:.1f}s)", flush=True)
    print("\n| granularity | calibrator | int8 top-1 % | top-1 agreement with fp32 % |")
    print("|---|---|---|---|")
    print(f"| (fp32) | | {100 * top1(fp32, labels):.2f} | 100.00 |")
    for gran, method, acc, agree, _ in rows:
        print(f"| {gran} | {method} | {100 * acc:.2f} | {100 * agree:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
