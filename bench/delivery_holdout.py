#!/usr/bin/env python3
"""main.sh's held-back delivery (`--holdout 0.25`, the default) against the old way (`--holdout 0`), or
(`--compare levers`) its default bias correction against `--no_bias_correction`, or (`--compare equalize`) its
default choice of --equalize against `--no_equalize`, or (`--compare adaround`) its default AdaRound against
`--no_adaround`, judged on TEST images that neither run saw.

For each model, main.sh runs twice on the same tuning list: `--holdout 0.25` (every 4th image held back from
calibration and tuning; tuned/ gets the table those images score best among the start, the tuned pick, each
restart and each calibrator's plain table, moved away from the start only beyond the noise floor) and
`--holdout 0` (calibrate and tune on every image, tuned/ = the tuned pick). Then test.sh (`main.py test`) scores
start/calibration_table.pb and tuned/calibration_table.pb of each run on the TEST images, and the figures are
read from the report.log files.

- squeezenet_v1.0: tuning = the first 16 image files of images/imagenet_dev (sorted), TEST = the next 100;
  --metric top1_agreement (higher is better), square also reported on TEST.
- yolov3_nano_voc: tuning = the first 8 of images/detection (sorted), TEST = the other 4 + all 16 of
  images/natural; --metric yolo --yolo_cfg MobileNetV2-YOLOv3-Nano-voc.cfg; --restarts 2 both ways (for speed).
- res10_ssd_face: tuning = the first 8 of images/natural (sorted), TEST = the other 8 + all 12 of
  images/detection; --metric square.
- yoloface_500k_v2: the yolov3_nano_voc split, --metric yolo with its own .cfg (default restarts).
- landmark106: the res10_ssd_face split (whole photos at 112x112: no face crops among the assets), --metric square.

Every run: --threads 2, default settings otherwise; outputs under --workdir (wiped per run, so nothing resumes).
By default main.sh and test.sh run from a copy of the committed HEAD (`git archive HEAD` into --workdir), so
edits in progress in the working tree do not leak into the figures and the printed commit is what was measured;
`--source worktree` runs the working tree instead.

With --wide each model tunes on 40 images, so main.sh holds back every 4th (the mode for 20 images or more) instead
of cross-validating: SqueezeNet on the first 40 imagenet_dev images, TEST the next 100; the other four on 40 later
imagenet_dev images (natural photos), TEST the 28 detection/natural photos.

    python bench/delivery_holdout.py [--workdir /tmp/int8tune_delivery_holdout] [--models squeezenet_v1.0,...]
                                     [--compare holdout|levers|equalize|adaround] [--wide] [--source head|worktree]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
IMAGES = ASSETS / "images"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# --compare: the two ways main.sh runs, (label, its options)
COMPARISONS = {
    "holdout": (("holdout 0.25", ["--holdout", "0.25"]), ("holdout 0", ["--holdout", "0"])),
    # the default bias correction (config.py DEFAULT_LEVERS) against the weights as given
    "levers": (("default levers", []), ("--no_bias_correction", ["--no_bias_correction"])),
    # --equalize left to its default (chosen by measurement, pipeline/equalize_choice.py) against the weights as given
    "equalize": (("default (--equalize chosen)", []), ("--no_equalize", ["--no_equalize"])),
    # the default AdaRound (config.py DEFAULT_LEVERS) against the weights rounded to nearest
    "adaround": (("default (AdaRound)", []), ("--no_adaround", ["--no_adaround"])),
}


def image_files(folder: str) -> list[Path]:
    """The image files of a shared image folder, sorted by name (labels.txt and the like left out)."""
    return sorted((p for p in (IMAGES / folder).iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file()),
                  key=lambda p: p.name)


@dataclass
class Case:
    name: str
    proto: str
    model: str
    metric: str
    tune: list[Path]
    test: list[Path]
    test_metrics: list[str]
    extra: list[str] = field(default_factory=list)  # main.sh options of this model (both ways)
    note: str = ""

    @property
    def folder(self) -> Path:
        return ASSETS / "models" / self.name

    def base(self) -> list[str]:
        """Options shared by main.sh and test: the model, its image parameters, the metric's own parameters."""
        args = ["--proto", str(self.folder / self.proto), "--model", str(self.folder / self.model),
                "--image_params", str(CODE / "examples" / "image_params" / f"{self.name}.json"), "--threads", "2"]
        if self.metric == "yolo":
            args += ["--yolo_cfg", str(next(self.folder.glob("*.cfg")))]  # the darknet .cfg beside the model
        return args


def cases(wide: bool = False) -> list[Case]:
    imagenet = image_files("imagenet_dev")
    detection, natural = image_files("detection"), image_files("natural")
    if wide:  # 40 tuning images: main.sh holds back every 4th (20 or more: no cross-validation)
        photos = detection + natural
        return [
            Case("squeezenet_v1.0", "deploy.prototxt", "squeezenet_v1.0.caffemodel", "top1_agreement",
                 imagenet[:40], imagenet[40:140], ["top1_agreement", "square"]),
            Case("yolov3_nano_voc", "MobileNetV2-YOLOv3-Nano-voc.prototxt", "MobileNetV2-YOLOv3-Nano-voc.caffemodel",
                 "yolo", imagenet[140:180], photos, ["yolo"], ["--restarts", "2"],
                 "--restarts 2 both ways (for speed; the default is 4)"),
            Case("res10_ssd_face", "deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel", "square",
                 imagenet[140:180], photos, ["square"]),
            Case("yoloface_500k_v2", "yoloface-500k-v2.prototxt", "yoloface-500k-v2.caffemodel", "yolo",
                 imagenet[140:180], photos, ["yolo"]),
            Case("landmark106", "landmark106.prototxt", "landmark106.caffemodel", "square",
                 imagenet[140:180], photos, ["square"]),
        ]
    return [
        Case("squeezenet_v1.0", "deploy.prototxt", "squeezenet_v1.0.caffemodel", "top1_agreement",
             imagenet[:16], imagenet[16:116], ["top1_agreement", "square"]),
        Case("yolov3_nano_voc", "MobileNetV2-YOLOv3-Nano-voc.prototxt", "MobileNetV2-YOLOv3-Nano-voc.caffemodel",
             "yolo", detection[:8], detection[8:] + natural, ["yolo"], ["--restarts", "2"],
             "--restarts 2 both ways (for speed; the default is 4)"),
        Case("res10_ssd_face", "deploy.prototxt", "res10_300x300_ssd_iter_140000.caffemodel", "square",
             natural[:8], natural[8:] + detection, ["square"]),
        Case("yoloface_500k_v2", "yoloface-500k-v2.prototxt", "yoloface-500k-v2.caffemodel", "yolo",
             detection[:8], detection[8:] + natural, ["yolo"]),
        Case("landmark106", "landmark106.prototxt", "landmark106.caffemodel", "square",
             natural[:8], natural[8:] + detection, ["square"]),
    ]


def write_list(path: Path, files: list[Path]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f}\n" for f in files))
    return path


CODE = REPO  # where main.sh and test.sh run from (main(): a snapshot of HEAD unless --source worktree)


def snapshot(commit: str, into: Path) -> Path:
    """The files of `commit`, exported with `git archive` (the repository itself is only read)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run `cmd` from CODE, stdout and stderr into `log`; (exit status, wall seconds)."""
    env = dict(os.environ, PYTHON=sys.executable)
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=CODE, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    return rc, time.perf_counter() - t0


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    return float(m[1]) if m else float("nan")


def warnings_of(*texts: str) -> list[str]:
    """Distinct warnings (report.log's `WARNING: ...` lines and the log's `WARNING ...` lines), with counts."""
    seen: dict[str, int] = {}
    for text in texts:
        for line in text.splitlines():
            m = re.search(r"WARNING:? (.*)", line)
            if m:
                seen[m[1].strip()] = seen.get(m[1].strip(), 0) + 1
    return [f"{w} (x{n})" if n > 1 else w for w, n in seen.items()]


@dataclass
class Row:
    model: str
    way: str
    tuned_on: str
    delivered: str
    tuning: tuple[float, float]  # --metric on the tuning images: start, delivered
    test: dict[str, tuple[float, float]]  # TEST metric -> (start, delivered)
    seconds: float
    notes: list[str]


def auto_run(case: Case, way: str, options: list[str], work: Path, tune_list: Path, test_list: Path) -> Row:
    slug = re.sub(r"[^a-z0-9]+", "_", way.lower()).strip("_")
    out = work / slug
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = ["bash", "main.sh", *case.base(), "--metric", case.metric, "--data_list", str(tune_list),
           "--output_path", str(out), *options, *case.extra]
    print(f"  [{case.name}, {way}] main.sh ...", flush=True)
    rc, seconds = run(cmd, work / f"main_{slug}.log")
    log = (work / f"main_{slug}.log").read_text()
    if rc != 0:
        raise SystemExit(f"main.sh failed (exit status {rc}): {' '.join(cmd)}\n{log[-3000:]}")
    report = (out / "report.log").read_text()
    m = re.search(r"^images: (\d+) image\(s\) tuning \((\d+) image\(s\)", report, re.M)
    tuned_on = f"{m[1]} (+{int(m[2]) - int(m[1])} held back)" if m else \
        re.search(r"^images: (\d+) image\(s\)", report, re.M)[1]
    first = report.splitlines()[1]
    d = re.search(r"^(?:WARNING: )?delivered \(tuned/\): (.*?); ", report, re.M)
    if d:
        what = d[1]
        delivered = what[4:-6] if what.startswith("the ") and what.endswith(" table") else \
            "tuned, " + what.replace(" (the best objective)", "")
    else:
        delivered = "tuned, " + re.search(r"^tuned/ holds (.*?)(?: \(the best objective\))?;", report, re.M)[1]
    v = r"([0-9.e+-]+|nan|inf)"
    tuning = (number(rf"model difference \({re.escape(case.metric)}\): before {v}", report),
              number(rf"model difference \({re.escape(case.metric)}\): before [^,]+, after {v}", report))
    notes = [f"report.log: {first}"]
    choice = re.search(r"--equalize chosen by measurement.*", report)
    if choice:
        notes.append(f"report.log: {choice[0]}")
    held = re.search(r"^held-out check: .*\n(.*)", report, re.M)
    if held:
        notes.append(f"report.log held-out check: {held[1].strip()}")
    test: dict[str, tuple[float, float]] = {}
    for metric in case.test_metrics:
        pair = []
        for table in ("start", "tuned"):
            where = out / f"test_{table}_{metric}"
            cmd = ["bash", "test.sh", *case.base(), "--metric", metric, "--data_list", str(test_list),
                   "--calibration_proto", str(out / table / "calibration_table.pb"), "--output_path", str(where)]
            rc, _ = run(cmd, work / f"test_{slug}_{table}_{metric}.log")
            if rc != 0:
                raise SystemExit(f"test.sh failed (exit status {rc}): {' '.join(cmd)}\n"
                                 + (work / f"test_{slug}_{table}_{metric}.log").read_text()[-3000:])
            text = (where / "report.log").read_text()
            pair.append(number(rf"model difference \({re.escape(metric)}\): {v}", text))
            for line in text.splitlines():
                if "mAP@0.5" in line and "finds" in line:
                    notes.append(f"TEST {table}/ ({metric}): {line.strip()}")
            notes += [f"test.sh {table}/ {metric}: WARNING {w}" for w in warnings_of(text)]
        test[metric] = (pair[0], pair[1])
    notes += [f"main.sh: WARNING {w}" for w in warnings_of(report, log)]
    return Row(case.name, way, tuned_on, delivered, tuning, test, seconds, notes)


def g(x: float) -> str:
    return f"{x:.6g}"


def table(rows: list[Row], metric_of: dict[str, str]) -> str:
    head = ("| model | way | images tuned on | delivered | --metric on tuning images: start -> delivered | TEST metric "
            "| TEST start | TEST delivered | delivered/start (TEST) | main.sh wall time |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        for k, (metric, (start, got)) in enumerate(r.test.items()):
            ratio = got / start if start else float("nan")
            if k == 0:
                lines.append(f"| {r.model} | {r.way} | {r.tuned_on} | {r.delivered} | {metric_of[r.model]} "
                             f"{g(r.tuning[0])} -> {g(r.tuning[1])} | {metric} | {g(start)} | {g(got)} | "
                             f"{ratio:.3f} | {r.seconds:.0f}s |")
            else:
                lines.append(f"| | | | | | {metric} | {g(start)} | {g(got)} | {ratio:.3f} | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/int8tune_delivery_holdout"))
    ap.add_argument("--models", default="", help="comma-separated subset of the models (default: all five)")
    ap.add_argument("--compare", choices=list(COMPARISONS), default="holdout",
                    help="holdout: --holdout 0.25 against 0; levers: the default bias correction against "
                         "--no_bias_correction; equalize: the default choice of --equalize against --no_equalize; "
                         "adaround: the default AdaRound against --no_adaround")
    ap.add_argument("--wide", action="store_true",
                    help="40 tuning images (main.sh holds back every 4th instead of cross-validating): SqueezeNet "
                         "the first 40 imagenet_dev images, TEST the next 100; the others 40 later imagenet_dev "
                         "images, TEST the 28 detection/natural photos")
    ap.add_argument("--source", choices=("head", "worktree"), default="head",
                    help="run main.sh/test.sh from a git-archive copy of HEAD (default) or from the working tree")
    args = ap.parse_args()
    global CODE
    if not ASSETS.is_dir():
        print(f"skipped: the shared assets are not at {ASSETS}")
        return 0
    t_all = time.perf_counter()
    full = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", full], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if l.startswith("Model name")), "?")
    if args.source == "head":
        CODE = snapshot(full, args.workdir / f"src-{commit}")
        print(f"commit: {commit} (main.sh/test.sh run from `git archive HEAD` in {CODE})")
    else:
        print(f"commit: {commit}" + (" plus uncommitted changes to tracked files (--source worktree)" if dirty
                                     else " (--source worktree, clean)"))
    print(f"CPU: {cpu}")
    print(f"command: python bench/delivery_holdout.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"started: {time.strftime('%Y-%m-%d %H:%M:%S')}\n", flush=True)
    chosen = [c for c in cases(args.wide) if not args.models or c.name in args.models.split(",")]
    rows: list[Row] = []
    for case in chosen:
        work = args.workdir / case.name
        tune_list = write_list(work / "tune.txt", case.tune)
        test_list = write_list(work / "test.txt", case.test)
        print(f"{case.name}: --metric {case.metric}; tuning list {len(case.tune)} images "
              f"({case.tune[0].name} .. {case.tune[-1].name}), TEST {len(case.test)} images"
              + (f"; {case.note}" if case.note else ""), flush=True)
        for way, options in COMPARISONS[args.compare]:
            row = auto_run(case, way, options, work, tune_list, test_list)
            rows.append(row)
            print(f"  [{case.name}, {way}] {row.seconds:.0f}s; delivered {row.delivered}; TEST "
                  + ", ".join(f"{m} start {g(a)} delivered {g(b)}" for m, (a, b) in row.test.items()), flush=True)
    print("\nTEST = images neither run saw. top1_agreement: higher is better; square, yolo: lower is better.")
    print("Same tuning list both ways" + ("; holdout 0.25 calibrates and tunes on 3/4 of it (every 4th image held "
                                          "back)." if args.compare == "holdout" else "."))
    notes = [c for c in chosen if c.note]
    for c in notes:
        print(f"{c.name}: {c.note}.")
    print()
    print(table(rows, {c.name: c.metric for c in chosen}))
    print("\nnotes per run:")
    for r in rows:
        print(f"- {r.model}, {r.way}:")
        for n in r.notes:
            print(f"    {n}")
    print(f"\ntotal time: {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
