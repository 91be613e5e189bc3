"""The tuner's settings, resolved from the run's options (pipeline/tuning.py tune_settings): what a candidate
threshold is scored by, how a blob's threshold is searched and when a move found is kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..config import Confirm, Objective, enum_option
from .search import SEARCHES, SearchSettings


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
    # sum, blob_search.py): a sum can fall while the one output that matters (MTCNN's face score) gets much
    # worse. 0: off.
    output_veto: float = 0.0
    confirm: Confirm = Confirm.ALL

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective", enum_option(Objective, "objective", self.objective))
        object.__setattr__(self, "confirm", enum_option(Confirm, "confirm", self.confirm))
        SEARCHES.get(self.search)
