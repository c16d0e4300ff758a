"""Sequential Monte Carlo over token prefixes of an autoregressive language model.

A particle is a prefix ``x_<t`` (tokens ``int32[L]``, positions >= t not yet written) with the LM's
cached state.  Step t extends every particle by one token drawn from a proposal ``q_t(. | x_<t)``
(the LM's conditional through a logit transform) and multiplies its weight by

    w_t = gamma_t(x_<=t) / (gamma_{t-1}(x_<t) q_t(x_t | x_<t)),                                   (1)

where ``gamma_t`` are unnormalised intermediate targets over prefixes ending in the full target
``gamma_T`` at the last position: the sequential-importance-sampling weight for nested targets
(Doucet & Johansen 2009, "A tutorial on particle filtering and smoothing", Sec. 3.2, with resampling
as in their Sec. 3.3-3.5).  A :class:`Potential` supplies ``log gamma_t(x_<=t) - log gamma_{t-1}(x_<t)``;
the proposal's log-probability is subtracted here.  Resampling (ESS-triggered), the normalised weights
and the unbiased estimate ``Z_hat`` of ``Z = sum_x gamma_T(x)`` are :func:`samplax.smc.core.smc`'s:
E[Z_hat] = Z for any particle count and any adaptive resampling rule.

The potential here is :func:`tilted_power_potential`, ``gamma_t(x_<=t) = p(x_<=t)^{alpha_t}
exp(r(x_<=t) / beta)``, with two instances:

* :func:`reward_potential` (all ``alpha_t = 1``): ``gamma_t(x_<=t) = p(x_<=t) exp(r(x_<=t) / beta)``
  with a prefix reward ``r``; with the LM itself as proposal the weight is ``exp((r(x_<=t) - r(x_<t))
  / beta)``, which telescopes to ``exp(r(x) / beta)`` over the sequence (Markovic-Voronov et al.
  2026, "Sampling for Quality: Training-Free Reward-Guided LLM Decoding via Sequential Monte Carlo",
  Sec. 3, the prefix-only SMC whose potentials are prefix rewards; full target ``p(x) exp(r(x) / beta)
  / Z``; the paper notes the framework subsumes power-tempered targets, which the combined potential
  makes literal).
* :func:`power_potential` (no reward): ``gamma_t(x_<=t) = p(x_<=t)^{alpha_t}`` with an exponent
  schedule ``alpha_t`` ending at ``alpha`` (Azizi et al. 2026, "Power-SMC: Low-Latency Sequence-Level
  Power Sampling for Training-Free LLM Reasoning": the power target ``p^alpha / Z``, the exponent
  ramp, the proposal at temperature ``1 / alpha_t``).  Then (1) reads

      w_t = p(x_<t)^{alpha_t - alpha_{t-1}} p(x_t | x_<t)^{alpha_t} / q_t(x_t | x_<t):           (2)

  the first factor is the *catch-up* of the whole prefix to the new exponent (the public Power-SMC
  code applies it as ``delta * cum_logp_prev``; the README's weight formula omits it).  Leaving it out
  makes the weights those of ``prod_t p(x_t | x_<t)^{alpha_t}``, a different target whose normaliser
  is larger than Z (every ``alpha_t <= alpha`` and ``p <= 1``), so ``Z_hat`` is biased upwards and the
  output law is wrong (docs/decoding_smc.md gives the exact ratio and the measured one).

The numbers of a potential (``alpha_t``, ``1 / beta``, the proposal temperature per position, the
two mutation switches) are traced parameters (:class:`LMSMCParams`): runs that differ only in them
share one compilation.

The LM is duck-typed (this module does not import ``samplax.decoding``): anything with ``vocab_size``,
``length``, ``logits_fn(x int32[B, L']) -> logp[B, L', V]`` (causal, normalised) and optionally the
cached path ``init(batch) -> state`` / ``step(state, prev int32[B], pos int32[]) -> (logp[B, V], state)``
whose state leaves have a leading batch axis (they are resampled with the particles).  Without a cached
path each step calls ``logits_fn`` on the whole token buffer.  One step = one model call on all ``n``
particles: a run costs ``n (L - P)`` model calls per output sequence (P the prompt length), plus ``P``
calls at batch 1 to read a prompt through the cached path (the prompt is read once and its state
broadcast to the particles, as Power-SMC's shared prompt cache).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.smc.core import check_ess_threshold, run as smc_run, smc
from samplax.smc.resampling import get_resampling

Array = jax.Array
PyTree = Any
Transform = Callable[[Array, Array], Array]          # (logp[..., V], pos) -> logq[..., V]
Categorical = Callable[[Array, Array], Array]        # (key, logq[n, V]) -> int32[n]

LOG_ZERO = -1e30   # the decoding layer's "impossible token" value (never -inf)

__all__ = ["Potential", "tilted_power_potential", "tilted_power_params", "reward_potential", "power_potential",
           "power_schedule",
           "SCHEDULES", "LMParticles", "LMSMCParams", "LMSMCResult", "default_params", "lm_smc", "pick_particle",
           "num_model_calls", "temper"]


# ---------------------------------------------------------------------------------------
# Potentials (the intermediate targets)
# ---------------------------------------------------------------------------------------
class Potential(NamedTuple):
    """Intermediate targets ``gamma_t`` over prefixes, as log-ratios, with numeric parameters.

    init: ``(params, tokens int32[n, L], P int) -> (log_w0 float[n], state)``: ``log gamma_{P-1}`` of the
        given prefix ``tokens[:, :P]`` (the initial log-weights; ``log Z_hat`` starts at their log-mean)
        and the potential's per-particle state (a pytree with leading axis n, or ``()``).
    log_ratio: ``(params, state, tokens int32[n, L], pos int32[], log_p_prefix float[n], log_p_token
        float[n]) -> (log gamma_t(x_<=pos) - log gamma_{t-1}(x_<pos) float[n], state)``, with ``tokens``
        already holding ``x_pos``; ``log_p_prefix = log p(x_P:pos | x_<P)`` (the generated part before
        pos) and ``log_p_token = log p(x_pos | x_<pos)`` under the untransformed LM.
    params: the default parameters (a pytree of arrays).  They are traced arguments of the compiled
        run (:func:`lm_smc`), so runs that differ only in them (alpha, beta, a schedule, a mutation
        switch) share one compilation, and a sweep over them can be vmapped.
    """
    init: Callable[..., Tuple[Array, PyTree]]
    log_ratio: Callable[..., Tuple[Array, PyTree]]
    params: PyTree = ()
    name: str = "potential"


def _check_beta(beta) -> float:
    if not (isinstance(beta, (int, float, np.floating, np.integer)) and not isinstance(beta, bool)
            and (np.isfinite(beta) or beta == np.inf) and beta > 0):
        raise ValueError(f"beta: must be a number > 0 (inf: no reward), got {beta!r}")
    return float(beta)


def _check_alphas(alphas) -> np.ndarray:
    a = np.asarray(alphas, np.float64)
    if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"alphas: must be a 1-D array of finite exponents > 0, got {alphas!r}")
    return a


def tilted_power_params(alphas, beta: float = np.inf, catch_up: bool = True, telescoping: bool = True) -> dict:
    """Parameters of :func:`tilted_power_potential`: the exponents ``alphas`` float[L], ``1 / beta``
    (0 for ``beta = inf``) and the two switches (1.0 or 0.0; 0 gives the deliberately wrong samplers)."""
    return {"alphas": _check_alphas(alphas), "inv_beta": np.float64(1.0 / _check_beta(beta)),
            "catch_up": np.float64(bool(catch_up)), "telescoping": np.float64(bool(telescoping))}


def tilted_power_potential(reward_fn: Optional[Callable[[Array, Array], Array]] = None, alphas=None,
                           beta: float = np.inf, catch_up: bool = True, telescoping: bool = True) -> Potential:
    """``gamma_t(x_<=t) = p(x_P:t | x_<P)^{alpha_t} exp(r(x_<=t) / beta)``: the reward-tilted power
    target; :func:`reward_potential` (all ``alpha_t = 1``) and :func:`power_potential` (no reward) are
    its two instances, and one compiled run serves both (their numbers are parameters).

    The log-ratio (eq. 1 of the module docstring without the proposal) is

        alpha_t log p(x_t | x_<t) + (alpha_t - alpha_{t-1}) log p(x_<t) + (r(x_<=t) - r(x_<t)) / beta,

    with ``alpha_{P-1} = 1`` (the prefix term vanishes at the first generated position anyway).  The
    initial log-weight is ``r(prompt) / beta`` (``r`` of the empty prefix without a prompt), so
    ``Z_hat`` estimates ``Z = sum_y p(y | prompt)^alpha exp(r(prompt, y) / beta)``, ``alpha`` the last
    exponent.  ``reward_fn``: ``(x int32[n, L], k int32[]) -> float[n]``, the reward of the prefix
    ``x[:, :k]`` (None: no reward).  ``catch_up=False`` drops the ``log p(x_<t)`` term (Power-SMC
    without the catch-up factor; it targets ``prod_t p(x_t | x_<t)^{alpha_t}``); ``telescoping=False``
    adds ``r(x_<=t) / beta`` at every step instead of the increment (it targets ``p exp(sum_t r_t /
    beta)``): the two wrong samplers of the mutation tests."""
    if reward_fn is not None and not callable(reward_fn):
        raise ValueError(f"reward_fn: must be callable (x, n) -> reward of x[:, :n], got {reward_fn!r}")
    if alphas is None:
        raise ValueError("alphas: give the exponent of every position, float[L] (np.ones(L) for none)")
    defaults = tilted_power_params(alphas, beta, catch_up, telescoping)

    def init(params, tokens, P):
        dt = jnp.result_type(float)
        if reward_fn is None:
            return jnp.zeros(tokens.shape[0], dt), ()
        r0 = reward_fn(tokens, jnp.asarray(P, jnp.int32)).astype(dt)
        return params["telescoping"] * params["inv_beta"] * r0, r0

    def log_ratio(params, r_prev, tokens, pos, log_p_prefix, log_p_token):
        dt = log_p_token.dtype
        a = jnp.asarray(params["alphas"], dt)
        at = a[pos]
        a_prev = jnp.where(pos > 0, a[jnp.maximum(pos - 1, 0)], 1.0)
        out = at * log_p_token + jnp.asarray(params["catch_up"], dt) * (at - a_prev) * log_p_prefix
        if reward_fn is None:
            return out, r_prev
        r = reward_fn(tokens, pos + 1).astype(r_prev.dtype)
        inc = (r - params["telescoping"] * r_prev) * params["inv_beta"]
        return out + inc.astype(dt), r

    name = "tilted_power" if reward_fn is not None else "power"
    return Potential(init, log_ratio, defaults, name)


def reward_potential(reward_fn: Callable[[Array, Array], Array], length: int, beta: float = 1.0,
                     telescoping: bool = True) -> Potential:
    """``gamma_t(x_<=t) = p(x_P:t | x_<P) exp(r(x_<=t) / beta)`` (Sampling for Quality, Sec. 3: the
    prefix-only SMC with prefix-reward potentials); with the LM as proposal the weight is
    ``exp((r(x_<=t) - r(x_<t)) / beta)``, which telescopes to ``exp(r(x) / beta)``.  ``length``: the
    model's L."""
    if reward_fn is None or not callable(reward_fn):
        raise ValueError(f"reward_fn: must be callable (x, n) -> reward of x[:, :n], got {reward_fn!r}")
    return tilted_power_potential(reward_fn, np.ones(int(length)), beta, True, telescoping)


SCHEDULES = ("linear", "constant")


def power_schedule(alpha: float, length: int, prompt_length: int = 0, schedule: str = "linear",
                   ramp: int = 0) -> np.ndarray:
    """float64[L]: the exponent ``alpha_t`` used at position t (entries before the prompt end are 1).

    ``"constant"``: ``alpha_t = alpha`` from the first generated token.  ``"linear"``: the exponent ramp
    of Power-SMC, ``alpha_t = 1 + (alpha - 1) min(1, (t - P + 1) / ramp)`` over the first ``ramp``
    generated tokens (``ramp = 0``: all of them); the last position always has ``alpha`` (Power-SMC's
    final catch-up when a sequence ends before the ramp does)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: must be one of {list(SCHEDULES)}, got {schedule!r}")
    if isinstance(ramp, bool) or not isinstance(ramp, (int, np.integer)) or ramp < 0:
        raise ValueError(f"ramp: must be an integer >= 0 (0 = ramp over the whole generated length), got {ramp!r}")
    L, P = int(length), int(prompt_length)
    n_gen = L - P
    a = np.ones(L, np.float64)
    k = np.arange(1, n_gen + 1, dtype=np.float64)
    if schedule == "constant":
        a[P:] = alpha
    else:
        R = n_gen if ramp == 0 else int(ramp)
        a[P:] = 1.0 + (alpha - 1.0) * np.minimum(1.0, k / R)
    a[L - 1] = alpha
    return a


def power_potential(alphas, catch_up: bool = True) -> Potential:
    """``gamma_t(x_<=t) = p(x_P:t | x_<P)^{alpha_t}`` with ``alphas`` float[L] (:func:`power_schedule`):
    the log-ratio is eq. (2) of the module docstring (Power-SMC)."""
    return tilted_power_potential(None, alphas, np.inf, catch_up, True)


# ---------------------------------------------------------------------------------------
# The particle filter
# ---------------------------------------------------------------------------------------
class LMParticles(NamedTuple):
    tokens: Array        # int32[n, L]
    lm_state: PyTree     # leaves [n, ...]
    log_p: Array         # float[n]: log p(x_P:t | x_<P) of the generated prefix (untransformed LM)
    log_q: Array         # float[n]: log of the proposal probabilities of the tokens along the path
    pot_state: PyTree    # the potential's state, leaves [n, ...]
    nonfinite: Array     # int32[n]: first position whose model output was non-finite, -1 if none


class LMSMCParams(NamedTuple):
    """The numeric inputs of a compiled run: the potential's parameters and the proposal's inverse
    temperature per position (``q_t = transform(normalise(logp * inv_temperature[t]), t)``)."""
    potential: PyTree
    inv_temperature: Array    # float[L]


class LMSMCResult(NamedTuple):
    """One SMC run per key (leading axis B)."""
    tokens: Array              # int32[B, n, L] final particles
    log_weights: Array         # float[B, n] final normalised log-weights
    log_Z: Array               # float[B] log Z_hat
    log_p: Array               # float[B, n]
    log_q: Array               # float[B, n]
    nonfinite: Array           # int32[B, n]
    ess: Array                 # float[B, T] ESS before each step's resampling decision (T = L - P)
    resampled: Array           # bool[B, T]
    first_invalid_step: Array  # int32[B]: first step with invalid weights (NaN/+inf/all -inf), -1 if none


def _gumbel_categorical(key, logq):
    g = jax.random.gumbel(key, logq.shape, logq.dtype)
    return jnp.argmax(logq + g, axis=-1).astype(jnp.int32)


def _gather(logp, tok):
    return jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]


def temper(logp, inv_temperature):
    """``normalise(logp * inv_temperature)`` over the last axis; entries at or below ``LOG_ZERO / 2``
    (impossible tokens) stay at ``LOG_ZERO``."""
    ok = logp > LOG_ZERO / 2
    scaled = jnp.where(ok, logp * inv_temperature, -jnp.inf)
    z = jax.scipy.special.logsumexp(scaled, axis=-1, keepdims=True)
    return jnp.where(ok, scaled - z, LOG_ZERO)


def _cached_path(lm):
    init, step = getattr(lm, "init", None), getattr(lm, "step", None)
    if init is not None and step is not None:
        return True, init, step

    def buf_step(buf, prev, pos):
        buf = jnp.where(pos > 0, buf.at[:, jnp.maximum(pos - 1, 0)].set(prev), buf)
        logp = lm.logits_fn(buf)
        return jax.lax.dynamic_index_in_dim(logp, pos, axis=1, keepdims=False), buf
    return False, None, buf_step


def num_model_calls(lm, n_particles: int, prompt_length: int = 0) -> int:
    """Model calls per output sequence: ``n (L - P)`` plus ``P`` (batch 1) to read a prompt through
    the cached path."""
    cached, _, _ = _cached_path(lm)
    L, P = int(lm.length), int(prompt_length)
    return int(n_particles) * (L - P) + (P if cached and P else 0)


def _check_lm(lm):
    for attr in ("vocab_size", "length", "logits_fn"):
        if not hasattr(lm, attr):
            raise ValueError(f"lm: expected a language model with vocab_size, length, logits_fn (and optionally "
                             f"init/step), got {lm!r} without {attr!r}")


def default_params(lm, potential: Potential, temperature: float = 1.0) -> LMSMCParams:
    """The potential's own parameters and a constant proposal temperature."""
    return LMSMCParams(potential.params, np.full(int(lm.length), 1.0 / float(temperature)))


def lm_smc(lm, potential: Potential, n_particles: int, transform: Optional[Transform] = None,
           resampling: str = "systematic", ess_threshold: float = 0.5, prompt=None,
           categorical: Optional[Categorical] = None, jit: bool = True) -> Callable[..., LMSMCResult]:
    """Build ``run(keys[B], params=None) -> LMSMCResult``: B independent particle filters (vmapped;
    jitted when ``jit``), run b driven by ``keys[b]`` alone; ``params`` (:class:`LMSMCParams`, default
    :func:`default_params`) are traced, so changing them does not recompile.

    potential: the intermediate targets (:func:`reward_potential`, :func:`power_potential`, or any
        :class:`Potential`).
    transform: applied to the tempered LM conditional to make the proposal,
        ``q_t = transform(normalise(p(. | x_<t)^{1/T_t}), t)`` (``None``: none).  The proposal's support
        must cover the target's.
    resampling, ess_threshold: as :func:`samplax.smc.core.smc` (resample when ESS < threshold * n).
    prompt: int[P] tokens every particle starts with (positions < P are given, not sampled).
    categorical: ``(key, logq[n, V]) -> int32[n]`` (default Gumbel-max in the weights' dtype; the
        decoding layer passes its exact-tail sampler).
    """
    _check_lm(lm)
    if isinstance(n_particles, bool) or not isinstance(n_particles, (int, np.integer)) or n_particles < 1:
        raise ValueError(f"particles: must be an integer >= 1, got {n_particles!r}")
    if not isinstance(potential, Potential):
        raise ValueError(f"potential: expected a samplax.smc.lm.Potential, got {potential!r}")
    get_resampling(resampling)
    check_ess_threshold(ess_threshold)
    n, L = int(n_particles), int(lm.length)
    P = 0 if prompt is None else int(np.asarray(prompt).shape[0])
    if P >= L:
        raise ValueError(f"prompt: length {P} leaves nothing to generate (model length {L})")
    prompt_np = np.zeros((0,), np.int32) if prompt is None else np.asarray(prompt, np.int32)
    tf = transform if transform is not None else (lambda logp, pos: logp)
    draw = categorical if categorical is not None else _gumbel_categorical
    cached, init_fn, step_fn = _cached_path(lm)
    T = L - P

    def one(key, params: LMSMCParams):
        def mutation(key, parts: LMParticles, t):
            pos = P + t - 1
            prev = jax.lax.dynamic_index_in_dim(parts.tokens, jnp.maximum(pos - 1, 0), axis=1, keepdims=False)
            logp, lm_state = step_fn(parts.lm_state, prev, pos)
            logq = tf(temper(logp, jnp.asarray(params.inv_temperature, logp.dtype)[pos]), pos)
            tok = draw(key, logq)
            tokens = jax.lax.dynamic_update_index_in_dim(parts.tokens, tok, pos, axis=1)
            dt = parts.log_p.dtype
            lp_tok = _gather(logp, tok).astype(dt)
            lq_tok = _gather(logq, tok).astype(dt)
            log_ratio, pot_state = potential.log_ratio(params.potential, parts.pot_state, tokens, pos,
                                                       parts.log_p, lp_tok)
            inc = log_ratio.astype(dt) - lq_tok
            bad = ~jnp.all(jnp.isfinite(logp), axis=-1)
            nonfinite = jnp.where((parts.nonfinite < 0) & bad, pos, parts.nonfinite).astype(jnp.int32)
            return LMParticles(tokens, lm_state, parts.log_p + lp_tok, parts.log_q + lq_tok, pot_state,
                               nonfinite), inc

        sampler = smc(mutation, resampling, ess_threshold)
        key_smc = jax.random.split(key)[0]
        dt = jnp.result_type(float)
        tokens = jnp.zeros((n, L), jnp.int32)
        if P:
            tokens = tokens.at[:, :P].set(jnp.asarray(prompt_np)[None, :])
        if cached:
            state = init_fn(1)
            if P:
                # read the prompt once at batch 1 (positions 0..P-1 consume x_0..x_{P-2})
                def read(s, pos):
                    prev = jnp.asarray(prompt_np)[jnp.maximum(pos - 1, 0)][None]
                    return step_fn(s, prev, pos)[1], None
                state, _ = jax.lax.scan(read, state, jnp.arange(P, dtype=jnp.int32))
            state = jax.tree_util.tree_map(lambda s: jnp.broadcast_to(s, (n,) + jnp.shape(s)[1:]), state)
        else:
            state = tokens
        log_w0, pot_state = potential.init(params.potential, tokens, P)
        zeros = jnp.zeros((n,), dt)
        parts = LMParticles(tokens, state, zeros, zeros, pot_state, jnp.full((n,), -1, jnp.int32))
        st = sampler.init(parts, jnp.asarray(log_w0, dt))
        st, info = smc_run(sampler, key_smc, st, T)
        p = st.particles
        return LMSMCResult(p.tokens, st.log_weights, st.log_Z, p.log_p, p.log_q, p.nonfinite, info.ess,
                           info.resampled, st.first_invalid_step)

    batched = jax.vmap(one, in_axes=(0, None))
    batched = jax.jit(batched) if jit else batched
    defaults = default_params(lm, potential)

    def run(keys, params: Optional[LMSMCParams] = None) -> LMSMCResult:
        return batched(keys, defaults if params is None else params)
    return run


def pick_particle(keys, result: LMSMCResult, categorical: Optional[Categorical] = None):
    """One particle per run drawn from its final weights, with ``split(keys[b])[1]`` (the key
    :func:`lm_smc` leaves unused).  Returns the index ``int32[B]``."""
    draw = categorical if categorical is not None else _gumbel_categorical

    def one(key, lw):
        return draw(jax.random.split(key)[1], lw[None, :])[0]
    return jax.vmap(one)(keys, result.log_weights)
