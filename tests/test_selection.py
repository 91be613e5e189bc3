"""The delivered table is chosen on images tuning did not see: held back evenly from the list, scored for every
candidate table, and the start is left only for a gain beyond the noise floor (the start moved by 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest

from int8tune.metrics import METRICS
from int8tune.pipeline.images import Images
from int8tune.pipeline.selection import HeldOutSource, hold_back, select
from int8tune.quant.spec import QuantSpec
from int8tune.quant.table import BlobEntry, CalibrationTable


def _images(n: int) -> Images:
    batches = [np.full((1, 1, 2, 2), i, np.float32) for i in range(n)]
    return Images(f"{n} image(s)", n, None, [[f"img{i}.png"] for i in range(n)], _batches=batches)


def test_hold_back_spreads_over_the_list_and_keeps_enough_to_tune():
    tune, held = hold_back(_images(12), 0.25)
    assert [n[0] for n in held.names] == ["img3.png", "img7.png", "img11.png"]
    assert len(tune.batches) == 9 and not set(map(tuple, tune.names)) & set(map(tuple, held.names))
    assert hold_back(_images(5), 0.25) is None  # too few: nothing is held back
    assert hold_back(_images(12), 0.0) is None
    tune, held = hold_back(_images(6), 0.25)  # every 4th would hold one: at least two are held back
    assert held.count == 2 and tune.count == 4


class _Judge:
    """A stand-in for the held-out Tuner: a table's score is its `blob x` threshold, offset by `noise` for a
    table nobody named (the jittered copies of the start)."""

    def __init__(self, scores: dict[int, float], noise: float):
        self.metric = METRICS.get("square")
        self.scores, self.noise = scores, noise

    def difference(self, table: CalibrationTable) -> float:
        return self.scores.get(id(table), self.scores[0] + self.noise)


def _table(t: float) -> CalibrationTable:
    table = CalibrationTable(model="m", spec=QuantSpec())
    table.blobs["x"] = BlobEntry("x", "x", t)
    return table


@pytest.mark.parametrize("tuned_score, noise, delivered", [
    (0.8, 0.05, "tuned"),  # a gain of 0.2, beyond the noise: the tuned table
    (0.98, 0.05, "start"),  # a gain of 0.02, within the noise: the start stays
    (1.3, 0.0, "start"),  # worse on the held-out images: never delivered
])
def test_the_start_is_left_only_for_a_gain_beyond_the_noise(tuned_score, noise, delivered):
    start, tuned, other = _table(1.0), _table(2.0), _table(3.0)
    judge = _Judge({id(start): 1.0, 0: 1.0, id(tuned): tuned_score, id(other): 1.1}, noise)
    sel = select(judge, _images(2), HeldOutSource.HELD_BACK, [("start", start), ("tuned", tuned),
                                                               ("calibrator kl", other)], ["x"])
    assert sel.delivered == delivered and sel.noise == pytest.approx(noise)
    assert sel.scores == {"start": 1.0, "tuned": tuned_score, "calibrator kl": 1.1}
