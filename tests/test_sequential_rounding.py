"""The sequential rounding solver of --adaround (quant/sequential_rounding.py) on small problems whose answer is
known: independent inputs leave nothing to feed forward (round to nearest), identical inputs let one weight cancel
another's error, every level stays the one below or above the weight, and groups are solved apart."""

from __future__ import annotations

import numpy as np

from int8tune.quant.adaround import AdaRoundOptions, _losses, _optimize
from int8tune.quant.rounding_solver import Solver
from int8tune.quant.sequential_rounding import sequential_rounding

RNG = np.random.default_rng(5)


def _problem(m: int, k: int, rows: int = 400, groups: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)  # each test its own draw, whatever runs before it
    x = rng.uniform(-60, 60, (m, k))
    low = np.floor(x)
    step = np.ones_like(x)
    mix = rng.standard_normal((groups, k, k)) * 0.3 + np.eye(k)  # correlated inputs
    a = rng.standard_normal((groups, rows, k)) @ mix
    gram = np.matmul(a.transpose(0, 2, 1), a) / rows
    return x, low, step, gram


def test_independent_inputs_round_to_nearest():
    """A diagonal Gram matrix: a weight's error reaches no other input, so the best rounding is the nearest."""
    x = RNG.uniform(-60, 60, (6, 40))
    gram = np.diag(RNG.uniform(0.5, 3.0, 40))[None]
    up = sequential_rounding(x, np.floor(x), np.ones_like(x), gram, 1)
    np.testing.assert_array_equal(np.floor(x) + up, np.round(x))


def test_identical_inputs_cancel_each_others_error():
    """Two weights 0.4 levels above their floor on the same input: to nearest both round down (error 0.8); one up
    and one down leaves 0.2."""
    x = np.array([[10.4, 20.4]])
    up = sequential_rounding(x, np.floor(x), np.ones_like(x), np.ones((1, 2, 2)), 1)
    assert up.sum() == 1


def test_levels_stay_below_or_above_and_fixed_levels_stay_fixed():
    x, low, step, gram = _problem(8, 30)
    step[:, ::7] = 0  # at the clip: no choice
    up = sequential_rounding(x, low, step, gram, 1)
    assert not up[step == 0].any()
    q = low + up * step
    assert ((q == np.floor(x)) | (q == np.floor(x) + 1)).all()


def test_closer_than_nearest_and_than_adam_on_correlated_inputs():
    """The layer-local objective both solvers minimise, summed over channels: sequential below round-to-nearest
    and below AdaRound's Adam on the same Gram matrix (what made it the default, docs/weight_levers.md)."""
    x, low, step, gram = _problem(16, 64)
    nearest = np.round(x)

    def loss(q):
        return float(_losses(q - x, gram, 1).sum())

    seq = loss(low + sequential_rounding(x, low, step, gram, 1) * step)
    adam = loss(low + _optimize(x, low, step, nearest, gram, 1, AdaRoundOptions(solver=Solver.ADAM)) * step)
    assert seq < 0.7 * loss(nearest)
    assert seq < adam


def test_groups_are_solved_apart():
    x, low, step, gram = _problem(8, 20, groups=2)
    both = sequential_rounding(x, low, step, gram, 2)
    for g in range(2):
        rows = slice(4 * g, 4 * g + 4)
        np.testing.assert_array_equal(both[rows], sequential_rounding(x[rows], low[rows], step[rows], gram[g:g + 1], 1))


def test_the_rounding_does_not_depend_on_the_gram_matrixs_scale_dead_inputs_included():
    """round_layer hands the solver the Gram matrix summed over the rows (dividing it would copy 170 MB for a
    4608-wide layer): a sum or a mean must round alike, also where inputs are always 0 (ReLU's dead channels),
    whose placeholder diagonal must not weigh in the damping."""
    x, low, step, gram = _problem(8, 30, seed=4)
    dead = [3, 17, 18]
    gram[:, dead, :] = 0.0
    gram[:, :, dead] = 0.0
    gram *= 1e-3  # inputs of small energy, as after a layer with small weights
    base = sequential_rounding(x, low, step, gram, 1)
    for factor in (1e-4, 8192.0, 1e6):
        np.testing.assert_array_equal(sequential_rounding(x, low, step, gram * factor, 1), base, err_msg=str(factor))
