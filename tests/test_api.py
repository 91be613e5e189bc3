"""The Python API (Neural Compressor's tune() shape) and YAML configuration files."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import write_net
from test_cli import PROTOTXT, WEIGHTS

import evaluation_utils  # noqa: F401
import main as entry
from int8tune.api import load_settings, tune
from int8tune.errors import ConfigError
from int8tune.quant.formats import read_table_pb


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_net(tmp_path_factory.mktemp("api"), PROTOTXT, WEIGHTS)


def loader(n=4, labels=False, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
        yield (x, rng.integers(0, 4, 2)) if labels else x


def test_tune_with_labels_and_a_strategy(model, tmp_path):
    result = tune(model, list(loader()), eval_dataloader=list(loader(labels=True, seed=1)),
                  config={"strategy": "mse", "metric": "top1_agreement", "threshold": 0.0}, output_path=tmp_path)
    assert 0 <= result.score <= 1 and result.fp32_score == 1.0
    assert (tmp_path / "tuned" / "calibration_table.pb").is_file()
    assert (tmp_path / "tuned" / "int8.prototxt").is_file()
    saved = read_table_pb(tmp_path / "tuned" / "calibration_table.pb")
    assert [e.int8 for e in saved.layers.values()] == [e.int8 for e in result.table.layers.values()]


def test_eval_func_q_func_and_resume(model, tmp_path):
    seen = {}

    def eval_func(outputs, labels):  # a user metric: higher is better
        seen["labels"] = labels
        return -float(np.abs(next(iter(outputs.values()))).mean())

    def q_func(table):
        seen["q_func"] = True
        return table

    kwargs = dict(q_func=q_func, eval_func=eval_func, resume_file=tmp_path / "trials.jsonl", output_path=tmp_path,
                  strategy="halving", max_iter_per_node=2)
    first = tune(model, list(loader()), **kwargs)
    assert seen["q_func"] and seen["labels"] is None
    again = tune(model, list(loader()), **kwargs)
    assert again.table.thresholds() == first.table.thresholds()


def test_settings_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting.*strategi"):
        load_settings({"strategi": "basic"}, {})
    path = tmp_path / "c.yaml"
    path.write_text("strategy: basic\nthreshold: 0.5\n")
    assert load_settings(path, {"threshold": 2.0}) == {"strategy": "basic", "threshold": 2.0}


def image_folder(tmp_path, n, seed):
    """(a folder of n random 16x16 PNG images, an image_params file that reads them at that size)."""
    import cv2

    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    params = tmp_path / "p.json"
    params.write_text('{"size": [16, 16], "scale": 0.01}')
    return images, params


def test_cli_config_file(model, tmp_path, capsys):
    proto, caffemodel = model
    images, params = image_folder(tmp_path, 5, 2)
    cfg = tmp_path / "settings.yaml"
    cfg.write_text(f"proto: {proto}\nmodel: {caffemodel}\ndata_list: {images}\nimage_params: {params}\n"
                   f"strategy: mse\nmetric: top1_agreement\nprogress: none\nunsigned: true\n")
    assert entry.main(["auto", "--config", str(cfg), "--output_path", str(tmp_path / "o")]) == 0
    report = (tmp_path / "o" / "report.log").read_text()
    assert "auto --strategy mse" in report
    assert read_table_pb(tmp_path / "o" / "tuned" / "calibration_table.pb").spec.unsigned
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategie: mse\n")
    assert entry.main(["auto", "--config", str(bad), "--output_path", str(tmp_path / "o2")]) == 2
    assert "unknown key 'strategie'" in capsys.readouterr().err


def test_validation_dataloader_scores_the_tuned_table_and_picks_the_restart(model, tmp_path):
    from int8tune.metrics import METRICS
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.tune.tuner import Tuner, TuneSettings

    held = list(loader(2, seed=7))
    result = tune(model, list(loader()), validation_dataloader=held, restart_pick="validation", restarts=3,
                  output_path=tmp_path)
    # validation_score is the square difference of the kept table on the held-out batches, measured anew here
    # (with the weights the default bias correction wrote, against the fp32 model as given)
    ws = load_workspace(*model, corrected_model=tmp_path / "corrected.caffemodel")
    judge = Tuner(ws.converted, held, METRICS.get("square"), TuneSettings(), reference=ws.reference)
    assert result.validation_score == pytest.approx(judge.difference(result.table), rel=1e-6)
    assert tune(model, list(loader()), restarts=2, output_path=tmp_path / "b").validation_score is None
    with pytest.raises(ConfigError, match="validation_dataloader"):
        tune(model, list(loader()), restart_pick="validation", output_path=tmp_path / "c")


def test_every_option_of_main_sh_is_a_setting():
    """The API and YAML settings are main.sh's options: each option of `auto` that TuneConfig holds is accepted, but
    the few the API takes another way, which say what to pass instead."""
    import argparse

    from int8tune.api import TAKEN_OTHERWISE, TUNE_KEYS
    from int8tune.cli import build_parser
    from int8tune.config import TuneConfig

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["auto"]
    auto_options = {a.dest for a in sub._actions} & TuneConfig.option_names()
    assert {"holdout", "restarts", "metric_module", "plots"} <= auto_options
    assert auto_options - set(TAKEN_OTHERWISE) <= TUNE_KEYS
    assert load_settings({"holdout": 0, "plots": 2}, {}) == {"holdout": 0, "plots": 2}
    with pytest.raises(ConfigError, match="validation_list: pass the held-out batches as validation_dataloader"):
        load_settings({"validation_list": "held/"}, {})


def test_holdout_reaches_the_delivery(model, tmp_path):
    """Under 20 batches main.sh cross-validates (the delivery chosen by two folds); holdout=0 tunes on every batch
    and delivers the tuned table, from the API as from the command line."""
    default = tune(model, list(loader()), restarts=1, output_path=tmp_path / "a")
    assert default.run.selection is not None and default.run.selection.folds
    every = tune(model, list(loader()), restarts=1, holdout=0, output_path=tmp_path / "b")
    assert every.run.selection is None and every.run.delivered == "tuned"


def test_metric_module_from_the_api(model, tmp_path):
    path = tmp_path / "my_metrics.py"
    path.write_text("from int8tune.metrics import register_metric\n\n"
                    "@register_metric('api_mean_abs', 'lower')\n"
                    "def api_mean_abs(fp32, int8, params):\n"
                    "    return float(sum(abs(fp32[k] - int8[k]).mean() for k in fp32))\n")
    for out in ("a", "b"):  # the same file twice in one process: loaded once
        result = tune(model, list(loader()), metric="api_mean_abs", metric_module=str(path), restarts=1,
                      output_path=tmp_path / out)
        assert result.run.held_out is None and result.score >= 0
        assert "api_mean_abs" in (tmp_path / out / "report.log").read_text()


def test_calibrate_is_the_command(model, tmp_path):
    """api.calibrate runs what `main.py calibrate` runs: on the same images (prepared as the command prepares them)
    the same table and the same model difference, and the command's files."""
    from int8tune.api import calibrate
    from int8tune.image_params import load_image_params
    from test_utils import prepare_image

    proto, caffemodel = model
    images, params = image_folder(tmp_path, 6, 3)
    assert entry.main(["calibrate", "--proto", str(proto), "--model", str(caffemodel), "--data_list", str(images),
                       "--image_params", str(params), "--output_path", str(tmp_path / "cli")]) == 0
    loaded = load_image_params(params)
    batches = [prepare_image(str(p), loaded) for p in sorted(images.iterdir())]
    result = calibrate(model, batches, output_path=tmp_path / "api", method="auto")
    cli = read_table_pb(tmp_path / "cli" / "calibration_table.pb")
    assert result.table.thresholds() == cli.thresholds()
    assert read_table_pb(tmp_path / "api" / "calibration_table.pb").thresholds() == cli.thresholds()
    assert f"{result.difference:.6g}" in (tmp_path / "cli" / "report.log").read_text()
    for name in ("model_int8_qdq.onnx", "ncnn.table", "statistics.csv", "report.log", "corrected.caffemodel"):
        assert (tmp_path / "api" / name).is_file(), name
    assert result.delivery.check is not None and result.delivery.check.exact
    with pytest.raises(ConfigError, match="unknown setting.*restarts"):
        calibrate(model, batches, output_path=tmp_path / "x", restarts=2)
