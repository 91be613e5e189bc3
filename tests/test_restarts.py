"""Tuning restarts (tune/restarts.py): restart 0 is the plain loop, later restarts start from the table moved by a
relative 1e-6, the kept table is the restart with the best objective (or the geometric mean of the restarts'
threshold moves), and a resumed run replays every restart from the trial log."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import write_net
from test_simulate import PROTOTXT, WEIGHTS, make_table
from test_tuner import batches

import evaluation_utils  # noqa: F401  (registers the square metric)
from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.metrics import METRICS
from int8tune.quant.spec import QuantSpec
from int8tune.tune.restarts import RESTART_JITTER, combine, final_objective, restart_start, tune_with_restarts
from int8tune.tune.search import SearchSettings
from int8tune.tune.trials import TrialLog
from int8tune.tune.tuner import Tuner, TuneSettings

SETTINGS = TuneSettings(search_settings=SearchSettings(step_ratio=0.25, steps=10))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    proto, model = write_net(tmp_path_factory.mktemp("restarts"), PROTOTXT, WEIGHTS)
    return convert_net(load_net(proto, model))


def bad_table():
    return make_table(QuantSpec(), t_data=0.3, t_pool=0.2)  # both thresholds far too tight


def test_restart_zero_is_the_table_and_later_ones_move_every_blob_by_about_1e_6():
    table = bad_table()
    blobs = ["data", "pool1"]
    assert restart_start(table, blobs, 0) is table
    first, again, second = (restart_start(table, blobs, 1), restart_start(table, blobs, 1),
                            restart_start(table, blobs, 2))
    for v in blobs:
        rel = first.blobs[v].threshold / table.blobs[v].threshold - 1
        assert 0 < abs(rel) < 6 * RESTART_JITTER
        assert first.blobs[v].threshold == again.blobs[v].threshold  # seeded by the restart number: resumable
        assert first.blobs[v].threshold != second.blobs[v].threshold
        assert first.blobs[v].calibrator == table.blobs[v].calibrator
        assert table.blobs[v].threshold == bad_table().blobs[v].threshold  # the start itself is not touched


def test_combine_is_the_geometric_mean_of_each_restarts_own_move():
    start = bad_table()
    blobs = ["data", "pool1"]
    s1, s2 = restart_start(start, blobs, 1), restart_start(start, blobs, 2)
    t1 = s1.with_threshold("pool1", s1.blobs["pool1"].threshold * 4.0)
    t2 = s2.with_threshold("pool1", s2.blobs["pool1"].threshold * 1.0)  # this restart did not move it
    combined = combine(start, [(s1, t1), (s2, t2)], blobs)
    assert combined.blobs["pool1"].threshold == pytest.approx(start.blobs["pool1"].threshold * 2.0, rel=1e-12)
    # no restart moved data: exactly the start's threshold, not a mean of the jittered ones
    assert combined.blobs["data"].threshold == start.blobs["data"].threshold


def test_one_restart_is_the_plain_loop(converted):
    plain = Tuner(converted, batches(), METRICS.get("square"), SETTINGS)
    table = bad_table()
    for value in plain.blobs_in_order(table):
        table, _ = plain.tune_blob(table, value)
    tuner = Tuner(converted, batches(), METRICS.get("square"), SETTINGS)
    result = tune_with_restarts(tuner, bad_table(), tuner.blobs_in_order(bad_table()), 1)
    assert result.table.thresholds() == table.thresholds()
    assert len(result.restarts) == 1 and result.restarts[0].complete and not result.interrupted


def test_restarts_keep_the_best_and_each_is_logged_apart(converted, tmp_path):
    start = bad_table()
    log = TrialLog(tmp_path / "trials.jsonl", {"k": 1})
    tuner = Tuner(converted, batches(), METRICS.get("square"), SETTINGS, log)
    order = tuner.blobs_in_order(start)
    saved = []
    result = tune_with_restarts(tuner, start, order, 3, on_restart=lambda run, picked: saved.append(picked))
    assert [r.number for r in result.complete] == [0, 1, 2]
    assert {t.restart for t in log.trials} == {0, 1, 2}
    # best: the restart whose final objective (on every tuning image) is lowest, its table as it was tuned
    finals = [final_objective(r) for r in result.restarts]
    assert result.picked == int(np.argmin(finals))
    assert result.table is result.restarts[result.picked].table
    assert finals[result.picked] == pytest.approx(tuner.difference(result.table), rel=1e-6)
    assert saved[-1].thresholds() == result.table.thresholds()
    assert saved[0].thresholds() == result.restarts[0].table.thresholds()  # after restart 1: its own table
    assert tuner.difference(result.table) < 0.5 * tuner.difference(start)
    # mean: the geometric mean of the moves
    mean = tune_with_restarts(tuner, start, order, 3, pick="mean")
    assert mean.picked is None
    assert mean.table.thresholds() == combine(start, [(r.start, r.table) for r in mean.restarts], order).thresholds()
    assert tuner.difference(mean.table) < 0.5 * tuner.difference(start)
    # resuming replays all three restarts from the log and evaluates nothing
    again = Tuner(converted, batches(), METRICS.get("square"), SETTINGS, TrialLog(tmp_path / "trials.jsonl", {"k": 1}))
    replayed = tune_with_restarts(again, start, order, 3)
    assert replayed.table.thresholds() == result.table.thresholds()
    assert again.evaluations == 0


@pytest.mark.parametrize("stop_restart", [0, 1])
def test_an_interrupted_run_keeps_what_it_found(converted, stop_restart):
    """Ctrl-C in restart 2 leaves restart 1's table; in restart 1 (after its first blob), that partial table."""
    start = bad_table()
    tuner = Tuner(converted, batches(), METRICS.get("square"), SETTINGS)
    order = tuner.blobs_in_order(start)

    def stop(restart, i, table):
        if restart == stop_restart and i == 0:
            raise KeyboardInterrupt

    result = tune_with_restarts(tuner, start, order, 3, on_blob=stop)
    assert result.interrupted and tuner.restart == 0
    assert [r.complete for r in result.restarts] == ([True, False] if stop_restart else [False])
    assert result.table.thresholds() == result.restarts[0].table.thresholds()
    if stop_restart == 0:  # the first blob's move is kept, the second blob untouched
        assert result.table.blobs[order[0]].threshold != start.blobs[order[0]].threshold
        assert np.isclose(result.table.blobs[order[1]].threshold, start.blobs[order[1]].threshold)


def test_validation_pick_keeps_the_restart_the_judge_scores_best(converted):
    from int8tune.tune.restarts import Judge

    start = bad_table()
    tuner = Tuner(converted, batches(), METRICS.get("square"), SETTINGS)
    order = tuner.blobs_in_order(start)
    rng = np.random.default_rng(5)  # held-out batches: other draws than the tuning ones
    held = Tuner(converted, [rng.standard_normal((2, 3, 6, 6)).astype(np.float32) for _ in range(2)],
                 METRICS.get("square"), SETTINGS)
    result = tune_with_restarts(tuner, start, order, 3, pick="validation",
                                judge=Judge(held.difference, METRICS.get("square").better))
    scores = [r.validation for r in result.restarts]
    assert len(set(scores)) == 3  # the restarts differ on the held-out batches, so the pick means something
    assert scores == pytest.approx([held.difference(r.table) for r in result.restarts], rel=1e-6)
    assert result.picked == int(np.argmin(scores)) and result.table is result.restarts[result.picked].table
    # a judge that prefers the opposite (higher is better) picks the other end: the pick follows the judge alone
    worst = tune_with_restarts(tuner, start, order, 3, pick="validation",
                               judge=Judge(held.difference, lambda a, b: a > b))
    assert worst.picked == int(np.argmax(scores))
    with pytest.raises(ValueError, match="judge"):
        tune_with_restarts(tuner, start, order, 2, pick="validation")
