"""TuneConfig: its options grouped by job, each group checking its own; flat on the command line, in YAML and API
settings, and in the trial log's fingerprint of the settings (an output folder's trials.jsonl must resume
whatever the grouping)."""

from __future__ import annotations

import re

import pytest

from int8tune import config
from int8tune.cli import build_parser
from int8tune.commands.parse import tune_config
from int8tune.config import TuneConfig
from int8tune.errors import ConfigError, RegistryError
from int8tune.pipeline.tuning import SETTINGS_THAT_CHANGE_NO_TRIAL, check_plugin_names, settings_fingerprint
from int8tune.progress import ProgressMode


@pytest.fixture
def files(tmp_path):
    for name in ("deploy.prototxt", "weights.caffemodel", "image_params.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "images").mkdir()
    return tmp_path


def _auto(files, *options: str) -> TuneConfig:
    argv = ["auto", "--proto", str(files / "deploy.prototxt"), "--model", str(files / "weights.caffemodel"),
            "--data_list", str(files / "images"), "--image_params", str(files / "image_params.json"),
            "--output_path", str(files / "out"), *options]
    return tune_config(build_parser().parse_args(argv))


def test_the_fingerprint_of_the_default_settings_is_the_flat_dict_trial_logs_hold(files):
    """Written out by hand: a regrouping of TuneConfig that changed a key or a value here would make every existing
    trials.jsonl refuse to resume."""
    assert settings_fingerprint(_auto(files)) == {
        "model": {"proto": str(files / "deploy.prototxt"), "model": str(files / "weights.caffemodel"),
                  "input_shape": None, "corrected_model": None},
        "data": {"data_list": str(files / "images"), "image_params": str(files / "image_params.json"),
                 "dataset_path": None, "data_limit": None, "batch_size": 1},
        "quant": {"method": "auto", "weight_method": "minmax", "granularity": "mix", "rounding": "half_to_even",
                  # equalize: None (chosen by measurement) since 98abc52, docs/equalization.md; logs of earlier
                  # defaults resume with --no_equalize
                  # adaround on by default since 7999379 and bias_correction since 3cad549
                  # (docs/weight_levers.md): logs of earlier defaults resume with --no_adaround / --no_bias_correction;
                  # its solver sequential since this change: logs of AdaRound's Adam resume with --adaround_solver adam
                  "bias": "int32", "unsigned": False, "target": "onnxruntime", "equalize": None, "adaround": True,
                  "adaround_solver": "sequential",
                  "bias_correction": True, "quantize_types": ["Convolution", "Deconvolution", "InnerProduct"],
                  "ignore_layer_names": [], "ignore_layer_types": [], "percentile": 99.99, "bins": 2048},
        "calibration_model": None, "calibration_proto": None, "int8_layer": "", "tune_layer": "", "tune_diff": None,
        "metric": "square", "metric_params": {}, "objective": "outputs", "output_veto": 2.0,
        "search": "both_directions", "step_ratio": 0.1, "steps": 8, "patience": 2, "multipliers": [],
        "search_subset": -1, "min_gain": 0.01, "confirm": "all",
        "restarts": 4, "holdout": 0.25,
        "strategy": "layerwise", "max_iter_per_node": 3, "acc_drop_skip": 0.05, "target_accuracy": None,
        "threshold": 1.0, "fallback": True, "bayesian_trials": 30, "tiebreak": None,
        "progress": "print"}


def test_every_option_lands_in_its_group_and_comes_back_under_its_own_name(files):
    cfg = _auto(files, "--restarts", "2", "--restart_pick", "mean", "--objective", "guarded", "--confirm", "unseen",
                "--multipliers", "0.5,2", "--strategy", "basic", "--tiebreak", "model_size", "--progress", "none",
                "--threads", "3", "--no_resume", "--plots", "1", "--metric_params", '{"k": 1}')
    assert cfg.delivery == config.DeliveryConfig(restarts=2, restart_pick=config.RestartPick.MEAN)
    assert cfg.measure == config.MeasureConfig(metric_params={"k": 1}, objective=config.Objective.GUARDED)
    assert cfg.blob_search == config.BlobSearchConfig(search="grid", multipliers=(0.5, 2.0),
                                                      confirm=config.Confirm.UNSEEN)
    assert cfg.accuracy == config.AccuracyConfig(strategy="basic", tiebreak="model_size")
    assert cfg.run == config.RunConfig(threads=3, progress=ProgressMode.NONE, resume=False, plots=1)
    flat = cfg.to_dict()
    assert {k: flat[k] for k in ("restarts", "restart_pick", "objective", "confirm", "multipliers", "search",
                                 "strategy", "tiebreak", "progress", "threads", "resume", "plots")} == {
        "restarts": 2, "restart_pick": "mean", "objective": "guarded", "confirm": "unseen", "multipliers": [0.5, 2.0],
        "search": "grid", "strategy": "basic", "tiebreak": "model_size", "progress": "none", "threads": 3,
        "resume": False, "plots": 1}
    groups = TuneConfig.groups().values()
    names = [f for group in groups for f in group.__dataclass_fields__]
    assert len(names) == len(set(names))  # one flat name, one group
    assert set(SETTINGS_THAT_CHANGE_NO_TRIAL) <= set(flat)


@pytest.mark.parametrize("group, values, message", [
    ("DeliveryConfig", {"restart_pick": "worst"}, "--restart_pick must be best, mean or validation, found 'worst'"),
    ("DeliveryConfig", {"restarts": 0}, "--restarts must be positive, found 0"),
    ("RunConfig", {"progress": "loud"}, "--progress must be print, bar or none, found 'loud'"),
    ("RunConfig", {"ray_address": "h:1"}, "--ray_address h:1 is for --executor ray"),
    ("MeasureConfig", {"objective": "fast"}, "--objective must be one of model, outputs, layer, guarded, found 'fast'"),
    ("MeasureConfig", {"output_veto": 0.5}, "--output_veto is a factor above 1"),
    ("BlobSearchConfig", {"confirm": "maybe"}, "--confirm must be one of unseen, all, found 'maybe'"),
    ("BlobSearchConfig", {"steps": 0}, "--step_ratio, --steps and --patience must be positive"),
    ("AccuracyConfig", {"threshold": -1.0}, "--threshold is an accuracy drop in percent and cannot be negative"),
])
def test_each_group_checks_its_own_options(group, values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        getattr(config, group)(**values)


def test_from_options_takes_the_flat_names_only(files):
    cfg = _auto(files)
    with pytest.raises(TypeError, match="no option step"):
        TuneConfig.from_options(cfg.model, cfg.data, cfg.quant, cfg.output_path, step=0.2)
    moved = TuneConfig.from_options(cfg.model, cfg.data, cfg.quant, cfg.output_path, step_ratio=0.2, holdout=0.0)
    assert moved.blob_search.step_ratio == 0.2 and moved.delivery.holdout == 0.0


@pytest.mark.parametrize("option, value, kind", [("search", "nope", "threshold search"),
                                                 ("strategy", "nope", "strategy"),
                                                 ("tiebreak", "nope", "tie-break objective")])
def test_a_plugin_name_is_refused_before_any_work(files, option, value, kind):
    """search, strategy and tiebreak name plug-ins of tune/ (config.py sits below their registries): the session
    refuses an unknown one first, with the registry's list."""
    cfg = _auto(files)
    cfg = TuneConfig.from_options(cfg.model, cfg.data, cfg.quant, cfg.output_path, **{option: value})
    with pytest.raises(RegistryError, match=f"unknown {kind} 'nope'; valid names: "):
        check_plugin_names(cfg)
    check_plugin_names(_auto(files))  # layerwise is no registered strategy, and needs none
