"""DualFast (Yu, Luo, Wang & Zhao 2025, "DualFast: Dual-Speedup Framework for Fast
Sampling of Diffusion Models", arXiv:2506.13058) as a wrapper over our multistep solvers.

The paper splits the sampling error of a few-step solve into

* the *discretization error* of the ODE solver (what high-order solvers such as
  DPM-Solver++ and UniPC reduce), and
* the *approximation error* of the network, m_theta(x, t) - m(x, t), which it finds
  to shrink as the step (noise level) t grows.

DualFast keeps the base solver for the first and, for the second, replaces the model
output the solver consumes at node t_j by a mix with the output at a larger step
tau > t_j that was already computed (no extra model evaluation):

    eps~_j = eps_theta(x_j, t_j) - c_j (eps_theta(x_j, t_j) - eps_theta(x_tau, tau))      (AER)

with a mixing coefficient c_j that decreases over the solve.  The base solver then
runs unchanged on eps~ (or on the data prediction x~0_j = (x_j - sigma_j eps~_j) /
alpha_j it implies, for the data-prediction solvers).

Provenance (read this before citing): the stored copies of the paper available to us
expose only its abstract and a third-party summary of its Sec. 3 (the three transitions
used to disentangle the two errors).  The body of Sec. 4 -- the exact form of the
substitution, the choice of tau, the schedule of c_j and its default -- could not be
read, so the formula above is our reconstruction of the mechanism the summary
describes, and **no equation number of the paper is claimed here**.  Every choice is
an option so that the alternatives can be measured:

* ``reference``: tau = t_0 (``"first"``, the largest step of the solve: the smallest
  approximation error, but a bias that does not vanish as the steps shrink) or tau =
  t_{j-1} (``"previous"``: a bias of O(h), so a first-order base keeps its order);
* ``mix_view``: mix the noise predictions (``"noise"``, as written above) or the data
  predictions (``"data"``: x~0_j = x0_j - c_j (x0_j - x0_tau));
* ``decay``: c_j = mixing (1 - j / (n - 1)) (``"linear"``, zero at the last node) or
  c_j = mixing (``"constant"``).

``mixing = 0`` is the base solver exactly (the correction is added as c_j * (...), so
it vanishes bit for bit).

Implementation: the base solver's step table (:mod:`samplax.solvers.unified`) gives
the coefficients; DualFast runs them stepwise with the mixed outputs in the history.
With ``reference="previous"`` and ``mix_view`` equal to the base's view the method *is*
a linear multistep table (m~_j = (1 - c_j) m_j + c_j m_{j-1}: the history one slot
deeper and the coefficients re-weighted, :func:`previous_reference_table`), so that case
sets ``Solver.table`` and :func:`samplax.sample` runs the one table-driven program
(``stepwise=True`` runs ``init``/``step``; the two agree to rounding).  With ``"first"``
it is not a fixed-depth table (the output at t_0 would have to stay in the history for
the whole solve), and with a mix view other than the base's the table would need both
views: those run stepwise.

NFE = the base solver's: n_steps (+1 with a final denoise).  No model call is wasted
on the last step.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.base import Solver, bcast, check_options, evaluate, initial_output
from samplax.solvers.multistep import ddim, dpm_solver_pp, unipc
from samplax.timesteps import Grid

BASES = ("ddim", "dpm_solver_pp", "unipc")
_MAX_ORDER = {"ddim": 1, "dpm_solver_pp": 3, "unipc": 3}


class DualFastState(NamedTuple):
    x: jnp.ndarray     # current sample (B, ...)
    hist: jnp.ndarray  # (K, B, ...) mixed outputs in the base view, newest first
    ref: jnp.ndarray   # the reference output (mix view) the next evaluation is mixed with
    tab: dict          # the base table's per-step arrays and the mixing coefficients (constants)


def mixing_weights(n_steps: int, mixing, decay: str, dtype=jnp.float32) -> jnp.ndarray:
    """c_j for the model outputs at nodes j = 0 .. n_steps - 1 (c_0 is never used:
    the output at t_0 has no larger step to be mixed with)."""
    j = jnp.arange(n_steps, dtype=dtype)
    if decay == "constant" or n_steps < 2:
        w = jnp.ones_like(j)
    else:
        w = 1.0 - j / (n_steps - 1)
    return jnp.asarray(mixing, dtype) * w


def mix_outputs(x0, eps, ref, c, alpha, sigma, mix_view: str, base_view: str):
    """The substituted output in ``base_view`` and the raw output in ``mix_view``.

    ``x0``, ``eps``: the model's data and noise predictions at (x_j, t_j); ``ref``: the
    reference output (mix view); ``c``: c_j.  Returns (m~_j, raw m_j in mix view).
    With c = 0 the result is the raw output bit for bit."""
    raw_mix = eps if mix_view == "noise" else x0
    delta = c * (raw_mix - ref)  # c_j (m_j - m_tau) in the mix view
    if mix_view == base_view:
        return (eps if base_view == "noise" else x0) - delta, raw_mix
    if base_view == "data":  # eps~ = eps - delta  =>  x0~ = x0 + (sigma / alpha) delta
        return x0 + (sigma / alpha) * delta, raw_mix
    return eps + (alpha / sigma) * delta, raw_mix  # x0~ = x0 - delta => eps~ = eps + (alpha / sigma) delta


def previous_reference_table(tab, gamma):
    """The step table of DualFast with tau = t_{j-1}, mixing in the base's view: the base
    table ``tab`` (history depth K) made one slot deeper, for the raw outputs.

    m~_j = (1 - g_j) m_j + g_j m_{j-1} (g_j = ``gamma[j]``, g_0 unused: m~_0 = m_0), so a
    predictor weight c_{i,k} on m~_{i-k} becomes c_{i,k} (1 - g_{i-k}) on m_{i-k} plus
    c_{i,k} g_{i-k} on m_{i-k-1}; the corrector's weight w_i on the new output m~_{i+1}
    becomes w_i (1 - g_{i+1}) on m_{i+1} plus w_i g_{i+1} on m_i."""
    n, k = tab.n_steps, tab.k
    i = jnp.arange(n)
    gamma = jnp.asarray(gamma, tab.c.dtype)

    def g(j):  # g_j for node j; 0 at node 0 (nothing to mix with) and for nodes that do not exist
        return jnp.where(j >= 1, gamma[jnp.clip(j, 0, n - 1)], 0.0)

    def deepen(cm):
        out = jnp.zeros((n, k + 1), cm.dtype)
        for s in range(k):
            gs = g(i - s)
            out = out.at[:, s].add(cm[:, s] * (1 - gs)).at[:, s + 1].add(cm[:, s] * gs)
        return out
    g_new = g(i + 1)
    cc = deepen(tab.cc).at[:, 0].add(tab.cw[:, 0] * g_new)
    cw = tab.cw * (1 - g_new)[:, None]
    return tab.replace(c=deepen(tab.c), cc=cc, cw=cw, k=k + 1)


def _base_solver(base: str, order: int, afs: bool = False) -> Solver:
    if base == "ddim":
        return ddim(afs=afs)
    if base == "dpm_solver_pp":
        return dpm_solver_pp(order=order, afs=afs)
    return unipc(order=order, afs=afs)


def dualfast(base: Literal["ddim", "dpm_solver_pp", "unipc"] = "dpm_solver_pp", order: int = 2,
             mixing: float = 0.5, reference: Literal["first", "previous"] = "first",
             decay: Literal["linear", "constant"] = "linear",
             mix_view: Literal["noise", "data"] = "noise", afs: bool = False) -> Solver:
    """DualFast over ``base`` (DDIM, DPM-Solver++ ``order``M, UniPC ``order`` with UniC;
    ``order`` must be 1 with DDIM; ``afs``: the base's analytic first step):
    the base solver run on model outputs mixed with the output at a larger step (see
    the module doc for the formula, its options and its provenance).

    ``mixing``: the mixing coefficient c (0 = the base solver exactly; in [0, 1]
    interpolates towards the larger step's output, negative values extrapolate away
    from it), a finite number in [-1, 1].  NFE = n_steps (+1 with a final denoise);
    nominal order = the base's (the mixing adds an O(c) bias with ``reference="first"``
    and an O(c h) one with ``"previous"``: measured in tests/test_dualfast.py)."""
    check_options(dualfast, locals())
    if base not in BASES:
        raise ValueError(f"base: unknown base solver {base!r}; allowed: {list(BASES)}")
    hi = _MAX_ORDER[base]
    if isinstance(order, (bool, np.bool_)) or not isinstance(order, (int, np.integer)) or not 1 <= order <= hi:
        raise ValueError(f"order: {order!r} is not allowed for base {base!r}; allowed: integers in 1..{hi}")
    mixing = float(mixing)
    if not np.isfinite(mixing) or not -1.0 <= mixing <= 1.0:
        raise ValueError(f"mixing: {mixing} is outside [-1, 1]; allowed: a finite number in [-1, 1] "
                         f"(0 = the base solver)")
    solver = dualfast_over(_base_solver(base, int(order), afs), mixing, reference, decay, mix_view)
    return solver._replace(name=f"dualfast_{solver.name}_c{mixing:g}_{reference}_{decay}_{mix_view}")


def dualfast_over(base_solver: Solver, mixing, reference: str = "first", decay: str = "linear",
                  mix_view: str = "noise") -> Solver:
    """DualFast over any table-driven solver (``base_solver.table``), unchecked; ``mixing``
    may be a traced scalar (a benchmark vmaps over it: one compiled program for all c)."""
    if base_solver.table is None:
        raise ValueError(f"base_solver: {base_solver.name} has no step table; allowed: ddim, dpm_solver_pp, unipc")
    base_view = base_solver.view
    need_both = mix_view != base_view
    has_corrector = base_solver.name.startswith("unipc")

    def outputs(model, x, t):
        if need_both:
            x0, eps = model.data_noise(x, t)
            return x0.astype(x.dtype), eps.astype(x.dtype)
        m = evaluate(model, base_view, x, t)
        return (m, None) if base_view == "data" else (None, m)

    def init(model, grid: Grid, x):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(grid)):
            tab = base_solver.table(grid, model.schedule)  # a traced (vmapped, learned) grid
        else:
            with jax.ensure_compile_time_eval():  # a concrete grid: the table is a constant of the program
                tab = base_solver.table(grid, model.schedule)
        n, k = tab.n_steps, tab.k
        dt = x.dtype
        arrays = dict(a=tab.a.astype(dt), c=tab.c.astype(dt), ca=tab.ca.astype(dt), cc=tab.cc.astype(dt),
                      cw=tab.cw[:, 0].astype(dt), corrected=tab.corrected,
                      mix=mixing_weights(n, mixing, decay, grid.t.dtype).astype(dt))
        if tab.afs:  # the analytic first step: the large-noise limit instead of a model call at t_0
            x0, eps = initial_output(model, grid, x, "both", True)
        else:
            x0, eps = outputs(model, x, grid.t[0])
        m0 = x0 if base_view == "data" else eps
        ref = eps if mix_view == "noise" else x0
        hist = jnp.zeros((k,) + x.shape, dt).at[0].set(m0)
        return DualFastState(x=x, hist=hist, ref=ref, tab=arrays)

    def combine(a, cs, x, hist):
        out = bcast(a, x) * x
        for s in range(hist.shape[0]):
            out = out + cs[s] * hist[s]
        return out

    def step(model, grid: Grid, state: DualFastState, i, keys, last):
        tab = state.tab
        x = state.x
        x_pred = combine(tab["a"][i], tab["c"][i], x, state.hist)
        if last:
            return state._replace(x=x_pred)
        j = i + 1
        x0, eps = outputs(model, x_pred, grid.t[j])
        m_new, raw = mix_outputs(x0, eps, state.ref, tab["mix"][j], grid.alpha[j].astype(x.dtype),
                                 grid.sigma[j].astype(x.dtype), mix_view, base_view)
        x_new = x_pred
        if has_corrector:
            x_corr = combine(tab["ca"][i], tab["cc"][i], x, state.hist) + tab["cw"][i] * m_new
            x_new = jnp.where(tab["corrected"][i], x_corr, x_pred)
        hist = jnp.concatenate([m_new[None], state.hist[:-1]], 0)
        ref = raw if reference == "previous" else state.ref
        return DualFastState(x=x_new, hist=hist, ref=ref, tab=tab)

    table = None
    if reference == "previous" and mix_view == base_view:
        def table(grid: Grid, schedule):
            """The one table-driven program runs this case (see :func:`previous_reference_table`)."""
            tab = base_solver.table(grid, schedule)
            return previous_reference_table(tab, mixing_weights(tab.n_steps, mixing, decay, tab.c.dtype))

    return Solver(name=base_solver.name, init=init, step=step, nfe=base_solver.nfe, order=base_solver.order,
                  min_steps=base_solver.min_steps, view=base_view, step_orders=base_solver.step_orders, table=table)
