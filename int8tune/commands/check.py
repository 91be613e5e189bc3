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
from ..report.check import check_document
from ..report.text import render_text
from ..report.write import REPORT_HTML, REPORT_LOG, write_report
from ..runtime import Engine
from .parse import model_config


def check_config_from_args(args: argparse.Namespace) -> CheckConfig:
    return CheckConfig(
        model=model_config(args),
        data=DataConfig(data_list=args.data_list, image_params=args.image_params, dataset_path=args.dataset_path,
                        data_limit=args.data_limit, batch_size=args.batch_size),
        tolerance=args.tolerance, json_path=args.json_path, output_path=args.output_path)


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
    files = []
    if config.json_path:
        atomic_write_json(config.json_path, {
            **report.to_json(),
            "provenance": provenance(config.to_dict(), {"proto": config.model.proto, "model": config.model.model},
                                     report.images)})
        files.append(config.json_path)
    if config.output_path is not None:
        config.output_path.mkdir(parents=True, exist_ok=True)
        doc = check_document(report, tuple(files) + tuple(config.output_path / n for n in (REPORT_LOG, REPORT_HTML)))
        text, _ = write_report(doc, config.output_path)
    else:
        text = render_text(check_document(report, tuple(files)))
    print(text, end="")
    return 0 if report.passed else 1


def format_report(report: CheckReport) -> str:
    """The check's report as report.log text (what the command prints)."""
    return render_text(check_document(report))
