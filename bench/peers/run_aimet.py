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
adaround: aimet's weight rounding, aimet_onnx.apply_adaround on the calibration images with its recommended
num_iterations = 10000 per layer (the API's default; its docstring: 10K for weights of 8 bits or more; the
environment variable AIMET_ADAROUND_ITERATIONS sets fewer where 10000 would take hours on this CPU), then
compute_encodings (min-max) of the activations on the same images. Config: default_config_per_channel.json as
aimet ships it, i.e. what aimet recommends: per-channel symmetric int8 weights (full [-128, 127], not strict
symmetric) and asymmetric activations, exported by to_onnx_qdq's default as uint8 with a zero point.
seqmse: Sequential MSE, aimet_onnx.apply_seq_mse on the calibration images with its default num_candidates = 20
(a grid search of each layer's per-channel weight ranges against the layer's fp32 output, layer by layer in
order), then compute_encodings as in adaround; same shipped config and uint8 export.
The two weight-side modes take aimet's own defaults for the activations (asymmetric uint8) rather than plain's
signed scheme: they stand for AIMET used as recommended; plain keeps the signed scheme of the earlier runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import peer_common
from peer_common import Job

MODES = ("plain", "accuracy", "adaround", "seqmse")
WEIGHT_MODES = ("adaround", "seqmse")  # aimet's weight-side techniques, with aimet's shipped config
# apply_adaround's default and documented recommendation for 8-bit weights. AIMET_ADAROUND_ITERATIONS overrides it:
# on a 2-core CPU one iteration of a 160x160 layer of yolov3_nano takes about 90 ms, so 10000 per layer is hours
# per detector; the notes record the number used.
ADAROUND_ITERATIONS = int(os.environ.get("AIMET_ADAROUND_ITERATIONS", "10000"))
SEQ_MSE_CANDIDATES = 20  # apply_seq_mse's default


def default_config() -> str:
    from aimet_onnx.common.quantsim_config import quantsim_config

    return quantsim_config.__file__.replace("quantsim_config.py", "default_config_per_channel.json")


def sim_config(job: Job) -> str:
    if job.mode in WEIGHT_MODES:  # aimet's recommended per-channel config, untouched
        return default_config()
    config = json.loads(Path(default_config()).read_text())
    config["defaults"]["ops"]["is_symmetric"] = "True"
    config["defaults"]["params"]["is_symmetric"] = "True"
    config["defaults"]["unsigned_symmetric"] = "False"
    path = job.output_dir / "aimet_config.json"
    path.write_text(json.dumps(config, indent=1))
    return str(path)


def export(sim, mode: str):
    """The QDQ model: int8 weights + DequantizeLinear; activations signed int8 (plain, accuracy), or as
    to_onnx_qdq exports aimet's asymmetric activations by default, uint8 with a zero point (weight modes)."""
    activations = "unsigned" if mode in WEIGHT_MODES else "signed"
    return sim.to_onnx_qdq(prequantize_constants=True, force_activation_as=activations)


def quantize(job: Job) -> str | None:
    import onnx
    import torch
    from aimet_onnx import apply_adaround, apply_seq_mse
    from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
    from aimet_onnx.mixed_precision import choose_mixed_precision
    from aimet_onnx.quantsim import QuantizationSimModel

    if job.mode not in MODES:
        job.not_available(f"run_aimet.py has no mode {job.mode!r} (modes: {', '.join(MODES)})")
        return None

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
        elif job.mode == "adaround":
            # on the uncalibrated sim (aimet >= 2.10): AdaRound sets and freezes the weight encodings itself, then
            # the activations are calibrated on the rounded weights, the order of aimet's AdaRound guide
            job.capture_log("Quant", "Skipping", "Unable")
            apply_adaround(sim, calibration, num_iterations=ADAROUND_ITERATIONS)
            sim.compute_encodings(calibration)
            job.note(f"apply_adaround: num_iterations {ADAROUND_ITERATIONS} per layer on {len(calibration)} "
                     f"calibration images, then compute_encodings (min-max) on them; default_config_per_channel")
        elif job.mode == "seqmse":
            apply_seq_mse(sim, calibration, num_candidates=SEQ_MSE_CANDIDATES)
            sim.compute_encodings(calibration)
            job.note(f"apply_seq_mse: num_candidates {SEQ_MSE_CANDIDATES} on {len(calibration)} calibration "
                     f"images, then compute_encodings (min-max) on them; default_config_per_channel")
        else:
            job.capture_log("MixedPrecision", "accuracy", "Accuracy", "Pareto", "pareto")
            # phase 1 (per-group sensitivity): aimet's own simulation session; phase 2 (the accept/reject of
            # mixed-precision configurations): the exported QDQ model in onnxruntime, i.e. what is deployed.
            sensitivity = CallbackFunc(lambda session, _: job.metric(session), None)
            deployed = CallbackFunc(lambda _session, _: job.metric(export(sim, job.mode)), None)
            int8, int16 = (8, QuantizationDataType.int), (16, QuantizationDataType.int)
            pareto = choose_mixed_precision(
                sim, [(int16, int16), (int8, int8)], sensitivity, deployed, job.max_drop,
                str(job.output_dir / "amp"), clean_start=True, forward_pass_callback=CallbackFunc(forward, None))
            job.note(f"choose_mixed_precision: candidates w16a16 / w8a8, allowed_accuracy_drop {job.max_drop} "
                     f"(absolute) on {job.metric_name()}; pareto list of {len(pareto or [])} points")
        quantized = export(sim, job.mode)
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
    if job.mode == "accuracy":
        job.note(f"{len(wide)} weighted layers kept at 16-bit weights "
                 f"(int16 QDQ, float kernels in onnxruntime): {wide}")
    return job.output_onnx


if __name__ == "__main__":
    raise SystemExit(peer_common.run(quantize))
