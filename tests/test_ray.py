"""The Ray executor gives the local executor's results bit for bit: statistics (both passes), every evaluation of
the tuner (references, candidates, validation), an accuracy strategy, the CLI; also when a worker is killed in
the middle of a run. A cluster of two cores is started in this process (`ray.init(num_cpus=2)`); without Ray
installed these tests are skipped, and asking for Ray says how to install it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from netbuilder import write_net
from test_cli import project  # noqa: F401  (the CLI's tiny project: net, images, parameters)
from test_simulate import PROTOTXT, WEIGHTS, make_table

import evaluation_utils  # noqa: F401  (registers the metrics)
import main as entry
from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.errors import ClusterError, ConfigError
from int8tune.executors import ExecutorKind, ExecutorSettings, LocalExecutor, open_executor
from int8tune.metrics import METRICS
from int8tune.progress import Progress
from int8tune.quant.calibrate import collect_statistics
from int8tune.quant.formats import read_table_pb
from int8tune.quant.spec import QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.driver import run_strategy
from int8tune.tune.search import SearchSettings
from int8tune.tune.strategies import StrategyContext, StrategySettings
from int8tune.tune.trials import TrialLog
from int8tune.tune.tuner import Tuner, TuneSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    # the tasks of this file that kill their worker are pickled by value: workers cannot import tests/
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture
def executor(cluster):
    with open_executor(ExecutorSettings(ExecutorKind.RAY)) as ex:
        yield ex


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    proto, model = write_net(tmp_path_factory.mktemp("ray"), PROTOTXT, WEIGHTS)
    return convert_net(load_net(proto, model))


def batches(n=5):
    rng = np.random.default_rng(11)
    return [rng.standard_normal((2, 3, 6, 6)).astype(np.float32) for _ in range(n)]


# --- without a cluster ---------------------------------------------------------------------------------------

def test_asking_for_ray_without_it_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        open_executor(ExecutorSettings("ray"))


def test_an_unknown_executor_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="local, ray"):
        ExecutorSettings("dask")


def test_an_unreachable_cluster_is_a_clear_error():
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from int8tune.executors import ExecutorSettings, open_executor\n"
            f"open_executor(ExecutorSettings('ray', '127.0.0.1:{port}'))")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode != 0 and time.perf_counter() - t0 < 60
    assert f"ClusterError: cannot reach the Ray cluster at 127.0.0.1:{port}" in done.stderr
    assert "ray start --head" in done.stderr


# --- the same bits -------------------------------------------------------------------------------------------

def _statistics(converted, executor, per_channel):
    return collect_statistics(Engine(converted), ["data", "conv1", "pool1"], lambda: iter(batches()), 2048,
                              per_channel, progress=False, executor=executor)


@pytest.mark.parametrize("per_channel", [False, True])
def test_statistics_are_the_same_bits(converted, executor, per_channel):
    local, remote = _statistics(converted, None, per_channel), _statistics(converted, executor, per_channel)
    for v, a in local.items():
        b = remote[v]
        for name in ("absmax", "minimum", "maximum", "count", "zeros", "sum", "sumsq"):
            assert getattr(a, name) == getattr(b, name), (v, name)
        for name in ("histogram", "channel_absmax", "channel_count", "channel_zeros", "channel_sum",
                     "channel_sumsq", "channel_histograms"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (v, name)
        assert a.histogram.sum() > 0


def _tune(converted, executor, log_path=None, metric="square", objective="outputs"):
    """Every blob tuned (searched on 2 of 5 batches, then confirmed), and what the tuner measures around it."""
    bad = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    settings = TuneSettings(objective=objective, subset=2, search_settings=SearchSettings(step_ratio=0.25, steps=10))
    log = TrialLog(log_path, {"inputs": 1}) if log_path else None
    tuner = Tuner(converted, batches(), METRICS.get(metric), settings, log, executor=executor)
    table, trials = bad, []
    for value in tuner.blobs_in_order(bad):
        table, _ = tuner.tune_blob(table, value, on_trial=trials.append)
    measured = (tuner.difference(table), tuner.layer_differences(table), tuner.image_differences(table),
                tuner.score_isolated(bad, {"data": {"a": 0.5, "b": 1.0}, "pool1": {"a": 0.7}}),
                tuner.score_thresholds(table, "pool1", {"x": 0.4, "y": 0.9}), tuner.references(["fc"])["fc"].tobytes())
    return table.thresholds(), [(t.blob, t.multiplier, t.difference, t.extra, t.note) for t in trials], measured


@pytest.mark.parametrize("objective", ["outputs", "layer"])
def test_tuning_and_every_measurement_are_the_same_bits(converted, executor, objective):
    local = _tune(converted, LocalExecutor(), objective=objective)
    remote = _tune(converted, executor, objective=objective)
    assert local == remote
    assert len(local[1]) > 10


def test_an_accuracy_strategy_is_the_same_bits(converted, executor):
    def run(ex):
        tuner = Tuner(converted, batches(), METRICS.get("square"), TuneSettings(), executor=ex)
        start = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
        ctx = StrategyContext(start=start, tuner=tuner, metric=tuner.metric, fp32_score=tuner.fp32_score(),
                              goal=lambda score: False, settings=StrategySettings())
        result = run_strategy("basic", ctx, None, "none")
        return result.best_table.thresholds(), result.best_score, result.history

    local, remote = run(LocalExecutor()), run(executor)
    assert local == remote and len(local[2]) > 3


# --- faults and progress -------------------------------------------------------------------------------------

def _dies_once(ctx, marker: str, i: int) -> int:
    """Item 3 kills its worker the first time it runs (a hard exit: no exception, no cleanup)."""
    if i == 3 and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return i * i


def test_a_killed_worker_is_replaced_and_its_items_run_again(executor, tmp_path):
    before = {w["pid"] for w in executor.describe_workers()}
    marker = str(tmp_path / "died")
    with Progress(8, "test", enabled=False) as progress:
        got = executor.map(_dies_once, range(8), shared=marker, progress=progress)
    assert got == [i * i for i in range(8)] and progress.done == 8  # the progress counts every worker's items
    dead = int(Path(marker).read_text())
    after = {w["pid"] for w in executor.describe_workers()}
    assert dead in before and dead not in after and len(after) == 2  # replaced


def test_a_worker_killed_while_tuning_changes_neither_the_result_nor_the_trial_log(converted, executor, tmp_path):
    local = _tune(converted, LocalExecutor(), tmp_path / "local.jsonl")
    pids = [w["pid"] for w in executor.describe_workers()]
    start = executor.finished
    killed = []

    def kill_one():  # a few items into the run, as the tuner works: SIGKILL, as the OOM killer does
        while executor.finished < start + 12:
            time.sleep(0.005)
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    killer = threading.Thread(target=kill_one)
    killer.start()
    remote = _tune(converted, executor, tmp_path / "ray.jsonl")
    killer.join()
    assert killed and pids[0] not in {w["pid"] for w in executor.describe_workers()}
    assert remote == local

    def trials(path):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return lines[0], [{k: v for k, v in t.items() if k != "seconds"} for t in lines[1:]]

    assert trials(tmp_path / "ray.jsonl") == trials(tmp_path / "local.jsonl")


# --- the command line ----------------------------------------------------------------------------------------

@pytest.mark.slow  # calibrate and main.sh twice each, end to end (10 s): .ci/run runs it
def test_the_cli_on_ray_writes_the_tables_of_a_local_run(project, cluster, capsys):  # noqa: F811
    root, base = project
    for command, extra in (("calibrate", ["--simplified"]),
                           ("auto", ["--method", "kl", "--strategy", "halving", "--threshold", "0"])):
        outputs = {}
        for kind in ("local", "ray"):
            out = root / f"{command}_{kind}"
            assert entry.main([command, *base, *extra, "--executor", kind, "--output_path", str(out)]) in (0, 3)
            table = out / ("calibration_table.pb" if command == "calibrate" else "tuned/calibration_table.pb")
            outputs[kind] = read_table_pb(table).thresholds()
            assert json.loads((out / "config.json").read_text())["settings"]["executor"] == kind
        assert outputs["local"] == outputs["ray"]
    assert "executor" in capsys.readouterr().out


def test_the_settings_name_the_executor_and_refuse_an_address_without_ray(project, tmp_path, monkeypatch):  # noqa: F811
    from int8tune.api import load_settings
    from int8tune.cli import build_parser, with_config_file
    from int8tune.commands.parse import calibrate_config

    root, base = project
    yaml = tmp_path / "settings.yaml"
    yaml.write_text("executor: ray\n")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    parser = build_parser()
    args = parser.parse_args(with_config_file(["calibrate", "--config", str(yaml), *base, "--output_path",
                                               str(tmp_path / "o")], parser))
    cfg = calibrate_config(args)
    assert cfg.executor is ExecutorKind.RAY and cfg.ray_address == "10.0.0.1:6379"  # $RAY_ADDRESS by default
    assert load_settings({"executor": "ray", "ray_address": "h:1"}, {}) == {"executor": "ray", "ray_address": "h:1"}
    args = parser.parse_args(["calibrate", *base, "--ray_address", "h:1", "--output_path", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="--ray_address h:1 is for --executor ray"):
        calibrate_config(args)


def test_a_task_error_reaches_the_driver_as_itself(converted, executor):
    nan = [np.full((1, 3, 6, 6), np.nan, np.float32)]
    with pytest.raises(Exception) as raised:
        collect_statistics(Engine(converted), ["data"], lambda: iter(nan), 2048, False, progress=False,
                           executor=executor)
    assert type(raised.value).__name__ == "DataError" and "NaN or inf" in str(raised.value)
    assert not isinstance(raised.value, ClusterError)
