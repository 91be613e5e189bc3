#!/usr/bin/env python3
"""PPQ (OpenPPL's PPL Quantization Tool) 0.6.6, on the same fp32 ONNX graph as the other peers (PPQ can also read
Caffe directly; the ONNX graph keeps the comparison on one graph).

plain: ppq.api.quantize_onnx_model for TargetPlatform.ONNXRUNTIME (symmetric int8 per-tensor activations,
symmetric int8 per-channel weights for Conv/Gemm) with PPQ's default QuantizationSetting, calibrated on the
calibration images on the CPU; exported with PPQ's ONNXRUNTIME exporter (QDQ).
accuracy: PPQ has no accuracy-aware mode (its error analysis only reports) -> "not available".
Needs PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python (set below, before onnx loads).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

# PPQ's protobuf code needs protobuf's pure-python implementation; set before anything loads onnx / protobuf.
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"

import peer_common
from peer_common import Job

PPQ_MAX_OPSET = 13  # "currently we support only [(10, 13)]" (PPQ 0.6.6's dispatcher)


def quantize(job: Job) -> str | None:
    import onnx
    import ppq.lib  # noqa: F401  (registers the quantizers/exporters)
    import torch
    from ppq import TargetPlatform
    from ppq.api import QuantizationSettingFactory, export_ppq_graph, quantize_onnx_model
    from ppq.core import PPQ_CONFIG

    job.note(f"ppq {PPQ_CONFIG.VERSION}, onnx {onnx.__version__}, torch {torch.__version__}, "
             f"onnxruntime {peer_common.version('onnxruntime')}")
    if job.mode != "plain":
        job.not_available("PPQ has no accuracy-aware (tuning) mode")
        return None
    PPQ_CONFIG.USING_CUDA_KERNEL = False
    torch.set_num_threads(job.threads)
    x = job.calibration()
    batch = max(1, min(10, len(x) // 8))  # PPQ insists on at least 8 calibration steps
    batches = [torch.from_numpy(x[i:i + batch]) for i in range(0, len(x), batch)]
    setting = QuantizationSettingFactory.default_setting()
    fp32_onnx = job.fp32_onnx
    model = onnx.load(fp32_onnx)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > PPQ_MAX_OPSET:
        # The same graph declared at opset 13: every op these nets use (Conv, Relu, Sum, MaxPool, Concat, Identity,
        # Resize without opset-18 attributes, ...) means the same there, which onnx's checker confirms below.
        # (onnx.version_converter cannot do it: it has no Identity 16 -> 13 adapter.)
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = PPQ_MAX_OPSET
        onnx.checker.check_model(model)  # node schemas at the declared opset
        fp32_onnx = str(job.output_dir / f"fp32_opset{PPQ_MAX_OPSET}.onnx")
        onnx.save(model, fp32_onnx)
        job.note(f"PPQ's dispatcher supports opsets 10-{PPQ_MAX_OPSET}: the fp32 graph (opset {opset}) was given "
                 f"to it declared as opset {PPQ_MAX_OPSET} (same ops, checked by onnx.checker)")
    printed = io.StringIO()
    with job.timed(), contextlib.redirect_stdout(Tee(sys.stdout, printed)):
        graph = quantize_onnx_model(
            onnx_import_file=fp32_onnx, calib_dataloader=batches, calib_steps=len(batches),
            input_shape=[1, *x.shape[1:]], platform=TargetPlatform.ONNXRUNTIME, setting=setting,
            collate_fn=lambda b: b.to("cpu"), device="cpu", verbose=0)
        export_ppq_graph(graph=graph, platform=TargetPlatform.ONNXRUNTIME, graph_save_to=job.output_onnx)
    job.note(f"quantize_onnx_model: platform ONNXRUNTIME, default setting, {len(x)} images in {len(batches)} "
             "batches, device cpu; export_ppq_graph(ONNXRUNTIME)")
    for line in printed.getvalue().splitlines():
        if line.startswith(("Num of", "FP32:", "ACTIVATED:", "BAKED:")):
            job.note("[ppq] " + " ".join(line.split()))
    return job.output_onnx


class Tee(io.TextIOBase):
    """PPQ prints its report (quantized ops, FP32 configs); keep a copy for the notes."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


if __name__ == "__main__":
    raise SystemExit(peer_common.run(quantize))
