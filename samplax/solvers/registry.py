"""The solver registry (one explicit dict) and NFE bookkeeping.

``get_solver(name, **options)`` builds a solver by name and rejects unknown
names and options with a ValueError naming the allowed values;
``steps_for_nfe(solver, nfe, end)`` gives the number of grid steps that spends
exactly ``nfe`` model evaluations, or raises when no step count does.
"""
from __future__ import annotations

import inspect

from samplax.solvers import multistep, sde, singlestep
from samplax.solvers.base import Solver

SOLVERS = {
    "euler": singlestep.euler,
    "heun": singlestep.heun,
    "ddim": multistep.ddim,
    "ddim_eta": sde.ddim_eta,
    "dpm_solver": singlestep.dpm_solver_singlestep,
    "dpm_solver_multistep": multistep.dpm_solver_multistep,
    "dpm_solver_pp": multistep.dpm_solver_pp,
    "dpm_solver_pp_singlestep": singlestep.dpm_solver_pp_singlestep,
    "sde_dpm_solver_pp_2m": sde.sde_dpm_solver_pp_2m,
    "deis": multistep.deis,
    "unipc": multistep.unipc,
    "ipndm": multistep.ipndm,
    "ipndm_v": multistep.ipndm_v,
    "euler_maruyama": sde.euler_maruyama,
    "pc_langevin": sde.predictor_corrector,
}


def solver_options(name: str) -> dict:
    """The options a solver accepts, with their defaults."""
    if name not in SOLVERS:
        raise ValueError(f"solver: unknown name {name!r}; allowed: {sorted(SOLVERS)}")
    sig = inspect.signature(SOLVERS[name])
    return {k: v.default for k, v in sig.parameters.items()}


def get_solver(name: str, **options) -> Solver:
    """Build a solver by name; unknown names or options raise a ValueError."""
    allowed = solver_options(name)
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"solver {name!r}: unknown option(s) {bad}; allowed: {sorted(allowed)}")
    return SOLVERS[name](**options)


def steps_for_nfe(solver: Solver, nfe: int, end: str = "zero") -> int:
    """Number of steps n with solver.nfe(n, end) == nfe and n >= solver.min_steps."""
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    possible = {}
    for n in range(1, 2 * nfe + 3):
        if n >= solver.min_steps:
            possible.setdefault(solver.nfe(n, end), n)
    if nfe not in possible:
        reach = sorted(v for v in possible if v <= max(nfe * 2, 10))[:12]
        raise ValueError(f"nfe={nfe} is impossible for solver {solver.name} (order {solver.order}, end={end!r}); "
                         f"possible NFEs include {reach}")
    return possible[nfe]
