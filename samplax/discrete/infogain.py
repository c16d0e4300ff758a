"""Information-gain unmasking for masked diffusion models.

Yang, Teoh, Yang, Zhang, Lamb, "Improving Sampling for Masked Diffusion Models via Information
Gain" (arXiv:2602.18176, 2026).  At each decoding step the Info-Gain Sampler picks the action
(a position and its token) that maximises

    J(a | z_t) = IG(a; z_t) - C(a | z_t),               (paper Sec. 3, its Eq. 5 as cited by a
                                                          third-party summary; the PDF was not
                                                          available to us, the code was)

with C(a) = the entropy of the model's prediction at the position the action reveals (the
"immediate cost") and IG(a) = H(z_t) - H(z_t after a), the drop of the uncertainty of the
positions that stay masked.  The uncertainty of a state is the MEAN marginal entropy of its
masked positions (as in the official code, yks23/Information-Gain-Sampler); H(z_t) does not
depend on a, so the argmax is the one of  -C(a) - Hbar_next(a).  The non-causal model gives
Hbar_next(a) with one extra model call on the candidate state z_t + a, and the chosen
candidate's call is reused as the next step's prediction (no separate call).

Two candidate rules (``mode``):

* ``"sampled"`` (the paper's sampler): ``candidates`` = N actions per step.  Candidate 0 draws a
  token at every masked position from the model and takes the position whose drawn token is the
  most probable; candidates 1..N-1 draw their own tokens and take
  argmax_i (p_i(token_i) / position_temperature + Gumbel_i) (the paper's Gumbel position
  sampling).  All N candidate states are evaluated in one batched model call; the best J wins,
  token included.  Because the token is chosen by J (not drawn from p), the sampler is a planner:
  it is NOT an exact sampler of the model's distribution even with exact conditionals.
* ``"expected"`` (ours, the exact expectation, for small vocabularies): the min(N, L) masked
  positions with the largest max-probability are candidates (fewer masked ones: the rest are
  evaluated and scored -inf); for each, every token v is evaluated (min(N, L) * V states per
  step), and the position maximises the EXPECTED objective
      J(i) = -cost_weight * H(p_i) - sum_v p_i(v) * Hbar(z_t + {x_i = v}),
  then its token is drawn from p_i.  The order depends only on revealed tokens, so with exact
  conditionals every sample is exact (the chain rule holds for any adapted order).  The score is
  the expected reduction of the remaining uncertainty: with Hbar a sum instead of a mean,
  IG(i) would be the sum of the conditional mutual informations between x_i and the other
  masked positions.

One position is revealed per step (the official sampler's k = 1).  Not implemented: the
high-confidence bypass (``threshold``), blocks and the beam search of the official code.

Cost (exact, counted in DecodeInfo.nfe, one NFE = one sequence evaluation by the model): a start
with m masked positions costs
    sampled:  1 + N * (m - 1)          expected:  1 + min(N, L) * V * (m - 1)
(the start state's call, then one evaluation per candidate state at every step that leaves at
least one position masked; the last step draws from the reused prediction).  The candidates of
a step are ONE batched call of the model over B * N (or B * min(N, L) * V) sequences; the model
is called at the time t whose alpha(t) is the state's revealed fraction (``schedule``), which
matters only for a time-conditioned model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from samplax.discrete.base import (DecodeInfo, DiscreteSampler, categorical, check_int, check_precision, entropy,
                                   gumbel, mask_schedule)

Array = jnp.ndarray

_MODES = ("sampled", "expected")


def masked_mean_entropy(logp: Array, masked: Array) -> Array:
    """Mean marginal entropy of the masked positions: logp float[..., L, V], masked bool[..., L]
    -> float[...] (0 where nothing is masked)."""
    h = entropy(logp)
    n = jnp.sum(masked, axis=-1)
    return jnp.sum(jnp.where(masked, h, 0.0), axis=-1) / jnp.maximum(n, 1)


def expected_scores(logp: Array, next_logp: Array, masked: Array, positions: Array,
                    cost_weight: float = 1.0) -> Array:
    """The expected objective of ``mode="expected"`` for one state.

    logp float[L, V]: the prediction at z_t; next_logp float[N, V, L, V]: the prediction at
    z_t + {x_{positions[n]} = v}; masked bool[L]; positions int32[N].  Returns float[N]:
    -cost_weight * H(p_i) - sum_v p_i(v) Hbar(z_t + {x_i = v}), -inf where positions[n] is not
    masked."""
    n_cand, v_size = next_logp.shape[0], next_logp.shape[1]
    length = masked.shape[0]
    onehot = jax.nn.one_hot(positions, length, dtype=bool)                    # [N, L]
    rest = masked[None, :] & ~onehot                                          # [N, L]
    h_next = masked_mean_entropy(next_logp, jnp.broadcast_to(rest[:, None, :], (n_cand, v_size, length)))
    p_i = jnp.exp(logp[positions])                                            # [N, V]
    cost = entropy(logp)[positions]
    score = -cost_weight * cost - jnp.sum(p_i * h_next, axis=-1)
    return jnp.where(masked[positions], score, -jnp.inf)


def sampled_scores(logp: Array, next_logp: Array, cand_masked: Array, positions: Array,
                   cost_weight: float = 1.0) -> Array:
    """The paper's objective for sampled candidates: -cost_weight * H(p_{pos}) - Hbar(next),
    logp float[L, V], next_logp float[N, L, V], cand_masked bool[N, L] (masked after the
    action), positions int32[N] -> float[N]."""
    return -cost_weight * entropy(logp)[positions] - masked_mean_entropy(next_logp, cand_masked)


def model_call(model, xs: Array, schedule: str = "linear") -> Array:
    """One batched model call on states int32[..., L] at the time whose alpha is the revealed
    fraction of each state -> float[..., L, V]."""
    sched = mask_schedule(schedule)
    shape = xs.shape
    flat = xs.reshape(-1, shape[-1])
    revealed = jnp.mean((flat != model.vocab_size).astype(jnp.float32), axis=-1)
    out = model(flat, sched.t_from_alpha(revealed).astype(jnp.float32))
    return out.reshape(shape + (out.shape[-1],))


def expected_candidates(model, x: Array, logp: Array, candidates: int, cost_weight: float = 1.0,
                        schedule: str = "linear"):
    """The expected-mode candidates of a batch: the min(candidates, L) masked positions with the
    largest max-probability, every token at each, evaluated in ONE model call of
    B * min(candidates, L) * V rows.  x int32[B, L], logp float[B, L, V] (the prediction at x) ->
    positions int32[B, N], scores float[B, N] (:func:`expected_scores`), next_logp
    float[B, N, V, L, V]."""
    v_size = model.vocab_size
    masked = x == model.vocab_size
    n_pos = min(candidates, x.shape[-1])
    conf = jnp.where(masked, jnp.max(logp, axis=-1), -jnp.inf)
    positions = jax.lax.top_k(conf, n_pos)[1].astype(jnp.int32)                     # [B, N]
    toks = jnp.arange(v_size, dtype=jnp.int32)

    def states_of(xb, pos):
        return jax.vmap(lambda i: jax.vmap(lambda v: xb.at[i].set(v))(toks))(pos)   # [N, V, L]

    states = jax.vmap(states_of)(x, positions)                                      # [B, N, V, L]
    next_logp = model_call(model, states, schedule)                                 # [B, N, V, L, V]
    scores = jax.vmap(lambda lp, nl, m, p: expected_scores(lp, nl, m, p, cost_weight))(
        logp, next_logp, masked, positions)
    return positions, scores, next_logp


def info_gain(candidates: int = 8, position_temperature: float = 0.2, mode: str = "sampled",
              cost_weight: float = 1.0, schedule: str = "linear", precision: str = "high") -> DiscreteSampler:
    """Info-Gain Sampler (arXiv:2602.18176): one position per step, chosen by J = IG - C over N =
    ``candidates`` actions evaluated with extra model calls (``mode`` "sampled": the paper's
    Gumbel-sampled (position, token) actions; "expected": the exact expectation over the token).
    The model is called at t with alpha(t) = the revealed fraction (``schedule``).  NFE per sample
    with m masked positions: 1 + N (m - 1) (sampled) or 1 + min(N, L) V (m - 1) (expected)."""
    check_int("candidates", candidates)
    ok = (isinstance(position_temperature, (int, float)) and not isinstance(position_temperature, bool)
          and 0 < position_temperature < float("inf"))
    if not ok:
        raise ValueError(f"position_temperature: must be a finite number > 0, got {position_temperature!r}")
    if mode not in _MODES:
        raise ValueError(f"mode: unknown {mode!r}; allowed: {list(_MODES)}")
    ok = isinstance(cost_weight, (int, float)) and not isinstance(cost_weight, bool) and 0 <= cost_weight < float("inf")
    if not ok:
        raise ValueError(f"cost_weight: must be a finite number >= 0, got {cost_weight!r}")
    sched = mask_schedule(schedule)
    check_precision(precision)
    n_cand = candidates
    tau = float(position_temperature)
    cw = float(cost_weight)

    def call(model, xs):
        return model_call(model, xs, sched.name)

    def propose_sampled(model, x, logp, key):
        """Candidate actions of one sample: positions int32[N], candidate states int32[N, L]."""
        mask_id = model.vocab_size
        masked = x == mask_id
        k_tok, k_pos = jax.random.split(key)
        tok_keys = jax.random.split(k_tok, n_cand)
        tokens = jax.vmap(lambda k: categorical(k, logp, precision))(tok_keys)         # [N, L]
        conf = jnp.exp(jnp.take_along_axis(logp[None], tokens[..., None], -1)[..., 0])  # [N, L]
        g = gumbel(k_pos, conf.shape, conf.dtype, precision)
        first = jnp.arange(n_cand)[:, None] == 0
        pos_score = jnp.where(first, conf, conf / tau + g)
        pos_score = jnp.where(masked[None], pos_score, -jnp.inf)
        positions = jnp.argmax(pos_score, axis=-1).astype(jnp.int32)
        chosen = jnp.take_along_axis(tokens, positions[:, None], -1)[:, 0]
        states = jnp.broadcast_to(x, (n_cand,) + x.shape)
        states = jax.vmap(lambda s, i, v: s.at[i].set(v))(states, positions, chosen)
        return positions, states

    def step_sampled(model, x, logp, keys, active, has_call):
        positions, states = jax.vmap(lambda a, b, k: propose_sampled(model, a, b, k))(x, logp, keys)
        next_logp = call(model, states)                                               # [B, N, L, V]
        cand_masked = states == model.vocab_size
        score = jax.vmap(lambda lp, nl, cm, p: sampled_scores(lp, nl, cm, p, cw))(
            logp, next_logp, cand_masked, positions)
        # the last masked position needs no look-ahead: candidate 0 (its token drawn from p)
        best = jnp.where(has_call, jnp.argmax(score, axis=-1), 0)
        pick = lambda a: jnp.take_along_axis(a, best.reshape((-1,) + (1,) * (a.ndim - 1)), 1)[:, 0]
        new_x = jnp.where(active[:, None], pick(states), x)
        new_logp = jnp.where(has_call[:, None, None], pick(next_logp), logp)
        return new_x, new_logp, n_cand

    def step_expected(model, x, logp, keys, active, has_call):
        positions, score, next_logp = expected_candidates(model, x, logp, n_cand, cw, sched.name)
        best = jnp.argmax(score, axis=-1)
        pos = jnp.take_along_axis(positions, best[:, None], 1)[:, 0]
        tok = jax.vmap(lambda k, lp, i: categorical(k, lp[i], precision))(keys, logp, pos)
        rows = jnp.arange(x.shape[0])
        new_x = jnp.where(active[:, None], x.at[rows, pos].set(tok), x)
        new_logp = jnp.where(has_call[:, None, None], next_logp[rows, best, tok], logp)
        return new_x, new_logp, positions.shape[1] * model.vocab_size

    step_fn = step_sampled if mode == "sampled" else step_expected

    def run(model, x, keys):
        x = jnp.asarray(x, jnp.int32)
        mask_id = model.vocab_size
        n_masked0 = jnp.sum(x == mask_id, axis=-1)
        logp = call(model, x)
        nfe = (n_masked0 > 0).astype(jnp.int32)
        finite0 = jnp.all(jnp.isfinite(logp), axis=(-2, -1))
        nonfinite = jnp.where((n_masked0 > 0) & ~finite0, 0, -1).astype(jnp.int32)
        steps = jnp.zeros_like(nfe)

        def cond(c):
            return jnp.any(c[0] == mask_id)

        def body(c):
            x, logp, nfe, steps, nonfinite, k = c
            m = jnp.sum(x == mask_id, axis=-1)
            active = m >= 1
            has_call = m >= 2
            step_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, k))(keys)
            new_x, new_logp, calls = step_fn(model, x, logp, step_keys, active, has_call)
            bad = has_call & ~jnp.all(jnp.isfinite(new_logp), axis=(-2, -1)) & (nonfinite < 0)
            nonfinite = jnp.where(bad, k + 1, nonfinite)
            nfe = nfe + jnp.where(has_call, calls, 0).astype(jnp.int32)
            steps = steps + active.astype(jnp.int32)
            return new_x, new_logp, nfe, steps, nonfinite, k + 1

        x, _, nfe, steps, nonfinite, _ = jax.lax.while_loop(
            cond, body, (x, logp, nfe, steps, nonfinite, jnp.int32(0)))
        return x, DecodeInfo(nfe=nfe, steps=steps, nonfinite_step=nonfinite)

    options = dict(candidates=candidates, position_temperature=position_temperature, mode=mode,
                   cost_weight=cost_weight, schedule=sched.name, precision=precision)
    max_calls = (lambda length: 1 + n_cand * (length - 1)) if mode == "sampled" else None
    return DiscreteSampler(name="info_gain", run=run, options=options, extra_calls=True,
                           max_calls=max_calls)
