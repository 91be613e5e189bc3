#!/usr/bin/env python3
"""Side-by-side: this project against the peer quantizers, same fp32 graph, same images, one run.

Every tool gets the fp32 ONNX graph this project's converter exports (BatchNorm folded), the same calibration
and evaluation images with the same preprocessing, and (where it has one) its accuracy-aware mode with the same
target, validated on the calibration images (with their labels): no tool sees the evaluation images. Each
quantizes in its own subprocess (peers from the peers venv, bench/peers/setup.sh) under a time
limit; a failure is a row, not a crash. Every resulting ONNX model is then measured the same way, here, with
this venv's onnxruntime:

- accuracy: top-1 on the labels (classifiers), or mAP@0.5 of the int8 detections against the fp32 detections
  (detectors); fp32 agreement: top-1 agreement, or 1 - square difference of the outputs;
- int8 layers, counted twice: quantized in the graph (Conv/Gemm/MatMul whose weights come through a
  DequantizeLinear, or already integer ops), and running as int8 kernels in onnxruntime's optimised graph;
- wall time and peak memory (max RSS) of the quantize/tune step; int8 latency relative to fp32 (batch 1, median,
  each session timed alone).
Writes results.md, results.csv and results.png under --output.

    bash bench/peers/setup.sh            # once: the peers' virtual environment
    python bench/peers/compare.py --model squeezenet_v1.0 --output out/peers_squeezenet
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import ASSETS, REPO, YOLO_CFG, batches_of, labelled, model_paths, params_for, require_assets, yolo_params  # noqa: E402

from int8tune.benchmark import time_model  # noqa: E402
from int8tune.data import DataItem  # noqa: E402
from int8tune.metrics import METRICS  # noqa: E402
from int8tune.pipeline.workspace import load_workspace  # noqa: E402
from int8tune.quant.census import census  # noqa: E402

PEERS = ("ort", "nncf", "inc", "aimet", "ppq")
SPLITS = {  # model -> (task, how calibration and evaluation images are chosen)
    "squeezenet_v1.0": ("classification", ("imagenet_dev", 100, 150)),
    "lenet_mnist": ("classification", ("mnist_dev", 500, 1500)),
    "yolov3_nano_voc": ("detection", (("detection", "natural"), 10, None)),
    "yoloface_500k_v2": ("detection", (("detection", "natural"), 10, None)),
}
WEIGHTED = ("Conv", "Gemm", "MatMul", "ConvTranspose")
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm")
# --modes this project runs (its AdaRound and bias correction are on by default in both); the other modes are
# peers' own techniques (aimet's adaround, seqmse): each peer's runner reports "not available" for a mode it lacks
OURS_MODES = ("plain", "accuracy")


def prepare(model: str, out: Path, ws, wide: int) -> tuple[dict, list[str], list[str]]:
    """calib.npz / eval.npz (and wide.npz) and the list files for this project's CLI; returns the split
    description. Detectors: `wide` > 0 adds a second evaluation set, the first `wide` photos of imagenet_dev
    (natural photos, many with VOC objects), because the 18 held-out detection/natural photos decide little."""
    task, (source, n_cal, n_eval) = SPLITS[model]
    params = params_for(model)
    if task == "classification":
        items = labelled(source)
        cal, ev = items[:n_cal], items[n_cal:n_cal + n_eval]
    else:
        paths = sorted((p for f in source for p in (ASSETS / "images" / f).iterdir()), key=lambda p: p.name)
        cal_paths = paths[::3][:n_cal]
        cal = [DataItem(p, None, None) for p in cal_paths]
        ev = [DataItem(p, None, None) for p in paths if p not in cal_paths]
    x_cal = np.concatenate(batches_of(cal, params, ws.input_shape, 10))
    x_ev = np.concatenate(batches_of(ev, params, ws.input_shape, 10))
    if task == "classification":  # the labels are the accuracy-aware modes' validation targets
        np.savez(out / "calib.npz", x=x_cal, labels=np.array([i.label for i in cal], dtype=np.int64))
    else:
        np.savez(out / "calib.npz", x=x_cal)
    if task == "classification":
        np.savez(out / "eval.npz", x=x_ev, labels=np.array([i.label for i in ev], dtype=np.int64))
    else:
        np.savez(out / "eval.npz", x=x_ev)
    split = {"task": task, "calibration": len(cal), "evaluation": len(ev), "wide": 0}
    if task == "detection" and wide > 0:
        photos = sorted((ASSETS / "images" / "imagenet_dev").glob("*.JPEG"))[:wide]
        wide_items = [DataItem(p, None, None) for p in photos]
        np.savez(out / "wide.npz", x=np.concatenate(batches_of(wide_items, params, ws.input_shape, 10)))
        split["wide"] = len(wide_items)
    for name, items in (("calib", cal), ("eval", ev)):
        (out / f"{name}.txt").write_text("".join(f"{i.path}" + (f" {i.label}" if i.label is not None else "") + "\n"
                                                 for i in items))
    return split, [i.path.name for i in cal], [i.path.name for i in ev]


def _fresh(folder: Path) -> Path:
    """An empty folder per tool and mode: a previous run's files (a trial log) must not leak into this one."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run_timed(cmd: list[str], cwd: Path, timeout: float, env: dict | None = None) -> tuple[int, float, float, str]:
    """(status, seconds, peak MB, tail of stderr) of a subprocess, killed after `timeout`."""
    t0 = time.perf_counter()
    with open(cwd / "stderr.log", "w") as err, open(cwd / "stdout.log", "w") as outf:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=outf, stderr=err, env=env)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                status = -9
                break
            time.sleep(0.2)
    seconds = time.perf_counter() - t0
    tail = (cwd / "stderr.log").read_text().strip().splitlines()[-1:] or [""]
    tail = tail[0][-400:]
    return status, seconds, usage.ru_maxrss / 1024, tail


def ours(model: str, mode: str, out: Path, proto: Path, caffemodel: Path, timeout: float, task: str) -> dict:
    folder = _fresh(out / f"int8tune_{mode}")
    params = REPO / "examples" / "image_params" / f"{model}.json"
    base = [sys.executable, str(REPO / "main.py"), "-q"]
    common = ["--proto", str(proto), "--model", str(caffemodel), "--image_params", str(params),
              "--data_list", str(out / "calib.txt"), "--batch_size", "10", "--output_path", str(folder / "run")]
    if "+unsigned" in mode:  # uint8 [0, 255] for non-negative blobs, as NNCF and onnxruntime quantize them
        common.append("--unsigned")
    if "+equalize" in mode:  # cross-layer equalization of the weights first (the QDQ export carries them)
        common.append("--equalize")
    if mode.startswith("plain"):
        cmd = base + ["calibrate", *common]
        qdq = folder / "run" / "model_int8_qdq.onnx"
    else:
        metric = ["--metric", "top1", "--strategy", "basic", "--threshold", "1"] if task == "classification" else \
            ["--metric", "yolo", "--yolo_cfg", str(ASSETS / "models" / model / YOLO_CFG[model])]
        if mode.startswith("accuracy_model"):  # detectors: candidates scored by the yolo metric itself
            metric += ["--objective", "model"]
        elif mode.startswith("accuracy_guarded"):  # detectors: dense objective, the yolo metric as a veto
            metric += ["--objective", "guarded"]
        cmd = base + ["auto", *common, *metric, "--progress", "none"]
        qdq = folder / "run" / "tuned" / "model_int8_qdq.onnx"
    status, seconds, peak, tail = run_timed(cmd, folder, timeout)
    ok = status in (0, 3 << 8) and qdq.is_file()  # 3: tuned, goal not met
    # The peers' runners time their quantize call only, after imports and model loading; the comparable figure
    # here is the command's own "total time" (Caffe loading, calibration, tuning, every output format, the QDQ
    # export and its kernel check, plots), without the interpreter start and imports (kept as wall_seconds).
    report = folder / "run" / "report.log"
    found = re.findall(r"^total time ([0-9.]+)s$", report.read_text(), re.M) if report.is_file() else []
    return {"tool": "int8tune", "mode": mode, "status": "ok" if ok else "failed", "error": "" if ok else tail,
            "onnx": str(qdq) if ok else None, "seconds": float(found[-1]) if found else seconds,
            "wall_seconds": seconds, "peak_mb": peak}


def peer(name: str, mode: str, out: Path, fp32: Path, task: str, timeout: float, python: Path) -> dict:
    folder = _fresh(out / f"{name}_{mode}")
    job = {"peer": name, "mode": mode, "fp32_onnx": str(fp32), "input_name": "data",
           "calibration": str(out / "calib.npz"), "evaluation": str(out / "eval.npz"), "task": task,
           "max_drop": 0.01, "output_dir": str(folder), "output_onnx": str(folder / "model_int8.onnx"), "threads": 2}
    (folder / "job.json").write_text(json.dumps(job, indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # run_ppq.py sets what PPQ needs for itself
    status, seconds, peak, tail = run_timed([str(python), str(HERE / f"run_{name}.py"), str(folder / "job.json")],
                                            folder, timeout, env)
    result_file = folder / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if status == -9:
        result = {"status": "failed", "error": f"killed after the {timeout:.0f} s time limit"}
    elif not result:
        result = {"status": "failed", "error": f"exit status {status} without result.json: {tail}"}
    return {"tool": name, "mode": mode, "status": result.get("status", "failed"), "error": result.get("error", ""),
            "onnx": result.get("quantized_onnx"), "seconds": result.get("seconds", seconds), "peak_mb": peak,
            "notes": result.get("notes", [])}


def quantizable(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type in WEIGHTED)


def int8_in_graph(model: onnx.ModelProto) -> int:
    """Weighted layers quantized in the graph: integer ops, or float ops whose weights come through a DQ."""
    producer = {o: n for n in model.graph.node for o in n.output}
    count = sum(1 for n in model.graph.node if n.op_type in INTEGER_OPS)
    for n in model.graph.node:
        if n.op_type in WEIGHTED and len(n.input) > 1:
            p = producer.get(n.input[1])
            if p is not None and p.op_type == "DequantizeLinear":
                count += 1
    return count


def measure(row: dict, fp32_path: Path, out: Path, model: str, task: str, fp32_ms: float) -> dict:
    if row["status"] != "ok" or not row.get("onnx"):
        return row
    path = Path(row["onnx"])
    m = onnx.load(str(path))
    data = np.load(out / "eval.npz")
    x = data["x"]
    sess_opts = ort.SessionOptions()
    sess_opts.intra_op_num_threads = 2
    sess_opts.log_severity_level = 3
    q = ort.InferenceSession(str(path), sess_opts, providers=["CPUExecutionProvider"])
    f = ort.InferenceSession(str(fp32_path), sess_opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in f.get_outputs()]
    qnames = {o.name for o in q.get_outputs()}
    missing = [n for n in names if n not in qnames]
    if missing:
        row.update(status="failed", error=f"quantized model lacks outputs {missing}")
        return row
    input_name = q.get_inputs()[0].name

    def outputs_on(x):
        fp32 = {n: np.concatenate([f.run([n], {"data": x[i:i + 1]})[0] for i in range(len(x))]) for n in names}
        int8 = {n: np.concatenate([q.run([n], {input_name: x[i:i + 1]})[0] for i in range(len(x))]) for n in names}
        return fp32, int8

    fp32_out, int8_out = outputs_on(x)
    if task == "classification":
        labels = data["labels"]
        row["accuracy"] = METRICS.get("top1")(fp32_out, int8_out, {"labels": labels})
        row["fp32_accuracy"] = METRICS.get("top1")(fp32_out, fp32_out, {"labels": labels})
        row["agreement"] = METRICS.get("top1_agreement")(fp32_out, int8_out, {})
    else:
        params = yolo_params(model)
        row["accuracy"] = METRICS.get("yolo_map")(fp32_out, int8_out, params)
        row["fp32_accuracy"] = 1.0
        row["agreement"] = 1.0 - METRICS.get("square")(fp32_out, int8_out, {})
        if (out / "wide.npz").is_file():
            wide_fp32, wide_int8 = outputs_on(np.load(out / "wide.npz")["x"])
            row["wide_accuracy"] = METRICS.get("yolo_map")(wide_fp32, wide_int8, params)
            row["wide_yolo"] = METRICS.get("yolo")(wide_fp32, wide_int8, params)
    row["int8_graph"] = int8_in_graph(m)
    kinds = census(m, threads=2).int8  # the convolutions and matrix products, out of the quantizable layers
    row["int8_kernels"] = kinds["conv"] + kinds["matmul"]
    shape = (1,) + tuple(x.shape[1:])
    row["int8_ms"] = time_model("int8", m, input_name, shape, 1, repeat=30, threads=2).median_ms
    row["speedup"] = fp32_ms / row["int8_ms"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet_v1.0", choices=sorted(SPLITS))
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--peers", nargs="*", default=list(PEERS))
    ap.add_argument("--modes", nargs="*", default=["plain", "accuracy"],
                    help="plain, accuracy (every tool), and peers' own modes, e.g. aimet's adaround and seqmse "
                         "(this project runs only plain and accuracy; a peer without the mode: not available)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--ours_unsigned", action="store_true",
                    help="also this project's rows with --unsigned (the same model as the default --target "
                         "onnxruntime, which quantizes non-negative blobs unsigned anyway)")
    ap.add_argument("--no_ours_unsigned", dest="ours_unsigned", action="store_false",
                    help="(the default) no separate --unsigned rows")
    ap.add_argument("--wide", type=int, default=250, help="detectors: imagenet_dev photos in a second evaluation "
                                                          "set (0: none)")
    ap.add_argument("--equalize", action="store_true",
                    help="add this project's rows again with --equalize (cross-layer equalization first)")
    ap.add_argument("--guarded", action="store_true",
                    help="detectors: add this project's accuracy row with --objective guarded")
    ap.add_argument("--ort_calibrators", nargs="*", default=["percentile"], choices=["percentile", "entropy"],
                    help="onnxruntime's plain mode again with these calibrators besides MinMax")
    ap.add_argument("--peers_python", type=Path, default=REPO / ".venv-peers" / "bin" / "python")
    args = ap.parse_args()
    # absolute, not resolved: a venv's python is a symlink to the base interpreter, which would lose the venv
    args.peers_python = args.peers_python.absolute()
    require_assets()
    out = (args.output or REPO / "output" / f"peers_{args.model}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    proto, caffemodel = model_paths(args.model)
    ws = load_workspace(proto, caffemodel)
    fp32_path = out / "fp32.onnx"
    fp32_path.write_bytes(ws.converted.model.SerializeToString())
    split, cal_names, _ = prepare(args.model, out, ws, args.wide)
    task = split["task"]
    fp32_ms = time_model("fp32", ws.converted.model, "data", (1,) + tuple(ws.input_shape[1:]), 1, repeat=30,
                         threads=2).median_ms
    rows = []
    ours_modes = [m for m in args.modes if m in OURS_MODES]
    ours_modes += ["accuracy_model"] if task == "detection" and "accuracy" in args.modes else []
    if args.guarded and task == "detection" and "accuracy" in args.modes:
        ours_modes.append("accuracy_guarded")
    if args.equalize:
        ours_modes += [m + "+equalize" for m in ours_modes]
    if args.ours_unsigned:  # the same again with --unsigned (implied by the default target since --target)
        ours_modes += [m + "+unsigned" for m in ours_modes]
    for mode in ours_modes:
        rows.append(ours(args.model, mode, out, proto, caffemodel, args.timeout, task))
    for name in args.peers:
        if not args.peers_python.is_file():
            rows.append({"tool": name, "mode": "-", "status": "failed",
                         "error": f"no peers venv at {args.peers_python}: run bench/peers/setup.sh"})
            continue
        extra = [f"plain_{c}" for c in args.ort_calibrators] if name == "ort" and "plain" in args.modes else []
        for mode in list(args.modes) + extra:
            rows.append(peer(name, mode, out, fp32_path, task, args.timeout, args.peers_python))
    n_layers = quantizable(ws.converted.model)
    rows = [measure(r, fp32_path, out, args.model, task, fp32_ms) for r in rows]
    write_results(rows, out, args.model, split, n_layers, fp32_ms, cal_names)
    return 0


def write_results(rows, out: Path, model: str, split: dict, n_layers: int, fp32_ms: float, cal_names) -> None:
    metric = "top-1" if split["task"] == "classification" else "mAP@0.5 vs fp32"
    head = (f"{model}: {split['calibration']} calibration / {split['evaluation']} evaluation images; accuracy = "
            f"{metric}; {n_layers} quantizable layers; fp32 latency {fp32_ms:.2f} ms (batch 1)")
    wide = split.get("wide", 0)
    wide_head = f" {wide} imagenet_dev: mAP@0.5 vs fp32 | {wide} imagenet_dev: yolo difference |" if wide else ""
    lines_note = ("quantize time: the tool's quantize/tune step in its own process (peers: their quantize call; "
                  "int8tune: the command's total time, Caffe loading and every output included)")
    lines = [head, "", "| tool | mode | status | accuracy | fp32 agreement |" + wide_head + " int8 in graph | "
             "int8 kernels in ORT | quantize time s | peak MB | fp32/int8 latency |",
             "|---" * (10 + (2 if wide else 0)) + "|"]
    for r in rows:
        if r["status"] != "ok" or "accuracy" not in r:
            why = r.get("error") or (r.get("notes") or [""])[-1]
            why = str(why).splitlines()[0][:120] if why else ""
            lines.append(f"| {r['tool']} | {r['mode']} | {r['status']}: {why} | | |"
                         + (" | |" if wide else "") + f" | | {r.get('seconds', 0) or 0:.0f} | "
                         f"{r.get('peak_mb', 0) or 0:.0f} | |")
            continue
        wide_cells = f" {100 * r['wide_accuracy']:.2f} | {r['wide_yolo']:.4f} |" if wide else ""
        lines.append(f"| {r['tool']} | {r['mode']} | ok | {100 * r['accuracy']:.2f} | {100 * r['agreement']:.2f} |"
                     f"{wide_cells} {r['int8_graph']}/{n_layers} | {r['int8_kernels']}/{n_layers} | "
                     f"{r['seconds']:.1f} | {r['peak_mb']:.0f} | {r['speedup']:.2f} |")
    fp32 = next((r["fp32_accuracy"] for r in rows if "fp32_accuracy" in r), None)
    if fp32 is not None:
        lines.append(f"\nfp32 accuracy on the evaluation images: {100 * fp32:.2f}")
    lines.append(lines_note)
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    with open(out / "results.csv", "w", newline="") as f:
        keys = ["tool", "mode", "status", "accuracy", "agreement", "wide_accuracy", "wide_yolo", "int8_graph",
                "int8_kernels", "seconds", "wall_seconds", "peak_mb", "int8_ms", "speedup", "error"]
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    _plot(rows, out / "results.png", head, n_layers)
    print(text)


def _plot(rows, path: Path, title: str, n_layers: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok" and "accuracy" in r]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in ok:
        ax.scatter(r["int8_kernels"], 100 * r["accuracy"], s=60)
        ax.annotate(f"{r['tool']} {r['mode']}", (r["int8_kernels"], 100 * r["accuracy"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"layers running as int8 kernels in onnxruntime (of {n_layers})")
    ax.set_ylabel("accuracy %")
    ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
