"""--output_veto: with several model outputs scored by their summed square distance, a move that lowers the sum
while one output gets much worse is refused, said in the result, and decided the same way on a replay."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.metrics import METRICS, normalised_square, squared_error_parts
from int8tune.quant.calibrate import build_table, collect_statistics, plan_quantization, planned_values
from int8tune.quant.calibrators import CalibratorOptions
from int8tune.quant.spec import QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.search import SearchSettings
from int8tune.tune.trials import TrialLog
from int8tune.tune.tuner import OUTPUT_VETO_FLOOR, Tuner, TuneSettings, worsened_output

CONV = "convolution_param { num_output: 1 kernel_size: 1 }"


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    """data (2 channels) -> head_a reads channel 0 (small values), head_b reads channel 1 (small values and a few
    large ones). One threshold quantizes data for both: lowering it resolves head_a's small values better and
    clips head_b's large ones."""
    text = (input_header((1, 2, 4, 4)) + layer("head_a", "Convolution", "data", "head_a", CONV)
            + layer("head_b", "Convolution", "data", "head_b", CONV))
    weights = {"head_a": [np.array([1, 0], np.float32).reshape(1, 2, 1, 1), np.zeros(1, np.float32)],
               "head_b": [np.array([0, 1], np.float32).reshape(1, 2, 1, 1), np.zeros(1, np.float32)]}
    proto, model = write_net(tmp_path_factory.mktemp("veto"), text, weights)
    converted = convert_net(load_net(proto, model))
    rng = np.random.default_rng(4)
    batches = []
    for _ in range(3):
        x = (0.01 * rng.standard_normal((4, 2, 4, 4))).astype(np.float32)
        x[:, 1, 0, 0] = rng.choice([-5.0, 5.0], size=4)  # head_b's few large values
        batches.append(x)
    plan = plan_quantization(load_net(proto, model), QuantSpec())
    stats = collect_statistics(Engine(converted), planned_values(plan), lambda: iter(batches), 2048, False,
                               progress=False)
    table = build_table(load_net(proto, model), converted, plan, stats, QuantSpec(), "minmax", "minmax",
                        CalibratorOptions())
    return converted, batches, table


def _tune(converted, batches, table, veto: float, log=None):
    tuner = Tuner(converted, batches, METRICS.get("square"),
                  TuneSettings(objective="outputs", output_veto=veto,
                               search_settings=SearchSettings(step_ratio=0.25, steps=10)), log)
    trials = []
    tuned, result = tuner.tune_blob(table, "data", on_trial=trials.append)
    return tuner, tuned, result, trials


def _per_output(tuner, table) -> dict[str, float]:
    refs = tuner.references(["head_a", "head_b"])
    got = tuner.run_int8(table, ["head_a", "head_b"])
    return {o: normalised_square(*squared_error_parts(refs[o], got[o])) for o in ("head_a", "head_b")}


def test_without_the_veto_the_sum_buys_head_a_with_head_b(two_heads):
    converted, batches, table = two_heads
    tuner, tuned, result, _ = _tune(converted, batches, table, veto=0)
    before, after = _per_output(tuner, table), _per_output(tuner, tuned)
    assert result.difference_after < result.difference_before  # the sum improved
    assert tuned.blobs["data"].threshold < table.blobs["data"].threshold
    assert after["head_b"] > 2 * before["head_b"]  # ... by making head_b much worse
    assert result.vetoed_by == ()


def test_the_veto_refuses_that_move_and_names_the_output(two_heads, tmp_path):
    converted, batches, table = two_heads
    log = TrialLog(tmp_path / "t.jsonl", {"k": 1})
    tuner, tuned, result, trials = _tune(converted, batches, table, veto=2.0, log=log)
    before, after = _per_output(tuner, table), _per_output(tuner, tuned)
    floor = OUTPUT_VETO_FLOOR * sum(before.values())
    for o in before:  # no output got more than 2x worse beyond the floor
        assert after[o] <= 2 * before[o] or after[o] - before[o] <= floor, (o, before, after)
    assert result.vetoed_by == ("head_b",)
    assert result.difference_after <= result.difference_before
    assert all("outputs" in t.extra for t in trials)
    # a replay of the log takes the same decisions without running the model
    again, tuned_again, result_again, _ = _tune(converted, batches, table, veto=2.0,
                                                log=TrialLog(tmp_path / "t.jsonl", {"k": 1}))
    assert tuned_again.thresholds() == tuned.thresholds() and again.evaluations == 0
    assert result_again.vetoed_by == ("head_b",)


def test_worsened_output_rule():
    base = {"a": 0.10, "b": 0.001}
    assert worsened_output({"a": 0.05, "b": 0.0015}, base, 2.0) is None  # b 1.5x: allowed
    assert worsened_output({"a": 0.05, "b": 0.01}, base, 2.0) == "b"  # b 10x, +0.009 > 1 % of 0.101
    assert worsened_output({"a": 0.05, "b": 0.0009}, {"a": 0.10, "b": 0.0001}, 2.0) is None  # 9x, +0.0008 < floor
    assert worsened_output({"a": 0.05, "b": 0.01}, base, 0) is None  # off
    assert worsened_output(None, base, 2.0) is None  # an old trial log without per-output figures
