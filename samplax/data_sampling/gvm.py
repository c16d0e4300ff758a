"""GVM: per-prompt sample allocation that minimises the gradient variance of rejection-sampling
fine-tuning (Yao et al. 2025, "Optimizing Chain-of-Thought Reasoners via Gradient Variance
Minimization in Rejection Sampling and RL", arXiv:2505.02391; GVM-RAFT, Sec. 3 and Alg. 2).

The setting (RAFT: sample responses per prompt, keep the verified-correct ones, fine-tune on
them).  Prompt i has acceptance rate ``p_i`` (the probability that one sampled response is
correct) and ``G_i`` = the norm of the gradient of ``log pi(y | x_i)`` over accepted responses.
Drawing ``n_i`` responses and averaging ``1[accepted_j] grad log pi(y_j | x_i) / p_i`` gives an
unbiased estimate of prompt i's term of the ELBO gradient whose variance is at most
``G_i**2 / (n_i p_i)`` (one draw: ``E[1[acc] ||g||**2] / p_i**2 = G_i**2 / p_i``, less the squared
mean).  The allocation minimises the bound summed over prompts under the budget:

    minimise  V(n) = sum_i w_i / n_i     subject to  sum_i n_i = N,  n_i >= 0,
    w_i = G_i**2 / p_i.

Lagrange (``-w_i / n_i**2 + lambda = 0``) gives the closed form

    n_i = N sqrt(w_i) / sum_j sqrt(w_j)  =  N (G_i / sqrt(p_i)) / sum_j (G_j / sqrt(p_j)),

the paper's rule: more samples to prompts with large gradients and low acceptance.  Because
``1 / sqrt(p)`` explodes for prompts the model (almost) never solves, the paper regularises the
acceptance rate with two constants ``alpha`` (small) and ``beta`` (the authors' released code
uses alpha = 1e-3, beta = 2):

    n_i  proportional to  G_i / sqrt(p_i + alpha / p_i**(beta - 1)),

i.e. ``w_i = G_i**2 / (p_i + alpha p_i**(1 - beta))`` (``alpha = 0`` is the plain rule), and gives
``n_i = 0`` to a prompt with ``p_i = 0`` or ``G_i = 0`` (nothing to learn from it).  With beta = 2
the denominator ``p + alpha / p`` is smallest at ``p = sqrt(alpha)``: the allocation peaks at
acceptance ~3% and falls to zero both for solved prompts and for hopeless ones.

What is ours (the paper leaves it open or uses plain per-iteration estimates):

* a lower bound ``n_i >= minimum``: the constrained minimiser is the water-filling
  ``n_i = max(minimum, c sqrt(w_i))`` with ``c`` set by the budget (KKT of the convex problem);
* integer allocations two ways: ``"largest_remainder"`` (floor, then the leftover units to the
  largest fractional parts: the total is preserved, each ``n_i`` within 1 of the continuous
  optimum; what the authors' code does up to tie-breaking) and ``"greedy"`` (one unit at a time
  to the largest decrease ``w_i / (n_i (n_i + 1))`` of V: the exact integer minimiser of a
  separable convex objective, checked by brute force in tests/test_raft.py);
* the estimators (:class:`AllocationState`): acceptance counts and gradient-norm sums per prompt,
  smoothed across iterations by an exponential decay (``decay = 0``: the paper's fresh
  per-iteration estimates), a Beta(a, b) prior on ``p_i`` (posterior mean; ``a = b = 0`` is the
  plain ratio) and a pseudo-count prior pulling ``G_i`` towards the pooled mean.

Every function is pure jnp (jit-able, fixed shapes); the state is a pytree of float32 arrays,
checkpointed with the run (samplax.experiment.raft).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ROUNDINGS = ("largest_remainder", "greedy")
ALLOCATIONS = ("uniform", "gvm")


# ---------------------------------------------------------------------------------------
# The objective and the closed form
# ---------------------------------------------------------------------------------------
def variance_weights(p, G, alpha: float = 0.0, beta: float = 2.0):
    """``w_i = G_i**2 / (p_i + alpha p_i**(1 - beta))``: prompt i's coefficient in the variance
    bound ``V(n) = sum_i w_i / n_i`` (module docstring); 0 where ``p_i <= 0`` or ``G_i <= 0``."""
    p = jnp.asarray(p, jnp.float32)
    G = jnp.asarray(G, jnp.float32)
    ok = (p > 0) & (G > 0)
    ps = jnp.where(ok, p, 1.0)
    denom = ps + alpha * ps ** (1.0 - beta)
    return jnp.where(ok, G ** 2 / denom, 0.0)


def variance_objective(n, w):
    """``V(n) = sum_i w_i / n_i`` (a term with ``w_i = 0`` is 0; ``w_i > 0`` with ``n_i = 0`` is inf)."""
    n = jnp.asarray(n, jnp.float32)
    w = jnp.asarray(w, jnp.float32)
    term = jnp.where(w > 0, w / jnp.where(n > 0, n, 1.0), 0.0)
    term = jnp.where((w > 0) & (n <= 0), jnp.inf, term)
    return jnp.sum(term)


def gvm_fractions(p, G, alpha: float = 0.0, beta: float = 2.0):
    """The paper's closed form: the fraction of the budget for each prompt,
    ``sqrt(w_i) / sum_j sqrt(w_j)`` = ``(G_i / sqrt(p_i + alpha p_i**(1-beta))) / sum_j (...)``;
    uniform when every weight is 0."""
    s = jnp.sqrt(variance_weights(p, G, alpha, beta))
    tot = jnp.sum(s)
    return jnp.where(tot > 0, s / jnp.where(tot > 0, tot, 1.0), jnp.full_like(s, 1.0 / s.shape[0]))


def continuous_allocation(w, total, minimum=0.0):
    """The real-valued minimiser of ``sum_i w_i / n_i`` subject to ``sum_i n_i = total`` and
    ``n_i >= minimum``: ``n_i = max(minimum, c sqrt(w_i))`` with ``c`` solving the budget
    (water-filling; ``minimum = 0``: the closed form ``total sqrt(w_i) / sum_j sqrt(w_j)``).
    Needs ``total >= M minimum``; with every weight 0 the budget is split evenly."""
    w = jnp.asarray(w, jnp.float32)
    M = w.shape[0]
    total = jnp.asarray(total, jnp.float32)
    minimum = jnp.asarray(minimum, jnp.float32)
    s = jnp.sqrt(w)
    order = jnp.argsort(s)                    # ascending: the first k are the ones held at the floor
    ss = s[order]
    tail = jnp.cumsum(ss[::-1])[::-1]          # tail[k] = sum_{j >= k} ss[j]
    k = jnp.arange(M)
    c = (total - k * minimum) / jnp.where(tail > 0, tail, 1.0)
    below_ok = (k == 0) | (c * ss[jnp.maximum(k - 1, 0)] <= minimum)   # the floored ones stay floored
    above_ok = c * ss >= minimum                                         # the rest are above the floor
    valid = below_ok & above_ok & (tail > 0)
    kstar = jnp.argmax(valid)
    cstar = c[kstar]
    n = jnp.maximum(minimum, cstar * s)
    even = jnp.full((M,), total / M)
    return jnp.where(jnp.any(valid), n, even)


def round_preserving_total(x, total: int):
    """Integers ``n`` with ``sum n = total`` and ``|n_i - x_i| < 1``: floor, then one more unit to
    the ``total - sum floor`` largest fractional parts (ties: lower index).  ``x`` should sum to
    ``total`` (as :func:`continuous_allocation` does); a prompt at an integer floor stays there."""
    x = jnp.asarray(x, jnp.float32)
    fl = jnp.floor(x + 1e-6)                      # guard x = 2.9999997 from float rounding
    fl = jnp.minimum(fl, jnp.floor(x) + 1)
    left = jnp.asarray(total, jnp.int32) - jnp.sum(fl).astype(jnp.int32)
    frac = x - fl
    rank = jnp.argsort(jnp.argsort(-frac, stable=True), stable=True)
    return (fl + (rank < left)).astype(jnp.int32)


def greedy_allocation(w, total: int, minimum: int = 0):
    """The exact integer minimiser of ``sum_i w_i / n_i`` with ``sum n = total``, ``n_i >= minimum``:
    start at the floor and give the ``total - M minimum`` remaining units one at a time to the
    prompt whose next unit lowers V most, ``w_i / (n_i (n_i + 1))`` (inf at ``n_i = 0`` when
    ``w_i > 0``; ties: lower index).  Optimal because every term is convex in ``n_i`` (the classic
    marginal-allocation argument)."""
    w = jnp.asarray(w, jnp.float32)
    M = w.shape[0]
    n0 = jnp.full((M,), minimum, jnp.int32)

    def gain(n):
        nf = n.astype(jnp.float32)
        g = w / jnp.where(n > 0, nf * (nf + 1.0), 1.0)
        return jnp.where(n > 0, g, jnp.where(w > 0, jnp.inf, 0.0))

    def body(_, n):
        return n.at[jnp.argmax(gain(n))].add(1)

    return jax.lax.fori_loop(0, jnp.asarray(total, jnp.int32) - M * minimum, body, n0)


def uniform_allocation(num_prompts: int, total: int):
    """``total // M`` each, the ``total % M`` leftover units to the first prompts."""
    M = int(num_prompts)
    base = total // M
    return (jnp.full((M,), base, jnp.int32) + (jnp.arange(M) < total - base * M)).astype(jnp.int32)


def gvm_allocation(p, G, total: int, minimum: int = 1, alpha: float = 1e-3, beta: float = 2.0,
                   rounding: str = "largest_remainder"):
    """int32 (M,) samples per prompt summing to ``total``, each ``>= minimum``: the paper's rule
    (weights :func:`variance_weights`), rounded by ``rounding`` (:data:`ROUNDINGS`)."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding: must be one of {ROUNDINGS}, got {rounding!r}")
    M = jnp.shape(p)[0]
    if total < M * minimum:
        raise ValueError(f"total: a budget of {total} cannot give {M} prompts at least {minimum} each")
    w = variance_weights(p, G, alpha, beta)
    if rounding == "greedy":
        return greedy_allocation(w, total, minimum)
    return round_preserving_total(continuous_allocation(w, total, minimum), total)


# ---------------------------------------------------------------------------------------
# The estimates of p_i and G_i
# ---------------------------------------------------------------------------------------
class AllocationState(NamedTuple):
    """Per-prompt running sums (float32 (M,)), decayed by ``decay`` each update:
    ``drawn`` responses, ``accepted`` ones, ``grad_sum`` of their gradient norms over the
    ``grad_count`` accepted ones whose norm was measured."""
    drawn: jax.Array
    accepted: jax.Array
    grad_sum: jax.Array
    grad_count: jax.Array


def init_state(num_prompts: int) -> AllocationState:
    z = jnp.zeros((int(num_prompts),), jnp.float32)
    return AllocationState(z, z, z, z)


def update_state(state: AllocationState, drawn, accepted, grad_sum=None, grad_count=None,
                 decay: float = 0.0) -> AllocationState:
    """``new = decay * old + this iteration``, per prompt (``decay = 0``: this iteration only, the
    paper's estimate; ``decay = 1``: all history).  ``grad_sum``/``grad_count`` None: the
    gradient sums are only decayed (no norms measured this time)."""
    f = lambda old, new: decay * old + jnp.asarray(new, jnp.float32)
    gs = jnp.zeros_like(state.grad_sum) if grad_sum is None else grad_sum
    gc = jnp.zeros_like(state.grad_count) if grad_count is None else grad_count
    if grad_sum is None:   # nothing measured: keep the old gradient estimate as it was
        return AllocationState(f(state.drawn, drawn), f(state.accepted, accepted), state.grad_sum, state.grad_count)
    return AllocationState(f(state.drawn, drawn), f(state.accepted, accepted), f(state.grad_sum, gs),
                           f(state.grad_count, gc))


def acceptance_estimate(state: AllocationState, prior_a: float = 0.0, prior_b: float = 0.0):
    """``p_i = (a + accepted_i) / (a + b + drawn_i)``: the posterior mean under a Beta(a, b) prior
    (``a = b = 0``: the plain ratio, 0 for a prompt never drawn)."""
    den = prior_a + prior_b + state.drawn
    return jnp.where(den > 0, (prior_a + state.accepted) / jnp.where(den > 0, den, 1.0), 0.0)


def grad_norm_estimate(state: AllocationState, prior_count: float = 0.0):
    """``G_i = (grad_sum_i + c Gbar) / (grad_count_i + c)`` with ``Gbar`` the pooled mean norm over
    all prompts (``c = 0``: the plain per-prompt mean, 0 for a prompt with no accepted response;
    with no measurement anywhere yet, ``G_i = 1`` for every prompt: the allocation then follows p)."""
    tot_c = jnp.sum(state.grad_count)
    gbar = jnp.where(tot_c > 0, jnp.sum(state.grad_sum) / jnp.where(tot_c > 0, tot_c, 1.0), 1.0)
    den = state.grad_count + prior_count
    est = jnp.where(den > 0, (state.grad_sum + prior_count * gbar) / jnp.where(den > 0, den, 1.0), 0.0)
    return jnp.where(tot_c > 0, est, jnp.ones_like(est))


__all__ = ["ROUNDINGS", "ALLOCATIONS", "variance_weights", "variance_objective", "gvm_fractions",
           "continuous_allocation", "round_preserving_total", "greedy_allocation", "uniform_allocation",
           "gvm_allocation", "AllocationState", "init_state", "update_state", "acceptance_estimate",
           "grad_norm_estimate"]
