"""Measuring the int8 model against fp32 on the tuner's batches: fp32 references (computed once per run), int8
runs of a table (one engine per table structure; thresholds are feeds), the model, image and layer differences,
and the score of candidate thresholds under an objective (tune/tuner.py composes this with the blob search).

The measurer keeps the tensors of the int8 model under the last table it ran or that a blob search kept (the last
blob's frontier, and the model outputs of the kept candidate on every batch): the next blob's baseline is then
known without a run, and its frontier is bridged from the carried tensors (the one or two layers between
consecutive blobs) instead of recomputed from the input. Every session of a table computes the same numbers (see
runtime.session_options), so this changes no decision (tests/test_tuner.py); on yolov3_nano_voc it halved the
tuning time.

Every pass over the batches runs on the executor (executors/: this process, or a Ray cluster) as one task per
batch (tasks.py); the parts come back in batch order and are merged here as a single process merges them, so the
trials, the table and every metric are the same bits wherever the batches ran.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from ..config import Objective
from ..convert.converter import ConvertedModel
from ..errors import ConfigError
from ..executors import Executor, LocalExecutor, Shared
from ..metrics import METRICS, Metric, normalised_square
from ..progress import Progress
from ..quant.simulate import Int8Graph, build_int8_graph
from ..quant.table import CalibrationTable
from ..runtime import Engine
from .order import blobs_in_order, readers
from .partial import Carried, PartialEvaluator
from .settings import TuneSettings
from .tasks import IsolatedJob, IsolatedPlan, SquareJob, TensorsJob, isolated_parts, square_parts, tensors

MODEL_OUTPUT_OBJECTIVES = tuple(o for o in Objective if o.on_model_outputs)


def concat_outputs(results: Sequence[Mapping[str, np.ndarray]], names: Iterable[str]) -> dict[str, np.ndarray]:
    return {n: np.concatenate([r[n] for r in results], axis=0) for n in names}


def metric_outputs(converted: ConvertedModel) -> list[str]:
    """The model outputs a metric compares: the ONNX graph's outputs (for nets ending in a numpy step such as
    DetectionOutput, the tensors that step reads)."""
    return [o.name for o in converted.model.graph.output]


class Measurer:
    """The int8 model of any table against fp32, on `batches`, under `metric` (on the model's outputs)."""

    def __init__(self, converted: ConvertedModel, batches: list[np.ndarray], metric: Metric,
                 settings: TuneSettings, layer_metric: Metric | None = None,
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
        self.layer_metric = layer_metric or (metric if metric.name == "square" else square_metric())
        self.settings = settings
        self.fp32 = Engine(reference if reference is not None else converted, threads=settings.threads)
        self._fp32: Shared | None = None
        self._refs: dict[str, list[np.ndarray]] = {}
        self._refs_concat: dict[tuple, dict[str, np.ndarray]] = {}
        self._graph: Int8Graph | None = None
        self._graph_key = None
        self._engine: Engine | None = None
        # Tensors of the int8 model under one table, per batch: what the last tuned blob (or whole-model run)
        # left behind. The next blob's baseline and frontier start from it instead of a new upstream run.
        self._state: tuple[tuple, Carried] | None = None
        self.carry_state = True  # tests turn it off to show that it changes no decision
        self.evaluations = 0  # passes of a table over the batches (a replayed trial is none)

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
        self.remember(table, Carried(per_batch))
        return concat_outputs(per_batch, names)

    def remember(self, table: CalibrationTable, carried: Carried | None) -> None:
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

    # -- scoring candidate thresholds ---------------------------------------------------------------------
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
        order = [v for v in blobs_in_order(table, self.int8(table)[0].placement) if v in candidates]
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
            return square_metric(), ({"outputs": chosen} if chosen is not None else {})
        return self.layer_metric, {}

    def objective_names(self, table: CalibrationTable, value: str, objective: str | None = None) -> list[str]:
        if (objective or self.settings.objective) in MODEL_OUTPUT_OBJECTIVES:
            return metric_outputs(self.converted)
        outputs = self.layer_outputs(table)
        reading = readers(table, value)
        if not reading:  # an int8 layer's own output threshold (a head, a sum): that quantized blob itself
            return [value]
        return list(dict.fromkeys(outputs[l] for l in reading))

    def references_of(self, names: Sequence[str], indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The fp32 references of the batches at `indices`, concatenated once per (names, indices): the same
        arrays for every candidate, so that a metric may cache what it derives from them (the yolo decode)."""
        key = (tuple(names), tuple(indices))
        cache = self._refs_concat
        if key not in cache:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = {o: np.concatenate([self._refs[o][i] for i in indices]) for o in names}
        return cache[key]

    def reference_batch(self, name: str, i: int) -> np.ndarray:
        self.references([name])
        return self._refs[name][i]


def square_metric() -> Metric:
    return METRICS.get("square")
