"""`int8tune calibrate`: statistics, thresholds, the calibration table in every format, the QDQ model, a report.

Outputs under --output_path:
    calibration_table.pb / .pbtxt   the table (the tuning tools' --calibration_proto)
    int8.prototxt                   fp32 prototxt + quantization_param (the tuning tools' --calibration_model)
    tensorrt_calibration.cache, onnxruntime_calibration.cache, ncnn.table
    model_int8_qdq.onnx             the int8 model as QDQ ONNX (not with --simplified)
    equalized.caffemodel            with --equalize: the equalized weights (fp32 unchanged)
    corrected.caffemodel            with --adaround/--bias_correction: the int8 model's weights (deploy them)
    weight_levers.csv               with them: per layer, what AdaRound and bias correction did
    statistics.csv                  per blob: range, moments, every calibrator's threshold, the chosen one
    report.log, report.html         what was done, the figures (text, and one self-contained page)
    config.json                     the settings and provenance
"""

from __future__ import annotations

import time

from ..config import CalibrateConfig
from ..executors import open_executor
from ..pipeline.equalize_choice import calibrate_choosing
from ..pipeline.workspace import load_workspace
from ..report.calibration import calibration_document
from ..report.write import write_report
from ..workflow import save_calibration
from .common import images_of


def run_calibrate(cfg: CalibrateConfig, prepare_image) -> int:
    t_start = time.perf_counter()
    print("int8tune calibrate\n" + cfg.describe())
    ws = load_workspace(cfg.model.proto, cfg.model.model, cfg.quant.equalize, cfg.model.input_shape)
    _, images = images_of(cfg.data, prepare_image, ws)
    with open_executor(cfg.execution()) as executor:
        measure = None if cfg.simplified else images.head(cfg.measure_images)
        cal = calibrate_choosing(ws, images, cfg.quant, measure=measure, simplified=cfg.simplified,
                                 threads=cfg.threads, settings=cfg.to_dict(), executor=executor)
        ws = cal.ws or ws  # with --adaround/--bias_correction: the corrected weights the table belongs to
        delivery, extra = save_calibration(cal, ws, cfg.output_path, cfg.threads)
        doc = calibration_document(cal, ws, delivery, time.perf_counter() - t_start, extra.get("equalized"),
                                   list(extra.values()), extra.get("corrected"))
    text, _ = write_report(doc, cfg.output_path)
    print(text)
    return 0
