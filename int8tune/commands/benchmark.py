"""`int8tune benchmark`: fp32 vs the exported int8 QDQ model in onnxruntime, batch 1 and batch N, as ratios; what
onnxruntime runs in int8 and in float; the exact-kernel session option's price; this host's int8 path."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import onnx

from ..benchmark import BenchmarkResult, SpeedRow, time_model
from ..errors import ConfigError
from ..hostcpu import describe_host
from ..outputs import atomic_write_json
from ..pipeline.tables import check_table_weights, corrected_beside, recorded_equalize
from ..pipeline.workspace import load_workspace
from ..quant.census import census, render_census
from ..quant.formats import read_table_pb
from ..quant.qdq import export_qdq
from ..report.benchmark import benchmark_document
from ..report.text import render_text
from ..report.write import REPORT_HTML, REPORT_LOG, write_report
from .parse import default_threads, input_shape, split_list


def run_benchmark(args: argparse.Namespace, prepare_image=None) -> int:
    equalize = args.equalize if args.equalize is not None else recorded_equalize(args.model, args.calibration_proto)
    ws = load_workspace(args.proto, args.model, equalize, input_shape(args.input_shape),
                        args.corrected_model or corrected_beside(args.calibration_proto))
    table = None
    if args.qdq is not None:
        qdq = onnx.load(str(args.qdq))
    elif args.calibration_proto is not None:
        table = read_table_pb(args.calibration_proto)
        check_table_weights(table, ws, str(args.calibration_proto))
        qdq, _ = export_qdq(ws.converted, table)
    else:
        raise ConfigError("give the int8 model: --calibration_proto (a table) or --qdq (an exported QDQ .onnx)")
    c = census(qdq)
    fp32 = ws.converted.model
    input_name = next(iter(ws.net.inputs))
    threads = default_threads(args.threads)
    batches = [int(b) for b in split_list(args.batch_sizes)]
    print(f"int8tune benchmark: {ws.proto}; timing fp32, int8 and int8 x64 at batch {', '.join(map(str, batches))}, "
          f"{args.repeat} runs each ...", flush=True)
    rows = []
    for b in batches:
        t32 = time_model("fp32", fp32, input_name, ws.input_shape, b, args.repeat, threads=threads)
        t8 = time_model("int8", qdq, input_name, ws.input_shape, b, args.repeat, threads=threads)
        tx = time_model("int8 x64", qdq, input_name, ws.input_shape, b, args.repeat, threads=threads, x64_exact=True)
        rows.append(SpeedRow(b, t32.median_ms, t8.median_ms, tx.median_ms))
    result = BenchmarkResult(str(ws.proto), describe_host(), threads, args.repeat,
                             table.spec.target.value if table is not None else None, tuple(render_census(c)),
                             tuple(rows), tuple(_deployed_check(args, ws, table, qdq, prepare_image)))
    files: list[Path] = []
    if args.json_path:
        atomic_write_json(args.json_path, {
            "host": result.host, "int8_kernels": c.int8, "ops": c.ops,
            "float_islands": [i.__dict__ for i in c.float_islands],
            "rows": [{**asdict(r), "speedup": r.speedup, "speedup_x64": r.speedup_x64} for r in rows],
            "deployed_check": list(result.deployed_check)})
        files.append(args.json_path)
    if args.output_path is not None:
        args.output_path.mkdir(parents=True, exist_ok=True)
        files += [args.output_path / REPORT_LOG, args.output_path / REPORT_HTML]
        text, _ = write_report(benchmark_document(result, tuple(files)), args.output_path)
    else:
        text = render_text(benchmark_document(result, tuple(files)))
    print(text, end="")
    return 0


def _deployed_check(args, ws, table, qdq, prepare_image) -> list[str]:
    """The verification of calibrate's report, on --data_list images: needs the table (to simulate)."""
    if args.data_list is None:
        return []
    if table is None or args.image_params is None:
        raise ConfigError("--data_list checks the export against the simulation: give --calibration_proto and "
                          "--image_params too")
    from ..config import DataConfig
    from ..quant.verify import check_export, render_export_check
    from .common import data_items, prepared_batches

    data = DataConfig(data_list=Path(args.data_list), image_params=args.image_params, data_limit=args.data_limit)
    batches = prepared_batches(data_items(data), data, prepare_image, ws.input_shape)
    return render_export_check(check_export(ws.converted, table, qdq, batches), images_kind="--data_list")
