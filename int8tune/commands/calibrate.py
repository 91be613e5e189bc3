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
from ..pipeline.workspace import load_workspace
from ..workflow import calibrate_and_write
from .common import images_of


def run_calibrate(cfg: CalibrateConfig, prepare_image) -> int:
    t_start = time.perf_counter()
    print("int8tune calibrate\n" + cfg.describe())
    ws = load_workspace(cfg.model.proto, cfg.model.model, cfg.quant.equalize, cfg.model.input_shape)
    _, images = images_of(cfg.data, prepare_image, ws)
    print(calibrate_and_write(cfg, ws, images, t_start).report)
    return 0
