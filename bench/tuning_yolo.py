#!/usr/bin/env python3
"""Tuning a YOLO detector: plain calibrators vs the tuned table, measured on held-out images.

Images: ../shared/assets/images/detection + natural, sorted by name; every third one (starting with --offset)
up to --tune images is used for calibration and tuning, the rest is held out. On the held-out images each table
is scored with the yolo head difference (lower is better) and the detection agreement mAP@0.5 of the int8
detections against the fp32 detections (higher is better). The 18 held-out photos decide little (one image can
move the yolo difference by a third), so the first --wide images of images/imagenet_dev (natural photos, many
with VOC objects: animals, vehicles, people) form a second, larger held-out set, scored the same way.
Every convolution stays int8 in every table. With --restarts N > 1 (auto's default) each restart's table is also
scored alone: the spread of those rows is what a single tuning run is worth. With --draws N every table is also
scored under N relative 1e-6 moves of all its thresholds, on both held-out sets and on the two as one pooled
set: the held-out mAP of a few photos moves by whole detections under them, and a comparison of tables below that
spread says nothing.
--extra_tune N adds the last N imagenet_dev photos to the tuning images (use --wide <= 252 - N so that they stay
out of the held-out set): what more tuning images buy.
Speed: seconds per tuning candidate next to one plain fp32 forward pass of the whole net on the tuning images.

    python bench/tuning_yolo.py --model yolov3_nano_voc
    python bench/tuning_yolo.py --model yoloface_500k_v2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import ASSETS, YOLO_CFG, batches_of, detection_split, require_assets, workspace_of, yolo_params

from int8tune.config import DeliveryConfig
from int8tune.data import DataItem
from int8tune.metrics import METRICS
from int8tune.quant.calibrate import all_thresholds, build_table, collect_statistics, plan_quantization, planned_values
from int8tune.quant.calibrators import ACTIVATION_CALIBRATORS, CalibratorOptions
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.spec import QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.restarts import RESTART_JITTER, combine, final_objective, restart_start, tune_with_restarts
from int8tune.tune.search import SearchSettings
from int8tune.tune.start import best_start, choose_calibrators
from int8tune.tune.tuner import Tuner, TuneSettings, metric_outputs
from int8tune.yolo import (
    MOVED_IOU,
    NEAR_THRESHOLD,
    YoloParams,
    detection_agreement,
    detections_of,
    drawn_off,
    mean_average_precision,
    near_threshold,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov3_nano_voc", choices=sorted(YOLO_CFG))
    ap.add_argument("--tune", type=int, default=10)
    ap.add_argument("--offset", type=int, default=0,
                    help="tuning images are every third one from this index (0, 1, 2: three different splits)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--objective", default="outputs", choices=["model", "outputs", "layer", "guarded"])
    ap.add_argument("--metric", default="yolo")
    ap.add_argument("--subset", type=int, default=5, help="search on the N worst tuning images, confirm on all")
    ap.add_argument("--min_gain", type=float, default=0.01, help="smallest relative gain that changes a threshold")
    ap.add_argument("--unsigned", action="store_true", help="T/255 for non-negative blobs (see QuantSpec)")
    ap.add_argument("--equalize", action="store_true",
                    help="cross-layer equalization of the weights first (caffe/equalize.py), for every table")
    ap.add_argument("--restarts", type=int, default=DeliveryConfig.restarts,
                    help="whole-net tuning runs, the best kept as auto does (tune/restarts.py; 1: one plain run)")
    ap.add_argument("--wide", type=int, default=250, help="imagenet_dev images in the second held-out set (0: none)")
    ap.add_argument("--extra_tune", type=int, default=0,
                    help="also calibrate and tune on the last N imagenet_dev photos (never in the --wide set): "
                         "what more tuning images than the 10 are worth")
    ap.add_argument("--draws", type=int, default=0,
                    help="also score every table on the held-out photos with all its thresholds moved by a relative "
                         "1e-6, this many draws (the first is the table itself): the spread is the noise floor of "
                         "the held-out detection figures")
    args = ap.parse_args()
    require_assets()
    spec = QuantSpec(unsigned=args.unsigned)
    ws, params = workspace_of(args.model, args.equalize)
    tune_paths, held_out = detection_split(args.offset, args.tune)
    dev = sorted((ASSETS / "images" / "imagenet_dev").glob("*.JPEG"))
    if args.extra_tune:
        if args.wide + args.extra_tune > len(dev):
            ap.error(f"--wide {args.wide} + --extra_tune {args.extra_tune} > the {len(dev)} imagenet_dev photos")
        tune_paths = tune_paths + dev[len(dev) - args.extra_tune:]
    print(f"{args.model}: tuning images {[p.name for p in tune_paths]}")
    print(f"held-out images ({len(held_out)}): {[p.name for p in held_out]}")
    tune_b = batches_of([DataItem(p, None, None) for p in tune_paths], params, ws.input_shape, 1)
    test_b = batches_of([DataItem(p, None, None) for p in held_out], params, ws.input_shape, 1)
    wide_paths = dev[: args.wide]
    wide_b = batches_of([DataItem(p, None, None) for p in wide_paths], params, ws.input_shape, 10) if wide_paths else []
    mparams = yolo_params(args.model)
    yolo, ymap = METRICS.get("yolo"), METRICS.get("yolo_map")
    outputs = metric_outputs(ws.converted)
    fp32_engine = Engine(ws.converted, threads=args.threads)
    fp32_test = {o: np.concatenate([fp32_engine.run_tensors(b, [o])[o] for b in test_b]) for o in outputs}
    fp32_wide = {o: np.concatenate([fp32_engine.run_tensors(b, [o])[o] for b in wide_b]) for o in outputs} \
        if wide_b else {}

    def scores_on(table, batches, fp32):
        graph = build_int8_graph(ws.converted, table)
        engine = Engine(graph.converted, threads=args.threads, simulation=True)
        feeds = graph.feeds(table)
        runs = [engine.run_tensors(b, outputs, extra_feeds=feeds) for b in batches]
        int8 = {o: np.concatenate([r[o] for r in runs]) for o in outputs}
        if batches is test_b:  # the counts behind the held-out mAP (it moves in steps of one detection)
            agreement = detection_agreement(truth_test, detections_of(int8, yolo_p))
            found[name_of[0]] = (sum(a.found for a in agreement), sum(a.extra for a in agreement))
        return yolo(fp32, int8, mparams), ymap(fp32, int8, mparams)

    wide_scores = {}
    found = {}  # name -> (fp32 detections found, extra detections) on the held-out photos
    name_of = [""]
    yolo_p = YoloParams.from_dict(mparams)
    truth_test = detections_of(fp32_test, yolo_p)
    per_image = sorted(((len(t), p.name) for t, p in zip(truth_test, held_out)), reverse=True)
    print(f"fp32 detections on the held-out photos: {sum(n for n, _ in per_image)} "
          f"({', '.join(f'{name} {n}' for n, name in per_image if n)})")

    scored = {}  # name -> table, for --draws

    def held_out_scores(table, name):
        scored[name] = table
        if wide_b:
            wide_scores[name] = scores_on(table, wide_b, fp32_wide)
        name_of[0] = name
        return scores_on(table, test_b, fp32_test)

    plan = plan_quantization(ws.fold.net, spec)
    values = planned_values(plan)
    stats = collect_statistics(fp32_engine, values, lambda: iter(tune_b), 2048, False, progress=False)
    options = CalibratorOptions()
    rows = []
    tables = {}
    for method in ACTIVATION_CALIBRATORS.names() + ["auto"]:
        table = build_table(ws.fold.net, ws.converted, plan, stats, spec, "mse" if method == "auto" else method,
                            "minmax", options)
        if method == "auto":
            tuner = Tuner(ws.converted, tune_b, METRICS.get("square"), TuneSettings(threads=args.threads))
            table, _ = choose_calibrators(tuner, table, {v: all_thresholds(stats[v], options) for v in values})
        tables[method] = table
        d, m = held_out_scores(table, method)
        rows.append((method, d, m))
        print(f"  plain {method:<11} held-out yolo difference {d:.5f}   mAP@0.5 vs fp32 {m:.4f}", flush=True)
    best_plain = max(rows, key=lambda r: r[2])

    # one plain fp32 forward pass of the whole net over the tuning images, for scale
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for b in tune_b:
            fp32_engine.run_tensors(b, outputs)
        times.append(time.perf_counter() - t0)
    forward = statistics.median(times)
    settings = TuneSettings(objective=args.objective, threads=args.threads, metric_params=mparams, subset=args.subset,
                            min_gain=args.min_gain,
                            search_settings=SearchSettings())
    tuner = Tuner(ws.converted, tune_b, METRICS.get(args.metric), settings)
    start_name, start_scores = best_start(tuner, tables)  # as `auto` does: the best whole table on tuning images
    start = tables[start_name]
    before_tune = tuner.difference(start)
    t0 = time.perf_counter()
    tuning = tune_with_restarts(tuner, start, tuner.blobs_in_order(start), args.restarts)
    table = tuning.table
    per_blob = [r.seconds / r.candidates for r in tuning.results]
    tune_seconds = time.perf_counter() - t0
    after_tune = tuner.difference(table)
    d, m = held_out_scores(table, "tuned")
    restart_rows = []
    if len(tuning.restarts) > 1:  # each restart alone: what a single run would have given; and their mean
        print(f"kept restart {tuning.picked + 1} (the best objective on the tuning images)")
        mean = combine(start, [(r.start, r.table) for r in tuning.restarts], tuner.blobs_in_order(start))
        rd, rm = held_out_scores(mean, "mean of the restarts")
        restart_rows.append(("mean of the restarts (--restart_pick mean)", rd, rm))
        for run in tuning.restarts:
            rd, rm = held_out_scores(run.table, f"restart {run.number + 1}")
            restart_rows.append((f"restart {run.number + 1} alone", rd, rm))
            print(f"  restart {run.number + 1}: objective {final_objective(run):.5f}, "
                  f"{args.metric} on the tuning images "
                  f"{tuner.difference(run.table):.5f}; "
                  f"held-out {rd:.5f} / {rm:.4f}", flush=True)
    n_conv = sum(1 for e in table.quantized_layers())
    print(f"\nstart: {start_name} table (tuning-set {args.metric}: "
          f"{', '.join(f'{k} {v:.4f}' for k, v in start_scores.items())}); "
          f"tuning objective {args.objective}, metric {args.metric} on the {len(tune_b)} tuning "
          f"images: {before_tune:.5f} -> {after_tune:.5f}")
    print(f"tuned: held-out yolo difference {d:.5f}   mAP@0.5 vs fp32 {m:.4f}   ({n_conv}/{len(table.layers)} "
          f"layers int8)")
    print(f"best plain calibrator on held-out mAP: {best_plain[0]} ({best_plain[2]:.4f})")
    print(f"tuning: {tuner.trial_count} candidates in {tune_seconds:.1f}s; mean {np.mean(per_blob):.4f}s per "
          f"candidate (averaged over blobs) vs {forward:.4f}s for one fp32 forward pass of the whole net on the "
          f"same {len(tune_b)} images: ratio {np.mean(per_blob) / forward:.2f}")
    wide = f"{len(wide_paths)} imagenet_dev"
    total = sum(len(t) for t in truth_test)
    print(f"\n| table | held-out yolo difference | held-out mAP@0.5 vs fp32 | held-out: fp32 detections found of "
          f"{total}, extra | {wide}: yolo difference | {wide}: mAP@0.5 |")
    print("|---|---|---|---|---|---|")
    for method, d0, m0 in rows + restart_rows + [(f"tuned (from {start_name})", d, m)]:
        key = "tuned" if method.startswith("tuned") else method.removesuffix(" alone").split(" (--")[0]
        wd, wm = wide_scores.get(key, (float("nan"),) * 2)
        hit, extra = found.get(key, (-1, -1))
        print(f"| {method} | {d0:.5f} | {m0:.4f} | {hit}, +{extra} | {wd:.5f} | {wm:.4f} |")
    if args.draws > 0:
        sets = [("held-out photos", test_b, fp32_test)] + ([(wide, wide_b, fp32_wide)] if wide_b else [])
        truths = [detections_of(fp32, yolo_p) for _, _, fp32 in sets]
        print(f"\neach table with every threshold moved by a relative {RESTART_JITTER:g} ({args.draws} draws; "
              f"restart_start's move, which changes which values round up or down and nothing else); "
              f"median (min-max) over the draws" + (f"; pooled: the {len(held_out)} held-out photos and the {wide} "
                                                    f"photos as one set" if wide_b else "") + ":\n")
        head = ["table"]
        for (label, _, _), truth in zip(sets, truths):
            n = sum(len(t) for t in truth)
            head += [f"{label}: fp32 detections found of {n} (mean)", f"{label}: mAP@0.5", f"{label}: yolo difference"]
        if wide_b:
            head += [f"pooled: found of {sum(len(t) for tr in truths for t in tr)} (mean)", "pooled: mAP@0.5"]
        # a miss whose fp32 score is just above the confidence threshold flips with the smallest score change
        head += [f"{label}: misses near the threshold (fp32 score < {yolo_p.conf_threshold + NEAR_THRESHOLD:g}) / "
                 f"drawn off (an int8 box at IoU {MOVED_IOU:g}-0.5) / all misses (mean)" for label, _, _ in sets]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))

        def spread(values, fmt):
            return f"{format(float(np.median(values)), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"

        for name, table in scored.items():
            graph = build_int8_graph(ws.converted, table)
            engine = Engine(graph.converted, threads=args.threads, simulation=True)
            per_set = [([], [], []) for _ in sets]
            near = [([], [], []) for _ in sets]  # per set: misses near the threshold, drawn off, all misses
            pooled_hits, pooled_maps = [], []
            for k in range(args.draws):
                moved = restart_start(table, list(table.active_blobs()), k)
                all_truth, all_got = [], []
                for (label, batches, fp32), truth, (hits, maps, diffs), (near_k, off_k, all_k) in zip(
                        sets, truths, per_set, near):
                    runs = [engine.run_tensors(b, outputs, extra_feeds=graph.feeds(moved)) for b in batches]
                    int8 = {o: np.concatenate([r[o] for r in runs]) for o in outputs}
                    got = detections_of(int8, yolo_p)
                    agreement = detection_agreement(truth, got)
                    hits.append(sum(a.found for a in agreement))
                    missed = [x for a in agreement for x in a.missed_scores]
                    near_k.append(near_threshold(missed, yolo_p.conf_threshold))
                    off_k.append(drawn_off(agreement))
                    all_k.append(len(missed))
                    maps.append(mean_average_precision(truth, got, 0.5))
                    diffs.append(yolo(fp32, int8, mparams))
                    all_truth += truth
                    all_got += got
                pooled_hits.append(sum(a.found for a in detection_agreement(all_truth, all_got)))
                pooled_maps.append(mean_average_precision(all_truth, all_got, 0.5))
            cells = [name]
            for hits, maps, diffs in per_set:
                cells += [f"{np.mean(hits):.1f} ({min(hits)}-{max(hits)})", spread(maps, ".4f"), spread(diffs, ".5f")]
            if wide_b:
                cells += [f"{np.mean(pooled_hits):.1f} ({min(pooled_hits)}-{max(pooled_hits)})",
                          spread(pooled_maps, ".4f")]
            cells += [f"{np.mean(near_k):.1f} / {np.mean(off_k):.1f} / {np.mean(all_k):.1f}"
                      for near_k, off_k, all_k in near]
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
