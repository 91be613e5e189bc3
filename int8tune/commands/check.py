"""`int8tune check`: the fp32 conversion against OpenCV's Caffe importer, per blob."""

from __future__ import annotations

import argparse

from ..caffe.loader import load_net
from ..caffe.reshape import with_input_shape
from ..check import CheckReport, compare_with_opencv
from ..config import CheckConfig, DataConfig
from ..convert.converter import convert_net
from ..data import iter_batches, read_data_list
from ..image_params import load_image_params
from ..outputs import atomic_write_json, provenance
from ..runtime import Engine
from .parse import model_config


def check_config_from_args(args: argparse.Namespace) -> CheckConfig:
    return CheckConfig(
        model=model_config(args),
        data=DataConfig(data_list=args.data_list, image_params=args.image_params, dataset_path=args.dataset_path,
                        data_limit=args.data_limit, batch_size=args.batch_size),
        tolerance=args.tolerance, json_path=args.json_path)


def run_check(config: CheckConfig, prepare_image) -> int:
    print("int8tune check\n" + config.describe())
    net = load_net(config.model.proto, config.model.model)
    if config.model.input_shape is not None:
        net = with_input_shape(net, config.model.input_shape)
    engine = Engine(convert_net(net), expose_all=True)
    params = load_image_params(config.data.image_params)
    items = read_data_list(config.data.data_list, config.data.dataset_path, config.data.data_limit)
    input_shape = next(iter(net.inputs.values()))
    batches = ((batch, [str(i.path) for i in chunk])
               for batch, chunk in iter_batches(items, prepare_image, params, input_shape, config.data.batch_size))
    report = compare_with_opencv(engine, config.model.proto, config.model.model, batches, config.tolerance)
    print(format_report(report))
    if config.json_path:
        atomic_write_json(config.json_path, {
            **report.to_json(),
            "provenance": provenance(config.to_dict(), {"proto": config.model.proto, "model": config.model.model},
                                     report.images)})
        print(f"wrote {config.json_path}")
    return 0 if report.passed else 1


def format_report(report: CheckReport) -> str:
    lines = [f"\n{len(report.images)} image(s); tolerance {report.tolerance:g} (max|ours - opencv| / max|opencv|)",
             "", "Outputs:"]
    by_value = {d.value: d for d in report.diffs}
    width = min(70, max([len(_label(d)) for d in report.diffs] + [12]))
    header = f"  {'blob (value)':<{width}} {'layer type':<16} {'shape':<20} {'max abs':>11} {'relative':>10}  status"
    lines.append(header)
    for value in report.outputs:
        lines.append(_row(by_value[value], report.tolerance, width))
    lines += ["", "Every layer:", header]
    lines += [_row(d, report.tolerance, width) for d in report.diffs]
    worst = report.worst()
    lines.append("")
    if worst is not None:
        lines.append(f"worst: {worst.value} ({worst.layer_type}) relative {worst.rel:.3g}, max abs {worst.max_abs:.3g}"
                     + (f"; {worst.nonfinite}" if worst.nonfinite else ""))
    skipped = len(report.diffs) - len(report.compared)
    nonfinite = sum(1 for d in report.failures if d.nonfinite)
    failed = f"{len(report.failures)} above tolerance" + (f" ({nonfinite} with NaN/inf)" if nonfinite else "")
    lines.append(f"{len(report.compared)} blobs compared, {failed}, {skipped} not comparable; int8tune "
                 f"{report.seconds_ours:.3f}s vs OpenCV {report.seconds_opencv:.3f}s")
    lines.append("PASS" if report.passed else "FAIL")
    return "\n".join(lines)


def _label(d) -> str:
    return d.value if d.value == d.blob else f"{d.blob} ({d.value})"


def _row(d, tolerance: float, width: int) -> str:
    label = _label(d)
    if d.note.startswith("not compared"):
        return f"  {label:<{width}} {d.layer_type:<16} {'':<20} {'':>11} {'':>10}  skipped: {d.note[15:]}"
    status = "ok" if d.passed(tolerance) else "NaN/INF" if d.nonfinite else "ABOVE TOLERANCE"
    extra = "".join(f"  {n}" for n in (d.nonfinite, d.note) if n)
    return (f"  {label:<{width}} {d.layer_type:<16} {str(d.shape):<20} {d.max_abs:>11.3g} {d.rel:>10.3g}  "
            f"{status}{extra}")
