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
    tune, held = hold_back(_images(24), 0.25)
    assert [n[0] for n in held.names] == [f"img{i}.png" for i in (3, 7, 11, 15, 19, 23)]
    assert len(tune.batches) == 18 and not set(map(tuple, tune.names)) & set(map(tuple, held.names))
    assert hold_back(_images(19), 0.25) is None  # a handful: cross-validated instead
    assert hold_back(_images(24), 0.0) is None


class _Judge:
    """A stand-in for the held-out Tuner over four images: a table's score is what `scores` says (by id), offset
    by `noise` for a table nobody named (the jittered copies of the start); its per-image scores are the score
    plus `spread` * (-1.5, -0.5, 0.5, 1.5) for the candidates (the start's are flat)."""

    def __init__(self, scores: dict[int, float], noise: float, spread: dict[int, float] | None = None):
        self.metric = METRICS.get("square")
        self.scores, self.noise, self.spread = scores, noise, spread or {}

    def difference(self, table: CalibrationTable) -> float:
        return self.scores.get(id(table), self.scores[0] + self.noise)

    def image_differences(self, table: CalibrationTable) -> list[tuple[str, float]]:
        s, w = self.difference(table), self.spread.get(id(table), 0.0)
        return [(f"img{i}", s + w * d) for i, d in enumerate((-1.5, -0.5, 0.5, 1.5))]


def _table(t: float) -> CalibrationTable:
    table = CalibrationTable(model="m", spec=QuantSpec())
    table.blobs["x"] = BlobEntry("x", "x", t)
    return table


@pytest.mark.parametrize("tuned_score, noise, delivered", [
    (0.8, 0.05, "tuned"),  # better: the tuned table
    (0.98, 0.05, "tuned"),  # level within the noise: what tuning did stands
    (1.3, 0.0, "start"),  # worse on every held-out image, beyond the noise: the start
])
def test_the_tuned_table_is_replaced_only_on_evidence(tuned_score, noise, delivered):
    start, tuned, other = _table(1.0), _table(2.0), _table(3.0)
    judge = _Judge({id(start): 1.0, 0: 1.0, id(tuned): tuned_score, id(other): 1.1}, noise)
    sel = select(judge, _images(2), HeldOutSource.HELD_BACK, [("start", start), ("tuned", tuned),
                                                               ("calibrator kl", other)], ["x"])
    assert sel.delivered == delivered and sel.noise == pytest.approx(noise)
    assert sel.scores == {"start": 1.0, "tuned": tuned_score, "calibrator kl": 1.1}


def test_a_gain_carried_by_one_image_is_not_taken():
    """Another table (a calibrator's) with the same mean gain over the tuned one, once spread evenly over the
    images and once carried by one image: only the consistent one replaces the tuned table."""
    start, tuned, other = _table(1.0), _table(2.0), _table(3.0)
    even = _Judge({id(start): 1.0, 0: 1.0, id(tuned): 1.0, id(other): 0.8}, 0.01, {id(other): 0.01})
    cands = [("start", start), ("tuned", tuned), ("calibrator kl", other)]
    assert select(even, _images(4), HeldOutSource.HELD_BACK, cands, ["x"]).delivered == "calibrator kl"
    lopsided = _Judge({id(start): 1.0, 0: 1.0, id(tuned): 1.0, id(other): 0.8}, 0.01, {id(other): 0.5})
    sel = select(lopsided, _images(4), HeldOutSource.HELD_BACK, cands, ["x"])
    assert sel.delivered == "tuned" and sel.gains["calibrator kl"].mean == pytest.approx(0.2)


def test_cross_validation_delivers_the_tuned_table_only_when_both_folds_show_its_gain():
    """The start stands unless both folds show a gain beyond the noise, consistently over the images; with top-1
    agreement 1 everywhere (it cannot tell), the square distance is asked the same question."""
    from int8tune.pipeline.selection import Fold, cross_validated

    top1 = METRICS.get("top1_agreement")
    better = Fold(None, None, 0.010, 0.008, 1e-5, [0.010, 0.011, 0.009], [0.008, 0.0085, 0.0072])
    worse = Fold(None, None, 0.008, 0.010, 1e-5, [0.008, 0.0085, 0.0072], [0.010, 0.011, 0.009])
    flat_dense_better = [Fold(None, None, 1.0, 1.0, 0.0, [1, 1, 1], [1, 1, 1], better) for _ in range(2)]
    sel = cross_validated(top1, _images(6), flat_dense_better, {})
    assert sel.delivered == "tuned" and sel.decided_by == "square" and sel.default == "start"
    flat_dense_worse = [Fold(None, None, 1.0, 1.0, 0.0, [1, 1, 1], [1, 1, 1], worse) for _ in range(2)]
    sel = cross_validated(top1, _images(6), flat_dense_worse, {})
    assert sel.delivered == "start" and sel.decided_by == "top1_agreement"
    gained = [Fold(None, None, 0.5, 1.0, 0.0, [1, 0, 0, 1], [1, 1, 1, 1]) for _ in range(2)]
    assert cross_validated(top1, _images(8), gained, {}).delivered == "tuned"
    one_image = [Fold(None, None, 0.75, 1.0, 0.0, [1, 0, 1, 1], [1, 1, 1, 1]) for _ in range(2)]
    assert cross_validated(top1, _images(8), one_image, {}).delivered == "start"  # two images of eight: no evidence
    one_fold = [Fold(None, None, 0.5, 1.0, 0.0, [1, 0, 0, 1], [1, 1, 1, 1]),
                Fold(None, None, 1.0, 1.0, 0.0, [1, 1, 1, 1], [1, 1, 1, 1])]
    assert cross_validated(top1, _images(8), one_fold, {}).delivered == "start"  # level in the other fold


def test_the_report_says_why_the_start_was_delivered_and_where_the_tuned_table_is():
    """With a handful of images the start is delivered unless both folds show the gain: the first line says so,
    with what each fold showed (not "both folds" when one was level), and where the tuned table is kept."""
    from types import SimpleNamespace

    from int8tune.pipeline.selection import Fold, cross_validated
    from int8tune.report.tuning import _delivered

    square = METRICS.get("square")
    run = SimpleNamespace(tuning=SimpleNamespace(picked=2, restarts=[0, 1, 2, 3], complete=[0, 1, 2, 3]),
                          held_out=None)
    lost_once = [Fold(None, None, 0.00034, 0.00058, 8e-5, [0.0003, 0.0004], [0.0005, 0.0007]),
                 Fold(None, None, 0.00084, 0.00089, 1.1e-4, [0.0008, 0.0009], [0.0009, 0.0009])]
    run.selection = cross_validated(square, _images(8), lost_once, {})
    assert run.selection.delivered == "start"
    [notice] = _delivered(run, square)
    assert notice.text.startswith("delivered (tuned/): the start table; tuning did not show a gain")
    assert "fold 1: worse by 0.00024, beyond its noise floor 8e-05" in notice.text
    assert "fold 2: level within its noise floor 0.00011" in notice.text
    assert "restarts/restart_3/" in notice.text
    run.tuning = SimpleNamespace(picked=0, restarts=[0], complete=[0])
    [notice] = _delivered(run, square)
    assert "not kept (with --restarts 2 or more" in notice.text
    run.tuning = SimpleNamespace(picked=None, restarts=[], complete=[])  # main.sh: the folds declined, not run
    [notice] = _delivered(run, square)
    assert "the tuning on every image was not run (--holdout 0 runs it" in notice.text
    gained = [Fold(None, None, 0.00058, 0.00034, 8e-5, [0.0005, 0.0007], [0.0003, 0.0004]) for _ in range(2)]
    run.selection = cross_validated(square, _images(8), gained, {})
    [notice] = _delivered(run, square)
    assert notice.level.name == "GOOD" and "beat the start on the other half beyond the noise" in notice.text
    assert "fold 1: better by 0.00024" in notice.text
