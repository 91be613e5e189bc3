"""How `--adaround` chooses each weight's up or down (`--adaround_solver`): a name the CLI lists without loading the
solvers."""

from __future__ import annotations

from enum import Enum

from ..errors import ConfigError


class Solver(str, Enum):
    """How each weight's up-or-down is chosen for the layer-local objective (the same Gram matrices either way)."""

    SEQUENTIAL = "sequential"  # one column at a time, the error fed forward (quant/sequential_rounding.py)
    ADAM = "adam"  # AdaRound's relaxation: a rectified sigmoid per weight learned by Adam (quant/adaround.py)


def solver_named(name: str) -> Solver:
    try:
        return Solver(name)
    except ValueError:
        raise ConfigError(f"--adaround_solver must be one of {', '.join(s.value for s in Solver)}, "
                          f"found {name!r}") from None
