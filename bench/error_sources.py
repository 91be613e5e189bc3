#!/usr/bin/env python3
"""Where a detector's int8 error comes from: the weights, the activations, or one blob.

The table is calibrated as `int8tune calibrate` does it (default settings, bias correction off unless
--bias_correction, --target onnxruntime, --equalize on request) on every other detection/natural photo, and its
exported QDQ model is taken apart on the held-out images (the other photos and the first --wide imagenet_dev
images), as bench/weight_levers.py splits them:

- full: model_int8_qdq.onnx in a default onnxruntime session (what a user deploys);
- weights only: the same file with every activation QuantizeLinear/DequantizeLinear pair removed (int8 weights,
  float activations);
- activations only: the same file with the fp32 weights and biases in place of the int8 ones (with
  --bias_correction, the biases before it: the correction offsets errors of int8 weights too). Run with graph
  optimisations off: onnxruntime 1.32's WeightBiasQuantization rewrite quantizes (per tensor) the float weights of
  a Conv it finds between a DequantizeLinear and a QuantizeLinear, which would measure another model;
- weights only with 8-bit weights (`--target onnxruntime_vnni`'s thresholds, no widening for the int16 pairs of
  AVX2 kernels): what the widening of the default target costs;
- each activation quantizer alone (the fp32 weights, one blob quantized): the --top blobs that hurt most.

Scores against the fp32 model's detections (box F1 at IoU 0.5, confidence 0.5, the yolo metric's NMS) and the yolo
metric (lower is better).

    python bench/error_sources.py [--model yolov3_nano_voc] [--equalize] [--bias_correction] [--top 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from common import batches_of, model_paths, require_assets, yolo_params
from onnx import helper
from weight_levers import box_f1, photo_split, scored_model

from int8tune.config import QuantConfig
from int8tune.metrics import METRICS
from int8tune.pipeline.calibration import calibrate
from int8tune.pipeline.images import Images
from int8tune.pipeline.levers import bias_corrected_workspace
from int8tune.pipeline.workspace import load_workspace
from int8tune.quant.qdq import export_qdq
from int8tune.yolo import YoloParams, detections_of


def run(model: onnx.ModelProto, batches, names, threads: int, optimize: bool = True) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    runs = [dict(zip(names, session.run(names, {feed: b}))) for b in batches]
    return {n: np.concatenate([r[n] for r in runs]) for n in names}


def _copy(model: onnx.ModelProto, nodes: list) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.ClearField("node")
    out.graph.node.extend(nodes)
    return out


def activation_pairs(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """DequantizeLinear name -> the QuantizeLinear it dequantizes (the activation quantizers)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name: producer[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in producer and producer[n.input[0]].op_type == "QuantizeLinear"}


def without_activation_quantizers(model: onnx.ModelProto, keep: str | None = None) -> onnx.ModelProto:
    """`model` with every activation Q/DQ pair but the QuantizeLinear named `keep` replaced by an Identity."""
    pairs = activation_pairs(model)
    nodes = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.name != keep:
            continue
        q = pairs.get(n.name)
        if q is not None and q.name != keep:
            nodes.append(helper.make_node("Identity", [q.input[0]], list(n.output), name=n.name))
        else:
            nodes.append(n)
    return _copy(model, nodes)


def with_fp32_weights(qdq: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """`qdq` with each int8 weight / int32 bias DequantizeLinear replaced by the fp32 initializer it came from
    (export_qdq names them `<initializer>/int8` and `<initializer>/int32`)."""
    inits = {t.name: t for t in fp32.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    nodes = []
    for n in out.graph.node:
        stem, _, kind = n.input[0].rpartition("/") if n.op_type == "DequantizeLinear" else ("", "", "")
        if kind in ("int8", "int32") and stem in inits:
            out.graph.initializer.append(inits[stem])
            nodes.append(helper.make_node("Identity", [stem], list(n.output), name=n.name))
        else:
            nodes.append(n)
    return _copy(out, nodes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="yolov3_nano_voc", choices=["yolov3_nano_voc", "yoloface_500k_v2"])
    ap.add_argument("--equalize", action="store_true")
    ap.add_argument("--bias_correction", action="store_true")
    ap.add_argument("--wide", type=int, default=150, help="imagenet_dev images added to the held-out photos")
    ap.add_argument("--top", type=int, default=8, help="blobs listed from the one-quantizer-alone runs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    require_assets()
    t0 = time.perf_counter()
    cal, held, n_photos = photo_split(args)
    params, ws0, held_b, names, fp32 = scored_model(args.model, held, args)
    mparams = yolo_params(args.model)
    yp = YoloParams.from_dict(mparams)
    truth = detections_of(fp32, yp)
    yolo = METRICS.get("yolo")
    cal_b = batches_of(cal, params, ws0.input_shape, 7)
    cal_images = Images(f"{len(cal)} photos", sum(len(b) for b in cal_b), _batches=cal_b)
    print(f"{args.model}: calibrated on {len(cal)} photos, scored on {n_photos} other photos + "
          f"{len(held) - n_photos} imagenet_dev images; fp32 detections {sum(len(t) for t in truth)}; "
          f"equalize {args.equalize}, bias correction {args.bias_correction}", flush=True)

    def score(out) -> tuple[float, float]:
        return box_f1(truth, detections_of(out, yp))[0], yolo(fp32, out, mparams)

    qdq = {}
    for target in ("onnxruntime", "onnxruntime_vnni"):
        ws = load_workspace(*model_paths(args.model), args.equalize)
        res = calibrate(ws, cal_images, QuantConfig(target=target, equalize=args.equalize),
                        measure=cal_images.head(32), threads=args.threads)
        w = bias_corrected_workspace(res.ws, res.table, cal_images.head(32), args.threads) \
            if args.bias_correction else res.ws
        qdq[target] = (export_qdq(w.converted, res.table)[0], res.ws)
    model, ws = qdq["onnxruntime"]  # ws: the weights before the bias correction (it corrects int8 errors)
    rows = [("full (the exported file)", run(model, held_b, names, args.threads)),
            ("weights only", run(without_activation_quantizers(model), held_b, names, args.threads)),
            ("weights only, 8-bit (no pair widening)",
             run(without_activation_quantizers(qdq["onnxruntime_vnni"][0]), held_b, names, args.threads)),
            ("activations only", run(with_fp32_weights(model, ws.converted.model), held_b, names, args.threads,
                                     optimize=False))]
    print("| int8 part | box F1 | yolo |\n|---|---|---|")
    for label, out in rows:
        f1, y = score(out)
        print(f"| {label} | {f1:.4f} | {y:.4f} |", flush=True)

    float_weights = with_fp32_weights(model, ws.converted.model)
    alone = []
    for q in {q.name: q for q in activation_pairs(float_weights).values()}.values():
        f1, y = score(run(without_activation_quantizers(float_weights, keep=q.name), held_b, names, args.threads,
                          optimize=False))
        alone.append((y, f1, q.input[0]))
    alone.sort(reverse=True)
    print(f"\none activation quantizer alone (fp32 weights), the {args.top} worst of {len(alone)}:\n"
          "| quantized tensor | box F1 | yolo |\n|---|---|---|")
    for y, f1, tensor in alone[:args.top]:
        print(f"| {tensor} | {f1:.4f} | {y:.4f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
