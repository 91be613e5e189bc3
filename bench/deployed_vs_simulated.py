#!/usr/bin/env python3
"""Does the exported model_int8_qdq.onnx, deployed in a default onnxruntime session, compute what the tool
simulated, on a VNNI/AMX host and on an AVX2-only one? And what does the portable target cost?

For each model (SqueezeNet v1.0 on labelled imagenet_dev photos, yolov3_nano_voc on the detection+natural photos)
and each configuration

    onnxruntime        `--target onnxruntime` (the new default: pair-safe weights, uint8 after ReLU)
    onnxruntime_vnni   `--target onnxruntime_vnni` (plain 8-bit weights)
    old default        the CLI of commit --old_commit (53c7290: signed int8, 8-bit weights), from a git worktree
    ort-export         onnxruntime's own export of the same fp32 ONNX graph (this project's converter), made as
                       bench/int8_speed.py's export_ort makes it: quant_pre_process, then quantize_static (QDQ,
                       QUInt8 activations, QInt8 per-channel weights, MinMax) on the same calibration images, same
                       preprocessing; it has no simulation (deployed figures against fp32 only, and AVX2 vs VNNI)

the CLI calibrates (`python main.py calibrate`, default --method auto) into a temporary folder. On the held-out
images the script then computes
    fp32               the fp32 model (int8tune's Engine),
    simulated          the tool's own simulation of the table (quant/simulate.py `build_int8_graph`, thresholds
                       frozen, run with `Engine(..., simulation=True)`), each configuration with its own code (the
                       old default with the worktree's int8tune, in a subprocess),
    deployed (VNNI)    model_int8_qdq.onnx in `ort.InferenceSession(bytes, providers=["CPUExecutionProvider"])`
                       natively (VNNI/AMX int8 kernels, exact; on an AVX2-only host this native column is the
                       AVX2 one, labelled so, and there is no emulated column),
    deployed (AVX2)    the same sessions under `qemu-x86_64 -cpu Haswell` (onnxruntime's AVX2 U8S8 kernels, whose
                       pairs of u8*s8 products add in a saturating int16); the emulated process only runs the
                       sessions on saved inputs (.npz) and first checks with a one-node MatMulInteger probe that its
                       kernels really saturate (else the AVX2 column would silently be a VNNI one).

Figures: SqueezeNet top-1 accuracy (labels), top-1 agreement with fp32, and deployed-vs-simulated top-1 agreement;
yolov3_nano_voc box F1 and mAP@0.5 of the int8 detections against the fp32 detections (int8tune.yolo:
detections_of, detection_agreement, mean_average_precision; box F1 = 2 found / (fp32 boxes + int8 boxes), a hit is
IoU >= 0.5 with a box of the same class), and deployed-vs-simulated box F1. Goals: deployed-vs-simulated top-1
agreement >= 99.5 %, box F1 >= 99 %. Counts of images whose deployed outputs are not bit-identical to the
simulation are printed too. Finally the native latency of the two new exports (and the old one for reference):
default sessions, batch 1, interleaved rounds, median.

    python bench/deployed_vs_simulated.py                      # everything (~15-20 min on 2 cores)
    python bench/deployed_vs_simulated.py --models yolov3_nano_voc --held_out 10 --skip_qemu
    python bench/deployed_vs_simulated.py --configs onnxruntime onnxruntime_vnni ort-export   # no old worktree
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
CONFIGS = ("onnxruntime", "onnxruntime_vnni", "old default", "ort-export")
CONFIG_ALIASES = {"old": "old default", "old_default": "old default", "old-default": "old default",
                  "ort_export": "ort-export"}
NO_SIMULATION = ("ort-export",)  # configurations without a simulation of their own
KINDS = ("simulated", "deployed VNNI", "deployed AVX2")
QEMU_CPU = "Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid"  # as scripts/emulate_avx2.sh
CALIBRATE_IMAGES = {"squeezenet_v1.0": 100, "yolov3_nano_voc": 10}
AGREEMENT_GOAL, F1_GOAL = 0.995, 0.99


# --- subprocess modes: the simulation (any int8tune checkout) and the deployed sessions (onnxruntime only) --------

def simulate_job(job: dict) -> None:
    """The simulation of each table of `job` with the int8tune of job["root"] (the worktree for the old default)."""
    sys.path.insert(0, job["root"])
    import dataclasses

    import int8tune
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.quant.formats import read_table_pb
    from int8tune.quant.simulate import build_int8_graph
    from int8tune.runtime import Engine
    assert Path(int8tune.__file__).resolve().is_relative_to(Path(job["root"]).resolve()), int8tune.__file__
    ws = load_workspace(Path(job["proto"]), Path(job["model"]), False)
    x = np.load(job["inputs"])["x"]
    table = read_table_pb(job["table"])
    graph = build_int8_graph(ws.converted, table)
    engine = Engine(dataclasses.replace(graph.converted, model=graph.frozen(table)), simulation=True,
                    threads=job["threads"])
    names, b = job["outputs"], job["batch"]
    runs = [engine.run_tensors(x[i:i + b], names) for i in range(0, len(x), b)]
    np.savez(job["out"], **{n: np.concatenate([r[n] for r in runs]) for n in names})


def saturation_probe() -> bool:
    """True when this process's onnxruntime adds u8*s8 pairs in a saturating int16 (AVX2 U8S8 kernels)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    b = numpy_helper.from_array(np.full((k, 16), 127, np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "probe",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [4, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [4, 16])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = int(s.run(None, {"A": np.full((4, k), 255, np.uint8)})[0][0, 0])
    if y not in (k * 255 * 127, (k // 2) * 32767):
        raise RuntimeError(f"saturation probe: unexpected {y}")
    return y != k * 255 * 127


def deploy_job(jobs: list[dict], report: str) -> None:
    """Each exported model in a default onnxruntime CPU session, on saved inputs; outputs saved per job."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    info = {"onnxruntime": ort.__version__, "saturates": saturation_probe(), "jobs": []}
    for job in jobs:
        t = time.perf_counter()
        session = ort.InferenceSession(Path(job["model"]).read_bytes(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        x, b = np.load(job["inputs"])["x"], job["batch"]
        feed = session.get_inputs()[0].name
        runs = [session.run(names, {feed: x[i:i + b]}) for i in range(0, len(x), b)]
        np.savez(job["out"], **{n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(names)})
        info["jobs"].append({"out": job["out"], "seconds": time.perf_counter() - t})
        print(f"  {job['label']}: {len(x)} images in {time.perf_counter() - t:.1f}s", flush=True)
    info["seconds"] = time.perf_counter() - t0
    Path(report).write_text(json.dumps(info))


# --- the driver -----------------------------------------------------------------------------------------------

def run(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        tail = log.read_text().splitlines()[-25:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({rc}); {log}:\n" + "\n".join(tail))
    return time.perf_counter() - t0


def this_script(mode: str, job_file: Path) -> list[str]:
    return [sys.executable, str(HERE), mode, str(job_file)]


def box_counts(truth, predicted):
    """(found, truth boxes, predicted boxes, images whose detections differ) with detection_agreement at IoU 0.5."""
    from int8tune.yolo import detection_agreement

    agreement = detection_agreement(truth, predicted, 0.5)
    found = sum(a.found for a in agreement)
    ref = sum(a.reference for a in agreement)
    pred = sum(a.found + a.extra for a in agreement)
    return found, ref, pred, sum(1 for a in agreement if a.missed or a.extra)


def box_f1(truth, predicted) -> float:
    found, ref, pred, _ = box_counts(truth, predicted)
    return 2 * found / (ref + pred) if ref + pred else 1.0


def per_image_identical(a: dict, b: dict, n: int) -> np.ndarray:
    same = np.ones(n, bool)
    for k in a:
        same &= (a[k].reshape(n, -1) == b[k].reshape(n, -1)).all(axis=1)
    return same


def max_relative(a: dict, b: dict, ref: dict) -> float:
    """max |a - b| over every output, in units of the fp32 output's range."""
    return max(float(np.abs(a[k] - b[k]).max() / (ref[k].max() - ref[k].min())) for k in a)


def calibrate_all(args, name, lists, work: Path, old_root: Path | None, configs) -> dict:
    from common import model_paths

    proto, model = model_paths(name)
    out = {}
    for config in configs:
        if config == "ort-export":
            continue  # exported by export_ort_config, not by the CLI
        folder = work / name / config.replace(" ", "_")
        if config == "old default":
            root, extra = old_root, []
            params = old_root / "examples" / "image_params" / f"{name}.json"
            if not params.is_file():
                params = REPO / "examples" / "image_params" / f"{name}.json"
        else:
            root, extra = REPO, ["--target", config]
            params = REPO / "examples" / "image_params" / f"{name}.json"
        cmd = [sys.executable, "main.py", "calibrate", "--proto", str(proto), "--model", str(model), "--data_list",
               str(lists), "--image_params", str(params), "--threads", str(args.threads), "--output_path",
               str(folder)] + extra
        seconds = run(cmd, work / name / f"calibrate_{config.replace(' ', '_')}.log", cwd=root)
        report = (folder / "report.log").read_text().splitlines()
        kernels = "?"
        for i, line in enumerate(report):  # "QDQ model <path>: k/n int8 layers ..." or the next line's kernels
            if line.startswith("QDQ model"):
                kernels = (line.split(": ", 1)[1] if "int8 layers" in line
                           else report[i + 1].strip() if i + 1 < len(report) else "?")
        out[config] = {"folder": str(folder), "seconds": seconds, "kernels": kernels}
        print(f"  calibrated {config:<17} {seconds:6.1f}s  ({kernels})", flush=True)
    return out


def qdq_model(cal: dict, config: str) -> Path:
    """The deployed QDQ file of a configuration."""
    return Path(cal[config].get("model") or Path(cal[config]["folder"]) / "model_int8_qdq.onnx")


def export_ort_config(ws, items, params, batch: int, folder: Path, threads: int) -> dict:
    """onnxruntime's quant_pre_process + quantize_static of ws.converted.model on the calibration `items`, with
    bench/int8_speed.py's export_ort (the same preprocessing as the other configurations: bench/common.py's
    batches_of with the model's image parameters)."""
    from common import batches_of
    from int8_speed import export_ort

    from int8tune.quant.census import census, render_census

    x = np.concatenate(batches_of(items, params, ws.input_shape, batch))
    e = export_ort(ws.converted.model, next(iter(ws.net.inputs)), x, folder)
    if e["error"]:
        raise RuntimeError(f"ort-export failed: {e['error']}")
    import onnx
    kernels = render_census(census(onnx.load(e["path"]), threads=threads))[0]
    out = {"folder": str(folder), "model": e["path"], "seconds": e["seconds"], "kernels": kernels,
           "calibration_images": len(x), "notes": e["notes"]}
    notes = "".join(f"; {n}" for n in e["notes"])
    print(f"  exported   {'ort-export':<17} {e['seconds']:6.1f}s  ({kernels}; {len(x)} calibration images{notes})",
          flush=True)
    return out


def widened_channels(cal: dict) -> str:
    """How many weight channels the portable table's thresholds widen against the VNNI table's."""
    from int8tune.quant.formats import read_table_pb

    a = read_table_pb(Path(cal["onnxruntime"]["folder"]) / "calibration_table.pb")
    b = read_table_pb(Path(cal["onnxruntime_vnni"]["folder"]) / "calibration_table.pb")
    layers = channels = total = 0
    worst = 1.0
    factors: list[float] = []
    for name, e in a.layers.items():
        if e.weight_thresholds is None or not e.int8:
            continue
        ta, tb = np.asarray(e.weight_thresholds, np.float64), np.asarray(b.layers[name].weight_thresholds, np.float64)
        wide = ta > tb * (1 + 1e-6)
        total += ta.size
        if wide.any():
            layers += 1
            channels += int(wide.sum())
            worst = max(worst, float((ta[wide] / tb[wide]).max()))
            factors += list(ta[wide] / tb[wide])
    median = f", median {np.median(factors):.3f}" if factors else ""
    return (f"{channels}/{total} weight channels in {layers} layer(s) widened by the portable target "
            f"(threshold factor: largest {worst:.3f}{median})")


def latency(paths: dict[str, Path], x1: np.ndarray, rounds: int, reps: int) -> dict:
    """Median ms per batch-1 run of each model in a default session, interleaved rounds (order rotated)."""
    import onnxruntime as ort

    sessions = {k: ort.InferenceSession(p.read_bytes(), providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x1} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(5):
            s.run(None, feeds[k])
    times = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            for _ in range(reps):
                t = time.perf_counter()
                sessions[k].run(None, feeds[k])
                times[k].append(time.perf_counter() - t)
    out = {}
    for k, v in times.items():
        v = np.asarray(v) * 1000
        out[k] = {"median_ms": float(np.median(v)), "p10_ms": float(np.percentile(v, 10)),
                  "p90_ms": float(np.percentile(v, 90)), "runs": len(v)}
    return out


def optimized_ops(path: Path, tmp: Path) -> str:
    """The int8 kernels in onnxruntime's optimised graph of `path` on this host."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp)
    ort.InferenceSession(path.read_bytes(), sess_options=opts, providers=["CPUExecutionProvider"])
    ops: dict[str, int] = {}
    for node in onnx.load(str(tmp)).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    keep = [k for k in sorted(ops) if k.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "Quantize",
                                                     "DequantizeLinear", "DynamicQuantize", "Conv", "Fused"))]
    return ", ".join(f"{k} {ops[k]}" for k in keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["squeezenet_v1.0", "yolov3_nano_voc"],
                    choices=["squeezenet_v1.0", "yolov3_nano_voc"])
    ap.add_argument("--held_out", type=int, default=150,
                    help="held-out images per model (SqueezeNet: the imagenet_dev images after the 100 calibration "
                         "ones, at most 150; yolov3: the 18 detection+natural photos not tuned on, at most 18)")
    ap.add_argument("--skip_qemu", action="store_true", help="no AVX2 column (qemu-x86_64 -cpu Haswell)")
    ap.add_argument("--skip_old", action="store_true", help="no old-default configuration (as --configs without "
                                                            "'old default')")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), metavar="CONFIG",
                    help="configurations to run, of: " + ", ".join(repr(c) for c in CONFIGS)
                         + " (default: all; 'old default' may be given as old_default or old)")
    ap.add_argument("--old_commit", default="53c7290", help="the old default's commit (a temporary git worktree)")
    ap.add_argument("--old_repo", type=Path, help="an existing checkout of the old commit instead of a worktree")
    ap.add_argument("--qemu_procs", type=int, default=2, help="emulated processes side by side")
    ap.add_argument("--threads", type=int, default=2, help="calibration and simulation threads")
    ap.add_argument("--batch", type=int, default=10, help="images per run of the simulation and the sessions")
    ap.add_argument("--rounds", type=int, default=20, help="latency: interleaved rounds")
    ap.add_argument("--reps", type=int, default=10, help="latency: batch-1 runs per model per round")
    ap.add_argument("--workdir", type=Path, help="keep every file here (default: a temporary folder, removed)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    sys.path.insert(0, str(HERE.parent))
    import onnx
    from common import (
        batches_of,
        detection_split,
        labelled,
        model_paths,
        params_for,
        require_assets,
        split,
        top1,
        yolo_params,
    )

    from int8tune.data import DataItem
    from int8tune.hostcpu import Int8Path, describe_host, host_int8_path
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.runtime import Engine
    from int8tune.yolo import YoloParams, detections_of, mean_average_precision

    require_assets()
    chosen = {CONFIG_ALIASES.get(c, c) for c in args.configs}
    unknown = sorted(chosen - set(CONFIGS))
    if unknown:
        print(f"unknown configuration(s) {', '.join(unknown)}; choose among {', '.join(CONFIGS)}")
        return 2
    configs = [c for c in CONFIGS if c in chosen and not (args.skip_old and c == "old default")]
    if not configs:
        print("no configuration left to run")
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="deployed_vs_simulated_"))
    work.mkdir(parents=True, exist_ok=True)
    worktree = None
    old_root = args.old_repo
    if "old default" in configs and old_root is None:
        worktree = Path(tempfile.mkdtemp(prefix="int8tune_old_")) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(worktree), args.old_commit],
                       check=True)
        old_root = worktree
    # The native column is whatever this CPU runs: on an AVX2-only host it already is the saturating kernels,
    # and emulating Haswell would only repeat it.
    native_avx2 = host_int8_path() is Int8Path.AVX2
    if native_avx2 and not args.skip_qemu:
        print("this host's own int8 kernels are the AVX2 ones: the native column is the AVX2 one, no emulation")
        args.skip_qemu = True
    qemu = shutil.which("qemu-x86_64")
    if not args.skip_qemu and not qemu:
        print("qemu-x86_64 not found: no AVX2 column (install qemu-user)")
        args.skip_qemu = True
    print(f"host: {describe_host()}; work folder {work}; old default: commit {args.old_commit}"
          f"{f' at {old_root}' if old_root else ''}", flush=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--short", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.split("\n")
    dirty = [line[3:] for line in dirty if line.strip()]
    print(f"new configurations: the working tree of {REPO} at {head}"
          f"{f' with uncommitted changes to {len(dirty)} file(s): ' + ', '.join(dirty) if dirty else ''}")
    results: dict = {"host": describe_host(), "repo_head": head, "uncommitted": dirty, "models": {},
                     "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        per_model = {}
        deploy_jobs = []
        for name in args.models:
            print(f"\n== {name}", flush=True)
            (work / name).mkdir(exist_ok=True)
            ws = load_workspace(*model_paths(name), False)
            params = params_for(name)
            lists = work / name / "calibration.txt"
            if name == "squeezenet_v1.0":
                cal_items, held = split(labelled("imagenet_dev"), CALIBRATE_IMAGES[name], min(args.held_out, 150))
                lists.write_text("".join(f"{i.path} {i.label}\n" for i in cal_items))
                labels = np.asarray([i.label for i in held])
                mparams = None
            else:
                tune, held_paths = detection_split(0, CALIBRATE_IMAGES[name])
                held = [DataItem(p, None, None) for p in held_paths[: args.held_out]]
                lists.write_text("".join(f"{p}\n" for p in tune))
                labels = None
                mparams = YoloParams.from_dict(yolo_params(name))
            print(f"  {len(held)} held-out images", flush=True)
            x = np.concatenate(batches_of(held, params, ws.input_shape, args.batch))
            inputs = work / name / "inputs.npz"
            np.savez(inputs, x=x)
            cal = calibrate_all(args, name, lists, work, old_root, configs)
            if "ort-export" in configs:
                cal_data = cal_items if name == "squeezenet_v1.0" else [DataItem(p, None, None) for p in tune]
                cal["ort-export"] = export_ort_config(ws, cal_data, params, args.batch, work / name / "ort-export",
                                                      args.threads)
            outputs = [o.name for o in onnx.load(str(qdq_model(cal, configs[0]))).graph.output]
            for config in configs:
                missing = set(outputs) - {o.name for o in onnx.load(str(qdq_model(cal, config))).graph.output}
                if missing:
                    raise RuntimeError(f"{config}: {qdq_model(cal, config)} lacks output(s) {sorted(missing)}")
            fp32_engine = Engine(ws.converted, threads=args.threads)
            fp32 = [fp32_engine.run_tensors(x[i:i + args.batch], outputs) for i in range(0, len(x), args.batch)]
            fp32 = {n: np.concatenate([r[n] for r in fp32]) for n in outputs}
            sims = {}
            for config in configs:
                folder = Path(cal[config]["folder"])
                if config in NO_SIMULATION:
                    print(f"  simulated  {config:<17}      -  (no simulation: deployed figures against fp32 only)",
                          flush=True)
                else:
                    job = {"root": str(old_root if config == "old default" else REPO),
                           "proto": str(model_paths(name)[0]), "model": str(model_paths(name)[1]),
                           "inputs": str(inputs), "table": str(folder / "calibration_table.pb"),
                           "threads": args.threads, "outputs": outputs, "batch": args.batch,
                           "out": str(folder / "simulated.npz")}
                    job_file = folder / "simulate.json"
                    job_file.write_text(json.dumps(job))
                    try:
                        s = run(this_script("--_simulate", job_file), folder / "simulate.log")
                        sims[config] = dict(np.load(folder / "simulated.npz"))
                        print(f"  simulated  {config:<17} {s:6.1f}s", flush=True)
                    except RuntimeError as e:
                        print(f"  simulation of {config} failed, deployed figures only:\n{e}", flush=True)
                for host in ("native", "avx2"):
                    deploy_jobs.append({"host": host, "label": f"{name} {config}",
                                        "cost": len(x) * (3 if config == "old default" else 1),
                                        "model": str(qdq_model(cal, config)),
                                        "inputs": str(inputs), "batch": args.batch,
                                        "out": str(folder / f"deployed_{host}.npz")})
            per_model[name] = dict(ws=ws, x=x, labels=labels, mparams=mparams, fp32=fp32, sims=sims, cal=cal)
            results["models"][name] = {"held_out": len(x), "calibration": cal}
            if "onnxruntime_vnni" in cal and "onnxruntime" in cal:
                results["models"][name]["widened"] = widened_channels(cal)
                print(f"  {results['models'][name]['widened']}", flush=True)

        hosts = ["native"] + ([] if args.skip_qemu else ["avx2"])
        host_info = {}
        for host in hosts:
            # the emulated sessions run in --qemu_procs processes side by side (qemu keeps one process on about
            # one core); each process is a plain default session, and checks its kernels with the probe
            jobs = sorted((j for j in deploy_jobs if j["host"] == host), key=lambda j: -j["cost"])
            procs = max(1, min(args.qemu_procs if host == "avx2" else 1, len(jobs)))
            groups: list[list[dict]] = [[] for _ in range(procs)]
            for j in jobs:  # greedy balance by cost
                min(groups, key=lambda g: sum(x["cost"] for x in g)).append(j)
            env = dict(os.environ)
            if host == "avx2":
                env["INT8TUNE_INT8_PATH"] = "avx2"
            print(f"\ndeployed sessions, {host}{' (qemu-x86_64 -cpu Haswell)' if host == 'avx2' else ''}, "
                  f"{procs} process(es):", flush=True)
            t0 = time.perf_counter()
            running = []
            for k, group in enumerate(groups):
                job_file, report = work / f"deploy_{host}_{k}.json", work / f"deploy_{host}_{k}_report.json"
                job_file.write_text(json.dumps(group))
                cmd = this_script("--_deploy", job_file) + [str(report)]
                if host == "avx2":
                    cmd = [qemu, "-cpu", QEMU_CPU] + cmd
                log = work / f"deploy_{host}_{k}.log"
                running.append((subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT),
                                log, report))
            reports = []
            for proc, log, report in running:
                if proc.wait():
                    raise RuntimeError(f"deployed sessions ({host}) failed; {log}:\n"
                                       + "\n".join(log.read_text().splitlines()[-25:]))
                print(log.read_text().rstrip())
                reports.append(json.loads(report.read_text()))
            seconds = time.perf_counter() - t0
            sat = [r["saturates"] for r in reports]
            host_info[host] = {"onnxruntime": reports[0]["onnxruntime"], "saturates": sat, "wall_seconds": seconds,
                               "processes": reports}
            kernels = ("SATURATE u8*s8 pairs in int16 (AVX2 U8S8 path)" if all(sat)
                       else "exact (VNNI/AMX path)" if not any(sat) else "MIXED")
            print(f"  {seconds:.1f}s; onnxruntime {reports[0]['onnxruntime']}; probe: int8 kernels {kernels}",
                  flush=True)
            if any((host == "avx2" or native_avx2) != v for v in sat):
                print(f"  WARNING: the {host} sessions' kernels are not the expected kind", flush=True)
        results["hosts"] = host_info

        # --- figures ----------------------------------------------------------------------------------------
        kind_of = {"native": "deployed AVX2" if native_avx2 else "deployed VNNI", "avx2": "deployed AVX2"}
        rows = []
        for name, m in per_model.items():
            n = len(m["x"])
            res = results["models"][name]
            res["configs"] = {}
            if name == "squeezenet_v1.0":
                ref_top = m["fp32"][outputs_of(m)].reshape(n, -1).argmax(1)
                res["fp32_top1"] = top1(m["fp32"][outputs_of(m)], m["labels"])
            else:
                truth = detections_of(m["fp32"], m["mparams"])
                res["fp32_boxes"] = sum(len(t) for t in truth)
            for config in configs:
                folder = Path(m["cal"][config]["folder"])
                got = {"simulated": m["sims"].get(config)}
                for host in hosts:
                    got[kind_of[host]] = dict(np.load(folder / f"deployed_{host}.npz"))
                figures = {}
                sim = got["simulated"]
                for kind, out in got.items():
                    if out is None:
                        continue
                    f: dict = {}
                    if name == "squeezenet_v1.0":
                        logits = out[outputs_of(m)]
                        top = logits.reshape(n, -1).argmax(1)
                        f["top1"] = top1(logits, m["labels"])
                        f["agree_fp32"] = float((top == ref_top).mean())
                        if kind != "simulated" and sim is not None:
                            stop = sim[outputs_of(m)].reshape(n, -1).argmax(1)
                            f["agree_sim"] = float((top == stop).mean())
                            f["top1_differs_from_sim"] = int((top != stop).sum())
                    else:
                        dets = detections_of(out, m["mparams"])
                        found, ref, pred, differ = box_counts(truth, dets)
                        f["box_f1_fp32"] = box_f1(truth, dets)
                        f["map50_fp32"] = mean_average_precision(truth, dets, 0.5)
                        f["boxes"] = pred
                        f["found_of_fp32"] = found
                        if kind != "simulated" and sim is not None:
                            sdets = detections_of(sim, m["mparams"])
                            f["box_f1_sim"] = box_f1(sdets, dets)
                            f["images_detections_differ_from_sim"] = box_counts(sdets, dets)[3]
                    if kind != "simulated" and sim is not None:
                        f["images_not_bit_identical_to_sim"] = int((~per_image_identical(out, sim, n)).sum())
                        f["max_diff_vs_sim_of_fp32_range"] = max_relative(out, sim, m["fp32"])
                    figures[kind] = f
                    rows.append((name, config, kind, f))
                if "deployed VNNI" in figures and "deployed AVX2" in figures:
                    same = per_image_identical(got["deployed VNNI"], got["deployed AVX2"], n)
                    figures["avx2_vs_vnni_images_not_bit_identical"] = int((~same).sum())
                res["configs"][config] = figures

        # --- latency ------------------------------------------------------------------------------------------
        load = os.getloadavg()
        print(f"\nlatency (native, default session, batch 1, interleaved rounds; load average before "
              f"{load[0]:.2f} on {os.cpu_count()} cores):", flush=True)
        results["latency"] = {"load_average_before": load[0]}
        for name, m in per_model.items():
            paths = {c: qdq_model(m["cal"], c) for c in configs}
            lat = latency(paths, m["x"][:1], args.rounds, args.reps)
            results["latency"][name] = lat
            for c in configs:
                ops = optimized_ops(paths[c], work / name / f"optimized_{c.replace(' ', '_')}.onnx")
                lat[c]["optimized_graph"] = ops
            base = lat["onnxruntime_vnni"]["median_ms"] if "onnxruntime_vnni" in lat else None
            for c in configs:
                ratio = f"  x{lat[c]['median_ms'] / base:.3f} of onnxruntime_vnni" if base else ""
                note = "  (reference)" if c in ("old default", "ort-export") else ""
                print(f"  {name:<16} {c:<17} median {lat[c]['median_ms']:7.3f} ms  (p10 {lat[c]['p10_ms']:.3f}, "
                      f"p90 {lat[c]['p90_ms']:.3f}, {lat[c]['runs']} runs){ratio}{note}")
                print(f"  {'':<16} {'':<17} optimised graph: {lat[c]['optimized_graph']}")

        # --- the table ----------------------------------------------------------------------------------------
        print()
        for name, m in per_model.items():
            res = results["models"][name]
            n = res["held_out"]
            if name == "squeezenet_v1.0":
                print(f"SqueezeNet v1.0, {n} held-out imagenet_dev images; fp32 top-1 {res['fp32_top1']:.4f}")
                print("| config | outputs | top-1 (labels) | top-1 agreement with fp32 | deployed vs simulated top-1 "
                      "agreement | images top-1 differs from sim | images not bit-identical to sim | "
                      "max |deployed - sim| / fp32 range |")
                print("|---|---|---|---|---|---|---|---|")
            else:
                print(f"yolov3_nano_voc, {n} held-out photos; fp32 makes {res['fp32_boxes']} detections")
                print("| config | outputs | box F1 vs fp32 | mAP@0.5 vs fp32 | boxes (found of fp32) | "
                      "deployed vs simulated box F1 | images detections differ from sim | images not bit-identical "
                      "to sim | max |deployed - sim| / fp32 range |")
                print("|---|---|---|---|---|---|---|---|---|")
            for rname, config, kind, f in rows:
                if rname != name:
                    continue
                rel = f.get("max_diff_vs_sim_of_fp32_range")
                tail = [f"{f['images_not_bit_identical_to_sim']}/{n}" if "images_not_bit_identical_to_sim" in f
                        else "-", f"{rel:.2e}" if rel is not None else "-"]
                if name == "squeezenet_v1.0":
                    a = f.get("agree_sim")
                    mark = "" if a is None else (" ok" if a >= AGREEMENT_GOAL else " BELOW GOAL")
                    cells = [f"{f['top1']:.4f}", f"{f['agree_fp32']:.4f}", "-" if a is None else f"{a:.4f}{mark}",
                             "-" if a is None else str(f["top1_differs_from_sim"])] + tail
                else:
                    a = f.get("box_f1_sim")
                    mark = "" if a is None else (" ok" if a >= F1_GOAL else " BELOW GOAL")
                    cells = [f"{f['box_f1_fp32']:.4f}", f"{f['map50_fp32']:.4f}",
                             f"{f['boxes']} ({f['found_of_fp32']})", "-" if a is None else f"{a:.4f}{mark}",
                             "-" if a is None else str(f["images_detections_differ_from_sim"])] + tail
                print(f"| {config} | {kind} | " + " | ".join(cells) + " |")
            cfgs = res["configs"]
            diffs = [f"{c} {cfgs[c]['avx2_vs_vnni_images_not_bit_identical']}/{n}" for c in configs
                     if "avx2_vs_vnni_images_not_bit_identical" in cfgs[c]]
            if diffs:
                print(f"deployed AVX2 vs deployed VNNI, images not bit-identical: {', '.join(diffs)}")
            print()
        results["seconds"] = time.perf_counter() - t_start
        print(f"total time {results['seconds']:.0f}s")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
            print(f"figures written to {args.json}")
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
            shutil.rmtree(worktree.parent, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def outputs_of(m: dict) -> str:
    return next(iter(m["fp32"]))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--_simulate":
        simulate_job(json.loads(Path(sys.argv[2]).read_text()))
    elif len(sys.argv) >= 4 and sys.argv[1] == "--_deploy":
        deploy_job(json.loads(Path(sys.argv[2]).read_text()), sys.argv[3])
    else:
        sys.exit(main())
