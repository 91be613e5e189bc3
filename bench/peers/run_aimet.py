#!/usr/bin/env python3
"""Qualcomm AIMET, aimet-onnx (QuantizationSimModel on the plain ONNX graph, CPU).

plain: QuantizationSimModel with int8 weights and activations, min-max calibration (aimet's default scheme) on
the calibration images, a quantsim config = aimet's default_config_per_channel.json with symmetric activations
(signed, not "unsigned symmetric") and per-channel symmetric weights; exported with to_onnx_qdq (int8 weights
stored as int8 + DequantizeLinear, signed int8 activations).
accuracy: aimet-onnx 2.42 ships no AutoQuant; its accuracy-driven mode is automatic mixed precision
(choose_mixed_precision, allowed_accuracy_drop = max_drop, absolute): starting from w16a16, quantizer groups are
lowered to w8a8 in order of sensitivity (measured on aimet's simulation) as long as the validation metric of the
exported QDQ model in onnxruntime holds. The layers it keeps at 16 bits
are exported as int16 QDQ (onnxruntime runs them in float), so they play the part of the fp32 fallback.
"""

from __future__ import annotations

import json
from pathlib import Path

import peer_common
from peer_common import Job


def sim_config(job: Job) -> str:
    from aimet_onnx.common.quantsim_config import quantsim_config

    base = quantsim_config.__file__.replace("quantsim_config.py", "default_config_per_channel.json")
    config = json.loads(Path(base).read_text())
    config["defaults"]["ops"]["is_symmetric"] = "True"
    config["defaults"]["params"]["is_symmetric"] = "True"
    config["defaults"]["unsigned_symmetric"] = "False"
    path = job.output_dir / "aimet_config.json"
    path.write_text(json.dumps(config, indent=1))
    return str(path)


def export(sim):
    """The QDQ model: int8 weights + DequantizeLinear, signed activations."""
    return sim.to_onnx_qdq(prequantize_constants=True, force_activation_as="signed")


def quantize(job: Job) -> str | None:
    import onnx
    import torch
    from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
    from aimet_onnx.mixed_precision import choose_mixed_precision
    from aimet_onnx.quantsim import QuantizationSimModel

    job.note(f"aimet-onnx {peer_common.version('aimet-onnx')}, onnx {onnx.__version__}, "
             f"onnxruntime {peer_common.version('onnxruntime')}, torch {peer_common.version('torch')}")
    torch.set_num_threads(job.threads)
    model = onnx.load(job.fp32_onnx)
    x = job.calibration()
    calibration = [{job.input_name: x[i:i + 1]} for i in range(len(x))]

    def forward(session, _=None):
        for item in calibration:
            session.run(None, item)

    with job.timed():
        sim = QuantizationSimModel(model, param_type="int8", activation_type="int8", config_file=sim_config(job),
                                   providers=["CPUExecutionProvider"])
        if job.mode == "plain":
            sim.compute_encodings(calibration)
        else:
            job.capture_log("MixedPrecision", "accuracy", "Accuracy", "Pareto", "pareto")
            # phase 1 (per-group sensitivity): aimet's own simulation session; phase 2 (the accept/reject of
            # mixed-precision configurations): the exported QDQ model in onnxruntime, i.e. what is deployed.
            sensitivity = CallbackFunc(lambda session, _: job.metric(session), None)
            deployed = CallbackFunc(lambda _session, _: job.metric(export(sim)), None)
            int8, int16 = (8, QuantizationDataType.int), (16, QuantizationDataType.int)
            pareto = choose_mixed_precision(
                sim, [(int16, int16), (int8, int8)], sensitivity, deployed, job.max_drop,
                str(job.output_dir / "amp"), clean_start=True, forward_pass_callback=CallbackFunc(forward, None))
            job.note(f"choose_mixed_precision: candidates w16a16 / w8a8, allowed_accuracy_drop {job.max_drop} "
                     f"(absolute) on {job.metric_name()}; pareto list of {len(pareto or [])} points")
        quantized = export(sim)
    onnx.save(quantized, job.output_onnx)
    bits = {}
    for q in sim.qc_quantize_op_dict.values():
        if q.enabled:
            bits[q.bitwidth] = bits.get(q.bitwidth, 0) + 1
    job.note(f"enabled quantizers by bitwidth: {bits}")
    int16_weights = {i.name for i in quantized.graph.initializer if i.data_type == onnx.TensorProto.INT16}
    dq_of = {n.output[0]: n.input[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    wide = [n.name for n in quantized.graph.node if n.op_type in peer_common.WEIGHTED and len(n.input) > 1
            and dq_of.get(n.input[1]) in int16_weights]
    if job.mode != "plain":
        job.note(f"{len(wide)} weighted layers kept at 16-bit weights "
                 f"(int16 QDQ, float kernels in onnxruntime): {wide}")
    return job.output_onnx


if __name__ == "__main__":
    raise SystemExit(peer_common.run(quantize))
