#!/usr/bin/env python3
"""Intel Neural Compressor 3.7.1 (the last release with the ONNX Runtime adaptor), its 2.x-style API
neural_compressor.quantization.fit with PostTrainingQuantConfig.

plain: static post-training quantization, QDQ format, calibration on the calibration images, no eval function
(INC then quantizes once with its default recipe, no tuning). INC's onnxruntime CPU backend allows only uint8
asymmetric activations (weights: int8 symmetric per-channel), so activations are not symmetric int8 here.
accuracy: the same with eval_func = peer_common's validation metric and an absolute AccuracyCriterion of max_drop;
INC's tuning strategy (default "basic") falls back ops to fp32 until the criterion holds. fit() returning None
(no model met the goal within its trials) is reported as a failure.
"""

from __future__ import annotations

import peer_common
from peer_common import Job


class Loader:
    """INC's dataloader protocol: batch_size and an iterator of (input, label)."""

    def __init__(self, x, batch_size: int = 1):
        self.x, self.batch_size = x, batch_size

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i:i + self.batch_size], 0


def quantize(job: Job) -> str | None:
    import neural_compressor
    import onnx
    from neural_compressor import PostTrainingQuantConfig, quantization
    from neural_compressor.config import AccuracyCriterion, TuningCriterion

    job.note(f"neural-compressor {neural_compressor.__version__}, onnx {onnx.__version__}, "
             f"onnxruntime {peer_common.version('onnxruntime')}")
    job.capture_log("neural_compressor", "FP32 baseline", "Found a quantized model", "Not found", "Specified timeout",
                    last=("result is:",))
    if job.mode not in ("plain", "accuracy"):  # otherwise any other mode would silently run plain
        job.not_available(f"run_inc.py has no mode {job.mode!r} (modes: plain, accuracy)")
        return None
    model = onnx.load(job.fp32_onnx)
    x = job.calibration()
    accuracy = job.mode == "accuracy"
    conf = PostTrainingQuantConfig(
        approach="static", quant_format="QDQ", device="cpu", backend="default", calibration_sampling_size=[len(x)],
        accuracy_criterion=AccuracyCriterion(criterion="absolute", tolerable_loss=job.max_drop, higher_is_better=True),
        tuning_criterion=TuningCriterion(strategy="basic", timeout=0, max_trials=100))
    eval_func = (lambda m: job.metric(m)) if accuracy else None
    with job.timed():
        q_model = quantization.fit(model=model, conf=conf, calib_dataloader=Loader(x), eval_func=eval_func)
    if q_model is None:
        raise RuntimeError("neural_compressor.quantization.fit() returned None: no quantized model "
                           + ("met the accuracy criterion" if accuracy else "was produced"))
    q_model.save(job.output_onnx)
    job.note("fit(): static, QDQ, " + (f"eval_func with absolute tolerable_loss {job.max_drop} on "
                                       f"{job.metric_name()}, strategy basic" if accuracy else "no eval_func"))
    return job.output_onnx


if __name__ == "__main__":
    raise SystemExit(peer_common.run(quantize))
