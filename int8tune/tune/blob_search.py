"""One blob's threshold search: candidates proposed by a search of tune/search.py, each scored under the objective
by one run of the blob's suffix (a PartialEvaluator: upstream computed once per blob), and the move kept only when
it survives the checks: confirmed on every batch (or on the unseen ones) after a search on a subset, a gain above
--min_gain, no veto by the metric (objective guarded) or by one model output made much worse (--output_veto).

Each candidate is a Trial, recorded (and replayed from the trial log on a resumed run) by the TrialRecorder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ..config import Confirm, Objective
from ..log import logger
from ..metrics import Metric, normalised_square, squared_error_parts
from ..metrics.builtin import output_weights
from ..quant.table import CalibrationTable
from .measurer import MODEL_OUTPUT_OBJECTIVES, Measurer, concat_outputs, metric_outputs
from .order import readers, writers
from .partial import Carried, PartialEvaluator
from .recorder import TrialRecorder
from .search import SEARCHES
from .settings import TuneSettings
from .trials import Trial

# An output whose distance grows by less than this share of the summed baseline distance is never vetoed: a tiny
# distance doubling is noise, not a loss.
OUTPUT_VETO_FLOOR = 0.01




@dataclass
class BlobResult:
    blob: str  # value name
    layers: list[str]  # int8 layers reading it
    threshold_before: float
    threshold_after: float
    difference_before: float
    difference_after: float
    candidates: int
    seconds: float
    # outputs that vetoed a move here (--output_veto): the move improved the sum but made this output worse
    vetoed_by: tuple[str, ...] = ()

    @property
    def multiplier(self) -> float:
        return self.threshold_after / self.threshold_before


class BlobSearcher:
    """Tunes one blob's threshold at a time (tune_blob), measuring with `measurer` and recording each trial with
    `recorder`."""

    def __init__(self, measurer: Measurer, settings: TuneSettings, recorder: TrialRecorder) -> None:
        self.measurer = measurer
        self.settings = settings
        self.recorder = recorder
        self._ranked: list[int] | None = None  # the batches searched on (search_batches), ranked once per run

    def search_batches(self, table: CalibrationTable) -> list[int]:
        """Indices of the batches the search runs on: all, or the `subset` with the largest difference under
        `table` (ranked once per run, on the first call)."""
        measurer = self.measurer
        n = len(measurer.batches)
        k = self.settings.subset
        if not k or k >= n:
            return list(range(n))
        if self._ranked is None:
            names = metric_outputs(measurer.converted)
            engine = measurer.frozen_engine(table)
            # ranked by what the search minimises when that is a metric of the model's outputs
            metric = (measurer.objective_metric()[0] if self.settings.objective in MODEL_OUTPUT_OBJECTIVES
                      else measurer.metric)
            scores = []
            for i, int8 in enumerate(measurer.run_engine(engine, names)):
                ref = {o: measurer.reference_batch(o, i) for o in names}
                scores.append(metric(ref, int8, measurer.model_params([i]) if metric is measurer.metric else {}))
            order = sorted(range(n), key=lambda i: scores[i], reverse=not metric.higher_is_better)
            self._ranked = sorted(order[:k])
            logger.info("searching on %d of %d batches (largest %s difference first: %s), confirming on all",
                        k, n, metric.name, self._ranked)
        return self._ranked

    def tune_blob(self, table: CalibrationTable, value: str,
                  on_trial: Callable[[Trial], None] | None = None) -> tuple[CalibrationTable, BlobResult]:
        """The table with `value`'s threshold at the best candidate that passed every check (or unchanged), and
        what was done. `on_trial(trial)`: each candidate scored (or replayed), in order."""
        t0 = time.perf_counter()
        measurer = self.measurer
        layers = readers(table, value) or writers(table, measurer.int8(table)[0].placement, value)
        first = layers[0]
        names = measurer.objective_names(table, value)
        metric, params = measurer.objective_metric()
        measurer.references(names)
        start = table.blobs[value].threshold
        n = len(measurer.batches)
        subset = self.search_batches(table)
        rest = [i for i in range(n) if i not in subset]
        evaluator: PartialEvaluator | None = None
        outputs: dict[tuple[float, int], dict[str, np.ndarray]] = {}  # (multiplier, batch) -> outputs

        def make_evaluator() -> PartialEvaluator:
            graph, engine = measurer.int8(table)
            ev = PartialEvaluator(graph, engine, measurer.handles, value, names, table, self.settings.threads,
                                  known=measurer.known_tensors(table), executor=measurer.executor)
            if ev.known_outputs is not None:  # the outputs under the current table: the baseline needs no run
                for i, known in enumerate(ev.known_outputs):
                    if len(known) == len(names):
                        outputs.setdefault((1.0, i), known)
            return ev

        if measurer.known_tensors(table) is not None:
            evaluator = make_evaluator()
        # the metric that vetoes a move (objective "guarded"; with --metric square it is the objective itself)
        guard = self.settings.objective is Objective.GUARDED and metric is not measurer.metric
        watched = self.veto_outputs(names, metric, params)
        vetoed_by: list[str] = []

        def per_output(indices: list[int], multiplier: float) -> dict[str, float]:
            refs = measurer.references_of(watched, indices)
            got = concat_outputs([outputs[(multiplier, i)] for i in indices], watched)
            return {o: normalised_square(*squared_error_parts(refs[o], got[o])) for o in watched}

        def guard_score(indices: list[int], multiplier: float) -> float:
            refs = measurer.references_of(names, indices)
            return measurer.metric(refs, concat_outputs([outputs[(multiplier, i)] for i in indices], names),
                                   measurer.model_params(indices))

        def score(indices: list[int], multiplier: float) -> float:
            refs = measurer.references_of(names, indices)
            p = measurer.model_params(indices) if metric is measurer.metric else params
            return metric(refs, concat_outputs([outputs[(multiplier, i)] for i in indices], names), p)

        def evaluate(multiplier: float, note: str, indices: list[int]) -> Trial:
            nonlocal evaluator
            replay = self.recorder.replay(first, value, multiplier, note)
            if replay is not None:
                self.recorder.record(replay, on_trial)
                return replay
            t = time.perf_counter()
            todo = [i for i in indices if (multiplier, i) not in outputs]
            if todo:
                if evaluator is None:
                    evaluator = make_evaluator()
                candidate = table.with_threshold(value, start * multiplier) if multiplier != 1.0 else table
                for i, out in zip(todo, evaluator.evaluate(candidate, todo)):
                    outputs[(multiplier, i)] = out
                measurer.evaluations += 1
            full = score(list(range(n)), multiplier) if len(indices) == n else None
            searched = score(subset, multiplier) if all((multiplier, i) in outputs for i in subset) else None
            extra = {"subset": searched} if rest else {}
            if rest and all((multiplier, i) in outputs for i in rest):  # the batches the search did not see
                extra["unseen"] = score(rest, multiplier)
            if guard:  # kept in the trial log, so that a replay takes the same decision
                if full is not None:
                    extra["metric"] = guard_score(list(range(n)), multiplier)
                if searched is not None and rest:
                    extra["metric_subset"] = guard_score(subset, multiplier)
            if watched:  # each output's own distance, for the output veto (and kept for a replay)
                if full is not None:
                    extra["outputs"] = per_output(list(range(n)), multiplier)
                if searched is not None and rest:
                    extra["outputs_subset"] = per_output(subset, multiplier)
            trial = Trial(self.recorder.count, first, value, multiplier, start * multiplier,
                          full if full is not None else searched, time.perf_counter() - t, note, extra,
                          self.recorder.restart)
            self.recorder.record(trial, on_trial)
            return trial

        base_trial = evaluate(1.0, "baseline", list(range(n)))
        baseline_full = base_trial.difference
        baseline = base_trial.extra.get("subset", baseline_full) if rest else baseline_full
        searched_key = "metric_subset" if rest else "metric"

        def vetoed(trial: Trial, key: str) -> bool:
            """The metric does not improve on the baseline's where the objective did (objective guarded), or one
            model output got much worse (--output_veto)."""
            if guard and not measurer.metric.better(trial.extra[key], base_trial.extra[key]):
                return True
            okey = "outputs_subset" if key == "metric_subset" else "outputs"
            worse = worsened_output(trial.extra.get(okey), base_trial.extra.get(okey), self.settings.output_veto)
            if worse is not None:
                if worse not in vetoed_by:
                    vetoed_by.append(worse)
                logger.info("blob %s: x%.3f improves the summed distance (%.6g) but multiplies output %s's by %.3g: "
                            "not taken (--output_veto %g)", table.blobs[value].blob, trial.multiplier,
                            trial.difference, worse, trial.extra[okey][worse] / max(base_trial.extra[okey][worse],
                                                                                     1e-30),
                            self.settings.output_veto)
                return True
            return False

        best_m, best = 1.0, baseline
        search = SEARCHES.get(self.settings.search)(self.settings.search_settings, metric.better, baseline)
        count = 0
        try:
            m = next(search)
            while True:
                count += 1
                trial = evaluate(m, "", subset)
                d = trial.difference
                if metric.better(d, best) and not vetoed(trial, searched_key):
                    best_m, best = m, d
                m = search.send(d)
        except StopIteration:
            pass
        final = best
        unseen = rest and self.settings.confirm is Confirm.UNSEEN
        if rest and best_m != 1.0:  # confirm; keep the old threshold unless it really helps
            confirm = evaluate(best_m, "confirm", list(range(n)))
            confirmed = confirm.difference
            # on the unseen batches alone, by more than --min_gain there; or on every batch
            before_c, after_c = ((base_trial.extra["unseen"], confirm.extra["unseen"]) if unseen
                                 else (baseline_full, confirmed))
            helped = metric.better(after_c, before_c) and (
                not unseen or metric.gain(before_c, after_c) > self.settings.min_gain * abs(before_c))
            if helped and not vetoed(confirm, "metric"):
                final = confirmed
            else:
                logger.info("blob %s: x%.3f helped on the searched batches but not on %s; the threshold stays "
                            "where it was", table.blobs[value].blob, best_m,
                            "the others" if unseen else "all of them")
                best_m, final = 1.0, baseline_full
        elif rest:
            final = baseline_full
        if best_m != 1.0 and self.settings.min_gain > 0 and not unseen:
            gain = metric.gain(baseline_full, final)
            if gain <= self.settings.min_gain * abs(baseline_full):
                best_m, final = 1.0, baseline_full
        tuned = table.with_threshold(value, start * best_m) if best_m != 1.0 else table
        measurer.remember(tuned, None if evaluator is None or any((best_m, i) not in outputs for i in range(n))
                          else Carried([outputs[(best_m, i)] for i in range(n)], evaluator.base, evaluator.base_names))
        before = baseline_full
        result = BlobResult(value, layers, start, start * best_m, before, final, count + 1,
                            time.perf_counter() - t0, tuple(vetoed_by))
        logger.info("blob %s (%s): threshold %.5g -> %.5g (x%.3f), difference %.6g -> %.6g, %d candidates",
                    table.blobs[value].blob, ", ".join(layers), start, start * best_m, best_m, before, final,
                    count + 1)
        return tuned, result

    def veto_outputs(self, names: Sequence[str], metric: Metric, params: Mapping) -> list[str]:
        """The model outputs whose own distance may veto a move: with --output_veto, when the objective is the
        square distance summed over two or more model outputs (a metric of its own, such as yolo or top-1, is
        the judge of its outputs), those that count (weight > 0 in --metric_params "outputs")."""
        if self.settings.output_veto <= 0 or metric.name != "square":
            return []
        model_outputs = metric_outputs(self.measurer.converted)
        if not set(names) <= set(model_outputs):
            return []  # a layer's own output (objective layer)
        weights = output_weights(params, model_outputs)
        counted = [o for o in names if weights.get(o, 0.0) > 0]
        return counted if len(counted) >= 2 else []


def worsened_output(candidate: Mapping[str, float] | None, baseline: Mapping[str, float] | None,
                    factor: float) -> str | None:
    """The output a candidate makes much worse than the baseline (its distance times more than `factor`, by more
    than OUTPUT_VETO_FLOOR of the summed baseline), worst first; None when there is none or nothing to compare."""
    if factor <= 0 or not candidate or not baseline:
        return None
    floor = OUTPUT_VETO_FLOOR * sum(baseline.values())
    worst, ratio = None, factor
    for name, before in baseline.items():
        after = candidate.get(name)
        if after is None or after - before <= floor:
            continue
        r = after / before if before > 0 else float("inf")
        if r > ratio:
            worst, ratio = name, r
    return worst

