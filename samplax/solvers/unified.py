"""One compiled program for every linear multistep method: step tables.

Every multistep solver in :mod:`samplax.solvers.multistep` advances as

    x_pred = a_i x_i + sum_k c_{i,k} m_{i-k}                         (predictor)
    x_corr = a'_i x_i + sum_k c'_{i,k} m_{i-k} + w_i . m(x_pred, t_{i+1})   (corrector, where on)

with scalars that depend only on the grid, the schedule and the step's
decisions (order, prediction type, corrector, derivative estimation).  A
:class:`Table` carries those scalars for all steps as arrays, computed *outside*
the sampling loop, and :func:`run_table` is the one program that consumes it.
DDIM, DPM-Solver(++) 2M/3M, UniPC (with or without UniC), DEIS, iPNDM, iPNDM_v
and AFS are particular tables; a batch of tables (of equal length, history
depth and views) is one ``jax.vmap`` of :func:`run_table`; a learned table is a
gradient step on its arrays.

History layout: ``hist`` has K * V slots, slot ``k * V + v`` holding the model
output of ``k`` steps ago in view ``views[v]`` ("data" and/or "noise"; with both
views the model is asked for both at every evaluation, see
``DiffusionModel.data_noise``).  ``c`` has shape (n, K * V) in that layout.

Tables are built by

* :func:`solver_table` (``Solver.table``) from a multistep solver and a grid:
  the coefficients of the dedicated engine, vectorised over steps, with unused
  higher-order branches fed finite dummy nodes so that gradients with respect to
  the time points never see the inf / NaN of a discarded branch;
* :func:`schedule_table` from a :class:`SolverSchedule`: per-step decisions (the
  unified sampling framework of Liu et al. 2023, "A Unified Sampling Framework
  for Solver Searching of Diffusion Probabilistic Models").
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from samplax.solvers.base import _count_nonfinite, bcast
from samplax.timesteps import Grid

Array = jnp.ndarray

VIEWS = ("data", "noise")


@flax.struct.dataclass
class Table:
    """Coefficients of an n-step linear multistep solve (see the module doc).

    Arrays: ``t, alpha, sigma`` (n + 1,) at the grid's nodes; ``a`` (n,) and ``c``
    (n, K * V) of the predictor; ``ca`` (n,), ``cc`` (n, K * V) and ``cw`` (n, V)
    of the corrector (used where ``corrected``); ``orders`` (n,) the order each
    step uses (diagnostics only).  Static: ``views`` (the model views kept),
    ``k`` (history depth), ``has_corrector`` (any step corrected), ``afs``
    (analytic first step: no model call at t_0), ``end`` (the grid's end)."""

    t: Array
    alpha: Array
    sigma: Array
    a: Array
    c: Array
    ca: Array
    cc: Array
    cw: Array
    corrected: Array
    orders: Array
    views: tuple = flax.struct.field(pytree_node=False, default=("data",))
    k: int = flax.struct.field(pytree_node=False, default=1)
    has_corrector: bool = flax.struct.field(pytree_node=False, default=False)
    afs: bool = flax.struct.field(pytree_node=False, default=False)
    end: str = flax.struct.field(pytree_node=False, default="zero")

    @property
    def n_steps(self) -> int:
        return self.a.shape[-1]

    @property
    def nfe(self) -> int:
        """Model evaluations of :func:`run_table` on this table."""
        return self.n_steps + (1 if self.end == "denoise" else 0) - (1 if self.afs else 0)


def _evaluate(model, views, x, t):
    """Model output at (x, t) as a list of V arrays (B, ...) in ``views`` order, in x's dtype.
    One view asks the model for that view only (no both-view conversion)."""
    if len(views) == 1:
        out = model.view(views[0])(x, t)
        return [out if out.dtype == x.dtype else out.astype(x.dtype)]
    x0, eps = model.data_noise(x, t)
    outs = {"data": x0, "noise": eps}
    return [outs[v] if outs[v].dtype == x.dtype else outs[v].astype(x.dtype) for v in views]


def _initial(model, tab: Table, x):
    if not tab.afs:
        return _evaluate(model, tab.views, x, tab.t[0])
    a0, s0 = tab.alpha[0], tab.sigma[0]
    eps = x / jnp.sqrt(a0 * a0 + s0 * s0)
    outs = {"noise": eps, "data": (x - s0 * eps) / a0}
    return [outs[v].astype(x.dtype) for v in tab.views]


def _combine(a, x, coeffs, slots):
    """a x + sum_s coeffs[s] slots[s], a static sum in slot order that skips empty
    (None) slots: no stacked history, no tensordot, no concatenate."""
    out = bcast(a, x) * x
    for s, h in enumerate(slots):
        if h is not None:
            out = out + coeffs[s] * h
    return out


def run_table(model, x_T: Array, tab: Table, return_trajectory: bool = False, diagnostics: bool = True):
    """Sample from x_T (B, ...) with the table: ``(x_0, SampleInfo)``.

    The model is called once at t_0 (unless ``tab.afs``), once after every step
    but the last, and once more at t_n with a "denoise" end; nothing else.  With
    ``diagnostics=False`` the per-step non-finite counts are not computed
    (``SampleInfo`` then reports only the final state; for searches and
    benchmarks that want the bare program).

    Loop structure (what the CPU compiler handles well): step 0 is peeled (its
    empty history slots skipped); then each iteration i = 1 .. n-1 evaluates the
    model at the predicted x_i, applies step i-1's corrector there, and predicts
    x_{i+1}.  So the model output is consumed in the iteration that computes it
    and only the older outputs a step needs are carried, as separate arrays
    (DDIM / first-order tables carry x alone); the history shift is a static
    renaming, not a concatenate."""
    from samplax.solvers.base import SampleInfo

    dt = x_T.dtype
    n, k, v = tab.n_steps, tab.k, len(tab.views)
    cast = lambda a: a if a.dtype == dt else a.astype(dt)  # noqa: E731
    a, c, ca, cc, cw = cast(tab.a), cast(tab.c), cast(tab.ca), cast(tab.cc), cast(tab.cw)
    corr = tab.has_corrector
    # carried history: the slots step i's predictor reads besides the fresh output
    # (and, with a corrector, the oldest slot too: the corrector of step i-1 reads
    # the full history of step i-1).
    n_keep = (k - 1) * v if not corr else k * v

    m0 = _initial(model, tab, x_T)
    hist0 = m0 + [None] * ((k - 1) * v)
    x1 = _combine(a[0], x_T, c[0], hist0)

    def zeros_like_slots(slots):
        return [jnp.zeros_like(x_T) if h is None else h for h in slots]

    def body(carry, i):
        x_prev, x_p, h_prev = carry  # x_{i-1} (corrector only), predicted x_i, history of step i-1
        m = _evaluate(model, tab.views, x_p, tab.t[i])
        x_i = x_p
        if corr:
            x_corr = _combine(ca[i - 1], x_prev, cc[i - 1], h_prev)
            for j in range(v):
                x_corr = x_corr + cw[i - 1, j] * m[j]
            x_i = jnp.where(tab.corrected[i - 1], x_corr, x_p)
        hist = m + list(h_prev[:(k - 1) * v])
        x_next = _combine(a[i], x_i, c[i], hist)
        out = (x_i if return_trajectory else None, _count_nonfinite(x_i) if diagnostics else None)
        return (x_i if corr else None, x_next, hist[:n_keep]), out

    traj, bad = None, None
    x = x1
    if n > 1:
        h0 = zeros_like_slots(hist0)[:n_keep]
        (_, x, _), (traj, bad) = jax.lax.scan(body, (x_T if corr else None, x1, h0), jnp.arange(1, n))
    elif return_trajectory:
        traj = x_T[None][:0]
    if tab.end == "denoise":
        x = cast(model.data(x, tab.t[-1]))
    if diagnostics and bad is not None:
        bad = jnp.concatenate([bad.astype(jnp.int32), _count_nonfinite(x)[None].astype(jnp.int32)])
    else:
        bad = jnp.concatenate([jnp.zeros((n - 1,), jnp.int32), _count_nonfinite(x)[None].astype(jnp.int32)])
    first = jnp.where(jnp.any(bad > 0), jnp.argmax(bad > 0), -1)
    if return_trajectory:
        traj = jnp.concatenate([traj, x[None]], 0)
    return x, SampleInfo(first_nonfinite_step=first, n_nonfinite=bad, trajectory=traj)


# ----------------------------------------------------------------------------------------
# Tables of the dedicated multistep solvers
# ----------------------------------------------------------------------------------------
def padded_grids(grid: Grid, k: int):
    """Two copies of ``grid`` with k - 1 dummy nodes in front (index shift k - 1).

    The dummies extend the spacing of the first step linearly in each variable
    (t, lambda, sigma_tilde), so a coefficient function asked for an order beyond
    the available history gets distinct, finite nodes instead of clamped ones
    (coincident nodes make the discarded branch singular; its inf would be NaN
    in reverse mode).  The second copy also replaces an infinite lambda at a
    sigma = 0 end by a finite one: it is for the orders > 1, which the step into
    sigma = 0 never uses.  Nodes of the real grid are copied bit for bit."""
    m = k - 1
    if m == 0:
        lo = grid
    else:
        j = jnp.arange(m, 0, -1, dtype=grid.t.dtype)  # m, ..., 1 steps before node 0

        def ext(v):
            d = v[0] - v[1]
            return jnp.concatenate([v[0] + j * d, v])

        st = grid.sigma / grid.alpha
        a0 = grid.alpha[0]
        alpha = jnp.concatenate([jnp.broadcast_to(a0, (m,)), grid.alpha])
        sigma = jnp.concatenate([(st[0] + j * (st[0] - st[1])) * a0, grid.sigma])  # sigma_tilde extended linearly
        lam = jnp.concatenate([grid.lam[0] - j * (grid.lam[1] - grid.lam[0]), grid.lam])
        lo = Grid(t=ext(grid.t), alpha=alpha, sigma=sigma, lam=lam, end=grid.end)
    lam = lo.lam
    if grid.ends_at_zero and grid.n_steps >= 1:
        prev = lam[-2] + (lam[-2] - lam[-3] if lam.shape[0] >= 3 else 1.0)
        lam = lam.at[-1].set(prev)
    hi = Grid(t=lo.t, alpha=lo.alpha, sigma=lo.sigma, lam=lam, end=lo.end)
    return lo, hi


def _select(stacked, sel):
    return jnp.take_along_axis(stacked, sel.reshape((1, -1) + (1,) * (stacked.ndim - 2)), 0)[0]


def multistep_table(coeff_fn: Callable, grid: Grid, schedule, k: int, view: str, orders: Array,
                    corrector_fn: Optional[Callable] = None, corrected: Optional[Array] = None,
                    afs: bool = False) -> Table:
    """The table of a dedicated multistep solver (one view, history depth k)."""
    lo, hi = padded_grids(grid, k)
    idx = jnp.arange(grid.n_steps) + (k - 1)
    sel = jnp.clip(orders - 1, 0, k - 1)

    def per_order(fn, always_hi=False):
        outs = []
        for q in range(1, k + 1):
            g = lo if q == 1 and not always_hi else hi
            outs.append(jax.vmap(lambda i: fn(g, schedule, i, q))(idx))
        return outs

    def stack_c(cs, q, like):
        cols = [jnp.broadcast_to(jnp.asarray(ci, like.dtype), like.shape) for ci in cs]
        return jnp.stack(cols + [jnp.zeros_like(like)] * (k - q), -1)

    pred = per_order(coeff_fn)
    a = _select(jnp.stack([o[0] for o in pred]), sel)
    c = _select(jnp.stack([stack_c(o[1], q, o[0]) for q, o in zip(range(1, k + 1), pred)]), sel)
    n = grid.n_steps
    if corrector_fn is not None:
        corr = per_order(corrector_fn, always_hi=True)  # never used on the step into sigma = 0
        ca = _select(jnp.stack([o[0] for o in corr]), sel)
        cc = _select(jnp.stack([stack_c(o[1], q, o[0]) for q, o in zip(range(1, k + 1), corr)]), sel)
        cw = _select(jnp.stack([jnp.broadcast_to(o[2], o[0].shape) for o in corr]), sel)[:, None]
        corrected = jnp.ones((n,), bool) if corrected is None else corrected
    else:
        ca, cc, cw = a, c, jnp.zeros((n, 1), a.dtype)
        corrected = jnp.zeros((n,), bool)
    return Table(t=grid.t, alpha=grid.alpha, sigma=grid.sigma, a=a, c=c, ca=ca, cc=cc, cw=cw,
                 corrected=corrected, orders=orders.astype(jnp.int32), views=(view,), k=k,
                 has_corrector=corrector_fn is not None, afs=afs, end=grid.end)


def solver_table(solver, grid: Grid, schedule) -> Table:
    """The table of a multistep ``solver`` on ``grid`` (``solver.table``)."""
    if getattr(solver, "table", None) is None:
        raise ValueError(f"solver: {solver.name} is not a linear multistep method (no table); tables exist for "
                         f"ddim, dpm_solver_multistep, dpm_solver_pp, unipc, deis, ipndm, ipndm_v")
    return solver.table(grid, schedule)


def widen(tab: Table, k: Optional[int] = None, views: Optional[Sequence[str]] = None,
          has_corrector: Optional[bool] = None) -> Table:
    """The same solve as a table with a deeper history (``k``), more ``views`` or a
    (never used) corrector slot, so that tables of different solvers can be stacked
    and run as one vmapped program.  Results are unchanged: the new history slots
    and views get zero coefficients (the values themselves may differ in the last
    bits where the model's two-view evaluation rounds differently from one view)."""
    k = tab.k if k is None else k
    views = tuple(tab.views if views is None else views)
    has_corrector = tab.has_corrector if has_corrector is None else has_corrector
    if k < tab.k or not set(tab.views) <= set(views):
        raise ValueError(f"widen: cannot narrow a table (k {tab.k} -> {k}, views {tab.views} -> {views})")
    n, v_old, v_new = tab.n_steps, len(tab.views), len(views)

    def re(cm):  # (n, K_old * V_old) -> (n, K * V_new)
        out = jnp.zeros((n, k, v_new), cm.dtype)
        cm = cm.reshape(n, tab.k, v_old)
        for j, name in enumerate(tab.views):
            out = out.at[:, :tab.k, views.index(name)].set(cm[:, :, j])
        return out.reshape(n, k * v_new)

    cw = jnp.zeros((n, v_new), tab.cw.dtype)
    for j, name in enumerate(tab.views):
        cw = cw.at[:, views.index(name)].set(tab.cw[:, j])
    return tab.replace(c=re(tab.c), cc=re(tab.cc), cw=cw, k=k, views=views, has_corrector=has_corrector)


def stack_tables(tables: Sequence[Table]) -> Table:
    """One batched table (leading axis = table) from tables of equal length and end,
    widened to a common history depth, views and corrector slot."""
    if not tables:
        raise ValueError("stack_tables: no tables")
    ends = {t.end for t in tables}
    lengths = {t.n_steps for t in tables}
    afs = {t.afs for t in tables}
    if len(ends) > 1 or len(lengths) > 1 or len(afs) > 1:
        raise ValueError(f"stack_tables: tables must share n_steps, end and afs to run as one program; got "
                         f"n_steps {sorted(lengths)}, end {sorted(ends)}, afs {sorted(afs)}")
    k = max(t.k for t in tables)
    views = tuple(v for v in VIEWS if any(v in t.views for t in tables))
    corr = any(t.has_corrector for t in tables)
    wide = [widen(t, k, views, corr) for t in tables]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *wide)


