#!/usr/bin/env python3
"""int8 speed in onnxruntime: this project's QDQ export against onnxruntime's own export and fp32, one process.

Per model (--models, default squeezenet_v1.0 yolov3_nano_voc res10_ssd_face):
- ours: `main.py calibrate` with default settings (plus --ours_args) in a subprocess on --data_limit calibration
  images, its model_int8_qdq.onnx (or the file given with --ours);
- ort-export: onnxruntime's quant_pre_process, then quantize_static (QDQ, uint8 activations, int8 per-channel
  weights, MinMax) of the same fp32 ONNX graph (this project's converter) on the same images, same preprocessing;
- fp32: that fp32 ONNX graph.
Calibration images: the first --data_limit of imagenet_dev for squeezenet; for the detectors the detection+natural
photos sorted by name, every third one from index 0 (the 10 that bench/peers/compare.py and bench/tuning_yolo.py
calibrate on), then every third from index 1, then from 2, up to --data_limit.

All sessions run with onnxruntime's full graph optimisation (ORT_ENABLE_ALL, as deployed), --threads intra-op
threads, CPU provider. They are timed interleaved: after a warm-up, each of --rounds rounds runs every model once
(fp32, ort-export, ours[, their x64-exact sessions]) on the same real images, at each of --batches; the table shows
the median ms per run and the time ratios of the medians (< 1: the first is faster). With --x64_exact each int8
model is also timed with session.x64quantprecision=1. A model whose input declares a fixed batch is skipped at
the other batch sizes. The census lines (int8tune.quant.census) say what onnxruntime's optimised graph of each
int8 model runs as int8 kernels and which compute ops stay float.

    python bench/int8_speed.py                                  # all three models, ~5 min on 2 cores
    python bench/int8_speed.py --models squeezenet_v1.0 --rounds 20 --ours_args "--unsigned" --json out.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import REPO, batches_of, detection_split, labelled, model_paths, params_for, require_assets  # noqa: E402

from int8tune.data import DataItem  # noqa: E402
from int8tune.pipeline.workspace import load_workspace  # noqa: E402
from int8tune.quant.census import census, render_census  # noqa: E402
from int8tune.runtime import session_options  # noqa: E402

SPEED_MODELS = ("squeezenet_v1.0", "yolov3_nano_voc", "res10_ssd_face")
IMAGENET_MODELS = ("squeezenet_v1.0",)
X64_NOTE = ("x64-exact: session.x64quantprecision=1, onnxruntime's exact U8U8 int8 path (int8 weights turned into "
            "uint8) instead of the U8S8 kernels whose 16-bit intermediate sums can saturate on x86 without VNNI "
            "(SSE4.1/AVX2/AVX-512 without VNNI)")


def host_line() -> tuple[str, dict]:
    """The CPU model and its int8 dot-product extensions, from /proc/cpuinfo."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    ext = {f: f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "avx2", "avx512f")}
    cores = len([1 for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("processor")]) \
        if Path("/proc/cpuinfo").is_file() else 0
    text = (f"host: {name}, {cores} logical CPU(s); " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in ext.items())
            + f"; onnxruntime {ort.__version__}")
    return text, {"cpu": name, "logical_cpus": cores, **ext}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def calibration_items(name: str, limit: int) -> tuple[list[DataItem], str]:
    """The calibration images of a model and a description of where they come from."""
    if name in IMAGENET_MODELS:
        return labelled("imagenet_dev")[:limit], f"first {limit} of imagenet_dev"
    paths: list[Path] = []
    for offset in range(3):
        paths += [p for p in detection_split(offset, limit)[0] if p not in paths]
    items = [DataItem(p, None, None) for p in paths[:limit]]
    return items, f"{len(items)} detection+natural photos (every third by name, from index 0, then 1, 2)"


def export_ours(name: str, items: list[DataItem], folder: Path, extra: str) -> dict:
    """Our calibrate CLI in a subprocess; returns {"path", "seconds", "error", "command"}."""
    proto, caffemodel = model_paths(name)
    folder.mkdir(parents=True, exist_ok=True)
    data_list = folder / "calibration.txt"
    data_list.write_text("".join(f"{i.path}\n" for i in items))
    out = folder / "ours"
    cmd = [sys.executable, str(REPO / "main.py"), "-q", "calibrate", "--proto", str(proto), "--model", str(caffemodel),
           "--data_list", str(data_list), "--data_limit", str(len(items)),
           "--image_params", str(REPO / "examples" / "image_params" / f"{name}.json"),
           "--output_path", str(out), *shlex.split(extra)]
    t0 = time.perf_counter()
    with open(folder / "ours.log", "w") as log:
        status = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    path = out / "model_int8_qdq.onnx"
    error = ""
    if status != 0 or not path.is_file():
        tail = (folder / "ours.log").read_text().strip().splitlines()[-3:]
        error = f"calibrate exit status {status}: " + " | ".join(tail)
    return {"path": str(path) if not error else None, "seconds": seconds, "error": error,
            "command": shlex.join(cmd[1:])}


def export_ort(fp32: onnx.ModelProto, input_name: str, x: np.ndarray, folder: Path) -> dict:
    """onnxruntime's quant_pre_process + quantize_static of the fp32 graph on the images `x` (one per read)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    folder.mkdir(parents=True, exist_ok=True)
    fp32_path, prep, path = folder / "fp32.onnx", folder / "fp32_prep.onnx", folder / "ort_int8_qdq.onnx"
    onnx.save(fp32, str(fp32_path))
    notes = []
    t0 = time.perf_counter()
    try:
        try:
            quant_pre_process(str(fp32_path), str(prep))
        except Exception as e:  # symbolic shape inference needs sympy and fails on some graphs: skip it then
            why = "sympy is not installed" if isinstance(e, ImportError) else f"{type(e).__name__}: {str(e)[:80]}"
            notes.append(f"quant_pre_process ran with skip_symbolic_shape=True ({why})")
            quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
        quantize_static(str(prep), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as e:
        return {"path": None, "seconds": time.perf_counter() - t0, "error": f"{type(e).__name__}: {e}",
                "notes": notes}
    return {"path": str(path), "seconds": time.perf_counter() - t0, "error": "", "notes": notes}


def batch_dim(model: onnx.ModelProto) -> int | None:
    """The declared batch of the first graph input: None when free (symbolic or unset)."""
    inits = {t.name for t in model.graph.initializer}
    first = next(i for i in model.graph.input if i.name not in inits)
    dims = first.type.tensor_type.shape.dim
    if not dims or dims[0].dim_param or not dims[0].HasField("dim_value") or dims[0].dim_value <= 0:
        return None
    return dims[0].dim_value


def make_session(model: onnx.ModelProto, threads: int, x64_exact: bool) -> ort.InferenceSession:
    opts = session_options(threads)  # ORT_ENABLE_ALL
    if x64_exact:
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def images_for(x: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])


def time_interleaved(variants: dict, x: np.ndarray, batches: list[int], rounds: int, warmup: int) -> dict:
    """{variant: {batch: {"median_ms", "p25_ms", "p75_ms", "samples_ms"} or {"skipped": why}}}, each round running
    every variant once, in the order given."""
    result: dict = {name: {} for name in variants}
    for batch in batches:
        feeds, live = {}, []
        for name, v in variants.items():
            if v["batch"] is not None and v["batch"] != batch:
                result[name][batch] = {"skipped": f"input batch fixed at {v['batch']}"}
                continue
            s = v["session"]
            feed = {s.get_inputs()[0].name: images_for(x, batch)}
            try:
                for _ in range(warmup):
                    s.run(None, feed)
            except Exception as e:  # e.g. a reshape fixed to batch 1 inside the graph
                result[name][batch] = {"skipped": f"fails at batch {batch}: {type(e).__name__}: {str(e)[:200]}"}
                continue
            feeds[name] = feed
            live.append(name)
        samples = {name: [] for name in live}
        for _ in range(rounds):
            for name in live:
                s, feed = variants[name]["session"], feeds[name]
                t0 = time.perf_counter()
                s.run(None, feed)
                samples[name].append(1000.0 * (time.perf_counter() - t0))
        for name in live:
            q = np.percentile(samples[name], [25, 75])
            result[name][batch] = {"median_ms": statistics.median(samples[name]), "p25_ms": float(q[0]),
                                   "p75_ms": float(q[1]), "samples_ms": samples[name]}
    return result


RATIOS = (("ours", "fp32"), ("ours", "ort-export"), ("ort-export", "fp32"), ("ours x64-exact", "fp32"),
          ("ort-export x64-exact", "fp32"), ("ours x64-exact", "ort-export x64-exact"))


def ratios(timings: dict, batches: list[int]) -> dict:
    """{"a vs b": {batch: {"ratio": median_a / median_b, "paired": median over rounds of a_r / b_r}}}."""
    out = {}
    for a, b in RATIOS:
        if a not in timings or b not in timings:
            continue
        row = {}
        for batch in batches:
            ta, tb = timings[a].get(batch, {}), timings[b].get(batch, {})
            if "median_ms" in ta and "median_ms" in tb:
                paired = statistics.median(x / y for x, y in zip(ta["samples_ms"], tb["samples_ms"]))
                row[batch] = {"ratio": ta["median_ms"] / tb["median_ms"], "paired": paired}
        out[f"{a} vs {b}"] = row
    return out


def print_model(r: dict, batches: list[int], rounds: int) -> None:
    width = max([22] + [len(k) + 2 for k in r["ratios"]])
    print(f"\n== {r['model']}: input {r['input_name']} {'x'.join(map(str, r['input_shape']))}; calibration: "
          f"{r['calibration']}")
    for label, e in r["exports"].items():
        if e.get("error"):
            print(f"  {label}: FAILED ({e['error']})")
        else:
            batch = "free" if e["batch"] is None else f"fixed at {e['batch']}"
            made = f"exported in {e['seconds']:.1f} s" if e.get("seconds") is not None else "given file"
            print(f"  {label}: {made}, batch dimension {batch}" + "".join(f"; {n}" for n in e.get("notes", [])))
    head = "".join(f"{f'batch {b} ms':>14} {'[p25-p75]':>15}" for b in batches)
    print(f"  {'model':<{width}}{head}   (median of {rounds} interleaved rounds)")
    for name, per_batch in r["timings"].items():
        cells = ""
        for b in batches:
            t = per_batch.get(b, {})
            if "median_ms" in t:
                spread = f"[{t['p25_ms']:.2f}-{t['p75_ms']:.2f}]"
                cells += f"{t['median_ms']:>14.2f} {spread:>15}"
            else:
                cells += f"{'skipped':>14} {'':>15}"
        print(f"  {name:<{width}}{cells}")
        for b in batches:
            why = per_batch.get(b, {}).get("skipped")
            if why:
                print(f"    batch {b} skipped for {name}: {why}")
    print("  time ratio: of the medians [median of the per-round ratios]; < 1: the first is faster")
    for label, row in r["ratios"].items():
        cells = ""
        for b in batches:
            if b in row:
                paired = f"[{row[b]['paired']:.3f}]"
                cells += f"{row[b]['ratio']:>14.3f} {paired:>15}"
            else:
                cells += f"{'-':>14} {'':>15}"
        print(f"  {label:<{width}}{cells}")
    for label, lines in r["census"].items():
        print(f"  census of {label} (onnxruntime ORT_ENABLE_ALL):")
        for line in lines:
            print(f"    {line}")


def run_model(name: str, args, work: Path) -> dict:
    proto, caffemodel = model_paths(name)
    ws = load_workspace(proto, caffemodel)
    fp32 = ws.converted.model
    input_name = next(iter(ws.net.inputs))
    items, where = calibration_items(name, args.data_limit)
    x = np.concatenate(batches_of(items, params_for(name), ws.input_shape, 10))
    folder = work / name
    exports: dict = {}
    if args.ours:
        exports["ours"] = {"path": str(args.ours), "seconds": None, "error": "" if args.ours.is_file()
                           else f"{args.ours}: no such file"}
    else:
        exports["ours"] = export_ours(name, items, folder, args.ours_args)
    exports["ort-export"] = export_ort(fp32, input_name, x, folder)
    models = {"fp32": fp32}
    for label, e in exports.items():
        if not e["error"]:
            models[label] = onnx.load(e["path"])
            e["batch"] = batch_dim(models[label])
    variants = {}
    for label, model in models.items():
        variants[label] = {"session": make_session(model, args.threads, False), "batch": batch_dim(model)}
    if args.x64_exact:
        for label in ("ort-export", "ours"):
            if label in models:
                variants[f"{label} x64-exact"] = {"session": make_session(models[label], args.threads, True),
                                                  "batch": batch_dim(models[label])}
    order = [k for k in ("fp32", "ort-export", "ours", "ort-export x64-exact", "ours x64-exact") if k in variants]
    timings = time_interleaved({k: variants[k] for k in order}, x, args.batches, args.rounds, args.warmup)
    censuses = {label: census(models[label], threads=args.threads) for label in ("ours", "ort-export")
                if label in models}
    return {"model": name, "input_name": input_name, "input_shape": list(ws.input_shape), "calibration": where,
            "calibration_images": [str(i.path) for i in items], "exports": exports, "timings": timings,
            "ratios": ratios(timings, args.batches),
            "census": {k: render_census(c) for k, c in censuses.items()},
            "census_detail": {k: {"ops": c.ops, "int8": c.int8, "quantize": c.quantize, "dequantize": c.dequantize,
                                  "float_islands": [vars(i) for i in c.float_islands]} for k, c in censuses.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=list(SPEED_MODELS))
    ap.add_argument("--data_limit", type=int, default=20, help="calibration images for both exports (default 20)")
    ap.add_argument("--ours_args", default="", help='extra options for our calibrate command, e.g. "--unsigned"')
    ap.add_argument("--ours", type=Path, default=None, help="time this QDQ model as ours instead of exporting "
                                                            "(one model only)")
    ap.add_argument("--rounds", type=int, default=60, help="timed rounds (default 60)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed runs of each session first (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--x64_exact", action="store_true",
                    help="also time each int8 model with session.x64quantprecision=1 (exact U8U8 path)")
    ap.add_argument("--keep", type=Path, default=None, help="write the exports here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure and sample here")
    args = ap.parse_args()
    if args.ours and len(args.models) != 1:
        ap.error("--ours names one model file: give exactly one --models")
    require_assets()
    t0 = time.perf_counter()
    host, host_info = host_line()
    print(host + f"; load average {load_average()}")
    print(f"settings: {args.threads} intra-op thread(s), ORT_ENABLE_ALL, CPU provider; {args.rounds} rounds after "
          f"{args.warmup} warm-up runs; batches {' '.join(map(str, args.batches))}; ours: main.py calibrate "
          f"(defaults{', ' + args.ours_args if args.ours_args else ''}); ort-export: quant_pre_process + "
          "quantize_static QDQ, QUInt8 activations, QInt8 per-channel weights, MinMax")
    if args.x64_exact:
        vnni = any(host_info[f] for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
        print(X64_NOTE + ("; this host has VNNI: its default U8S8 kernels already sum exactly, x64-exact only shows "
                          "what the U8U8 path costs" if vnni else "; this host has no VNNI: the default U8S8 kernels "
                          "may saturate, x64-exact is the exact alternative"))
    results = []
    with tempfile.TemporaryDirectory(prefix="int8_speed_") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        for name in args.models:
            r = run_model(name, args, work)
            r["load_average"] = load_average()
            print_model(r, args.batches, args.rounds)
            print(f"  load average after timing (1/5/15 min): {r['load_average']}"
                  + ("  <- other processes competed for the cores: treat the ms as noisy, the ratios as less so"
                     if r["load_average"] and float(r["load_average"].split()[0]) > args.threads + 0.5 else ""))
            results.append(r)
    seconds = time.perf_counter() - t0
    print(f"\ntotal time {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"host": host_info, "onnxruntime": ort.__version__, "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "x64_note": X64_NOTE,
            "seconds": seconds, "models": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
