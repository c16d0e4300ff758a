"""What a solver actually runs on a grid, and whether the grid is in its stable regime.

* :func:`step_orders` / :func:`effective_orders`: the order each step really uses
  after warm-up, lower-order-final, the step into sigma = 0 and the step-length
  safeguard -- computed by the very function the solver's ``step`` calls
  (``Solver.step_orders``), so it is what :func:`samplax.solvers.sample` does.
* :func:`stability_warning`: an a-priori warning (no model call) when a grid is
  outside the solver's stable regime (``Solver.stability``; see docs/solvers.md,
  "What ran and stability warnings").
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.base import Solver
from samplax.solvers.singlestep import STABILITY_MAX_GAIN, STABILITY_SIGMA_DATA
from samplax.timesteps import Grid

# Why a step runs below the solver's order (StepOrders.reasons).
FULL, WARM_UP, LOWER_ORDER_FINAL, JUMP_TO_ZERO, SAFEGUARD = (
    "full", "warm-up", "lower-order-final", "jump to sigma=0", "safeguard")


class StepOrders(NamedTuple):
    """Per-step orders of a solve (numpy arrays, one entry per step; a leading grid
    axis for a batch of grids).

    ``orders``: the order each step uses (for UniPC the predictor's: its corrector
    adds one); ``nominal``: the order from warm-up, lower-order-final and the
    step into sigma = 0 alone; ``safeguarded``: where the step-length safeguard
    lowered ``nominal``; ``reasons``: per step (single grid only) why it runs below
    the method's order ("full" when it does not)."""

    orders: np.ndarray
    nominal: np.ndarray
    safeguarded: np.ndarray
    reasons: Tuple[str, ...]

    @property
    def any_safeguarded(self) -> bool:
        return bool(np.any(self.safeguarded))


def _max_order(solver: Solver) -> int:
    # min_steps is the multistep methods' history length (their order before UniPC's +1).
    return int(solver.min_steps) if solver.min_steps > 1 else int(solver.order)


def step_orders(solver: Solver, grid: Grid) -> StepOrders:
    """The per-step orders ``sample(solver, model, x, grid)`` uses (see :class:`StepOrders`).
    Works on one grid (t of shape (n + 1,)) or a stacked batch of grids (G, n + 1)."""
    if solver.step_orders is None:
        raise ValueError(f"solver: {solver.name} does not report its step orders (no Solver.step_orders); "
                         f"allowed: solvers built by samplax.solvers factories")
    n = grid.n_steps

    def one(g):
        return jax.vmap(lambda i: solver.step_orders(g, i))(jnp.arange(n))

    nominal, actual = one(grid) if grid.t.ndim == 1 else jax.vmap(one)(grid)
    nominal = np.asarray(nominal, np.int32)
    actual = np.asarray(actual, np.int32)
    safeguarded = actual < nominal
    reasons: Tuple[str, ...] = ()
    if grid.t.ndim == 1:
        top = max(_max_order(solver), int(nominal.max(initial=1)))
        i = np.arange(n)
        r = []
        for k in range(n):
            if actual[k] >= top:
                r.append(FULL)
            elif safeguarded[k]:
                r.append(SAFEGUARD)
            elif grid.ends_at_zero and k == n - 1:
                r.append(JUMP_TO_ZERO)
            elif i[k] + 1 < top and nominal[k] == min(top, i[k] + 1):
                r.append(WARM_UP)
            else:
                r.append(LOWER_ORDER_FINAL)
        reasons = tuple(r)
    return StepOrders(orders=actual, nominal=nominal, safeguarded=safeguarded, reasons=reasons)


def effective_orders(solver: Solver, grid: Grid) -> np.ndarray:
    """The order each step of ``sample(solver, model, x, grid)`` really uses (numpy int32,
    one entry per step), after warm-up, lower-order-final, the step into sigma = 0 and
    the safeguard.  ``step_orders(solver, grid)`` also says which steps the safeguard
    lowered and why each step runs below the method's order."""
    return step_orders(solver, grid).orders


def stability_warning(solver: Solver, grid: Grid, sigma_data: float = STABILITY_SIGMA_DATA,
                      max_gain: float = STABILITY_MAX_GAIN) -> Optional[str]:
    """A one-line warning when ``grid`` is outside ``solver``'s stable regime, else None.

    A-priori: from the grid alone, no model call (one grid: a stacked batch raises a
    ValueError; a traced grid gives None).  The test problem is Gaussian data N(0, sigma_data^2 I),
    whose probability-flow ODE is linear (the diffusion analogue of Dahlquist's test
    equation): the solver is flagged when its solution there grows beyond ``max_gain``
    times the exact one.  Checked today for Heun (EDM), whose trapezoidal step in
    sigma_tilde extrapolates the denoiser with weight (R - 1)/2 at step ratio R =
    sigma_tilde_i / sigma_tilde_(i+1) (see docs/solvers.md, "Stability warnings", for
    the derivation, the measured gmm2d cases and the limits); the exponential
    integrators (DDIM, DPM-Solver(++), UniPC) contract on this test problem and the
    multistep ones have the safeguard (:func:`step_orders` reports it)."""
    if np.ndim(grid.t) != 1:
        raise ValueError(f"grid: stability_warning takes one grid (t of shape (n + 1,)), got t of shape "
                         f"{np.shape(grid.t)}; allowed: one grid per call (index a stacked batch)")
    if solver.stability is None:
        return None
    return solver.stability(grid, sigma_data=sigma_data, max_gain=max_gain)
