#!/usr/bin/env python3
"""How much of a tuning gain is rounding chaos: the spread of each objective when thresholds move by ~1e-6.

A threshold change far too small to matter (relative 1e-6, a few float32 ulps) still moves some values across a
rounding boundary of their quantizer, and 50-odd int8 layers later the model outputs differ. The spread this
causes in an objective, on the tuning images, is a floor under any gain the tuner can tell from chance: a
candidate "improving" by less is as likely chaos as signal. Printed for the yolo metric and the square distance of
the outputs, perturbing one blob at a time (what one tuning decision compares) and every blob at once.

Tuning images as in bench/tuning_yolo.py (every third detection+natural photo from --offset); the table is the
percentile calibration of those images.

    python bench/objective_noise.py --model yolov3_nano_voc
"""

from __future__ import annotations

import argparse

import numpy as np
from common import YOLO_CFG, batches_of, detection_split, require_assets, workspace_of, yolo_params

from int8tune.data import DataItem
from int8tune.metrics import METRICS
from int8tune.quant.calibrate import build_table, collect_statistics, plan_quantization, planned_values
from int8tune.quant.calibrators import CalibratorOptions
from int8tune.quant.spec import QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.tuner import Tuner, TuneSettings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="yolov3_nano_voc", choices=sorted(YOLO_CFG))
    ap.add_argument("--tune", type=int, default=10)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--draws", type=int, default=8, help="perturbations per setting")
    ap.add_argument("--blobs", type=int, default=4, help="single blobs perturbed, spread over the net")
    ap.add_argument("--epsilon", type=float, default=1e-6, help="relative size of the perturbation")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    require_assets()
    ws, params = workspace_of(args.model)
    paths, _ = detection_split(args.offset, args.tune)
    batches = batches_of([DataItem(p, None, None) for p in paths], params, ws.input_shape, 1)
    spec = QuantSpec()
    plan = plan_quantization(ws.fold.net, spec)
    values = planned_values(plan)
    stats = collect_statistics(Engine(ws.converted, threads=args.threads), values, lambda: iter(batches), 2048,
                               False, progress=False)
    table = build_table(ws.fold.net, ws.converted, plan, stats, spec, "percentile", "minmax", CalibratorOptions())
    mparams = yolo_params(args.model)
    tuners = {name: Tuner(ws.converted, batches, METRICS.get(name), TuneSettings(threads=args.threads,
                                                                                   metric_params=mparams))
              for name in ("yolo", "square")}
    rng = np.random.default_rng(0)
    base = {name: t.difference(table) for name, t in tuners.items()}
    print(f"{args.model}, {len(batches)} tuning images, percentile table: "
          + ", ".join(f"{k} {v:.5f}" for k, v in base.items()))

    def spread(blobs: list[str]) -> dict[str, float]:
        scores = {name: [] for name in tuners}
        for _ in range(args.draws):
            t = table
            for v in blobs:
                factor = 1.0 + args.epsilon * rng.standard_normal()
                t = t.with_threshold(v, float(np.float32(table.blobs[v].threshold * factor)))
            for name, tuner in tuners.items():
                scores[name].append(tuner.difference(t))
        return {name: float(np.std(s) / np.mean(s)) for name, s in scores.items()}

    picks = [values[int(k)] for k in np.linspace(0, len(values) - 1, args.blobs)]
    print(f"relative spread (std / mean over {args.draws} draws) for thresholds x (1 + {args.epsilon:g} N(0,1)):")
    print(f"  {'perturbed':<32} {'yolo':>8} {'square':>8} {'ratio':>6}")
    rows = [(f"blob {table.blobs[v].blob}", [v]) for v in picks] + [("every blob", values)]
    for label, blobs in rows:
        s = spread(blobs)
        ratio = f"{s['yolo'] / s['square']:>6.1f}" if s["square"] > 0 else f"{'-':>6}"
        print(f"  {label:<32} {s['yolo']:>8.4f} {s['square']:>8.4f} {ratio}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
