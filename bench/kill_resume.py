#!/usr/bin/env python3
"""kill -9 a main.sh run at several moments, resume it each time, and compare the final table with an
uninterrupted run's (issue: what a killed run leaves behind).

    python bench/kill_resume.py [--model yolov3_nano_voc] [--kills 5]

For each kill moment t (spread over the uninterrupted run's duration): start main.sh into a fresh folder, SIGKILL
the whole process group at t seconds, check what the folder holds (tuned/ whole or absent, progress/, the trial
log), run the same command again to the end, and compare its tuned/calibration_table.pb with the uninterrupted
run's (thresholds and int8 flags must be identical). Prints one row per kill.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from int8tune.quant.formats import read_table_pb  # noqa: E402

ASSETS = REPO.parent / "shared" / "assets"
MODELS = {
    "yolov3_nano_voc": ("MobileNetV2-YOLOv3-Nano-voc.prototxt", "MobileNetV2-YOLOv3-Nano-voc.caffemodel",
                        ["--metric", "yolo", "--yolo_cfg", "{d}/MobileNetV2-YOLOv3-Nano-voc.cfg"]),
}


def command(model: str, listing: Path, out: Path) -> list[str]:
    proto, weights, extra = MODELS[model]
    d = ASSETS / "models" / model
    return [sys.executable, str(REPO / "main.py"), "auto", "--proto", str(d / proto), "--model", str(d / weights),
            "--data_list", str(listing), "--image_params", str(REPO / "examples" / "image_params" / f"{model}.json"),
            "--restarts", "2", "--output_path", str(out), *[a.format(d=d) for a in extra]]


def run(cmd: list[str], log: Path, kill_after: float | None = None) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
    return rc, time.perf_counter() - t0


def signature(path: Path) -> tuple:
    t = read_table_pb(path)
    return (tuple(sorted((v, e.threshold) for v, e in t.blobs.items())),
            tuple(sorted((n, e.int8) for n, e in t.layers.items())))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="yolov3_nano_voc", choices=list(MODELS))
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--at", default="", help="comma-separated kill times in seconds (default: spread over the "
                                             "uninterrupted run's duration)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kill_resume"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # Run a snapshot of the committed tree: edits to the working tree during the bench must not mix versions
    # between a killed run and its resume.
    global REPO
    snapshot = args.work / "src"
    snapshot.mkdir(exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(snapshot)], input=archive, check=True)
    REPO = snapshot
    images = sorted(p for p in (ASSETS / "images" / "detection").iterdir() if p.suffix.lower() in (".jpg", ".png"))
    listing = args.work / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in images[:8]))
    commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}; {args.model}, main.sh --restarts 2 on {len(images[:8])} images")
    base = args.work / "uninterrupted"
    rc, whole = run(command(args.model, listing, base), args.work / "uninterrupted.log")
    assert rc == 0, f"uninterrupted run failed ({rc}); see {args.work / 'uninterrupted.log'}"
    reference = signature(base / "tuned" / "calibration_table.pb")
    print(f"uninterrupted: {whole:.0f}s")
    print(f"{'kill at':>8} {'tuned/ after kill':>18} {'progress/':>10} {'trials':>7} {'resume rc':>9} "
          f"{'resume s':>8} {'same table':>10}")
    same_all = True
    moments = [float(t) for t in args.at.split(",")] if args.at else \
        [whole * (k + 1) / (args.kills + 1) for k in range(args.kills)]
    for k, at in enumerate(moments):
        out = args.work / f"kill_{k + 1}"
        rc, _ = run(command(args.model, listing, out), args.work / f"kill_{k + 1}.log", kill_after=at)
        tuned = out / "tuned"
        state = "absent" if not tuned.exists() else (
            "whole" if all((tuned / f).is_file() for f in ("calibration_table.pb", "int8.prototxt",
                                                           "model_int8_qdq.onnx")) else "PARTIAL")
        progress = "yes" if (out / "progress" / "calibration_table.pb").is_file() else "no"
        trials = sum(1 for _ in open(out / "trials.jsonl")) - 1 if (out / "trials.jsonl").is_file() else 0
        rc2, secs = run(command(args.model, listing, out), args.work / f"resume_{k + 1}.log")
        same = rc2 == 0 and signature(tuned / "calibration_table.pb") == reference
        same_all &= same
        print(f"{at:>7.0f}s {state:>18} {progress:>10} {trials:>7} {rc2:>9} {secs:>8.0f} {str(same):>10}")
    print("every resumed run delivered the uninterrupted run's table" if same_all else "SOME RESUMED RUN DIFFERS")
    return 0 if same_all else 1


if __name__ == "__main__":
    sys.exit(main())
