#!/usr/bin/env python3
"""Benchmark: this project's fp32 engine (ONNX + onnxruntime) against OpenCV's Caffe importer, same inputs.

For each model in ../shared/assets/models: load time, then forward latency at --batch (median of --repeat runs
after --warmup runs) for each engine, timed one engine at a time (interleaving sessions distorts both), with the
same thread count. OpenCV runs with its default layer fusion, int8tune with onnxruntime's full graph
optimisation, both returning only the model outputs. Prints a table and the ratio opencv / int8tune (> 1 means
int8tune is faster).

    python bench/engine_vs_opencv.py [--repeat 30] [--threads 2] [--batch 1] [--models squeezenet_v1.0 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from common import ASSETS, MODELS, model_paths  # noqa: E402  (puts the repo root on sys.path)

from int8tune.caffe.loader import load_net  # noqa: E402
from int8tune.check import opencv_net  # noqa: E402
from int8tune.convert.converter import convert_net  # noqa: E402
from int8tune.runtime import Engine  # noqa: E402


def timed(fn, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    args = ap.parse_args()
    if not ASSETS.is_dir():
        print(f"skipped: the shared assets are not at {ASSETS}")
        return 0
    import cv2

    cv2.setNumThreads(args.threads)
    rows = []
    for name in args.models:
        proto, model = model_paths(name)
        t0 = time.perf_counter()
        net = load_net(proto, model)
        engine = Engine(convert_net(net), threads=args.threads)
        shape = next(iter(net.inputs.values()))
        x = np.random.default_rng(0).random((args.batch, *shape[1:]), dtype=np.float32)
        engine.run(x)  # builds the session
        load_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        cv = opencv_net(proto, model)
        cv.enableFusion(True)  # OpenCV at its fastest for this comparison
        cv.setInput(x)
        outs = list(cv.getUnconnectedOutLayersNames())
        cv.forward(outs)
        load_cv = time.perf_counter() - t0
        ours = timed(lambda: engine.run(x), args.warmup, args.repeat)

        def cv_forward():
            cv.setInput(x)
            cv.forward(outs)

        theirs = timed(cv_forward, args.warmup, args.repeat)
        rows.append((name, load_ours, load_cv, ours * 1e3, theirs * 1e3, theirs / ours))
    print(f"threads={args.threads} repeat={args.repeat} batch={args.batch} (median latency of one forward pass)")
    print(f"{'model':<18} {'load int8tune':>13} {'load opencv':>11} {'int8tune ms':>11} {'opencv ms':>9} "
          f"{'opencv/int8tune':>15}")
    for name, lo, lc, o, c, ratio in rows:
        print(f"{name:<18} {lo:>12.2f}s {lc:>10.2f}s {o:>11.2f} {c:>9.2f} {ratio:>15.2f}")
    geo = float(np.exp(np.mean([np.log(r[-1]) for r in rows])))
    print(f"geometric mean ratio opencv/int8tune: {geo:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
