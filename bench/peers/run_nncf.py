#!/usr/bin/env python3
"""NNCF (OpenVINO's Neural Network Compression Framework), ONNX backend: no OpenVINO needed.

plain: nncf.quantize with the calibration images (preset PERFORMANCE: symmetric int8 activations, symmetric
per-channel int8 weights; fast bias correction on, as by default); NNCF writes QDQ pairs into the ONNX graph.
accuracy: nncf.quantize_with_accuracy_control, same quantization, then NNCF reverts the most sensitive layers to
fp32 until the validation metric (peer_common: top-1 or fp32 agreement) drops by at most max_drop (absolute).
"""

from __future__ import annotations

import os

import peer_common
from peer_common import Job

os.environ.setdefault("NNCF_CI", "1")  # NNCF's switch for its usage telemetry (this machine has no network)


def quantize(job: Job) -> str | None:
    import nncf
    import onnx

    job.note(f"nncf {nncf.__version__}, onnx {onnx.__version__}, onnxruntime {peer_common.version('onnxruntime')}")
    job.capture_log("nncf", "Metric of", "Accuracy drop", "Reverted", "were reverted", "could not achieve",
                    "Maximum number of iteration", "Algorithm completed", "Total number of quantized")
    if job.mode not in ("plain", "accuracy"):
        job.not_available(f"run_nncf.py has no mode {job.mode!r} (modes: plain, accuracy)")
        return None
    model = onnx.load(job.fp32_onnx)
    x = job.calibration()
    calibration = nncf.Dataset([x[i:i + 1] for i in range(len(x))], lambda item: {job.input_name: item})
    preset = nncf.QuantizationPreset.PERFORMANCE
    if job.mode == "plain":
        with job.timed():
            quantized = nncf.quantize(model, calibration, preset=preset, subset_size=len(x))
        job.note(f"nncf.quantize: preset PERFORMANCE, subset_size {len(x)}")
    else:
        validation = nncf.Dataset(job.validation_items(), lambda item: {job.input_name: item[0]})

        def validation_fn(model, items):
            return job.score(model, items)

        with job.timed():
            quantized = nncf.quantize_with_accuracy_control(
                model, calibration, validation, validation_fn, max_drop=job.max_drop,
                drop_type=nncf.DropType.ABSOLUTE, preset=preset, subset_size=len(x))
        job.note(f"nncf.quantize_with_accuracy_control: max_drop {job.max_drop} absolute on {job.metric_name()}")
    onnx.save(quantized, job.output_onnx)
    return job.output_onnx


if __name__ == "__main__":
    raise SystemExit(peer_common.run(quantize))
