#!/usr/bin/env python3
"""Every recipe the tool has, per shared model, on the images it calibrated (and tuned) on and on images it never
saw: the plain calibrators, each weight lever alone and combined (as given and equalized), calibrate's default,
and main.sh's start, tuned pick and delivered table, with main.sh's wall time.

The splits and held-out scores are bench/weight_levers.py's (SqueezeNet: 32 imagenet_dev images to calibrate, the
next 200 held out; the detectors and landmark106: 14 detection/natural photos, the other 14 and 150 imagenet_dev
images held out). Every held-out figure is the exported model_int8_qdq.onnx's in a default onnxruntime session on
this CPU. "in-sample square" is the square distance of the outputs from fp32 on the calibration images (at most 32),
what calibrate reports and its --equalize choice compares.

main.sh is run as `int8tune.api.tune` (main.sh's loop, workflow.auto) on the calibration images, one image per batch
as main.sh's default --batch_size 1 reads them, with default settings; the YOLO nets with `--metric yolo` and their
.cfg, as a YOLO user runs it, the others with the default square metric. With fewer than 20 images it
cross-validates (docs/tuning.md, "Held-back delivery"): "main.sh delivered" is what tuned/ holds, "--holdout 0"
the table tuned on every image (what the default delivers when both folds show the tuning's gain). Wall times are
the API calls' (calibration, tuning, both deliveries and the report).

    python bench/recipe_table.py [--models squeezenet_v1.0 yolov3_nano_voc ...] [--workdir /tmp/recipe_table]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import model_paths, require_assets, yolo_params
from weight_levers import TABLES, commit_line, configurations, in_sample, outputs_of, print_tables

from int8tune.api import tune
from int8tune.config import QuantConfig
from int8tune.pipeline.calibration import calibrate
from int8tune.pipeline.equalize_choice import calibrate_choosing
from int8tune.pipeline.images import Images
from int8tune.pipeline.workspace import load_workspace
from int8tune.tune.tuner import metric_outputs

PLAIN_CALIBRATORS = ("minmax", "kl", "percentile", "mse", "aciq")  # "auto" is the levers' plain row
YOLO = ("yolov3_nano_voc", "yoloface_500k_v2")


def recipe_rows(args):
    """The `rows` function for weight_levers' per-model setups: one row per recipe of `name`."""

    def rows(name, cal_b, cal_what, held_b, score, formats, _):
        cal_images = Images(cal_what, sum(len(b) for b in cal_b), _batches=cal_b)
        measure = cal_images.head(32)
        out = []

        def row(recipe, ws, table, seconds):
            held = score(outputs_of(ws.converted, table, held_b, metric_outputs(ws.converted), args.threads))
            inside = in_sample(ws, table, measure, args.threads)
            out.append([recipe, *(format(v, f) for v, f in zip(held, formats)), f"{inside:.4g}", f"{seconds:.0f}"])
            print("  " + " | ".join(out[-1]), flush=True)

        ws = load_workspace(*model_paths(name))
        for method in PLAIN_CALIBRATORS:
            t = time.perf_counter()
            c = calibrate(ws, cal_images, QuantConfig(method=method), measure=measure, threads=args.threads)
            row(f"plain {method}", c.ws, c.table, time.perf_counter() - t)
        t = time.perf_counter()
        for equalize, lever, lws, table, seconds in configurations(
                lambda eq: load_workspace(*model_paths(name), eq), cal_images, ["sequential"], args.threads):
            lever = lever.replace(" (sequential)", "")
            row(f"auto, {lever}{', equalized' if equalize else ''}", lws, table,
                seconds if lever != "plain" else time.perf_counter() - t)
            t = time.perf_counter()
        t = time.perf_counter()
        quant = QuantConfig(adaround=None, bias_correction=None).with_default_levers(calibrates=True)
        c = calibrate_choosing(ws, cal_images, quant, measure=measure, threads=args.threads)
        way = "equalized" if c.ws.equalization is not None else "as given"
        row(f"calibrate default (kept the weights {way})", c.ws, c.table, time.perf_counter() - t)

        single = [b[i:i + 1] for b in cal_b for i in range(len(b))]  # main.sh's default --batch_size 1
        settings = {"threads": args.threads}
        if name in YOLO:
            settings.update(metric="yolo", metric_params=yolo_params(name))
        folder = args.workdir / name
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        result = tune(model_paths(name), single, output_path=folder, **settings)
        seconds = time.perf_counter() - t
        run, ws_run = result.run, result.session.ws
        row("main.sh start", ws_run, run.start, 0.0)
        row(f"main.sh delivered ({run.delivered})", ws_run, run.table, seconds)
        # the tuned table itself: --holdout 0 tunes on every image and delivers that (the default skips the tuning
        # on every image when its folds show no gain)
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        tuned = tune(model_paths(name), single, output_path=folder, holdout=0, **settings)
        row("main.sh --holdout 0 (tuned on every image)", tuned.session.ws, tuned.run.table, time.perf_counter() - t)
        return out

    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(TABLES), choices=list(TABLES))
    ap.add_argument("--held_out", type=int, default=200, help="squeezenet: held-out imagenet_dev images (<= 218)")
    ap.add_argument("--wide", type=int, default=150, help="the detectors: imagenet_dev images added to the held-out "
                                                         "photos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/recipe_table"), help="main.sh's outputs, per model")
    args = ap.parse_args()
    args.draws = 0
    require_assets()
    start = time.perf_counter()
    print(commit_line(), flush=True)
    tables = []
    for name in args.models:
        setup, columns = TABLES[name]
        header = ["recipe", *columns, "in-sample square", "s"]
        tables.append((name, header, setup(args, recipe_rows(args))))
    print_tables(tables, start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
