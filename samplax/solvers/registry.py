"""The solver registry (one explicit dict) and NFE bookkeeping.

``get_solver(name, **options)`` builds a solver by name and rejects unknown
names and options with a ValueError naming the allowed values;
``steps_for_nfe(solver, nfe, end)`` gives the number of grid steps that spends
exactly ``nfe`` model evaluations, or raises when no step count does.
"""
from __future__ import annotations

import inspect

import numpy as np

from samplax.solvers import adaptive, dualfast, guided, multistep, schedule, sde, singlestep, teleport, v3
from samplax.solvers.base import Solver
from samplax.smc import posterior as _posterior
from samplax.smc.fkc import fkc as _fkc  # particle samplers (samplax.smc.samplers) are solvers too

SOLVERS = {
    "euler": singlestep.euler,
    "heun": singlestep.heun,
    "ddim": multistep.ddim,
    "ddim_eta": sde.ddim_eta,
    "dpm_solver": singlestep.dpm_solver_singlestep,
    "dpm_solver_adaptive": adaptive.dpm_solver_adaptive,
    "dpm_solver_multistep": multistep.dpm_solver_multistep,
    "dpm_solver_pp": multistep.dpm_solver_pp,
    "dpm_solver_pp_singlestep": singlestep.dpm_solver_pp_singlestep,
    "sde_dpm_solver_pp_2m": sde.sde_dpm_solver_pp_2m,
    "deis": multistep.deis,
    "unipc": multistep.unipc,
    "dualfast": dualfast.dualfast,
    "ipndm": multistep.ipndm,
    "ipndm_v": multistep.ipndm_v,
    "euler_maruyama": sde.euler_maruyama,
    "pc_langevin": sde.predictor_corrector,
    "schedule": schedule.schedule_solver,
    "dpm_solver_v3": v3.dpm_solver_v3,
    "teleport": teleport.teleport,
    "autoguided": guided.autoguided,
    "minority": guided.minority,
    "fkc": _fkc,
    "dps": _posterior.dps,
    "tds": _posterior.tds,
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


#: The largest NFE :func:`steps_for_nfe` accepts (the experiment configs' bound too).
MAX_NFE = 100_000


def steps_for_nfe(solver: Solver, nfe: int, end: str = "zero") -> int:
    """Number of steps n with solver.nfe(n, end) == nfe and n >= solver.min_steps
    (the smallest such n).  ``nfe`` must be an integer in 1..MAX_NFE.

    Every solver's NFE is affine in n (a n + b), so n is solved for directly; a
    non-affine ``nfe`` function falls back to a search over n <= 2 nfe + 2."""
    if isinstance(nfe, (bool, np.bool_)) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}; allowed: integers in 1..{MAX_NFE}")
    if nfe > MAX_NFE:
        raise ValueError(f"nfe={nfe} is above the maximum {MAX_NFE} (samplax.solvers.MAX_NFE); "
                         f"allowed: integers in 1..{MAX_NFE}")
    nfe = int(nfe)
    first, last = max(1, solver.min_steps), 2 * nfe + 2  # the candidates n of the original search
    f = lambda n: int(solver.nfe(n, end))  # noqa: E731
    slope = f(first + 1) - f(first)
    affine = slope > 0 and all(f(n) == f(first) + slope * (n - first) for n in (first + 2, first + 7, last))
    if affine:
        q, r = divmod(nfe - f(first), slope)
        found = q if (r == 0 and q >= 0 and first + q <= last) else None
        n = None if found is None else first + found
    else:
        n = next((k for k in range(first, last + 1) if f(k) == nfe), None)
    if n is None:
        bound = max(nfe * 2, 10)
        # the values of the n's the original search visited, up to ``bound``: for an increasing
        # affine count the 12 smallest n suffice.
        stop = min(last, first + 11) if affine else last
        reach = sorted({f(k) for k in range(first, stop + 1)})
        reach = [v for v in reach if v <= bound][:12]
        raise ValueError(f"nfe={nfe} is impossible for solver {solver.name} (order {solver.order}, end={end!r}); "
                         f"possible NFEs include {reach}")
    return n
