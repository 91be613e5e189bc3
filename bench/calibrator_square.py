#!/usr/bin/env python3
"""Per-output square distance fp32 vs int8 for each activation calibrator (mix granularity, minmax weights).

Statistics on the given images; the difference measured on the same images, per model output blob:
sum((fp32 - int8)^2) / sum(fp32^2).

    python bench/calibrator_square.py --model yolov3_nano_voc --folders detection natural
"""

from __future__ import annotations

import argparse

from common import ASSETS, batches_of, model_paths, params_for, require_assets

from int8tune.data import DataItem
from int8tune.metrics import METRICS
from int8tune.pipeline.workspace import load_workspace
from int8tune.quant.calibrate import all_thresholds, build_table, collect_statistics, plan_quantization, planned_values
from int8tune.quant.calibrators import ACTIVATION_CALIBRATORS, CalibratorOptions
from int8tune.quant.spec import QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.start import choose_calibrators
from int8tune.tune.tuner import Tuner, TuneSettings, metric_outputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov3_nano_voc")
    ap.add_argument("--folders", nargs="+", default=["detection", "natural"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    require_assets()
    proto, model = model_paths(args.model)
    ws = load_workspace(proto, model)
    paths = sorted(p for f in args.folders for p in (ASSETS / "images" / f).iterdir())
    batches = batches_of([DataItem(p, None, None) for p in paths], params_for(args.model), ws.input_shape, 1)
    plan = plan_quantization(ws.fold.net, QuantSpec())
    values = planned_values(plan)
    stats = collect_statistics(Engine(ws.converted, threads=args.threads), values, lambda: iter(batches), 2048,
                               False, progress=False)
    options = CalibratorOptions()
    square = METRICS.get("square")
    tuner = Tuner(ws.converted, batches, square, TuneSettings(threads=args.threads))
    outputs = metric_outputs(ws.converted)
    print(f"{args.model} on {len(paths)} images of {', '.join(args.folders)}: square distance per output")
    print("| calibrator | " + " | ".join(outputs) + " |")
    print("|---|" + "---|" * len(outputs))
    for method in ACTIVATION_CALIBRATORS.names() + ["auto"]:
        table = build_table(ws.fold.net, ws.converted, plan, stats, QuantSpec(), "mse" if method == "auto" else method,
                            "minmax", options)
        if method == "auto":
            table, _ = choose_calibrators(tuner, table, {v: all_thresholds(stats[v], options) for v in values})
        fp32 = tuner.references(outputs)
        int8 = tuner.run_int8(table, outputs)
        cells = [f"{square({o: fp32[o]}, {o: int8[o]}):.5f}" for o in outputs]
        print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
