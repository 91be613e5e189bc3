"""Which table a run delivers, decided on images it did not tune on.

Tuning lowers its objective on its own images by construction; only other images show whether the int8 model
really got closer to fp32. So main.sh holds images back (the user's --validation_list, or a share of the data
list, --holdout), scores every table it could deliver on them (the start, the tuned pick, each complete restart,
each calibrator's plain table) and delivers the best, but moves away from the start only when the gain is larger
than the noise floor: the largest change of the held-out score that moving every threshold of the start by a
relative 1e-6 causes (another rounding realisation of the same table, which no tuning decision should be
credited for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..quant.table import CalibrationTable
from ..tune.restarts import restart_start
from ..tune.tuner import Tuner
from .images import Images

NOISE_DRAWS = 2  # jittered copies of the start measured for the noise floor


class HeldOutSource(str, Enum):
    VALIDATION_LIST = "validation_list"  # the user's --validation_list (or the API's validation_dataloader)
    HELD_BACK = "held_back"  # a share of the data list, kept out of tuning (--holdout)
    CROSS_VALIDATION = "cross_validation"  # too few to hold back: two folds, each tuned and scored on the other


def hold_back(images: Images, fraction: float, least: int = 2) -> tuple[Images, Images] | None:
    """(tuning images, held-back images): every k-th batch held back (k = round(1 / fraction)), spread over the
    list rather than its tail. None when too few batches remain to hold `least` back and tune on twice as many."""
    n = len(images.batches)
    if fraction <= 0 or n < 3 * least:
        return None
    k = max(2, round(1 / fraction))
    held = [i for i in range(n) if i % k == k - 1]
    if len(held) < least:
        held = list(range(n))[-least:]
    kept = [i for i in range(n) if i not in held]
    return images.take(kept, "tuning"), images.take(held, "held back from tuning")


@dataclass
class Selection:
    """The held-out scores of every deliverable table and which one was delivered."""

    images: Images
    source: HeldOutSource
    metric_name: str
    scores: dict[str, float]  # label -> the metric on the held-out images
    noise: float  # the noise floor (see the module docstring), in the metric's units
    delivered: str  # the label of the delivered table
    start: str = "start"
    best: str = ""  # the label with the best held-out score (may differ from delivered: within the noise)
    tables: dict[str, CalibrationTable] = field(default_factory=dict, repr=False)
    folds: list = field(default_factory=list)  # cross-validation: each Fold (scores are then the folds' means)

    @property
    def gain(self) -> float:
        """How much better the delivered table is than the start on the held-out images (metric units, >= 0)."""
        return abs(self.scores[self.delivered] - self.scores[self.start])


def select(val: Tuner, images: Images, source: HeldOutSource, candidates: list[tuple[str, CalibrationTable]],
           blobs: list[str]) -> Selection:
    """Score `candidates` (label, table; the first is the start) on `val`'s images and pick the delivered one."""
    metric = val.metric
    scores: dict[str, float] = {}
    tables: dict[str, CalibrationTable] = {}
    for label, table in candidates:
        if label not in scores:
            scores[label], tables[label] = val.difference(table), table
    start_label, start = candidates[0]
    base = scores[start_label]
    noise = max((abs(val.difference(restart_start(start, blobs, 1000 + k)) - base) for k in range(NOISE_DRAWS)),
                default=0.0)
    best = start_label
    for label, score in scores.items():
        if metric.better(score, scores[best]):
            best = label
    delivered = best if metric.gain(base, scores[best]) > noise else start_label
    return Selection(images, source, metric.name, scores, noise, delivered, start_label, best, tables)


def folds(images: Images) -> tuple[Images, Images] | None:
    """Two halves of the batches (alternating), for cross-validating with a handful of images; None below 2."""
    n = len(images.batches)
    if n < 2:
        return None
    return (images.take(list(range(0, n, 2)), "of fold 1"), images.take(list(range(1, n, 2)), "of fold 2"))


@dataclass
class Fold:
    """One fold of the cross-validation: tuned on `tuned_on`, start and tuned tables scored on the other half."""

    tuned_on: Images
    scored_on: Images
    start: float
    tuned: float
    noise: float


def cross_validated(metric, all_images: Images, results: list[Fold], tables: dict[str, CalibrationTable]
                    ) -> Selection:
    """The delivered table when every image was tuned on: the tuned one only if tuning beat the start, beyond the
    noise, on the held-out half of every fold (the same tuning, from the same start, on each half's images)."""
    gains = [metric.gain(f.start, f.tuned) for f in results]
    holds = all(g > f.noise for g, f in zip(gains, results))
    scores = {"start": sum(f.start for f in results) / len(results),
              "tuned": sum(f.tuned for f in results) / len(results)}
    noise = max(f.noise for f in results)
    sel = Selection(all_images, HeldOutSource.CROSS_VALIDATION, metric.name, scores, noise,
                    "tuned" if holds else "start", "start", "tuned" if metric.better(scores["tuned"], scores["start"])
                    else "start", tables)
    sel.folds = results
    return sel
