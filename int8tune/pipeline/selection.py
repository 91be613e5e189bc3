"""Which table a run delivers, decided on images it did not tune on.

Tuning lowers its objective on its own images by construction; only other images show whether the int8 model
really got closer to fp32. So main.sh scores the tables it could deliver on images it did not tune on, and
leaves the start table only for a gain that is real:

- the user's --validation_list (or the API's validation_dataloader), or, with at least MIN_HOLD_BACK_BATCHES
  batches, a share of the data list held back from calibration and tuning (--holdout);
- with fewer, cross-validation: two folds, each tuned on one half and scored on the other; the table tuned on
  every image is delivered only when the folds show that tuning helped (holding back a quarter of a handful of
  images costs the tuning more than it tells: measured in docs/tuning.md, "Held-back delivery"). With the bias
  correction on by default, tuning on 5-16 images made the table worse than its start on images it never saw in 5
  of 10 runs (up to 1.35x), better in 3 (docs/tuning.md, "The folds with bias correction on by default"): so the
  start, itself chosen on the images (calibrator per blob, --equalize, bias correction), is what a handful of
  images delivers unless they show the tuning's gain.

The tuned table is delivered unless the held-out images show, for real, that another is better (the start, a
restart, a calibrator's table): (1) a gain over the tuned table larger than the noise floor (the change that
moving every threshold of the start by a relative 1e-6, another rounding realisation of the same table, causes),
and (2) consistent over the images: the mean of the per-image gains more than CONSISTENCY standard errors above
zero. Picking the best of several candidates on a few images otherwise delivers the luckiest one; and a bench
(docs/tuning.md, "Held-back delivery") found tuning's table better on unseen images than the start on all three
shared models while a few held-back images could not show it. When --metric is coarse on few images (top-1
agreement is 0 or 1 per image) and decides nothing, the dense square distance of the outputs is asked the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from ..metrics import METRICS
from ..quant.table import CalibrationTable
from ..tune.restarts import restart_start
from ..tune.tuner import Tuner
from .images import Images

NOISE_DRAWS = 2  # jittered copies of the start measured for the noise floor
MIN_HOLD_BACK_BATCHES = 20  # below this, cross-validate instead of holding images back
CONSISTENCY = 2.0  # standard errors of the per-image gains the mean gain must clear


class HeldOutSource(str, Enum):
    VALIDATION_LIST = "validation_list"  # the user's --validation_list (or the API's validation_dataloader)
    HELD_BACK = "held_back"  # a share of the data list, kept out of tuning (--holdout)
    CROSS_VALIDATION = "cross_validation"  # too few to hold back: two folds, each tuned and scored on the other


def hold_back(images: Images, fraction: float, least: int = MIN_HOLD_BACK_BATCHES) -> tuple[Images, Images] | None:
    """(tuning images, held-back images): every k-th batch held back (k = round(1 / fraction)), spread over the
    list rather than its tail. None below `least` batches (or fraction 0): cross-validate instead."""
    n = len(images.batches)
    if fraction <= 0 or n < least:
        return None
    k = max(2, round(1 / fraction))
    held = [i for i in range(n) if i % k == k - 1]
    kept = [i for i in range(n) if i not in held]
    return images.take(kept, "tuning"), images.take(held, "held back from tuning")


@dataclass(frozen=True)
class Gain:
    """A candidate against the start on held-out images: the gain of the aggregate metric, and the mean and
    standard error of the per-image gains (positive: better than the start)."""

    total: float
    mean: float
    stderr: float

    def beats(self, noise: float) -> bool:
        return self.total > noise and self.mean > CONSISTENCY * self.stderr


def paired_gain(metric, start: float, candidate: float, start_images: list[float],
                candidate_images: list[float]) -> Gain:
    gains = [metric.gain(a, b) for a, b in zip(start_images, candidate_images)]
    n = len(gains)
    mean = sum(gains) / n if n else 0.0
    stderr = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1) / n) if n > 1 else math.inf
    return Gain(metric.gain(start, candidate), mean, stderr)


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
    best: str = ""  # the label with the best held-out score (may differ from delivered: not a real gain)
    tables: dict[str, CalibrationTable] = field(default_factory=dict, repr=False)
    folds: list = field(default_factory=list)  # cross-validation: each Fold (scores are then the folds' means)
    gains: dict[str, Gain] = field(default_factory=dict)  # label -> its gain over the start on --metric
    decided_by: str = ""  # the metric that decided ("square" when --metric could not tell)
    default: str = "tuned"  # what is delivered unless the held-out images show a better table for real

    @property
    def gain(self) -> float:
        """How much better the delivered table is than the start on the held-out images (metric units, >= 0)."""
        return abs(self.scores[self.delivered] - self.scores[self.start])


def _noise(val: Tuner, start: CalibrationTable, blobs: list[str]) -> float:
    base = val.difference(start)
    return max((abs(val.difference(restart_start(start, blobs, 1000 + k)) - base) for k in range(NOISE_DRAWS)),
               default=0.0)


def dense_tuner(val: Tuner) -> Tuner:
    """The same held-out images under the square distance of the outputs."""
    return Tuner(val.converted, val.batches, METRICS.get("square"), val.settings, labels=val.labels,
                 names=val.names, reference=val.reference, executor=val.executor)


def select(val: Tuner, images: Images, source: HeldOutSource, candidates: list[tuple[str, CalibrationTable]],
           blobs: list[str]) -> Selection:
    """Score `candidates` (label, table; the first is the start) on `val`'s images and pick the delivered one: the
    tuned table (or the start when nothing was tuned) unless another candidate beats it for real (see the module
    docstring): evidence against what tuning did, not a lucky score, is what replaces it."""
    metric = val.metric
    tables = dict(candidates)
    start_label = candidates[0][0]
    base = "tuned" if "tuned" in tables else start_label
    scores = {label: val.difference(t) for label, t in tables.items()}
    per_image = {label: [d for _, d in val.image_differences(t)] for label, t in tables.items()}
    noise = _noise(val, tables[start_label], blobs)
    gains = {label: paired_gain(metric, scores[start_label], scores[label], per_image[start_label], per_image[label])
             for label in tables if label != start_label}
    best = start_label
    for label, score in scores.items():
        if metric.better(score, scores[best]):
            best = label
    over_base = {label: paired_gain(metric, scores[base], scores[label], per_image[base], per_image[label])
                 for label in tables if label != base}
    passing = [label for label, g in over_base.items() if g.beats(noise)]
    decided_by = metric.name
    if passing:
        delivered = max(passing, key=lambda label: over_base[label].total)
    else:
        delivered = base
        if metric.name != "square":  # --metric could not tell: the dense distance, among those it finds level
            dense = dense_tuner(val)
            d_scores = {label: dense.difference(t) for label, t in tables.items()}
            d_images = {label: [d for _, d in dense.image_differences(t)] for label, t in tables.items()}
            d_noise = _noise(dense, tables[start_label], blobs)
            level = [label for label, g in over_base.items() if g.total >= -noise]
            d_gains = {label: paired_gain(dense.metric, d_scores[base], d_scores[label], d_images[base],
                                          d_images[label]) for label in level}
            d_passing = [label for label, g in d_gains.items() if g.beats(d_noise)]
            if d_passing:
                delivered, decided_by = max(d_passing, key=lambda label: d_gains[label].total), "square"
    return Selection(images, source, metric.name, scores, noise, delivered, start_label, best, tables, gains=gains,
                     decided_by=decided_by, default=base)


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
    start_images: list[float] = field(default_factory=list)  # per image of `scored_on`
    tuned_images: list[float] = field(default_factory=list)
    dense: "Fold | None" = None  # the same fold under the square distance (when --metric is another)


def fold_scores(val: Tuner, start: CalibrationTable, tuned: CalibrationTable, blobs: list[str]) -> "Fold":
    """A fold's scores under `val`'s metric (the tuned_on/scored_on images are the caller's)."""
    return Fold(None, None, val.difference(start), val.difference(tuned), _noise(val, start, blobs),  # type: ignore[arg-type]
                [d for _, d in val.image_differences(start)], [d for _, d in val.image_differences(tuned)])


def cross_validated(metric, all_images: Images, results: list[Fold], tables: dict[str, CalibrationTable]
                    ) -> Selection:
    """The delivered table when every image was tuned on: the start, unless the folds show that tuning helped: the
    tuned table better than the start on the held-out half of every fold beyond the noise, and consistently over
    the images of both halves. When --metric sees no change in either fold (top-1 agreement on a few images), the
    dense square distance of the outputs is asked the same question."""
    gained, pooled = _fold_gain(metric, results)
    decided_by = metric.name
    flat = all(abs(metric.gain(f.start, f.tuned)) <= f.noise for f in results)
    if not gained and flat and all(getattr(f, "dense", None) is not None for f in results):
        gained, _ = _fold_gain(METRICS.get("square"), [f.dense for f in results])
        decided_by = "square" if gained else decided_by
    scores = {"start": sum(f.start for f in results) / len(results),
              "tuned": sum(f.tuned for f in results) / len(results)}
    gain = Gain(metric.gain(scores["start"], scores["tuned"]), pooled.mean, pooled.stderr)
    sel = Selection(all_images, HeldOutSource.CROSS_VALIDATION, metric.name, scores, max(f.noise for f in results),
                    "tuned" if gained else "start", "start",
                    "tuned" if metric.better(scores["tuned"], scores["start"]) else "start", tables,
                    gains={"tuned": gain}, decided_by=decided_by, default="start")
    sel.folds = results
    return sel


def _fold_gain(metric, results: list[Fold]) -> tuple[bool, Gain]:
    """Whether tuning beat the start in every fold beyond its noise and consistently over the pooled images."""
    pooled = paired_gain(metric, 0.0, 0.0, [x for f in results for x in f.start_images],
                         [x for f in results for x in f.tuned_images])
    gained = all(metric.gain(f.start, f.tuned) > f.noise for f in results) and pooled.mean > CONSISTENCY * pooled.stderr
    return gained, pooled
