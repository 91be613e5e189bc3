"""Accuracy-driven strategies: generators of candidate int8 models that the driver (tune/driver.py) evaluates.

A strategy receives a `StrategyContext` and yields `Candidate`s; each `yield` returns the candidate's score (the
model metric on the evaluation images). The driver keeps the best candidate, logs every trial, saves the best
table after each one, and stops when the strategy is done. Registered strategies:

- `halving` (Glow's model-tuner): blob by blob, the threshold divided by 2 up to `max_iter_per_node` times; the
  best is kept; a blob whose change has no effect is left at once; a drop of more than `acc_drop_skip` ends the
  blob; the run ends when `target` is reached.
- `basic` (Intel Neural Compressor's basic strategy): model-wise first (the starting table, then every
  calibrator's whole table, per-channel and per-tensor weights, until one meets the goal), then op-wise fp32
  fallback (each int8 layer alone, ranked by the score it recovers), then accumulated fallback in that order
  until the goal is met (a fallback that does not help is undone).
- `mse` (Neural Compressor's mse strategy): the same accumulated fallback, ordered by each layer's own
  fp32-vs-int8 difference (worst first) instead of measuring each fallback.
- `bayesian` (Neural Compressor's bayesian strategy): a Gaussian-process search (scikit-learn) over one
  threshold multiplier per blob, in log2 space within [1/2, 2]: a few random points, then each next point
  maximises the expected improvement; every layer stays int8.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Generator

from ..metrics import Metric
from ..quant.calibrate import layer_weight_thresholds
from ..quant.calibrators import CalibratorOptions
from ..quant.spec import WEIGHTED_TYPES, Granularity
from ..quant.table import CalibrationTable
from ..registry import Registry
from .tuner import Tuner


@dataclass
class Candidate:
    table: CalibrationTable
    label: str  # unique within a run: the trial log's key
    node: str = ""  # progress line when a new node starts, e.g. '[3/18] Tuning node "pool1"'
    step: str = ""  # e.g. "2/3" within a node
    what: str = ""  # what is tested, e.g. "scale = 0.0123 (threshold / 4)"


@dataclass
class StrategySettings:
    max_iter_per_node: int = 3
    acc_drop_skip: float = 0.05
    fallback: bool = True  # basic/mse: allowed to fall layers back to fp32
    bayesian_trials: int = 30  # bayesian: evaluations in all (the start table and 5 random points included)
    seed: int = 0


@dataclass
class StrategyContext:
    start: CalibrationTable
    tuner: Tuner
    metric: Metric
    fp32_score: float
    goal: Callable[[float], bool]
    settings: StrategySettings
    tables: dict[str, CalibrationTable] = field(default_factory=dict)  # model-wise alternatives (by calibrator)
    best_table: CalibrationTable | None = None  # maintained by the driver
    best_score: float | None = None

    def better(self, a: float, b: float) -> bool:
        return self.metric.better(a, b)

    def drop(self, reference: float, score: float) -> float:
        """How much worse `score` is than `reference` (positive = worse), whatever the metric's direction."""
        return self.metric.gain(score, reference)


Strategy = Callable[[StrategyContext], Generator[Candidate, float, None]]
STRATEGIES: Registry[Strategy] = Registry("strategy")


@STRATEGIES.register("halving")
def halving(ctx: StrategyContext) -> Generator[Candidate, float, None]:
    table = ctx.start
    score = yield Candidate(table, "initial", "initial")
    order = ctx.tuner.blobs_in_order(table)
    for i, value in enumerate(order, 1):
        if ctx.goal(score):
            return
        node_best, node_score = table, score
        previous = score
        for k in range(1, ctx.settings.max_iter_per_node + 1):
            t = table.blobs[value].threshold / 2 ** k
            candidate = table.with_threshold(value, t)
            scale = candidate.blobs[value].scale(table.spec)
            got = yield Candidate(candidate, f"halving {value} /{2 ** k}", f'[{i}/{len(order)}] Tuning node "{value}"',
                                  f"{k}/{ctx.settings.max_iter_per_node}",
                                  f"scale = {scale:.6g} (threshold / {2 ** k})")
            if ctx.better(got, node_score):
                node_best, node_score = candidate, got
            if got == previous:  # no effect: leave this node at once
                break
            if ctx.drop(node_score, got) > ctx.settings.acc_drop_skip:
                break
            previous = got
        table, score = node_best, node_score


def _model_wise(ctx: StrategyContext) -> list[tuple[str, CalibrationTable]]:
    """Global settings to try: each calibrator's whole table, with per-channel and per-tensor weights."""
    base = {"start": ctx.start, **ctx.tables}
    out: list[tuple[str, CalibrationTable]] = []
    for name, table in base.items():
        out.append((f"model-wise {name}/{table.spec.granularity.value}", table))
        if table.spec.granularity is Granularity.MIX:
            out.append((f"model-wise {name}/per_tensor", _per_tensor_weights(ctx, table)))
    return out


def _per_tensor_weights(ctx: StrategyContext, table: CalibrationTable) -> CalibrationTable:
    out = table.copy()
    out.spec = replace(table.spec, granularity=Granularity.PER_TENSOR)
    for e in out.layers.values():
        if e.type in WEIGHTED_TYPES and e.weight_thresholds is not None:
            e.weight_thresholds = layer_weight_thresholds(ctx.tuner.converted, e.layer, "minmax", out.spec,
                                                          CalibratorOptions())
            e.weight_method = "minmax"
    return out


def _accumulated_fallback(ctx: StrategyContext, table: CalibrationTable, score: float, order: list[str]
                          ) -> Generator[Candidate, float, None]:
    """Fall layers back to fp32 one by one in `order`, keeping each fallback only if it helps, until the goal."""
    fallen: list[str] = []
    for i, layer in enumerate(order, 1):
        if ctx.goal(score):
            return
        candidate = table.with_fallback(fallen + [layer], note="fp32 fallback (accuracy)")
        got = yield Candidate(candidate, f"fallback {'+'.join(fallen + [layer])}",
                              f'[{i}/{len(order)}] Falling back layer "{layer}"', f"{i}/{len(order)}",
                              f"{len(fallen) + 1} layer(s) in fp32")
        if ctx.better(got, score):
            table, score, fallen = candidate, got, fallen + [layer]


@STRATEGIES.register("basic")
def basic(ctx: StrategyContext) -> Generator[Candidate, float, None]:
    best_name, best_table, best = None, None, None
    for label, table in _model_wise(ctx):
        got = yield Candidate(table, label, "Model-wise search", "model-wise", label.split(" ", 1)[1])
        if best is None or ctx.better(got, best):
            best_name, best_table, best = label, table, got
        if ctx.goal(got):  # as Neural Compressor: the first configuration that meets the goal ends the search
            return
    if not ctx.settings.fallback:
        return
    impacts: dict[str, float] = {}
    layers = [e.layer for e in best_table.quantized_layers()]
    for i, layer in enumerate(layers, 1):
        got = yield Candidate(best_table.with_fallback([layer], note="fp32 fallback (accuracy)"),
                              f"op-wise fallback {layer} from {best_name}", "Op-wise fallback, one layer at a time",
                              f"{i}/{len(layers)}", f'layer "{layer}" in fp32')
        impacts[layer] = -ctx.drop(best, got)  # score recovered by falling this layer back
    order = sorted(layers, key=lambda l: (-impacts[l], layers.index(l)))
    yield from _accumulated_fallback(ctx, best_table, best, [l for l in order if impacts[l] > 0])


@STRATEGIES.register("mse")
def mse(ctx: StrategyContext) -> Generator[Candidate, float, None]:
    score = yield Candidate(ctx.start, "initial", "initial")
    if ctx.goal(score) or not ctx.settings.fallback:
        return
    own = ctx.tuner.layer_differences(ctx.start)
    order = sorted(own, key=lambda l: -own[l])
    yield from _accumulated_fallback(ctx, ctx.start, score, order)


@STRATEGIES.register("bayesian")
def bayesian(ctx: StrategyContext) -> Generator[Candidate, float, None]:
    import warnings

    import numpy as np
    from scipy.stats import norm
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    blobs = ctx.tuner.blobs_in_order(ctx.start)
    rng = np.random.default_rng(ctx.settings.seed)
    sign = 1.0 if ctx.metric.higher_is_better else -1.0  # maximise sign * score

    def table_at(u: np.ndarray) -> CalibrationTable:
        table = ctx.start
        for value, e in zip(blobs, u):
            if e != 0.0:
                table = table.with_threshold(value, ctx.start.blobs[value].threshold * float(2.0 ** e))
        return table

    points: list[np.ndarray] = []
    scores: list[float] = []
    budget = max(ctx.settings.bayesian_trials, 2)
    for k in range(budget):
        if k == 0:
            u = np.zeros(len(blobs))
        elif k <= 5:
            u = rng.uniform(-1.0, 1.0, len(blobs))
        else:
            kernel = ConstantKernel(1.0) * Matern(length_scale=np.ones(len(blobs)), nu=2.5) + WhiteKernel(1e-4)
            gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=ctx.settings.seed)
            with warnings.catch_warnings():  # hyper-parameters at their bounds on a handful of points: expected
                warnings.simplefilter("ignore")
                gp.fit(np.array(points), sign * np.array(scores))
            pool = np.clip(np.array(points)[int(np.argmax(sign * np.array(scores)))] +
                           rng.normal(0, 0.3, (512, len(blobs))), -1, 1)
            pool = np.vstack([pool, rng.uniform(-1, 1, (512, len(blobs)))])
            mean, std = gp.predict(pool, return_std=True)
            best = float(np.max(sign * np.array(scores)))
            z = (mean - best) / np.maximum(std, 1e-9)
            expected = (mean - best) * norm.cdf(z) + std * norm.pdf(z)
            u = pool[int(np.argmax(expected))]
        u = np.round(u, 4)
        got = yield Candidate(table_at(u), f"bayesian {k} " + ",".join(f"{x:.4f}" for x in u),
                              "Gaussian-process search over per-blob multipliers", f"{k + 1}/{budget}",
                              f"multipliers 2^[{u.min():+.2f} .. {u.max():+.2f}]")
        points.append(u)
        scores.append(got)
        if ctx.goal(got) and k > 0:
            return


def estimated_evaluations(name: str, ctx: StrategyContext) -> int:
    """Upper bound of the evaluations a strategy makes (for the remaining-time estimate)."""
    blobs = len(ctx.tuner.blobs_in_order(ctx.start))
    layers = len(ctx.start.quantized_layers())
    if name == "halving":
        return 1 + blobs * ctx.settings.max_iter_per_node
    if name == "basic":
        return len(_model_wise(ctx)) + 2 * layers
    if name == "mse":
        return 1 + layers
    if name == "bayesian":
        return ctx.settings.bayesian_trials
    return 1


def int8_share(table: CalibrationTable) -> tuple[int, int]:
    """(int8 layers, quantizable layers) of a table."""
    return len(table.quantized_layers()), len(table.layers)

