#!/usr/bin/env python3
"""ONNX Runtime's own post-training static quantization (onnxruntime.quantization.quantize_static).

plain: QDQ format, MinMax calibration on the calibration images, int8 symmetric activations, int8 symmetric
per-channel weights, after onnxruntime's quant_pre_process (shape inference + graph optimisation).
plain_percentile, plain_entropy: the same with onnxruntime's Percentile (99.999 % of |x|, its default) or Entropy
calibrator instead of MinMax; issue 4 names the percentile one, per channel, as onnxruntime's best plain calibrator.
accuracy: onnxruntime has no accuracy-aware mode -> "not available".
"""

from __future__ import annotations

import peer_common
from peer_common import Job


def quantize(job: Job) -> str | None:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    job.note(f"onnxruntime {ort.__version__}")
    methods = {"plain": CalibrationMethod.MinMax, "plain_percentile": CalibrationMethod.Percentile,
               "plain_entropy": CalibrationMethod.Entropy}
    if job.mode not in methods:
        job.not_available("onnxruntime.quantization has no accuracy-aware mode")
        return None

    class Reader(CalibrationDataReader):
        def __init__(self, x):
            self.items = iter([{job.input_name: x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    x = job.calibration()
    prep = str(job.output_dir / "model_prep.onnx")
    with job.timed():
        quant_pre_process(job.fp32_onnx, prep, skip_symbolic_shape=True)
        quantize_static(prep, job.output_onnx, Reader(x), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[job.mode],
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    job.note(f"quantize_static: QDQ, {methods[job.mode].name} on {len(x)} images, symmetric int8 activations, "
             "per-channel symmetric int8 weights, after quant_pre_process")
    return job.output_onnx


if __name__ == "__main__":
    raise SystemExit(peer_common.run(quantize))
