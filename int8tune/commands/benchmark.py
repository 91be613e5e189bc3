"""`int8tune benchmark`: fp32 vs the exported int8 QDQ model in onnxruntime, batch 1 and batch N, as ratios."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx

from ..benchmark import time_model
from ..errors import ConfigError
from ..outputs import atomic_write_json
from ..quant.formats import read_table_pb
from ..quant.qdq import count_int8_kernels, export_qdq
from ..quant.spec import WEIGHTED_TYPES
from .common import load_workspace
from .parse import default_threads, split_list


def run_benchmark(args: argparse.Namespace) -> int:
    ws = load_workspace(args.proto, args.model)
    if args.qdq is not None:
        qdq = onnx.load(str(args.qdq))
        n = None
    elif args.calibration_proto is not None:
        table = read_table_pb(args.calibration_proto)
        qdq, _ = export_qdq(ws.converted, table)
        n = sum(1 for e in table.quantized_layers() if e.type in WEIGHTED_TYPES)
    else:
        raise ConfigError("give the int8 model: --calibration_proto (a table) or --qdq (an exported QDQ .onnx)")
    k, _ = count_int8_kernels(qdq)
    fp32 = ws.converted.model
    input_name = next(iter(ws.net.inputs))
    threads = default_threads(args.threads)
    batches = [int(b) for b in split_list(args.batch_sizes)]
    print(f"int8tune benchmark: {ws.proto}; int8 kernels in onnxruntime's optimised QDQ graph: {k}"
          + (f"/{n}" if n is not None else "") + f"; threads {threads}; median of {args.repeat} runs")
    print(f"  {'batch':>5} {'fp32 ms':>9} {'int8 ms':>9} {'fp32 img/s':>11} {'int8 img/s':>11} {'fp32/int8':>9}")
    rows = []
    for b in batches:
        t32 = time_model("fp32", fp32, input_name, ws.input_shape, b, args.repeat, threads=threads)
        t8 = time_model("int8", qdq, input_name, ws.input_shape, b, args.repeat, threads=threads)
        ratio = t32.median_ms / t8.median_ms
        rows.append({"batch": b, "fp32_ms": t32.median_ms, "int8_ms": t8.median_ms, "speedup": ratio})
        print(f"  {b:>5} {t32.median_ms:>9.2f} {t8.median_ms:>9.2f} {t32.images_per_second:>11.1f} "
              f"{t8.images_per_second:>11.1f} {ratio:>9.2f}")
    if args.json_path:
        atomic_write_json(args.json_path, {"int8_kernels": k, "weighted_int8_layers": n, "rows": rows})
    return 0
