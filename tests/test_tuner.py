"""The layer-wise tuner improves a badly calibrated table, logs every trial, and resumes from its log."""

from __future__ import annotations

import json

import numpy as np
import pytest
from netbuilder import write_net
from test_simulate import PROTOTXT, WEIGHTS, make_table

import evaluation_utils  # noqa: F401  (registers the square metric)
from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.errors import ConfigError
from int8tune.metrics import METRICS
from int8tune.quant.spec import QuantSpec
from int8tune.tune.search import SearchSettings
from int8tune.tune.trials import TrialLog, changed_inputs
from int8tune.tune.tuner import Tuner, TuneSettings


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    proto, model = write_net(tmp_path_factory.mktemp("tuner"), PROTOTXT, WEIGHTS)
    return convert_net(load_net(proto, model))


def batches():
    rng = np.random.default_rng(11)
    return [rng.standard_normal((2, 3, 6, 6)).astype(np.float32) for _ in range(3)]


def tune_all(converted, table, log=None, objective="model"):
    tuner = Tuner(converted, batches(), METRICS.get("square"),
                  TuneSettings(objective=objective, search_settings=SearchSettings(step_ratio=0.25, steps=10)), log)
    results = []
    for value in tuner.blobs_in_order(table):
        table, result = tuner.tune_blob(table, value)
        results.append(result)
    return tuner, table, results


def test_tuning_reduces_the_model_difference(converted):
    bad = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)  # both thresholds far too tight: heavy clipping
    tuner, tuned, results = tune_all(converted, bad)
    before, after = tuner.difference(bad), tuner.difference(tuned)
    assert after < 0.5 * before
    assert [r.blob for r in results] == ["data", "pool1"]
    assert all(r.difference_after <= r.difference_before for r in results)
    assert tuned.blobs["pool1"].threshold > bad.blobs["pool1"].threshold
    assert tuned.blobs["pool1"].calibrator == "tuned"
    # the reported difference of the last blob is the model difference of the final table
    assert results[-1].difference_after == pytest.approx(after, rel=1e-6)


def test_layer_objective_and_layer_differences(converted):
    bad = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    tuner, tuned, _ = tune_all(converted, bad, objective="layer")
    before, after = tuner.layer_differences(bad), tuner.layer_differences(tuned)
    assert set(before) == {"conv1", "fc"}
    assert after["conv1"] < before["conv1"]


def test_resume_replays_the_log_and_reaches_the_same_table(converted, tmp_path):
    bad = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    log_path = tmp_path / "trials.jsonl"
    _, first, _ = tune_all(converted, bad, TrialLog(log_path, {"model": "x"}))
    lines = log_path.read_text().splitlines()
    log_path.write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[len(lines) // 2][:10])  # killed mid-write
    log = TrialLog(log_path, {"model": "x"})
    assert log.replayed == len(lines) // 2 - 1
    tuner, second, _ = tune_all(converted, bad, log)
    assert second.thresholds() == first.thresholds()
    assert tuner.evaluations < len(lines) - 1  # the replayed half was not evaluated again
    assert len(log_path.read_text().splitlines()) == len(lines)


def test_a_log_from_other_inputs_is_refused(tmp_path):
    TrialLog(tmp_path / "t.jsonl", {"model": "a", "images": "1"})
    with pytest.raises(ConfigError, match="changed: model"):
        TrialLog(tmp_path / "t.jsonl", {"model": "b", "images": "1"})


def test_a_log_that_is_not_a_trial_log_is_refused_naming_it(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"t\.jsonl:1: not a trial log \(not UTF-8"):
        TrialLog(path, {"model": "a"})
    path.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match=r"t\.jsonl:1: not a trial log header"):
        TrialLog(path, {"model": "a"})
    assert path.read_text() == "[1, 2]\n"  # nothing overwritten


def test_the_refusal_names_each_changed_leaf_with_its_values():
    old = {"model": "a", "settings": json.dumps({"quant": {"equalize": True}, "steps": 8, "gone": 1})}
    new = {"model": "b", "settings": json.dumps({"quant": {"equalize": False}, "steps": 8, "added": "x" * 80})}
    assert changed_inputs(old, new) == ["model (the caffemodel file)", "settings.added",
                                        "settings.gone: 1 -> absent", "settings.quant.equalize: true -> false"]


def test_subset_search_confirms_on_every_batch(converted, tmp_path):
    """Searching on the worst batch only, then confirming: the kept table never does worse on all batches."""
    bad = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    settings = TuneSettings(search_settings=SearchSettings(step_ratio=0.25, steps=10), subset=1)
    log = TrialLog(tmp_path / "t.jsonl", {"k": 1})
    tuner = Tuner(converted, batches(), METRICS.get("square"), settings, log)
    table = bad
    for value in tuner.blobs_in_order(bad):
        before = tuner.difference(table)
        table, result = tuner.tune_blob(table, value)
        assert result.difference_before == pytest.approx(before, rel=1e-6)
        assert result.difference_after <= result.difference_before
        assert tuner.difference(table) == pytest.approx(result.difference_after, rel=1e-6)
    assert len(tuner.search_batches(bad)) == 1
    notes = [t.note for t in log.trials]
    assert "confirm" in notes and all("subset" in t.extra for t in log.trials)
    replay = Tuner(converted, batches(), METRICS.get("square"), settings, TrialLog(tmp_path / "t.jsonl", {"k": 1}))
    again = bad
    for value in replay.blobs_in_order(bad):
        again, _ = replay.tune_blob(again, value)
    assert again.thresholds() == table.thresholds()


def test_unseen_confirmation_judges_a_move_on_the_batches_the_search_did_not_see(converted, tmp_path):
    """--confirm unseen: a kept move improves the objective on the unseen batches by more than --min_gain there,
    a refused one did not; the decision is recorded (replayable) and the result still reports all batches."""
    bad = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    settings = TuneSettings(search_settings=SearchSettings(step_ratio=0.25, steps=10), subset=1, confirm="unseen",
                            min_gain=0.01)
    log = TrialLog(tmp_path / "t.jsonl", {"k": 1})
    tuner = Tuner(converted, batches(), METRICS.get("square"), settings, log)
    table = bad
    for value in tuner.blobs_in_order(bad):
        table, result = tuner.tune_blob(table, value)
        trials = [t for t in log.trials if t.blob == value]
        base = next(t for t in trials if t.note == "baseline")
        confirm = [t for t in trials if t.note == "confirm"]
        assert "unseen" in base.extra
        if result.threshold_after != result.threshold_before:
            (c,) = confirm
            assert c.extra["unseen"] < base.extra["unseen"] * (1 - 0.01)
        for c in confirm:
            if c.extra["unseen"] >= base.extra["unseen"] * (1 - 0.01):
                assert result.threshold_after == result.threshold_before
        assert tuner.difference(table) == pytest.approx(result.difference_after, rel=1e-6)
    assert table.thresholds() != bad.thresholds()  # the tight thresholds do move
    replay = Tuner(converted, batches(), METRICS.get("square"), settings, TrialLog(tmp_path / "t.jsonl", {"k": 1}))
    again = bad
    for value in replay.blobs_in_order(bad):
        again, _ = replay.tune_blob(again, value)
    assert again.thresholds() == table.thresholds() and replay.evaluations == 0
    with pytest.raises(ConfigError, match="--confirm must be one of unseen, all"):
        TuneSettings(confirm="maybe")


def _tune_trials(converted, table, batches_, carry: bool, blobs=None, metric="square", settings=None):
    tuner = Tuner(converted, batches_, METRICS.get(metric),
                  settings or TuneSettings(search_settings=SearchSettings(step_ratio=0.25, steps=10)))
    tuner.carry_state = carry
    tuner.difference(table)
    trials = []
    for value in (blobs or tuner.blobs_in_order(table)):
        table, _ = tuner.tune_blob(table, value, on_trial=trials.append)
    return table, [(t.blob, t.multiplier, t.difference) for t in trials], tuner.evaluations


def test_carried_state_changes_no_decision_and_skips_the_baseline_runs(converted):
    """The next blob starts from the tensors the previous one left (its frontier and the model outputs under the
    kept table) instead of an upstream run: the same trials, the same table, one suffix run fewer per blob."""
    bad = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    carried, trials_c, evals_c = _tune_trials(converted, bad, batches(), carry=True)
    plain, trials_p, evals_p = _tune_trials(converted, bad, batches(), carry=False)
    assert carried.thresholds() == plain.thresholds()
    assert trials_c == trials_p
    assert evals_c == evals_p - 2  # two blobs, no baseline run for either


@pytest.mark.slow  # a real detector end to end: .ci/run runs it (pytest -m slow)
def test_carried_state_on_a_real_detector(assets):
    """yolov3_nano_voc, the first blobs of the chain (each bridged from the previous blob's frontier) and a blob
    of the second head (not downstream of the one before it): the same trials as upstream runs from the input."""
    from int8tune.pipeline.workspace import load_workspace
    from int8tune.quant.calibrate import build_table, collect_statistics, plan_quantization, planned_values
    from int8tune.quant.calibrators import CalibratorOptions
    from int8tune.runtime import Engine

    d = assets / "models" / "yolov3_nano_voc"
    ws = load_workspace(d / "MobileNetV2-YOLOv3-Nano-voc.prototxt", d / "MobileNetV2-YOLOv3-Nano-voc.caffemodel")
    rng = np.random.default_rng(3)
    xs = [rng.random((1, 3, 320, 320), dtype=np.float32) for _ in range(2)]
    plan = plan_quantization(ws.fold.net, QuantSpec())
    stats = collect_statistics(Engine(ws.converted), planned_values(plan), lambda: iter(xs), 2048, False,
                               progress=False)
    table = build_table(ws.fold.net, ws.converted, plan, stats, QuantSpec(), "kl", "minmax", CalibratorOptions())
    order = Tuner(ws.converted, xs, METRICS.get("square"), TuneSettings()).blobs_in_order(table)
    blobs = order[:4] + order[-3:]
    settings = TuneSettings(search_settings=SearchSettings(step_ratio=0.3, steps=2))
    carried, trials_c, _ = _tune_trials(ws.converted, table, xs, True, blobs, settings=settings)
    plain, trials_p, _ = _tune_trials(ws.converted, table, xs, False, blobs, settings=settings)
    assert carried.thresholds() == plain.thresholds()
    assert [t[:2] for t in trials_c] == [t[:2] for t in trials_p]
    np.testing.assert_allclose([t[2] for t in trials_c], [t[2] for t in trials_p], rtol=1e-6)


def test_outputs_objective_scores_candidates_by_the_square_distance_whatever_the_metric(converted):
    """--objective outputs: a metric other than square (here the largest absolute difference) is reported, but
    the candidates are ranked by the square distance of the model outputs: the same trials as --metric square."""
    from int8tune.metrics import register_metric

    name = "test_max_abs_difference"
    if name not in METRICS:
        register_metric(name, "lower")(lambda fp32, int8, params: max(float(np.abs(fp32[k] - int8[k]).max())
                                                                      for k in fp32))
    bad = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    runs = {}
    for metric, objective in ((name, "outputs"), ("square", "model"), (name, "model")):
        tuner = Tuner(converted, batches(), METRICS.get(metric), TuneSettings(
            objective=objective, search_settings=SearchSettings(step_ratio=0.25, steps=10)))
        trials, table = [], bad
        for value in tuner.blobs_in_order(bad):
            table, _ = tuner.tune_blob(table, value, on_trial=trials.append)
        runs[(metric, objective)] = [(t.multiplier, t.difference) for t in trials]
        if objective == "outputs":
            assert tuner.difference(table) == pytest.approx(max(float(np.abs(a - b).max()) for a, b in zip(
                tuner.references(["fc"]).values(), tuner.run_int8(table, ["fc"]).values())))
    assert runs[(name, "outputs")] == runs[("square", "model")]
    assert runs[(name, "outputs")] != runs[(name, "model")]


def test_each_image_difference_is_the_metric_on_that_image_alone(converted):
    """test.sh's per-image table: batches of two images are split, and each value equals the model difference of
    a run on that one image (whether the tuner already holds the table's outputs or must run it)."""
    table = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    data = batches()
    names = [[f"b{i}_{j}.png" for j in range(len(b))] for i, b in enumerate(data)]
    tuner = Tuner(converted, data, METRICS.get("square"), TuneSettings(), names=names)
    cold = tuner.image_differences(table)  # nothing known yet: runs the table
    tuner.difference(table)
    warm = tuner.image_differences(table)  # the outputs of that run are reused
    assert [n for n, _ in cold] == [n for batch in names for n in batch]
    assert [d for _, d in warm] == pytest.approx([d for _, d in cold], rel=1e-6)
    for (name, d), (i, j) in zip(cold, [(i, j) for i, b in enumerate(data) for j in range(len(b))]):
        alone = Tuner(converted, [data[i][j:j + 1]], METRICS.get("square"), TuneSettings()).difference(table)
        assert d == pytest.approx(alone, rel=1e-5), name
    assert len({round(d, 9) for _, d in cold}) > 1  # the images do differ


def _constant_metric() -> str:
    """A registered metric that never improves (0 for every table): under `guarded` it vetoes every move."""
    from int8tune.metrics import register_metric

    name = "test_constant_difference"
    if name not in METRICS:
        register_metric(name, "lower")(lambda fp32, int8, params: 0.0)
    return name


def _tune_with(converted, metric, objective, log=None, subset=0):
    tuner = Tuner(converted, batches(), METRICS.get(metric), TuneSettings(
        objective=objective, subset=subset, search_settings=SearchSettings(step_ratio=0.25, steps=10)), log)
    table, trials = make_table(QuantSpec(), t_data=0.3, t_pool=0.2), []
    for value in tuner.blobs_in_order(table):
        table, _ = tuner.tune_blob(table, value, on_trial=trials.append)
    return tuner, table, trials


@pytest.mark.parametrize("subset", [0, 1])
def test_guarded_objective_keeps_a_move_only_when_the_metric_improves_too(converted, tmp_path, subset):
    """--objective guarded: the candidates are ranked by the square distance of the outputs (the same trials as
    outputs), but a metric that never improves vetoes every move, so the start table comes back unchanged; with a
    metric that agrees with the square distance (square itself) guarded is exactly outputs."""
    start = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)
    constant = _constant_metric()
    _, moved, trials_o = _tune_with(converted, constant, "outputs", subset=subset)
    assert moved.thresholds() != start.thresholds()  # the dense distance alone moves the tight thresholds
    log = TrialLog(tmp_path / "t.jsonl", {"k": 1})
    _, kept, trials_g = _tune_with(converted, constant, "guarded", log, subset=subset)
    assert kept.thresholds() == start.thresholds()
    # the same candidates were tried (the search itself follows the dense distance) up to where the kept
    # threshold of the first blob differs; the first blob's trials are identical
    first = trials_o[0].blob
    assert [(t.multiplier, t.difference) for t in trials_g if t.blob == first] == \
        [(t.multiplier, t.difference) for t in trials_o if t.blob == first and t.note != "confirm"]
    key = "metric_subset" if subset else "metric"
    assert all(key in t.extra for t in trials_g if t.note != "confirm")
    # a replay of the log decides the same without running anything
    tuner, again, _ = _tune_with(converted, constant, "guarded", TrialLog(tmp_path / "t.jsonl", {"k": 1}),
                                 subset=subset)
    assert again.thresholds() == kept.thresholds() and tuner.evaluations == 0
    _, square_g, trials_sg = _tune_with(converted, "square", "guarded", subset=subset)
    _, square_o, trials_so = _tune_with(converted, "square", "outputs", subset=subset)
    assert square_g.thresholds() == square_o.thresholds()
    assert [(t.multiplier, t.difference) for t in trials_sg] == [(t.multiplier, t.difference) for t in trials_so]


@pytest.mark.parametrize("subset", [0, 1])
def test_guarded_objective_never_lets_the_metric_get_worse_on_the_tuning_images(converted, subset):
    """Every move guarded keeps improved --metric on all tuning images (confirmed there when the search ran on a
    subset), so from blob to blob the metric only falls. The metric here is the squared error of the first image
    alone, which the square distance over all images does not always improve: under outputs it rises at the
    first blob."""
    from int8tune.metrics import register_metric

    name = "test_first_image_square"
    if name not in METRICS:
        register_metric(name, "lower")(lambda fp32, int8, params: sum(float(((fp32[k][0] - int8[k][0]) ** 2).sum())
                                                                      for k in fp32))
    start = make_table(QuantSpec(), t_data=0.3, t_pool=0.2)

    def path(objective):
        tuner, table, _ = _tune_with(converted, name, objective, subset=subset)
        values, current = [tuner.difference(start)], start
        for value in tuner.blobs_in_order(start):
            current = current.with_threshold(value, table.blobs[value].threshold)
            values.append(tuner.difference(current))
        return values

    guarded, outputs = path("guarded"), path("outputs")
    assert all(b <= a for a, b in zip(guarded, guarded[1:])) and guarded[-1] < guarded[0], guarded
    if subset == 0:
        assert outputs[1] > outputs[0]  # the case the guard is for


def test_square_weights_and_selects_outputs_by_metric_params():
    from int8tune.errors import ConfigError
    from int8tune.metrics import METRICS

    square = METRICS.get("square")
    fp32 = {"a": np.ones((2, 3), np.float32), "b": np.full((2, 3), 2.0, np.float32)}
    int8 = {"a": np.full((2, 3), 1.1, np.float32), "b": np.full((2, 3), 2.0, np.float32) * 1.5}
    a, b = square({"a": fp32["a"]}, {"a": int8["a"]}), square({"b": fp32["b"]}, {"b": int8["b"]})
    assert square(fp32, int8) == pytest.approx(a + b)
    assert square(fp32, int8, {"outputs": ["a"]}) == pytest.approx(a)
    assert square(fp32, int8, {"outputs": {"a": 2.0, "b": 0.5}}) == pytest.approx(2 * a + 0.5 * b)
    with pytest.raises(ConfigError, match="not outputs of the model; its outputs: a, b"):
        square(fp32, int8, {"outputs": ["c"]})
    with pytest.raises(ConfigError, match="must be a number >= 0"):
        square(fp32, int8, {"outputs": {"a": -1}})
