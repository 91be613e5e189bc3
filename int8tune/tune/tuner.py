"""Layer-wise threshold tuning: measure the int8/fp32 difference, move each blob's threshold, keep what helps.

The unit of tuning is a blob (several int8 layers may read one blob and share its threshold); blobs are tuned in
the order their first int8 reader appears (topological). Each blob starts from the best table so far. The
objective is the metric on the model's outputs (`model`), the square distance of the model's outputs whatever the
metric (`outputs`), the square distance of the output of the layers reading the blob (`layer`, the original
tool's tune_diff), or `outputs` with the metric as a veto on every move (`guarded`). fp32 references are computed
once per run; each blob gets one partial evaluator (upstream computed once, a suffix session per blob); each
candidate is one suffix run.

Between blobs the tuner carries the tensors of the kept table (the last blob's frontier, and the model outputs
of the kept candidate on every batch): the next blob's baseline is then known without a run, and its frontier is
bridged from the carried tensors (the one or two layers between consecutive blobs) instead of recomputed from
the input. Every session of a table computes the same numbers (see runtime.session_options), so this changes no
decision (tests/test_tuner.py); on yolov3_nano_voc it halved the tuning time.

Every pass over the batches runs on the tuner's executor (executors/: this process, or a Ray cluster) as one task
per batch (tasks.py); the parts come back in batch order and are merged here as a single process merges them, so
the trials, the table and every metric are the same bits wherever the batches ran. The trial log stays here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..config import Confirm, Objective, enum_option
from ..convert.converter import ConvertedModel
from ..errors import ConfigError
from ..executors import Executor, LocalExecutor, Shared
from ..log import logger
from ..metrics import Metric, normalised_square, squared_error_parts
from ..metrics.builtin import output_weights
from ..progress import Progress
from ..quant.simulate import Int8Graph, build_int8_graph
from ..quant.table import CalibrationTable
from ..runtime import Engine
from .partial import Carried, PartialEvaluator
from .search import SEARCHES, SearchSettings
from .tasks import IsolatedJob, IsolatedPlan, SquareJob, TensorsJob, isolated_parts, square_parts, tensors
from .trials import Trial, TrialLog

OBJECTIVES = tuple(o.value for o in Objective)
MODEL_OUTPUT_OBJECTIVES = tuple(o for o in Objective if o.on_model_outputs)


# An output whose distance grows by less than this share of the summed baseline distance is never vetoed: a tiny
# distance doubling is noise, not a loss.
OUTPUT_VETO_FLOOR = 0.01


@dataclass(frozen=True)
class TuneSettings:
    objective: Objective = Objective.OUTPUTS
    search: str = "both_directions"
    search_settings: SearchSettings = SearchSettings()
    threads: int = 2
    metric_params: Mapping = field(default_factory=dict)
    # Search on this many batches, those with the largest fp32-vs-int8 difference under the starting table,
    # then confirm the chosen threshold on all of them (0: search on all batches).
    subset: int = 0
    # Keep a new threshold only when it improves the objective on all batches by more than this fraction: a
    # smaller gain on a handful of images is as likely noise as signal (it did not carry over to held-out images).
    min_gain: float = 0.0
    # A move that lowers the summed square distance of several model outputs is refused when it multiplies one
    # output's own distance by more than this (and that output's increase is at least OUTPUT_VETO_FLOOR of the
    # sum): a sum can fall while the one output that matters (MTCNN's face score) gets much worse. 0: off.
    output_veto: float = 0.0
    confirm: Confirm = Confirm.ALL

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective", enum_option(Objective, "objective", self.objective))
        object.__setattr__(self, "confirm", enum_option(Confirm, "confirm", self.confirm))
        SEARCHES.get(self.search)


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


def concat_outputs(results: Sequence[Mapping[str, np.ndarray]], names: Iterable[str]) -> dict[str, np.ndarray]:
    return {n: np.concatenate([r[n] for r in results], axis=0) for n in names}


def metric_outputs(converted: ConvertedModel) -> list[str]:
    """The model outputs a metric compares: the ONNX graph's outputs (for nets ending in a numpy step such as
    DetectionOutput, the tensors that step reads)."""
    return [o.name for o in converted.model.graph.output]


class Tuner:
    def __init__(self, converted: ConvertedModel, batches: list[np.ndarray], metric: Metric,
                 settings: TuneSettings, log: TrialLog | None = None, layer_metric: Metric | None = None,
                 labels: list[np.ndarray] | None = None, names: list[list[str]] | None = None,
                 reference: ConvertedModel | None = None, executor: Executor | None = None) -> None:
        self.converted = converted
        # The fp32 model the int8 one is measured against: `converted` itself, unless the int8 weights were
        # corrected (--adaround, --bias_correction: pipeline/levers.py) and the fp32 model is the one given.
        self.reference = reference
        self.batches = batches
        self.executor = executor or LocalExecutor()  # where the batches run
        self._handles: list | None = None
        self.labels = labels  # per batch, for task metrics (top1, f1, ...) on a labelled data list
        self.names = names  # per batch, the image files (COCO metrics match them to an annotation file)
        self.metric = metric  # on the model's outputs
        # on one layer's output: a model metric such as yolo does not apply there, so layers use square
        self.layer_metric = layer_metric or (metric if metric.name == "square" else _square())
        self.settings = settings
        self.log = log
        self.fp32 = Engine(reference if reference is not None else converted, threads=settings.threads)
        self._fp32: Shared | None = None
        self._refs: dict[str, list[np.ndarray]] = {}
        self._refs_concat: dict[tuple, dict[str, np.ndarray]] = {}
        self._graph: Int8Graph | None = None
        self._graph_key = None
        self._engine: Engine | None = None
        self._ranked: list[int] | None = None
        # Tensors of the int8 model under one table, per batch: what the last tuned blob (or whole-model run)
        # left behind. The next blob's baseline and frontier start from it instead of a new upstream run.
        self._state: tuple[tuple, Carried] | None = None
        self.carry_state = True  # tests turn it off to show that it changes no decision
        self.restart = 0  # the tuning restart under way (tune/restarts.py): part of each trial's key in the log
        self.trial_count = 0
        self.evaluations = 0

    # -- references and full runs -----------------------------------------------------------------------
    @property
    def handles(self) -> list:
        """The batches as the executor holds them (stored once for every pass of the run)."""
        if self._handles is None:
            self._handles = self.executor.batches(self.batches)
        return self._handles

    def shared_fp32(self) -> Shared:
        if self._fp32 is None:
            self._fp32 = self.executor.share(self.fp32)
        return self._fp32

    def run_engine(self, engine: Engine, names: Sequence[str], indices: Sequence[int] | None = None
                   ) -> list[dict[str, np.ndarray]]:
        """The named tensors of `engine` per batch (all, or those at `indices`), in batch order."""
        shared = self.shared_fp32() if engine is self.fp32 else self.executor.share(engine)
        items = self.handles if indices is None else [self.handles[i] for i in indices]
        return self.executor.map(tensors, [(h,) for h in items], shared=TensorsJob(shared, tuple(names)))

    def references(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [n for n in names if n not in self._refs]
        if missing:
            per_batch = self.run_engine(self.fp32, missing)
            for n in missing:
                self._refs[n] = [r[n] for r in per_batch]
        return {n: np.concatenate(self._refs[n], axis=0) for n in names}

    def int8(self, table: CalibrationTable) -> tuple[Int8Graph, Engine]:
        """The int8 graph and engine for this table's structure (rebuilt only when the structure changes:
        which layers are int8, weight thresholds, unsigned/per-channel blobs; thresholds are feeds)."""
        key = table.structure_key()
        if key != self._graph_key or self._graph is None or self._engine is None:
            self._graph = build_int8_graph(self.converted, table)
            self._graph_key = key
            self._engine = Engine(self._graph.converted, threads=self.settings.threads, simulation=True)
        return self._graph, self._engine

    def frozen_engine(self, table: CalibrationTable) -> Engine:
        """An engine for the int8 model of exactly this table, thresholds frozen in as constants (so onnxruntime
        optimises it like fp32); for whole-model runs, which happen a few times per run."""
        graph, _ = self.int8(table)
        return Engine(graph.frozen_model(table), threads=self.settings.threads, simulation=True)

    def run_int8(self, table: CalibrationTable, names: Sequence[str]) -> dict[str, np.ndarray]:
        per_batch = self.run_engine(self.frozen_engine(table), names)
        self.evaluations += 1
        self._remember(table, Carried(per_batch))
        return concat_outputs(per_batch, names)

    def _remember(self, table: CalibrationTable, carried: Carried | None) -> None:
        self._state = (table.fingerprint(), carried) if carried is not None and self.carry_state else None

    def known_tensors(self, table: CalibrationTable) -> Carried | None:
        """Per batch, the tensors known under exactly this table (None when the last state was another table)."""
        if self._state is None or self._state[0] != table.fingerprint():
            return None
        return self._state[1]

    def model_params(self, indices: Sequence[int] | None = None) -> Mapping:
        """The model metric's parameters, with the labels and file names of the batches at `indices` when known."""
        params = dict(self.settings.metric_params)
        picked = range(len(self.batches)) if indices is None else indices
        if self.labels is not None:
            params["labels"] = np.concatenate([self.labels[i] for i in picked])
        if self.names is not None:
            params["image_names"] = [n for i in picked for n in self.names[i]]
        if self.converted.post_steps:  # what follows the graph (DetectionOutput): detection metrics run it
            params["post_steps"] = self.converted.post_steps
        return params

    def difference(self, table: CalibrationTable, names: Sequence[str] | None = None) -> float:
        names = list(names or metric_outputs(self.converted))
        return self.metric(self.references(names), self.run_int8(table, names), self.model_params())

    def image_differences(self, table: CalibrationTable) -> list[tuple[str, float]]:
        """(image, the model metric on that image alone) for every image, in data order: where the int8 model
        departs from fp32 (a detection metric is dominated by the images holding many objects)."""
        names = metric_outputs(self.converted)
        known = self.known_tensors(table)
        if known is None or any(n not in known.names for n in names):
            self.run_int8(table, names)
            known = self.known_tensors(table)
        if known is None:  # carrying switched off: run again without remembering
            per_batch = self.run_engine(self.frozen_engine(table), names)
        else:
            per_batch = known.tensors(names, self.executor)
        self.references(names)
        out = []
        for i, got in enumerate(per_batch):
            params = self.model_params([i])
            for j in range(len(self.batches[i])):
                one = dict(params)
                if "labels" in one:
                    one["labels"] = one["labels"][j:j + 1]
                if "image_names" in one:
                    one["image_names"] = one["image_names"][j:j + 1]
                label = self.names[i][j] if self.names is not None else f"batch {i} image {j}"
                ref = {n: self._refs[n][i][j:j + 1] for n in names}
                out.append((label, self.metric(ref, {n: got[n][j:j + 1] for n in names}, one)))
        return out

    def fp32_score(self) -> float:
        """The model metric of fp32 against itself: a task metric's fp32 accuracy (0 for a difference)."""
        names = metric_outputs(self.converted)
        refs = self.references(names)
        return self.metric(refs, refs, self.model_params())

    def layer_outputs(self, table: CalibrationTable) -> dict[str, str]:
        """int8 layer -> the value it writes (its own output)."""
        out = {}
        for e in table.quantized_layers():
            record = self.converted.records[e.layer]
            out[e.layer] = record.outputs[0]
        return out

    def layer_differences(self, table: CalibrationTable) -> dict[str, float]:
        """Each int8 layer's own output difference, with every upstream layer quantized as the table says."""
        outputs = self.layer_outputs(table)
        names = list(dict.fromkeys(outputs.values()))
        if self.layer_metric.name != "square":
            fp32 = self.references(names)
            int8 = self.run_int8(table, names)
            return {layer: self.layer_metric({v: fp32[v]}, {v: int8[v]}, {}) for layer, v in outputs.items()}
        # square is additive over images: accumulate batch by batch instead of holding every layer's output for
        # every image twice (that took 1 GB on SqueezeNet with 32 images); in batch order, as one process adds.
        parts = {v: [0.0, 0.0] for v in names}
        engine = self.frozen_engine(table)
        job = SquareJob(self.shared_fp32(), self.executor.share(engine), tuple(names))
        for batch_parts in self.executor.imap(square_parts, [(h,) for h in self.handles], shared=job):
            for v in names:
                err, energy = batch_parts[v]
                parts[v][0] += err
                parts[v][1] += energy
        self.evaluations += 1
        return {layer: normalised_square(*parts[v]) for layer, v in outputs.items()}

    # -- tuning ---------------------------------------------------------------------------------------------
    def score_thresholds(self, table: CalibrationTable, value: str, thresholds: Mapping[str, float],
                         objective: str | None = None) -> dict[str, float]:
        """The objective for each named threshold of `value` (everything else as in `table`)."""
        names = self.objective_names(table, value, objective)
        metric, params = self.objective_metric(objective)
        refs = self.references(names)
        graph, engine = self.int8(table)
        evaluator = PartialEvaluator(graph, engine, self.handles, value, names, table, self.settings.threads,
                                     executor=self.executor)
        scores = {}
        for key, t in thresholds.items():
            out = concat_outputs(evaluator.evaluate(table.with_threshold(value, t, calibrator=key)), names)
            self.evaluations += 1
            scores[key] = metric(refs, out, params)
        return scores

    def score_isolated(self, table: CalibrationTable, candidates: Mapping[str, Mapping[str, float]],
                       chunk: int = 8) -> dict[str, dict[str, float]]:
        """For each blob, the layer objective of each candidate threshold with that blob alone quantized (every
        other blob fp32): the reading layers' outputs against fp32, with the square metric, accumulated over
        the batches. No int8 prefix is needed: the suffix reads the blob's fp32 value, computed for a chunk of
        blobs in one fp32 pass (memory stays bounded by `chunk`)."""
        from .partial import build_suffix

        graph = build_int8_graph(self.converted, table, integer=False)
        order = [v for v in self.blobs_in_order(table) if v in candidates]
        net_values = set(self.converted.net.blob_of)
        out: dict[str, dict[str, float]] = {}
        progress = Progress(len(order), "calibrator choice (each blob alone, every calibrator)", unit="blob")
        for start in range(0, len(order), chunk):
            group = order[start:start + chunk]
            plans = {}
            for value in group:
                names = self.objective_names(table, value, "layer")
                suffix = build_suffix(graph, value, names, self.settings.threads, table)
                if suffix is None or not {graph.net_value(f) for f in suffix.frontier} <= net_values:
                    raise ConfigError(
                        f"blob {value!r}: its reading layers need int8 values from elsewhere "
                        f"({sorted(set(graph.net_value(f) for f in (suffix.frontier if suffix else ())) - net_values)})"
                        f"; measure it with score_thresholds")
                plans[value] = (names, suffix)
            needed = sorted({graph.net_value(t) for names, sfx in plans.values() for t in (*names, *sfx.frontier)})
            sums = {(v, k): [0.0, 0.0] for v in group for k in candidates[v]}
            # a candidate's threshold feeds are the same for every batch: computed once, not per batch
            isolated = []
            for value, (names, suffix) in plans.items():
                feeds = []
                for key, t in candidates[value].items():
                    all_feeds = graph.feeds(table.with_threshold(value, t, calibrator=key))
                    feeds.append((key, {n: all_feeds[n] for n in suffix.threshold_inputs}))
                frontier = tuple((f, graph.net_value(f)) for f in suffix.frontier)
                isolated.append(IsolatedPlan(value, tuple(names), frontier, tuple(feeds)))
            sessions = tuple(suffix.session for _, suffix in plans.values())  # shipped as one: a worker keeps all
            digest = "".join(session.digest for session in sessions)
            job = IsolatedJob(self.shared_fp32(), tuple(needed), self.executor.share(sessions, digest),
                              tuple(isolated))
            for batch_sums in self.executor.imap(isolated_parts, [(h,) for h in self.handles], shared=job):
                for (value, key), per_name in batch_sums.items():  # in batch order, then name order, as before
                    for err, energy in per_name:
                        sums[(value, key)][0] += err
                        sums[(value, key)][1] += energy
                self.evaluations += 1
            for value in group:
                out[value] = {k: normalised_square(*sums[(value, k)]) for k in candidates[value]}
            progress.update(len(group))
        progress.close()
        return out

    def objective_metric(self, objective: str | None = None) -> tuple[Metric, Mapping]:
        objective = Objective(objective or self.settings.objective)
        if objective is Objective.MODEL:
            return self.metric, self.model_params()
        if objective.dense:
            if self.metric.name == "square":
                return self.metric, self.model_params()
            # the dense square distance, over the outputs --metric_params "outputs" selects or weights (if given)
            chosen = self.settings.metric_params.get("outputs")
            return _square(), ({"outputs": chosen} if chosen is not None else {})
        return self.layer_metric, {}

    def objective_names(self, table: CalibrationTable, value: str, objective: str | None = None) -> list[str]:
        if (objective or self.settings.objective) in MODEL_OUTPUT_OBJECTIVES:
            return metric_outputs(self.converted)
        outputs = self.layer_outputs(table)
        readers = _readers(table, value)
        if not readers:  # an int8 layer's own output threshold (a head, a sum): that quantized blob itself
            return [value]
        return list(dict.fromkeys(outputs[l] for l in readers))

    def search_batches(self, table: CalibrationTable) -> list[int]:
        """Indices of the batches the search runs on: all, or the `subset` with the largest difference under
        `table` (ranked once per run, on the first call)."""
        n = len(self.batches)
        k = self.settings.subset
        if not k or k >= n:
            return list(range(n))
        if self._ranked is None:
            names = metric_outputs(self.converted)
            engine = self.frozen_engine(table)
            # ranked by what the search minimises when that is a metric of the model's outputs
            metric = self.objective_metric()[0] if self.settings.objective in MODEL_OUTPUT_OBJECTIVES else self.metric
            scores = []
            for i, int8 in enumerate(self.run_engine(engine, names)):
                ref = {o: self._refs_batch(o, i) for o in names}
                scores.append(metric(ref, int8, self.model_params([i]) if metric is self.metric else {}))
            order = sorted(range(n), key=lambda i: scores[i], reverse=not metric.higher_is_better)
            self._ranked = sorted(order[:k])
            logger.info("searching on %d of %d batches (largest %s difference first: %s), confirming on all",
                        k, n, metric.name, self._ranked)
        return self._ranked

    def _references_of(self, names: Sequence[str], indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The fp32 references of the batches at `indices`, concatenated once per (names, indices): the same
        arrays for every candidate, so that a metric may cache what it derives from them (the yolo decode)."""
        key = (tuple(names), tuple(indices))
        cache = self._refs_concat
        if key not in cache:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = {o: np.concatenate([self._refs[o][i] for i in indices]) for o in names}
        return cache[key]

    def _refs_batch(self, name: str, i: int) -> np.ndarray:
        self.references([name])
        return self._refs[name][i]

    def tune_blob(self, table: CalibrationTable, value: str,
                  on_trial: Callable[[Trial], None] | None = None) -> tuple[CalibrationTable, BlobResult]:
        t0 = time.perf_counter()
        layers = _readers(table, value) or self.writers(table, value)
        first = layers[0]
        names = self.objective_names(table, value)
        metric, params = self.objective_metric()
        self.references(names)
        start = table.blobs[value].threshold
        n = len(self.batches)
        subset = self.search_batches(table)
        rest = [i for i in range(n) if i not in subset]
        evaluator: PartialEvaluator | None = None
        outputs: dict[tuple[float, int], dict[str, np.ndarray]] = {}  # (multiplier, batch) -> outputs

        def make_evaluator() -> PartialEvaluator:
            graph, engine = self.int8(table)
            ev = PartialEvaluator(graph, engine, self.handles, value, names, table, self.settings.threads,
                                  known=self.known_tensors(table), executor=self.executor)
            if ev.known_outputs is not None:  # the outputs under the current table: the baseline needs no run
                for i, known in enumerate(ev.known_outputs):
                    if len(known) == len(names):
                        outputs.setdefault((1.0, i), known)
            return ev

        if self.known_tensors(table) is not None:
            evaluator = make_evaluator()
        # the metric that vetoes a move (objective "guarded"; with --metric square it is the objective itself)
        guard = self.settings.objective is Objective.GUARDED and metric is not self.metric
        watched = self.veto_outputs(names, metric, params)
        vetoed_by: list[str] = []

        def per_output(indices: list[int], multiplier: float) -> dict[str, float]:
            refs = self._references_of(watched, indices)
            got = concat_outputs([outputs[(multiplier, i)] for i in indices], watched)
            return {o: normalised_square(*squared_error_parts(refs[o], got[o])) for o in watched}

        def guard_score(indices: list[int], multiplier: float) -> float:
            refs = self._references_of(names, indices)
            return self.metric(refs, concat_outputs([outputs[(multiplier, i)] for i in indices], names),
                               self.model_params(indices))

        def score(indices: list[int], multiplier: float) -> float:
            refs = self._references_of(names, indices)
            p = self.model_params(indices) if metric is self.metric else params
            return metric(refs, concat_outputs([outputs[(multiplier, i)] for i in indices], names), p)

        def evaluate(multiplier: float, note: str, indices: list[int]) -> Trial:
            nonlocal evaluator
            if self.log is not None:
                replay = self.log.lookup(first, value, multiplier, note, self.restart)
                if replay is not None:
                    self._record(replay, on_trial)
                    return replay
            t = time.perf_counter()
            todo = [i for i in indices if (multiplier, i) not in outputs]
            if todo:
                if evaluator is None:
                    evaluator = make_evaluator()
                candidate = table.with_threshold(value, start * multiplier) if multiplier != 1.0 else table
                for i, out in zip(todo, evaluator.evaluate(candidate, todo)):
                    outputs[(multiplier, i)] = out
                self.evaluations += 1
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
            trial = Trial(self.trial_count, first, value, multiplier, start * multiplier,
                          full if full is not None else searched, time.perf_counter() - t, note, extra,
                          self.restart)
            self._record(trial, on_trial)
            return trial

        base_trial = evaluate(1.0, "baseline", list(range(n)))
        baseline_full = base_trial.difference
        baseline = base_trial.extra.get("subset", baseline_full) if rest else baseline_full
        searched_key = "metric_subset" if rest else "metric"

        def vetoed(trial: Trial, key: str) -> bool:
            """The metric does not improve on the baseline's where the objective did (objective guarded), or one
            model output got much worse (--output_veto)."""
            if guard and not self.metric.better(trial.extra[key], base_trial.extra[key]):
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
        self._remember(tuned, None if evaluator is None or any((best_m, i) not in outputs for i in range(n)) else
                       Carried([outputs[(best_m, i)] for i in range(n)], evaluator.base, evaluator.base_names))
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
        model_outputs = metric_outputs(self.converted)
        if not set(names) <= set(model_outputs):
            return []  # a layer's own output (objective layer)
        weights = output_weights(params, model_outputs)
        counted = [o for o in names if weights.get(o, 0.0) > 0]
        return counted if len(counted) >= 2 else []

    def _record(self, trial: Trial, on_trial) -> None:
        trial.index = self.trial_count
        self.trial_count += 1
        if self.log is not None:
            self.log.append(trial)
        if on_trial is not None:
            on_trial(trial)

    def writers(self, table: CalibrationTable, value: str) -> list[str]:
        """The int8 layers whose output point uses `value`'s threshold (a blob no int8 layer reads)."""
        placement = self.int8(table)[0].placement
        return [layer for layer, grid in placement.output_grid.items() if grid == value] if placement else []

    def blobs_in_order(self, table: CalibrationTable, skip_layers: Iterable[str] = ()) -> list[str]:
        """Every threshold the int8 model uses, in net order: each int8 layer's inputs, then its output's own
        threshold where it has one (placement.py: no int8 layer reads that blob)."""
        skip = set(skip_layers)
        read = {v for e in table.layers.values() for v in (e.input_value, *e.extra_inputs)}
        placement = self.int8(table)[0].placement
        order: list[str] = []
        for e in table.quantized_layers():
            if e.layer in skip:
                continue
            own = placement.output_grid.get(e.layer) if placement is not None else None
            for v in (e.input_value, *e.extra_inputs, *([own] if own and own not in read else [])):
                if v not in order:
                    order.append(v)
        return order


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


def _square() -> Metric:
    from ..metrics import METRICS

    return METRICS.get("square")


def _readers(table: CalibrationTable, value: str) -> list[str]:
    return [e.layer for e in table.quantized_layers() if value in (e.input_value, *e.extra_inputs)]
