"""Layer-wise threshold tuning: measure the int8/fp32 difference, move each blob's threshold, keep what helps.

The unit of tuning is a blob (several int8 layers may read one blob and share its threshold); blobs are tuned in
the order their first int8 reader appears (topological, order.py). Each blob starts from the best table so far.
The objective is the metric on the model's outputs (`model`), the square distance of the model's outputs whatever
the metric (`outputs`), the square distance of the output of the layers reading the blob (`layer`, the original
tool's tune_diff), or `outputs` with the metric as a veto on every move (`guarded`). fp32 references are computed
once per run; each blob gets one partial evaluator (upstream computed once, a suffix session per blob); each
candidate is one suffix run.

Each job has its own class: the Measurer (measurer.py: references, int8 runs, differences, scores under an
objective, the tensors carried from one blob to the next), the BlobSearcher (blob_search.py: one blob's search
and the checks a move must pass), the TrialRecorder (recorder.py: numbering, logging and replaying trials) and
the order of the blobs (order.py). The Tuner composes them for its callers (the pipeline, restarts, strategies)
and only delegates.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..config import Confirm, Objective
from ..convert.converter import ConvertedModel
from ..executors import Executor
from ..metrics import Metric
from ..quant.table import CalibrationTable
from ..runtime import Engine
from .blob_search import OUTPUT_VETO_FLOOR, BlobResult, BlobSearcher, worsened_output
from .measurer import MODEL_OUTPUT_OBJECTIVES, Measurer, concat_outputs, metric_outputs
from .order import blobs_in_order
from .recorder import TrialRecorder
from .settings import TuneSettings
from .trials import Trial, TrialLog

# the names callers import from here
__all__ = ["MODEL_OUTPUT_OBJECTIVES", "OBJECTIVES", "OUTPUT_VETO_FLOOR", "BlobResult", "Confirm", "Objective",
           "TuneSettings", "Tuner", "concat_outputs", "metric_outputs", "worsened_output"]

OBJECTIVES = tuple(o.value for o in Objective)


class Tuner:
    """The tuning of tables on one set of batches: a Measurer, a BlobSearcher on it, and the TrialRecorder of the
    run's trial log (`log`), behind one object."""

    def __init__(self, converted: ConvertedModel, batches: list[np.ndarray], metric: Metric,
                 settings: TuneSettings, log: TrialLog | None = None, layer_metric: Metric | None = None,
                 labels: list[np.ndarray] | None = None, names: list[list[str]] | None = None,
                 reference: ConvertedModel | None = None, executor: Executor | None = None) -> None:
        self.settings = settings
        self.measurer = Measurer(converted, batches, metric, settings, layer_metric, labels, names, reference,
                                 executor)
        self.recorder = TrialRecorder(log)
        self.searcher = BlobSearcher(self.measurer, settings, self.recorder)

    # -- what is measured, on what ------------------------------------------------------------------------
    @property
    def converted(self) -> ConvertedModel:
        return self.measurer.converted

    @property
    def reference(self) -> ConvertedModel | None:
        return self.measurer.reference

    @property
    def batches(self) -> list[np.ndarray]:
        return self.measurer.batches

    @property
    def labels(self) -> list[np.ndarray] | None:
        return self.measurer.labels

    @property
    def names(self) -> list[list[str]] | None:
        return self.measurer.names

    @property
    def executor(self) -> Executor:
        return self.measurer.executor

    @property
    def metric(self) -> Metric:
        return self.measurer.metric

    @property
    def fp32(self) -> Engine:
        return self.measurer.fp32

    @property
    def evaluations(self) -> int:
        return self.measurer.evaluations

    @property
    def carry_state(self) -> bool:
        return self.measurer.carry_state

    @carry_state.setter
    def carry_state(self, value: bool) -> None:
        self.measurer.carry_state = value

    # -- the trial log ------------------------------------------------------------------------------------
    @property
    def log(self) -> TrialLog | None:
        return self.recorder.log

    @property
    def trial_count(self) -> int:
        return self.recorder.count

    @property
    def restart(self) -> int:
        return self.recorder.restart

    @restart.setter
    def restart(self, value: int) -> None:
        self.recorder.restart = value

    # -- measuring ----------------------------------------------------------------------------------------
    def references(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return self.measurer.references(names)

    def run_int8(self, table: CalibrationTable, names: Sequence[str]) -> dict[str, np.ndarray]:
        return self.measurer.run_int8(table, names)

    def frozen_engine(self, table: CalibrationTable) -> Engine:
        return self.measurer.frozen_engine(table)

    def model_params(self, indices: Sequence[int] | None = None) -> Mapping:
        return self.measurer.model_params(indices)

    def difference(self, table: CalibrationTable, names: Sequence[str] | None = None) -> float:
        return self.measurer.difference(table, names)

    def image_differences(self, table: CalibrationTable) -> list[tuple[str, float]]:
        return self.measurer.image_differences(table)

    def fp32_score(self) -> float:
        return self.measurer.fp32_score()

    def layer_outputs(self, table: CalibrationTable) -> dict[str, str]:
        return self.measurer.layer_outputs(table)

    def layer_differences(self, table: CalibrationTable) -> dict[str, float]:
        return self.measurer.layer_differences(table)

    def score_thresholds(self, table: CalibrationTable, value: str, thresholds: Mapping[str, float],
                         objective: str | None = None) -> dict[str, float]:
        return self.measurer.score_thresholds(table, value, thresholds, objective)

    def score_isolated(self, table: CalibrationTable, candidates: Mapping[str, Mapping[str, float]],
                       chunk: int = 8) -> dict[str, dict[str, float]]:
        return self.measurer.score_isolated(table, candidates, chunk)

    def objective_metric(self, objective: str | None = None) -> tuple[Metric, Mapping]:
        return self.measurer.objective_metric(objective)

    # -- tuning -------------------------------------------------------------------------------------------
    def blobs_in_order(self, table: CalibrationTable, skip_layers: Iterable[str] = ()) -> list[str]:
        return blobs_in_order(table, self.measurer.int8(table)[0].placement, skip_layers)

    def search_batches(self, table: CalibrationTable) -> list[int]:
        return self.searcher.search_batches(table)

    def tune_blob(self, table: CalibrationTable, value: str,
                  on_trial: Callable[[Trial], None] | None = None) -> tuple[CalibrationTable, BlobResult]:
        return self.searcher.tune_blob(table, value, on_trial)
