"""`check` and `benchmark` write report.log and report.html with --output_path, like every command that writes
outputs, and print the same text."""

from __future__ import annotations

import json
import shutil

import numpy as np

import main as entry

RNG = np.random.default_rng(11)


def test_check_writes_report_log_and_html_that_render_the_same_result(lenet, mnist_data, tmp_path, capsys):
    out = tmp_path / "check_out"
    code = entry.main(["check", "--proto", str(lenet[0]), "--model", str(lenet[1]), *mnist_data,
                       "--output_path", str(out), "--json", str(tmp_path / "check.json")])
    printed = capsys.readouterr().out
    assert code == 0
    log = (out / "report.log").read_text()
    html = (out / "report.html").read_text()
    assert log in printed  # the console shows report.log
    assert log.startswith("int8tune check: ") and "PASS: " in log
    report = json.loads((tmp_path / "check.json").read_text())
    for blob in report["blobs"]:  # every blob of the JSON is a row of the text and of the page
        assert blob["value"] in log and blob["value"] in html
    assert "<table" in html and "aria-sort" in html  # the per-blob table sorts by clicking its headers
    assert "http://" not in html and "https://" not in html


def test_check_report_says_fail_and_names_the_blob_above_tolerance(lenet, mnist_data, tmp_path, capsys):
    out = tmp_path / "check_out"
    code = entry.main(["check", "--proto", str(lenet[0]), "--model", str(lenet[1]), *mnist_data,
                       "--tolerance", "1e-30", "--output_path", str(out)])
    capsys.readouterr()
    log = (out / "report.log").read_text()
    # LeNet's conv2 differs from OpenCV by ~1e-6 relative (float summation order): above this tolerance
    assert code == 1 and "FAIL: " in log and "ABOVE TOLERANCE" in log
    assert "ABOVE TOLERANCE" in (out / "report.html").read_text()


def test_benchmark_writes_report_with_speed_table_and_census(lenet, mnist_data, tmp_path, capsys):
    cal = tmp_path / "cal"
    assert entry.main(["calibrate", "--proto", str(lenet[0]), "--model", str(lenet[1]), *mnist_data,
                       "--output_path", str(cal), "--method", "minmax"]) == 0
    out = tmp_path / "bench_out"
    code = entry.main(["benchmark", "--proto", str(lenet[0]), "--model", str(lenet[1]),
                       "--calibration_proto", str(cal / "calibration_table.pb"), "--batch_sizes", "1,2",
                       "--repeat", "3", "--output_path", str(out), *mnist_data, "--data_limit", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    log = (out / "report.log").read_text()
    assert log in printed
    assert "int8 kernels:" in log and "fp32/int8" in log and "int8 speed-up over fp32" in log
    rows = [line.split() for line in log.splitlines() if line.strip()[:2] in ("1 ", "2 ")]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(float(x) > 0 for r in rows for x in r[1:])
    assert "the deployed model computes what was measured" in log
    html = (out / "report.html").read_text()
    assert "fp32/int8" in html and "the deployed model computes what was measured" in html


def test_benchmark_refuses_a_table_of_other_weights_and_takes_the_corrected_ones(lenet, mnist_data, tmp_path,
                                                                                  capsys):
    """A table calibrated with --bias_correction quantizes corrected.caffemodel's weights: exporting it onto the
    original caffemodel would time (and check) another model, so benchmark says what to give instead."""
    cal = tmp_path / "cal"
    assert entry.main(["calibrate", "--proto", str(lenet[0]), "--model", str(lenet[1]), *mnist_data,
                       "--output_path", str(cal), "--bias_correction"]) == 0
    alone = tmp_path / "alone"  # the table without the corrected.caffemodel written beside it
    alone.mkdir()
    shutil.copy(cal / "calibration_table.pb", alone)
    common = ["benchmark", "--proto", str(lenet[0]), "--model", str(lenet[1]), "--batch_sizes", "1", "--repeat", "2"]
    capsys.readouterr()
    assert entry.main(common + ["--calibration_proto", str(alone / "calibration_table.pb")]) == 2
    assert "--corrected_model" in capsys.readouterr().err
    check = [*mnist_data, "--data_limit", "2"]
    assert entry.main(common + ["--calibration_proto", str(alone / "calibration_table.pb"), "--corrected_model",
                                str(cal / "corrected.caffemodel"), *check]) == 0
    assert "the deployed model computes what was measured" in capsys.readouterr().out
    # where calibrate wrote it, the table finds its weights
    assert entry.main(common + ["--calibration_proto", str(cal / "calibration_table.pb"), *check]) == 0
    assert "the deployed model computes what was measured" in capsys.readouterr().out
