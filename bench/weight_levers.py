#!/usr/bin/env python3
"""The weight levers (--bias_correction, --adaround, both), with and without --equalize, on images the calibration
never saw.

Each configuration is calibrated as `int8tune calibrate` does it (pipeline.calibration.calibrate: default settings,
--method auto, --target onnxruntime; the levers on the first 32 calibration images, as calibrate runs them), then
its exported int8 model (model_int8_qdq.onnx in a default onnxruntime session on this CPU) is scored on held-out
images against the fp32 model the user gave. To save time, "bias correction" reuses the plain run's table and "both"
the AdaRound run's: calibrate with both options computes exactly that (AdaRound before the statistics, bias
correction with the table after).

- squeezenet_v1.0: calibrated on the first 32 images of images/imagenet_dev (file order of labels.txt), scored on
  the next --held_out (default 200): top-1 against the labels, top-1 agreement with fp32, square distance of the
  logits.
- yolov3_nano_voc: calibrated on every other photo of images/detection + natural (sorted by name: 14 of 28), scored
  on the other 14 photos plus the first --wide (default 150) images of images/imagenet_dev (natural photos, many with
  VOC objects): box F1 of the int8 detections against the fp32 ones (IoU 0.5, conf 0.5, NMS as the yolo metric),
  found of the fp32 detections, and the yolo metric (lower is better), pooled over both sets.
- yoloface_500k_v2: the same split and scores as yolov3_nano_voc (the photos hold the faces; imagenet_dev few).
- res10_ssd_face: the same split; the net's own DetectionOutput decodes fp32 and int8: box F1 at confidence 0.5,
  faces found, ssd_map, and the square distance of the heads before DetectionOutput.
- landmark106: the same split (whole images resized to 112x112: no face crops among the assets): mean and largest
  shift of the 106 points from fp32's in pixels of the crop, and the square distance.

With --draws N each table is also scored under N relative 1e-6 moves of all its thresholds (another rounding
realization, as main.sh's restarts): the min-max over the draws is the spread a difference must beat to mean
anything. Wall time of every lever is printed, and the square distance on the calibration images ("in-sample": what
calibrate reports), with what --equalize left to its default would keep for each set of levers (the lower of the two).

    python bench/weight_levers.py [--models squeezenet_v1.0 yolov3_nano_voc ...] [--draws 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
from common import ASSETS, REPO, batches_of, labelled, model_paths, params_for, require_assets, top1, yolo_params

from int8tune.config import QuantConfig
from int8tune.data import DataItem
from int8tune.metrics import METRICS
from int8tune.metrics.builtin import ssd_detections
from int8tune.pipeline.calibration import calibrate
from int8tune.pipeline.images import Images
from int8tune.pipeline.levers import adaround_workspace, bias_corrected_workspace
from int8tune.pipeline.workspace import load_workspace
from int8tune.quant.rounding_solver import Solver
from int8tune.runtime import Engine
from int8tune.tune.restarts import restart_start
from int8tune.tune.tuner import Tuner, TuneSettings, metric_outputs
from int8tune.yolo import YoloParams, detection_agreement, detections_of


def photos() -> list[Path]:
    return sorted((p for folder in ("detection", "natural") for p in (ASSETS / "images" / folder).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png")), key=lambda p: p.name)


def outputs_of(converted, table, batches, names, threads) -> dict[str, np.ndarray]:
    """fp32's outputs without a table; with one, the outputs of the exported QDQ model (model_int8_qdq.onnx as
    calibrate writes it) in a default onnxruntime session on this CPU: the model a user deploys."""
    if table is None:
        engine = Engine(converted, threads=threads)
        runs = [engine.run_tensors(b, names) for b in batches]
        return {n: np.concatenate([r[n] for r in runs]) for n in names}
    import onnxruntime as ort

    from int8tune.quant.qdq import export_qdq

    model, _ = export_qdq(converted, table)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    runs = [dict(zip([o.name for o in session.get_outputs()], session.run(names, {feed: b}))) for b in batches]
    return {n: np.concatenate([r[n] for r in runs]) for n in names}


def box_f1(truth, predicted) -> tuple[float, int, int]:
    agreement = detection_agreement(truth, predicted, 0.5)
    found = sum(a.found for a in agreement)
    ref = sum(a.reference for a in agreement)
    pred = sum(a.found + a.extra for a in agreement)
    return (2 * found / (ref + pred) if ref + pred else 1.0), found, ref


def in_sample(ws, table, measure: Images, threads: int) -> float:
    """The square distance of the outputs from fp32 on the calibration images: what calibrate reports as the model
    difference, and what --equalize left to its default compares (pipeline/equalize_choice.py)."""
    tuner = Tuner(ws.converted, measure.batches, METRICS.get("square"), TuneSettings(threads=threads),
                  reference=ws.reference)
    return tuner.difference(table)


def configurations(ws_of, cal_images: Images, solvers: list[str], threads: int):
    """(equalize, lever, workspace, table, seconds of the lever) for the configurations of one model: plain, bias
    correction, and AdaRound alone and with bias correction for each of `solvers`."""
    for equalize in (False, True):
        ws = ws_of(equalize)
        measure = cal_images.head(32)
        plain = calibrate(ws, cal_images, QuantConfig(equalize=equalize), measure=measure, threads=threads)
        yield equalize, "plain", plain.ws, plain.table, 0.0
        t = time.perf_counter()
        bc = bias_corrected_workspace(plain.ws, plain.table, measure, threads)
        yield equalize, "bias correction", bc, plain.table, time.perf_counter() - t
        for solver in solvers:  # what calibrate --adaround does: rounding, then the statistics and the table on it
            quant = QuantConfig(equalize=equalize, adaround=True, adaround_solver=solver)
            t = time.perf_counter()
            rounded = adaround_workspace(ws, measure, quant, threads)
            t_ar = time.perf_counter() - t
            ar = calibrate(rounded, cal_images, QuantConfig(equalize=equalize), measure=measure, threads=threads)
            yield equalize, f"AdaRound ({solver})", ar.ws, ar.table, t_ar
            t = time.perf_counter()
            both = bias_corrected_workspace(ar.ws, ar.table, measure, threads)
            yield equalize, f"AdaRound ({solver}) + bias correction", both, ar.table, t_ar + time.perf_counter() - t


def lever_rows(name: str, cal_b: list[np.ndarray], cal_what: str, held_b: list[np.ndarray], score, formats,
               args) -> list[list[str]]:
    """One row per configuration of `name`: calibrated on `cal_b`, its exported model's outputs on `held_b` scored
    by `score(outputs) -> tuple` for the table and each jitter draw."""
    rows = []
    cal_images = Images(cal_what, sum(len(b) for b in cal_b), _batches=cal_b)
    inside: dict[tuple[bool, str], float] = {}
    for equalize, lever, ws, table, seconds in configurations(
            lambda eq: load_workspace(*model_paths(name), eq), cal_images, args.solvers, args.threads):
        draws = []
        names = metric_outputs(ws.converted)
        for k in range(args.draws + 1):
            t = restart_start(table, table.active_blobs(), 1000 + k) if k else table
            draws.append(score(outputs_of(ws.converted, t, held_b, names, args.threads)))
        inside[equalize, lever] = in_sample(ws, table, cal_images.head(32), args.threads)
        rows.append(["yes" if equalize else "no", lever, *_cells(draws, formats), f"{inside[equalize, lever]:.4g}",
                     f"{seconds:.0f}"])
        print("  " + " | ".join(rows[-1]), flush=True)
    # what --equalize left to its default keeps with these levers: the lower in-sample square
    for lever in dict.fromkeys(k[1] for k in inside):
        kept = "equalized" if inside[True, lever] < inside[False, lever] else "as given"
        rows.append(["(default)", f"{lever}: --equalize chosen", kept, *[""] * (len(formats) - 1), "", ""])
    return rows


def scored_model(name: str, held: list[DataItem], args):
    """(image params, the fp32 workspace, the held-out batches, the outputs scored, fp32's outputs on them)."""
    params = params_for(name)
    ws0 = load_workspace(*model_paths(name))
    held_b = batches_of(held, params, ws0.input_shape, 10)
    names = metric_outputs(ws0.converted)
    return params, ws0, held_b, names, outputs_of(ws0.converted, None, held_b, names, args.threads)


def squeezenet(args, rows=None) -> list[list[str]]:
    name = "squeezenet_v1.0"
    items = labelled("imagenet_dev")
    cal_items, held = items[:32], items[32:32 + args.held_out]
    params, ws0, held_b, names, fp32 = scored_model(name, held, args)
    labels = np.array([i.label for i in held])
    fp32_top = fp32[names[0]].reshape(len(held), -1).argmax(axis=1)
    square = METRICS.get("square")
    print(f"{name}: calibrated on 32 imagenet_dev images, scored on {len(held)} others; fp32 top-1 "
          f"{top1(fp32[names[0]], labels):.4f}", flush=True)

    def score(out):
        logits = out[names[0]].reshape(len(held), -1)
        return top1(logits, labels), float((logits.argmax(axis=1) == fp32_top).mean()), square(fp32, out, {})

    return (rows or lever_rows)(name, batches_of(cal_items, params, ws0.input_shape, 8),
                                "the first 32 imagenet_dev images", held_b, score, (".4f", ".4f", ".3g"), args)


def photo_split(args) -> tuple[list[DataItem], list[DataItem], int]:
    """Every other detection/natural photo (sorted by name) to calibrate on; the others plus the first --wide
    imagenet_dev images held out; and how many of the held-out images are photos."""
    all_photos = photos()
    cal = [DataItem(p, None, None) for p in all_photos[0::2]]
    held = [DataItem(p, None, None) for p in all_photos[1::2]]
    wide = [DataItem(i.path, None, None) for i in labelled("imagenet_dev")[:args.wide]]
    return cal, held + wide, len(held)


def yolo_model(name: str, args, rows=None) -> list[list[str]]:
    """A YOLO detector: box F1 of the int8 detections against fp32's, and the yolo metric."""
    cal, held, n_photos = photo_split(args)
    params, ws0, held_b, names, fp32 = scored_model(name, held, args)
    mparams = yolo_params(name)
    yp = YoloParams.from_dict(mparams)
    truth = detections_of(fp32, yp)
    yolo = METRICS.get("yolo")
    print(f"{name}: calibrated on {len(cal)} photos, scored on {n_photos} other photos + {len(held) - n_photos} "
          f"imagenet_dev images; fp32 detections {sum(len(t) for t in truth)}", flush=True)

    def score(out):
        found = detections_of(out, yp)
        f1, n_found, _ = box_f1(truth, found)
        return f1, box_f1(truth[:n_photos], found[:n_photos])[0], n_found, yolo(fp32, out, mparams)

    return (rows or lever_rows)(name, batches_of(cal, params, ws0.input_shape, 7), f"{len(cal)} photos", held_b, score,
                      (".4f", ".4f", ".1f", ".4f"), args)


def res10(args, rows=None) -> list[list[str]]:
    """The SSD face detector: its own DetectionOutput decodes fp32 and int8; box F1 at confidence 0.5, ssd_map,
    and the square distance of the graph's outputs (the heads before DetectionOutput)."""
    name = "res10_ssd_face"
    cal, held, n_photos = photo_split(args)
    params, ws0, held_b, names, fp32 = scored_model(name, held, args)
    mparams = {"post_steps": ws0.converted.post_steps}
    truth = ssd_detections(fp32, mparams, 0.5)
    ssd, square = METRICS.get("ssd_map"), METRICS.get("square")
    print(f"{name}: calibrated on {len(cal)} photos, scored on {n_photos} other photos + {len(held) - n_photos} "
          f"imagenet_dev images; fp32 faces {sum(len(t) for t in truth)}", flush=True)

    def score(out):
        f1, n_found, _ = box_f1(truth, ssd_detections(out, mparams, 0.5))
        return f1, n_found, ssd(fp32, out, mparams), square(fp32, out, {})

    return (rows or lever_rows)(name, batches_of(cal, params, ws0.input_shape, 7), f"{len(cal)} photos", held_b, score,
                      (".4f", ".1f", ".4f", ".3g"), args)


def landmark106(args, rows=None) -> list[list[str]]:
    """The landmark net (112x112 input): mean distance of the 106 int8 points from fp32's, in pixels of the crop,
    and the square distance. No face crops among the assets: whole photos resized to the input stand in."""
    name = "landmark106"
    cal, held, _ = photo_split(args)
    params, ws0, held_b, names, fp32 = scored_model(name, held, args)
    points = fp32[names[0]].reshape(len(held), -1, 2)
    side = ws0.input_shape[-1]
    square = METRICS.get("square")
    print(f"{name}: calibrated on {len(cal)} photos, scored on {len(held)} other images", flush=True)

    def score(out):
        moved = np.linalg.norm(out[names[0]].reshape(points.shape) - points, axis=-1) * side
        return float(moved.mean()), float(moved.max()), square(fp32, out, {})

    return (rows or lever_rows)(name, batches_of(cal, params, ws0.input_shape, 7), f"{len(cal)} photos", held_b, score,
                      (".3f", ".2f", ".3g"), args)


def _cells(draws, formats) -> list[str]:
    """The first draw (the table itself), then the range over the draws when there are several."""
    out = []
    for k, fmt in enumerate(formats):
        values = [d[k] for d in draws]
        text = format(values[0], fmt)
        if len(values) > 1:
            text += f" ({format(min(values), fmt)}-{format(max(values), fmt)})"
        out.append(text)
    return out


# per model: the function that scores it (`rows`: what makes its rows from the split and the score, lever_rows
# unless given) and the columns of its scores (the first with the draws' range)
TABLES = {
    "squeezenet_v1.0": (squeezenet, ["top-1", "top-1 agreement", "square"]),
    "yolov3_nano_voc": (lambda args, rows=None: yolo_model("yolov3_nano_voc", args, rows),
                        ["box F1, all", "box F1, 14 photos", "fp32 boxes found", "yolo (lower better)"]),
    "yoloface_500k_v2": (lambda args, rows=None: yolo_model("yoloface_500k_v2", args, rows),
                         ["box F1, all", "box F1, 14 photos", "fp32 boxes found", "yolo (lower better)"]),
    "res10_ssd_face": (res10, ["box F1 (conf 0.5)", "fp32 faces found", "ssd_map", "square"]),
    "landmark106": (landmark106, ["mean point shift px", "max point shift px", "square"]),
}


def print_tables(tables: list[tuple[str, list[str], list[list[str]]]], start: float) -> None:
    """(model, header, rows) as markdown tables, then the wall time since `start` and the load average."""
    for name, header, rows in tables:
        print(f"\n{name}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else "?"
    print(f"\nwall time {time.perf_counter() - start:.0f}s (load average at the end: {' '.join(load)})")


def commit_line() -> str:
    """The commit measured, saying so when the tree has uncommitted changes or is not a checkout."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--short", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return f"commit {head}{' with uncommitted changes' if dirty else ''}" if head else \
        "commit unknown (not run from a git checkout: name the commit the copy came from)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(TABLES), choices=list(TABLES))
    ap.add_argument("--held_out", type=int, default=200, help="squeezenet: held-out imagenet_dev images (<= 218)")
    ap.add_argument("--wide", type=int, default=150, help="yolov3: imagenet_dev images added to the held-out photos")
    ap.add_argument("--draws", type=int, default=2, help="threshold jitter draws per table (the noise floor)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--solvers", nargs="+", default=[s.value for s in Solver], choices=[s.value for s in Solver],
                    help="the --adaround_solver values to measure")
    args = ap.parse_args()
    require_assets()
    start = time.perf_counter()
    print(f"{commit_line()}; draws {args.draws}", flush=True)
    spread = " (range over the draws)" if args.draws else ""
    tables = []
    for name in args.models:
        run, columns = TABLES[name]
        header = ["equalize", "levers", *(c + (spread if k == 0 else "") for k, c in enumerate(columns)),
                  "in-sample square", "lever s"]
        tables.append((name, header, run(args)))
    print_tables(tables, start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
