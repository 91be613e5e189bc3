"""The commands end to end on a tiny synthetic net and synthetic images: files written, figures reported,
bad input answered with errors that name what is wrong."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

import main as entry
from int8tune.quant.formats import read_table_pb

RNG = np.random.default_rng(21)
PROTOTXT = (input_header((1, 3, 16, 16))
            + layer("conv1", "Convolution", "data", "conv1",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }")
            + layer("bn1", "BatchNorm", "conv1", "conv1")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("conv2", "Convolution", "conv1", "conv2",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }")
            + layer("relu2", "ReLU", "conv2", "conv2")
            + layer("pool", "Pooling", "conv2", "pool", "pooling_param { pool: AVE global_pooling: true }")
            + layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 4 }"))
WEIGHTS = {"conv1": [RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
                     RNG.standard_normal(8).astype(np.float32)],
           "bn1": [RNG.standard_normal(8).astype(np.float32), RNG.random(8).astype(np.float32) + 0.5,
                   np.array([1.0], np.float32)],
           "conv2": [RNG.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
                     RNG.standard_normal(8).astype(np.float32)],
           "fc": [RNG.standard_normal((4, 8)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    proto, model = write_net(root, PROTOTXT, WEIGHTS)
    images = root / "images"
    images.mkdir()
    for i in range(6):
        cv2.imwrite(str(images / f"img{i}.png"), RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    params = root / "params.json"
    params.write_text(json.dumps({"size": [16, 16], "color_format": "bgr", "b_mean": 128, "g_mean": 128,
                                  "r_mean": 128, "scale": 0.02}))
    base = ["--proto", str(proto), "--model", str(model), "--data_list", str(images), "--image_params", str(params)]
    return root, base


def test_target_is_recorded_and_settings_it_cannot_run_are_refused(project, capsys):
    root, base = project
    out = root / "cal_ncnn"
    assert entry.main(["calibrate", *base, "--target", "ncnn", "--rounding", "half_away_from_zero",
                       "--method", "kl", "--output_path", str(out)]) == 0
    table = read_table_pb(out / "calibration_table.pb")
    assert table.spec.target.value == "ncnn" and not any(e.unsigned for e in table.blobs.values())
    assert json.loads((out / "config.json").read_text())["settings"]["quant"]["target"] == "ncnn"
    assert "this file is onnxruntime's reading of it" in (out / "report.log").read_text()
    capsys.readouterr()
    assert entry.main(["calibrate", *base, "--target", "tensorrt", "--unsigned", "--output_path", str(root / "x")]) == 2
    assert "signed int8 activations only" in capsys.readouterr().err
    assert entry.main(["calibrate", *base, "--rounding", "half_away_from_zero", "--output_path", str(root / "y")]) == 2
    assert "rounds half to even" in capsys.readouterr().err


def test_calibrate_writes_every_output(project, capsys):
    root, base = project
    out = root / "cal"
    assert entry.main(["calibrate", *base, "--output_path", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"calibration_table.pb", "calibration_table.pbtxt", "int8.prototxt", "tensorrt_calibration.cache",
            "onnxruntime_calibration.cache", "ncnn.table", "model_int8_qdq.onnx", "statistics.csv", "report.log",
            "config.json"} <= names
    report = (out / "report.log").read_text()
    assert "int8 kernels: 2 conv, 1 matmul" in report  # every int8 layer an int8 kernel of onnxruntime
    assert "the deployed model computes what was measured" in report
    assert "folded BatchNorm/Scale into: conv1" in report
    table = read_table_pb(out / "calibration_table.pb")
    assert set(table.layers) == {"conv1", "conv2", "fc"}
    assert {e.calibrator for e in table.blobs.values()} <= {"minmax", "kl", "percentile", "mse", "aciq"}


def test_test_tune_and_auto(project):
    root, base = project
    cal = root / "cal2"
    assert entry.main(["calibrate", *base, "--output_path", str(cal), "--method", "minmax"]) == 0
    table_args = ["--calibration_proto", str(cal / "calibration_table.pb"), "--calibration_model",
                  str(cal / "int8.prototxt")]
    assert entry.main(["test", *base, *table_args, "--output_path", str(root / "t")]) == 0
    report = (root / "t" / "report.log").read_text()
    assert "model difference (square)" in report and "conv2" in report
    # each image's own difference, worst first, and all of them in images.csv
    section = report.split("each image's own model difference (square), worst first:\n")[1].split("\n\n")[0]
    values = [float(line.split()[-1]) for line in section.splitlines()]
    assert len(values) == 6 and values == sorted(values, reverse=True)
    listed = (root / "t" / "images.csv").read_text().splitlines()
    assert listed[0] == "image,square" and len(listed) == 7 and "img0.png" in listed[1]
    assert entry.main(["test", *base, *table_args, "--output_path", str(root / "t1"), "--int8_layer", "conv2"]) == 0
    assert "layer conv2" in (root / "t1" / "report.log").read_text()
    assert entry.main(["tune", *base, *table_args, "--output_path", str(root / "u"), "--tune_layer", "fc",
                       "--multipliers", "0.5,0.8,1.25"]) == 0
    candidates = sorted(p.name for p in (root / "u").iterdir() if p.name.startswith("candidate_"))
    assert len(candidates) == 4  # the baseline and the three multipliers
    assert (root / "u" / "best_candidate.txt").read_text().strip() in candidates
    # --holdout 0: tune on every image and deliver it (6 images would cross-validate, and the folds decide)
    assert entry.main(["auto", *base, "--output_path", str(root / "a"), "--holdout", "0"]) == 0
    a = root / "a"
    assert (a / "tuned" / "calibration_table.pb").is_file() and (a / "layers.csv").is_file()
    assert (a / "plots" / "layer_differences.png").is_file()
    first = (a / "report.log").read_text()
    tuned = read_table_pb(a / "tuned" / "calibration_table.pb").thresholds()
    # the default restarts: each one's table kept, each one's objective reported, each one's moves in layers.csv
    assert sorted(p.name for p in (a / "restarts").iterdir()) == [f"restart_{k}" for k in range(1, 5)]
    assert [l.split(":")[0].strip() for l in first.splitlines() if re.match(r"\s*restart \d+: ", l)] == \
        [f"restart {k}" for k in range(1, 5)]
    header = (a / "layers.csv").read_text().splitlines()[0].split(",")
    assert ([h for h in header if h.startswith("multiplier_restart_")]
            == [f"multiplier_restart_{k}" for k in range(1, 5)])
    assert entry.main(["auto", *base, "--output_path", str(a), "--holdout", "0"]) == 0  # resumes from trials.jsonl
    second = (a / "report.log").read_text()
    assert "(0 replayed" in first and "(0 replayed" not in second
    assert read_table_pb(a / "tuned" / "calibration_table.pb").thresholds() == tuned


def test_one_restart_is_a_single_plain_run(project):
    root, base = project
    out = root / "one"
    assert entry.main(["auto", *base, "--output_path", str(out), "--restarts", "1", "--holdout", "0"]) == 0
    report = (out / "report.log").read_text()
    assert "x 1 restart(s)" in report and "restarts (" not in report
    assert not (out / "restarts").exists()
    assert "multiplier_restart_1" not in (out / "layers.csv").read_text().splitlines()[0]
    assert entry.main(["auto", *base, "--output_path", str(root / "zero"), "--restarts", "0"]) == 2


def test_errors_name_what_is_wrong(project, capsys):
    root, base = project
    assert entry.main(["calibrate", *base, "--output_path", str(root / "e"), "--ignore_layer_names", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    bad = list(base)
    bad[3] = str(root / "missing.caffemodel")
    assert entry.main(["calibrate", *bad, "--output_path", str(root / "e")]) == 2
    assert "missing.caffemodel" in capsys.readouterr().err
    assert entry.main(["test", *base, "--output_path", str(root / "e")]) == 2
    assert "--calibration_proto" in capsys.readouterr().err
    assert entry.main(["auto", *base, "--output_path", str(root / "e"), "--metric", "nosuch"]) == 2
    assert "valid names" in capsys.readouterr().err


def test_auto_scores_candidates_by_the_dense_output_difference_by_default(project):
    """With a metric other than square, auto's default objective is the square distance of the outputs: the
    report gives it before and after (never worse: only improvements are kept) next to the metric itself.
    tune's default stays the metric."""
    root, base = project
    out = root / "obj"
    assert entry.main(["auto", *base, "--output_path", str(out), "--metric", "top1_agreement", "--holdout", "0"]) == 0
    report = (out / "report.log").read_text()
    assert "objective: outputs" in report and "model difference (top1_agreement)" in report
    line = next(l.strip() for l in report.splitlines()
                if l.strip().startswith("objective (the square distance of the model outputs)"))
    before, after = (float(x.split()[-1]) for x in line.split(":", 1)[1].split(","))
    assert after <= before
    model = root / "obj_model"
    assert entry.main(["auto", *base, "--output_path", str(model), "--metric", "top1_agreement",
                       "--objective", "model", "--holdout", "0"]) == 0
    report = (model / "report.log").read_text()
    assert "objective: model" in report and "objective (the square" not in report
    # tune.sh keeps --metric itself: its candidates read in the units of test.sh's model difference (--tune_diff)
    sweep = root / "obj_tune"
    assert entry.main(["tune", *base, "--calibration_proto", str(out / "tuned" / "calibration_table.pb"),
                       "--output_path", str(sweep), "--metric", "top1_agreement", "--tune_layer", "fc",
                       "--multipliers", "0.5,2"]) == 0
    assert "objective: model (the metric on the model outputs)" in (sweep / "report.log").read_text()


def test_auto_warns_when_the_metric_got_worse_and_keeps_the_starting_table(project):
    """A metric that rises as the outputs' square distance falls: the dense objective improves it the wrong way,
    and the report says so. start/ holds the table tuning began from: test.sh on it gives the "before" figure."""
    from int8tune.metrics import METRICS, register_metric

    if "negated_square_for_test" not in METRICS:
        register_metric("negated_square_for_test", "lower")(
            lambda fp32, int8, params: -METRICS.get("square")(fp32, int8, params))
    root, base = project
    out = root / "warn"
    args = [*base, "--metric", "negated_square_for_test"]
    # by default some images are held back, and the delivered table is the one they score best: not the tuned one
    held = root / "warn_held"
    assert entry.main(["auto", *args, "--output_path", str(held)]) == 0
    report = (held / "report.log").read_text()
    delivered = re.search(r"delivered \(tuned/\): (.*?); ", report)[1]
    assert delivered != "restart 1 (the best objective)" and "tuned" not in delivered
    # without held-back images the tuned table is delivered, with a warning
    assert entry.main(["auto", *args, "--output_path", str(out), "--holdout", "0"]) == 0
    report = (out / "report.log").read_text()
    before = float(report.split("model difference (negated_square_for_test): before ")[1].split(",")[0])
    assert "WARNING: negated_square_for_test on the tuning images got worse" in report
    assert entry.main(["test", *args, "--calibration_proto", str(out / "start" / "calibration_table.pb"),
                       "--output_path", str(root / "warn_test")]) == 0
    measured = (root / "warn_test" / "report.log").read_text()
    assert float(measured.split("model difference (negated_square_for_test): ")[1].split()[0]) == \
        pytest.approx(before, rel=1e-6)


def test_guarded_objective_keeps_no_move_that_the_metric_does_not_confirm(project):
    """--objective guarded with a metric that worsens whenever the square distance improves: auto ranks the
    candidates by the square distance but keeps none of its moves, so tuned/ is the start table; tune.sh lists
    each candidate's metric and names as best the one tune_blob kept (the baseline)."""
    from int8tune.metrics import METRICS, register_metric

    if "negated_square_for_test" not in METRICS:
        register_metric("negated_square_for_test", "lower")(
            lambda fp32, int8, params: -METRICS.get("square")(fp32, int8, params))
    root, base = project
    args = [*base, "--metric", "negated_square_for_test", "--objective", "guarded"]
    out = root / "guarded"
    assert entry.main(["auto", *args, "--output_path", str(out), "--restarts", "1"]) == 0
    report = (out / "report.log").read_text()
    assert "objective: guarded" in report
    assert read_table_pb(out / "tuned" / "calibration_table.pb").thresholds() == \
        read_table_pb(out / "start" / "calibration_table.pb").thresholds()
    sweep = root / "guarded_tune"
    assert entry.main(["tune", *args, "--calibration_proto", str(out / "start" / "calibration_table.pb"),
                       "--output_path", str(sweep), "--tune_layer", "fc", "--multipliers", "0.5,0.8,1.25"]) == 0
    report = (sweep / "report.log").read_text()
    assert "guarded: the best candidate must improve negated_square_for_test too" in report
    assert (sweep / "best_candidate.txt").read_text().strip() == "candidate_00_x1.0000"
    rows = [l.split() for l in report.splitlines() if l.strip().startswith("candidate_")]
    # every candidate has the metric column after name, multiplier, threshold, difference and vs tune_diff: the
    # negated square distance, below 0 for any int8 table
    assert len(rows) == 4 and all(float(r[5]) < 0 for r in rows)


def _held_out_images(folder, n):
    """`n` random images in `folder`, not among the project's tuning images."""
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"h{i}.png"), RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    return folder


def test_auto_validation_list_scores_start_tuned_and_restarts_and_can_pick_by_them(project, capsys):
    root, base = project
    held = _held_out_images(root / "held_out", 4)
    out = root / "val"
    assert entry.main(["auto", *base, "--output_path", str(out), "--validation_list", str(held)]) == 0
    report = (out / "report.log").read_text()
    assert f"held-out check: 4 image(s) of --validation_list {held} (not tuned on)" in report
    start, tuned = re.search(r"model difference \(square\): start ([0-9.e-]+), delivered ([0-9.e-]+)", report).groups()
    # the same figures as test.sh gives for start/ and tuned/ on those images
    for name, value in (("start", start), ("tuned", tuned)):
        assert entry.main(["test", *base[:4], "--data_list", str(held), *base[6:], "--calibration_proto",
                           str(out / name / "calibration_table.pb"), "--output_path", str(root / f"vt_{name}")]) == 0
        got = re.search(r"model difference \(square\): ([0-9.e-]+)", (root / f"vt_{name}" / "report.log").read_text())
        assert float(got[1]) == pytest.approx(float(value), rel=1e-5)
    csv = (out / "validation.csv").read_text().splitlines()
    assert csv[0] == "image,start,tuned," + ",".join(f"restart_{k}" for k in range(1, 5)) and len(csv) == 5
    # pick by the held-out images: the kept restart is the one with the lowest held-out difference; the trials of
    # the first run are all replayed (the pick does not change a trial)
    assert entry.main(["auto", *base, "--output_path", str(out), "--validation_list", str(held),
                       "--restart_pick", "validation"]) == 0
    report = (out / "report.log").read_text()
    assert "(0 replayed" not in report
    line = next(l for l in report.splitlines() if l.strip().startswith("each restart:"))
    scores = [float(v) for v in re.findall(r"restart \d+ ([0-9.e-]+)", line)]
    kept = int(re.search(r"the tuning pick is restart (\d+) \(--restart_pick validation\)", line)[1])
    assert len(scores) == 4 and kept == 1 + int(np.argmin(scores))
    # tuned/ holds the table the held-out images score best (the pick when it beats the start beyond the noise)
    delivered = re.search(r"delivered \(tuned/\): (.*?); ", report)[1]
    if delivered.startswith("restart"):
        assert read_table_pb(out / "tuned" / "calibration_table.pb").thresholds() == \
            read_table_pb(out / "restarts" / f"restart_{kept}" / "calibration_table.pb").thresholds()
    else:
        assert delivered.startswith("the ") and delivered.endswith(" table")
    # tuning images given as held-out ones are named; the pick needs held-out images
    capsys.readouterr()
    assert entry.main(["auto", *base, "--output_path", str(root / "val2"), "--validation_list", base[5],
                       "--restarts", "1"]) == 0
    assert "are tuning images too" in capsys.readouterr().err
    assert entry.main(["auto", *base, "--output_path", str(root / "val3"), "--restart_pick", "validation"]) == 2
    assert "--validation_list" in capsys.readouterr().err


def test_accuracy_strategies_also_run_the_held_out_check(project):
    root, base = project
    held = _held_out_images(root / "held_out_acc", 3)
    out = root / "acc_val"
    # exit 3: the accuracy goal of the square metric is not met here; the held-out check runs either way
    assert entry.main(["auto", *base, "--output_path", str(out), "--strategy", "mse",
                       "--validation_list", str(held)]) in (0, 3)
    report = (out / "report.log").read_text()
    assert f"held-out check: 3 image(s) of --validation_list {held} (not tuned on)" in report
    assert "each restart:" not in report
    assert (out / "validation.csv").read_text().splitlines()[0] == "image,start,tuned"


def test_a_log_that_still_holds_restart_pick_resumes_and_other_changes_are_refused(project, capsys):
    root, base = project
    out = root / "oldlog"
    args = ["auto", *base, "--output_path", str(out), "--restarts", "1"]
    assert entry.main(args) == 0
    log = out / "trials.jsonl"
    lines = log.read_text().splitlines()

    def with_settings(**extra):
        header = json.loads(lines[0])
        settings = json.loads(header["fingerprint"]["settings"])
        header["fingerprint"]["settings"] = json.dumps({**settings, **extra}, sort_keys=True)
        log.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")

    with_settings(restart_pick="best")  # as the previous version wrote it
    assert entry.main(args) == 0
    assert "(0 replayed" not in (out / "report.log").read_text()
    with_settings(min_gain=0.5)  # a setting that does change the trials
    capsys.readouterr()
    assert entry.main(args) == 2
    assert "written for different inputs (changed: settings.min_gain: 0.5 -> 0.01)" in capsys.readouterr().err


def test_a_log_from_other_settings_is_refused_before_calibrating(project, capsys, monkeypatch):
    """The refusal names the setting with its old and new value, and comes before the calibration it would waste."""
    from int8tune.pipeline import tuning

    root, base = project
    out = root / "refused_early"
    args = ["auto", *base, "--output_path", str(out), "--restarts", "1"]
    assert entry.main(args) == 0
    calls = []
    real = tuning.calibrate_choosing
    monkeypatch.setattr(tuning, "calibrate_choosing", lambda *a, **k: calls.append(1) or real(*a, **k))
    capsys.readouterr()
    assert entry.main(args + ["--step_ratio", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "changed: settings.step_ratio: 0.1 -> 0.3" in err and str(out / "trials.jsonl") in err
    assert calls == []
    assert entry.main(args) == 0 and calls == [1]  # the same inputs still resume, calibrating as before


def test_a_table_with_weights_that_can_saturate_is_widened_for_the_portable_target(project, capsys):
    """A table from elsewhere (here: this tool's, with 8-bit absmax weights written over it) may hold weights
    whose pairs overflow the int16 sums of AVX2 kernels: loading it for --target onnxruntime widens them."""
    from int8tune.quant.formats import write_table_pb
    from int8tune.quant.saturation import Pairing, kernel_order, pair_safe

    root, base = project
    out = root / "cal_sat"
    assert entry.main(["calibrate", *base, "--method", "kl", "--output_path", str(out)]) == 0
    table = read_table_pb(out / "calibration_table.pb")
    conv2 = WEIGHTS["conv2"][0].reshape(8, -1)
    table.layers["conv2"].weight_thresholds = np.abs(conv2).max(axis=1).astype(np.float64)
    q = np.round(kernel_order(WEIGHTS["conv2"][0], "Conv") * 127 / np.abs(conv2).max(axis=1)[:, None])
    assert not pair_safe(q, Pairing.KERNEL).all(), "the test needs weights that can saturate"
    write_table_pb(table, out / "absmax.pb")
    capsys.readouterr()
    assert entry.main(["test", *base, "--calibration_proto", str(out / "absmax.pb"),
                       "--output_path", str(root / "t_sat")]) == 0
    assert "can overflow the int16 pair sums" in capsys.readouterr().err


RESIDUAL = (input_header((1, 3, 16, 16))
            + layer("conv1", "Convolution", "data", "conv1",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("conv2", "Convolution", "conv1", "conv2", "convolution_param { num_output: 8 kernel_size: 1 }")
            + layer("relu2", "ReLU", "conv2", "conv2")
            + layer("conv3", "Convolution", "conv2", "conv3",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }")
            + layer("sum", "Eltwise", ["conv1", "conv3"], "sum", "eltwise_param { operation: SUM }")
            + layer("conv4", "Convolution", "sum", "conv4", "convolution_param { num_output: 4 kernel_size: 1 }"))
RESIDUAL_WEIGHTS = {n: [RNG.standard_normal(s).astype(np.float32) * 0.3, RNG.standard_normal(s[0]).astype(np.float32)]
                    for n, s in (("conv1", (8, 3, 3, 3)), ("conv2", (8, 8, 1, 1)), ("conv3", (8, 8, 3, 3)),
                                 ("conv4", (4, 8, 1, 1)))}


def test_main_sh_tunes_a_residual_net_whose_sum_is_simulated_as_onnxruntime_adds(project, tmp_path):
    """An Eltwise sum runs as QLinearAdd (its arithmetic in float64 inside the simulation). Tuning conv2's
    threshold changes only the sum's second input: the partial graph then starts inside that arithmetic, at a
    float64 tensor (this crashed on yolov3_nano_voc). The tuned export is the model measured."""
    root, base = project
    proto, model = write_net(tmp_path, RESIDUAL, RESIDUAL_WEIGHTS)
    args = ["--proto", str(proto), "--model", str(model), *base[4:]]
    out = tmp_path / "auto"
    assert entry.main(["auto", *args, "--restarts", "1", "--steps", "2", "--output_path", str(out)]) == 0
    report = (out / "report.log").read_text()
    assert "1 add" in report and "the deployed model computes what was measured, exactly" in report


def test_a_table_calibrated_on_other_weights_is_refused(project, tmp_path, capsys):
    """Same net, different weights (a layer zeroed): its thresholds were measured on weights it would not run
    with. The table records the digest of the weights as run, and test.sh refuses it, naming both."""
    root, base = project
    out = root / "cal_weights"
    assert entry.main(["calibrate", *base, "--output_path", str(out), "--method", "minmax"]) == 0
    table = str(out / "calibration_table.pb")
    changed = {k: [np.array(b, copy=True) for b in v] for k, v in WEIGHTS.items()}
    changed["fc"][0][:] = 0.0
    proto, model = write_net(tmp_path, PROTOTXT, changed)
    other = ["--proto", str(proto), "--model", str(model), *base[4:]]
    capsys.readouterr()
    assert entry.main(["test", *other, "--calibration_proto", table, "--output_path", str(tmp_path / "t")]) == 2
    assert "was calibrated on other weights than" in capsys.readouterr().err
    # the same weights in another file are the same weights
    (tmp_path / "copy").mkdir()
    proto2, model2 = write_net(tmp_path / "copy", PROTOTXT, WEIGHTS)
    same = ["--proto", str(proto2), "--model", str(model2), *base[4:]]
    assert entry.main(["test", *same, "--calibration_proto", table, "--output_path", str(tmp_path / "t2")]) == 0


def _digests(folder) -> dict:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_failed_rerun_leaves_the_delivered_files_whole(project, capsys):
    """tuned/ changes only when a run delivers, all files together: a re-run that fails on a corrupt trial log
    leaves the previous delivery exactly as it was."""
    root, base = project
    out = root / "whole"
    args = ["auto", *base, "--output_path", str(out), "--restarts", "1", "--holdout", "0"]
    assert entry.main(args) == 0
    before = _digests(out / "tuned")
    assert {"calibration_table.pb", "int8.prototxt", "model_int8_qdq.onnx", "ncnn.table"} <= set(before)
    log = out / "trials.jsonl"
    lines = log.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if '"difference"' in line and i > len(lines) // 2)
    lines[k] = re.sub(r'"difference": [^,}]+', '"difference": "x"', lines[k])
    log.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert entry.main(args) == 2
    assert "trials.jsonl" in capsys.readouterr().err
    assert _digests(out / "tuned") == before


def test_a_moved_output_folder_resumes_and_one_run_at_a_time_writes_to_it(project, capsys):
    import shutil

    from int8tune.outputs import output_lock

    root, base = project
    first, moved = root / "before_move", root / "after_move"
    assert entry.main(["auto", *base, "--output_path", str(first), "--restarts", "1"]) == 0
    shutil.copytree(first, moved)
    assert entry.main(["auto", *base, "--output_path", str(moved), "--restarts", "1"]) == 0
    assert "(0 replayed" not in (moved / "report.log").read_text()
    with output_lock(moved):  # as if another run were writing there
        capsys.readouterr()
        assert entry.main(["auto", *base, "--output_path", str(moved), "--restarts", "1"]) == 2
        assert "another int8tune run" in capsys.readouterr().err


def test_a_handful_of_images_is_cross_validated(project):
    """Too few images to hold some back: two folds, each tuned on one half and scored on the other; the table
    tuned on all of them is delivered only when tuning gained on both halves, and the report shows the folds."""
    root, base = project
    out = root / "cv"
    assert entry.main(["auto", *base, "--data_limit", "4", "--output_path", str(out), "--restarts", "1"]) == 0
    report = (out / "report.log").read_text()
    assert "cross-validation (too few images to hold some back)" in report
    folds = [l.split() for l in report.splitlines() if re.match(r"\s+[12]\s+2\s+2\s", l)]
    assert len(folds) == 2
    gained_in_both = all(float(f[5]) > float(f[6]) for f in folds)  # gain above the noise floor
    delivered = re.search(r"delivered \(tuned/\): (.*?); ", report)[1]
    if "restart 1" in delivered:
        assert gained_in_both
    else:  # no evidence that tuning helped: the start is delivered, and the tuning on every image is not run
        assert delivered == "the start table"
        assert "the tuning on every image was not run" in report and "no tuning on every image" in report
        assert read_table_pb(out / "tuned" / "calibration_table.pb").thresholds() == \
            read_table_pb(out / "start" / "calibration_table.pb").thresholds()
