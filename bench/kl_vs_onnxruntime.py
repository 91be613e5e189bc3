#!/usr/bin/env python3
"""KL calibration: this project against onnxruntime's quantize_static(CalibrationMethod.Entropy), side by side.

Same converted fp32 graph (this project's converter, BatchNorm folded), same images, same preprocessing. Each
side runs in its own subprocess (peak memory = that process's max RSS), one after the other:
- int8tune: two streamed passes (absmax, 2048-bin |x| histograms), ncnn's KL per blob, table + QDQ export;
- onnxruntime: quantize_static with the Entropy calibrator, QDQ format, per-channel weights, writing the model.
Prints wall time and peak memory of each and the ratios.

    python bench/kl_vs_onnxruntime.py --model squeezenet_v1.0 --images imagenet_dev --count 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import labelled, model_paths, params_for, require_assets

HERE = Path(__file__).resolve().parent


def _items(args):
    return labelled(args.images)[: args.count]


def run_int8tune(args) -> None:
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.quant.calibrate import build_table, collect_statistics, plan_quantization, planned_values
    from int8tune.quant.calibrators import CalibratorOptions
    from int8tune.quant.qdq import export_qdq
    from int8tune.quant.spec import QuantSpec
    from int8tune.runtime import Engine

    proto, model = model_paths(args.model)
    ws = load_workspace(proto, model)
    params = params_for(args.model)
    items = _items(args)
    # streamed: images are prepared on each pass, none kept
    batches = lambda: (b for b in batches_of_stream(items, params, ws.input_shape))  # noqa: E731
    plan = plan_quantization(ws.fold.net, QuantSpec())
    stats = collect_statistics(Engine(ws.converted, threads=args.threads), planned_values(plan), batches, 2048,
                               per_channel=False, progress=False)
    table = build_table(ws.fold.net, ws.converted, plan, stats, QuantSpec(), "kl", "minmax", CalibratorOptions())
    model_out, _ = export_qdq(ws.converted, table)
    Path(args.out).write_bytes(model_out.SerializeToString())


def batches_of_stream(items, params, input_shape):
    from int8tune.data import iter_batches
    from test_utils import prepare_image

    for batch, _ in iter_batches(items, prepare_image, params, input_shape, 1):
        yield batch


def export_fp32(args, path: Path) -> None:
    from int8tune.pipeline.workspace import load_workspace

    proto, model = model_paths(args.model)
    ws = load_workspace(proto, model)
    path.write_bytes(ws.converted.model.SerializeToString())


def run_onnxruntime(args) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from int8tune.pipeline.workspace import load_workspace

    proto, model = model_paths(args.model)
    shape = load_workspace(proto, model).input_shape
    params = params_for(args.model)
    items = _items(args)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = batches_of_stream(items, params, shape)

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"data": batch}

    quantize_static(args.fp32, args.out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Entropy)


def child(side: str, args, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--_side", side, "--model", args.model, "--images", args.images,
           "--count", str(args.count), "--threads", str(args.threads)] + extra
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=HERE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{side} failed (status {status})")
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet_v1.0")
    ap.add_argument("--images", default="imagenet_dev")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--_side", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--fp32", default="")
    args = ap.parse_args()
    require_assets()
    if args._side == "int8tune":
        run_int8tune(args)
        return 0
    if args._side == "onnxruntime":
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        run_onnxruntime(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_fp32(args, fp32)
        ours = child("int8tune", args, ["--out", str(Path(tmp) / "ours.onnx")])
        theirs = child("onnxruntime", args, ["--fp32", str(fp32), "--out", str(Path(tmp) / "ort.onnx")])
    print(json.dumps({"int8tune": ours, "onnxruntime_entropy": theirs}, indent=1))
    print(f"{args.model}, {args.count} images, KL calibration + QDQ model:")
    print(f"  int8tune     {ours['seconds']:7.1f} s   peak {ours['peak_mb']:7.0f} MB")
    print(f"  onnxruntime  {theirs['seconds']:7.1f} s   peak {theirs['peak_mb']:7.0f} MB")
    print(f"  ratios (onnxruntime / int8tune): time {theirs['seconds'] / ours['seconds']:.2f}x, "
          f"peak memory {theirs['peak_mb'] / ours['peak_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
