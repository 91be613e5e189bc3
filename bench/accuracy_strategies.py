#!/usr/bin/env python3
"""Accuracy-driven strategies on a labelled set, measured on held-out images, through the CLI users run.

The labelled list (labels.txt, file order) is split: the first --tune lines calibrate and tune
(`main.py auto --strategy S --metric top1 --threshold T --dataset_file tune.txt`), the next --test lines measure
(`main.py test --metric top1 --calibration_proto <tuned table>`). Prints fp32 and int8 top-1 on the test images,
wall time, evaluations and int8 layers for each strategy, and the plain starting table.

    python bench/accuracy_strategies.py --model squeezenet_v1.0 --images imagenet_dev --tune 100 --test 150
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ASSETS, REPO, model_paths, require_assets


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode not in (0, 3):  # 3: finished, goal not met
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet_v1.0")
    ap.add_argument("--images", default="imagenet_dev")
    ap.add_argument("--tune", type=int, default=100)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--threshold", type=float, default=1.0)
    ap.add_argument("--strategies", nargs="+", default=["halving", "basic", "mse"])
    ap.add_argument("--batch_size", type=int, default=10)
    args = ap.parse_args()
    require_assets()
    proto, model = model_paths(args.model)
    folder = ASSETS / "images" / args.images
    lines = (folder / "labels.txt").read_text().splitlines()
    params = REPO / "examples" / "image_params" / f"{args.model}.json"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tune.txt").write_text("\n".join(lines[: args.tune]) + "\n")
        (tmp / "test.txt").write_text("\n".join(lines[args.tune: args.tune + args.test]) + "\n")
        base = [sys.executable, "main.py"]
        model_args = ["--proto", str(proto), "--model", str(model), "--image_params", str(params), "--dataset_path",
                      str(folder), "--batch_size", str(args.batch_size), "--metric", "top1"]
        test = lambda table: run(base + ["-q", "test", *model_args, "--dataset_file", str(tmp / "test.txt"),  # noqa: E731
                                         "--calibration_proto", str(table), "--output_path", str(tmp / "t")])
        rows = []
        for strategy in args.strategies:
            out = tmp / strategy
            t0 = time.perf_counter()
            report = run(base + ["-q", "auto", *model_args, "--dataset_file", str(tmp / "tune.txt"), "--strategy",
                                 strategy, "--progress", "none", "--threshold", str(args.threshold),
                                 "--output_path", str(out)])
            seconds = time.perf_counter() - t0
            evals = re.search(r"(\d+) evaluations", report)
            layers = re.search(r"goal (MET|NOT MET); (\d+)/(\d+) quantizable layers int8", report)
            tuned = test(out / "tuned" / "calibration_table.pb")
            start = test(out / "calibration" / "calibration_table.pb") if not rows else None
            acc = float(re.search(r"model difference \(top1\): ([\d.e+-]+)", tuned).group(1))
            if start is not None:
                rows.append(("plain (auto calibration)", float(re.search(r"model difference \(top1\): ([\d.e+-]+)",
                                                                       start).group(1)), None, None, None, None))
            rows.append((strategy, acc, seconds, evals.group(1) if evals else "?",
                         f"{layers.group(2)}/{layers.group(3)}" if layers else "?", layers.group(1) if layers else "?"))
            print(f"  {strategy}: test top-1 {100 * acc:.2f} %, {seconds:.0f}s, {rows[-1][3]} evaluations, "
                  f"{rows[-1][4]} layers int8, goal on the tuning images {rows[-1][5]}", flush=True)
            if start is not None:
                fp32 = float(re.search(r"fp32 top1: ([\d.e+-]+)", start).group(1))
    print(f"\n{args.model}: tune on lines 1-{args.tune} of {args.images}/labels.txt, test on lines "
          f"{args.tune + 1}-{args.tune + args.test}; --threshold {args.threshold}; fp32 test top-1 {100 * fp32:.2f} %")
    print("| table | test top-1 % | wall time s | evaluations | int8 layers | goal on tuning images |")
    print("|---|---|---|---|---|---|")
    for name, acc, sec, ev, layers, goal in rows:
        print(f"| {name} | {100 * acc:.2f} | {'' if sec is None else f'{sec:.0f}'} | {ev or ''} | {layers or ''} | "
              f"{goal or ''} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
