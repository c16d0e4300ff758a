"""Learnable sampler distillation (LSD / LSD+) for masked diffusion samplers.

Fu, Guo, Liu, "Learnable Sampler Distillation for Discrete Diffusion Models" (NeurIPS 2025,
arXiv:2509.19962).  A few-step student sampler gets one learnable coefficient Phi(t_k) per step
that multiplies the concrete score in its Euler/tau-leaping update (paper Eq. 5, Algorithm 1);
the coefficients are fitted so that the student's intermediate scores match those of a many-step
teacher sampler run with the same randomness (Eq. 6, Algorithm 2).  LSD+ also learns the step
sizes kappa_k, tau_k = T - sum_{l<=k} kappa_l (Eq. 7), by matching the "effective transition
term" step size x score of student and teacher (Eq. 8).

Masked (absorbing) diffusion form used here.  For a masked position the concrete score of the
jump MASK -> v is alpha_t / (1 - alpha_t) * p_theta(v | x_t) (RADD), so Eq. 5's coefficient
scales the probability of leaving the mask in a step and leaves the token distribution alone:
with the MDLM ancestral reveal probability u_k = (alpha(t_{k+1}) - alpha(t_k)) / (1 - alpha(t_k)),
the LSD step reveals a masked position with probability clip(Phi_k u_k, 0, 1) and draws its token
from p_theta(. | x_{t_k}); the last step reveals everything (the paper's last step drops the
mask column).  Phi = 1 is the ancestral sampler itself.  (The official code multiplies the
network's log-score output instead, i.e. a per-step power of the score; we follow the paper's
Eq. 5.)

Training (``distill``, ``objective="score"``: the paper's): the teacher is the ancestral sampler with N = ``teacher_steps`` uniform
steps on the same schedule, the student's grid a subsequence of it.  "Same randomness" is a
coupling that leaves both samplers' laws unchanged: trajectory r draws one uniform U_i per
position and one Gumbel vector G_i per position; a position is revealed at the first step whose
cumulative reveal probability exceeds U_i, with token argmax(log p_i + G_i).  At Phi = 1 the
teacher and the student then have identical masks at the shared times, and differ only through
the tokens revealed.  The per-step loss is Eq. 6 with d = squared error averaged over positions
and tokens, on the masked-position scores p_theta (the common factor alpha/(1-alpha) is dropped:
each Phi_k appears only in its own term, so the minimiser is unchanged):

    L_k(Phi_k) = E_r || m*_k p*_k - Phi_k m_k p_k ||^2 / L,

gradient through the explicit Phi_k only (the states are sampled, non-differentiable: Algorithm
2).  LSD+ adds Eq. 8 in the same form with the step's transition mass: student
e_k = clip(Phi_k u_k(tau)) m_k p_k at tau_k versus the teacher's mass over the same interval of
its grid, e*_k = sum of u*_j m*_j p*_j over its fine steps j in [t_k, t_{k+1}); the step sizes are
kappa = T softmax(theta) (positive, summing to T = 1: a deviation from the paper's free kappa,
which we make so that the grid always ends at t = 0).  Not implemented: the relaxed objective
(Eq. 9-10, a Hamming-perturbed student start), which has no content when the start is all MASK.

In masked form this objective is nearly inert: Phi_0 cannot move (student and teacher agree at
the all-MASK start), the last coefficient is irrelevant (the last step reveals everything), and a
many-step teacher reveals the same expected fraction per interval as the student at Phi = 1
(docs/discrete_infogain_lsd.md measures no TV change).  ``objective="likelihood"`` (ours, not in
the paper) fits the same parameters to the student's OUTPUT law instead: the cross-entropy of the
teacher's samples under the student's reveal-pattern mixture (see :func:`distill`).

Cost of the learned sampler: at most ``steps`` model calls per sample, exactly like ancestral.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from samplax.discrete.base import DiscreteSampler, check_int, check_precision, mask_schedule, sample_keys

Array = jnp.ndarray

_SCHEDULES = ("linear", "cosine", "poly2")


class LSDParams(NamedTuple):
    coefficients: Array   # float[M], Phi_k (1 = ancestral)
    times: Array          # float[M + 1], t_0 = 1 > ... > t_M = 0


def uniform_times(steps: int) -> Array:
    """The ancestral sampler's grid t_k = 1 - k / steps (float32, computed as it does)."""
    with jax.ensure_compile_time_eval():
        return jnp.linspace(1.0, 0.0, steps + 1, dtype=jnp.float32)


def identity_params(steps: int) -> LSDParams:
    """Phi = 1 on the uniform grid: the MDLM ancestral sampler."""
    return LSDParams(coefficients=jnp.ones(steps, jnp.float32), times=uniform_times(steps))


def reveal_probabilities(params: LSDParams, schedule: str = "linear") -> Array:
    """Per-step probability that a still-masked position is revealed: clip(Phi_k u_k, 0, 1), the
    last one 1 (Eq. 5 in masked form)."""
    a = mask_schedule(schedule).alpha(params.times)
    u = (a[1:] - a[:-1]) / (1.0 - a[:-1])
    u = jnp.clip(params.coefficients * u, 0.0, 1.0)
    return u.at[-1].set(1.0)


# ----------------------------------------------------------------------------- sampler

def _parse_floats(name: str, text: str):
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"{name}: must be comma-separated numbers, got {text!r}") from None


def load_params(path: str) -> tuple[LSDParams, dict]:
    """Read a coefficients file written by :func:`save_params` (JSON: coefficients, times, meta)."""
    if not os.path.exists(path):
        raise ValueError(f"coefficients_file: {path!r} does not exist")
    with open(path) as f:
        data = json.load(f)
    if "coefficients" not in data or "times" not in data:
        raise ValueError(f"coefficients_file: {path!r} needs the keys 'coefficients' and 'times'")
    return (LSDParams(np.asarray(data["coefficients"], np.float32), np.asarray(data["times"], np.float32)),
            data.get("meta", {}))


def save_params(path: str, params: LSDParams, meta: Optional[dict] = None) -> None:
    data = {"coefficients": [float(c) for c in np.asarray(params.coefficients)],
            "times": [float(t) for t in np.asarray(params.times)], "meta": meta or {}}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _check_params(steps, coefficients, times):
    if coefficients.shape != (steps,):
        raise ValueError(f"coefficients: need one value per step ({steps}), got {coefficients.shape[0]}")
    if times.shape != (steps + 1,):
        raise ValueError(f"times: need steps + 1 = {steps + 1} values from 1 down to 0, got {times.shape[0]}")
    if not (np.all(np.isfinite(coefficients)) and np.all(coefficients >= 0)):
        raise ValueError(f"coefficients: must be finite and >= 0, got {coefficients.tolist()}")
    if not (times[0] == 1.0 and times[-1] == 0.0 and np.all(np.diff(times) < 0)):
        raise ValueError(f"times: must decrease strictly from 1 to 0, got {times.tolist()}")


def lsd(steps: int = 4, coefficients: str = "", times: str = "", coefficients_file: str = "",
        schedule: str = "linear", cache: bool = True, precision: str = "high") -> DiscreteSampler:
    """The LSD student sampler (Algorithm 1, Eq. 5 in masked form) with per-step coefficients
    Phi_k and, for LSD+, a learned time grid.  ``coefficients`` / ``times``: comma-separated
    values (steps and steps + 1 of them), or ``coefficients_file``: a JSON file written by
    :func:`save_params` (not both); none of them = Phi = 1 on the uniform grid, which is the MDLM
    ancestral sampler bit for bit (same keys, same draws, same cache).  NFE <= steps per sample
    (``cache`` as in ancestral: a time-agnostic model is not called again while a sample's
    sequence is unchanged)."""
    steps = check_int("steps", steps)
    sched = mask_schedule(schedule)
    check_precision(precision)
    if not isinstance(cache, bool):
        raise ValueError(f"cache: must be a bool, got {cache!r}")
    for name, v in (("coefficients", coefficients), ("times", times), ("coefficients_file", coefficients_file)):
        if not isinstance(v, str):
            raise ValueError(f"{name}: must be a string, got {v!r}")
    if coefficients_file and (coefficients or times):
        raise ValueError("coefficients_file: give it or coefficients/times, not both")
    if coefficients_file:
        params, meta = load_params(coefficients_file)
        if meta.get("schedule", schedule) != schedule:
            raise ValueError(f"schedule: {schedule!r} differs from the coefficients file's {meta['schedule']!r}")
        coef, grid = np.asarray(params.coefficients, np.float32), np.asarray(params.times, np.float32)
    else:
        coef = (np.asarray(_parse_floats("coefficients", coefficients), np.float32) if coefficients
                else np.ones(steps, np.float32))
        grid = (np.asarray(_parse_floats("times", times), np.float32) if times
                else np.asarray(uniform_times(steps)))
    _check_params(steps, coef, grid)
    params = LSDParams(jnp.asarray(coef), jnp.asarray(grid))
    options = dict(steps=steps, coefficients=coefficients, times=times, coefficients_file=coefficients_file,
                   schedule=sched.name, cache=cache, precision=precision)
    return DiscreteSampler("lsd", make_run(params, schedule, cache, precision), options,
                           max_calls=lambda length: steps)


def make_run(params: LSDParams, schedule: str = "linear", cache: bool = True, precision: str = "high"):
    """``run(model, x, keys)`` of the student sampler with the given (traceable) parameters: the
    ancestral sampler's run (samplax.discrete.samplers.ancestral_run: per-position reveal uniforms
    and Gumbel noise drawn once) on the learned times, with its reveal probabilities replaced by
    :func:`reveal_probabilities`."""
    from samplax.discrete.samplers import ancestral_run

    sched = mask_schedule(schedule)
    return ancestral_run(lambda: (params.times, reveal_probabilities(params, sched.name)), cache, precision)


# ----------------------------------------------------------------------------- distillation

def _coupled_path(model, length, cum, times, U, G, record):
    """Run the coupled sampler on R trajectories: position i is revealed at the first step k
    with U_i < cum[k] (cum: float[K], cumulative reveal probability after step k), token
    argmax(log p_i + G_i).  Returns the masked-position scores m_k * p_k at the steps in
    ``record`` (float[len(record), R, L, V]) and the final states."""
    mask_id = model.vocab_size
    R = U.shape[0]
    x0 = jnp.full((R, length), mask_id, jnp.int32)

    def body(x, k):
        logp = model(x, jnp.full((R,), times[k], jnp.float32))
        m = (x == mask_id)
        score = jnp.where(m[..., None], jnp.exp(logp), 0.0)
        tok = jnp.argmax(logp + G, axis=-1).astype(jnp.int32)
        x = jnp.where(m & (U < cum[k]), tok, x)
        return x, score

    x, scores = jax.lax.scan(body, x0, jnp.arange(cum.shape[0]))
    return scores[jnp.asarray(record)], x


def _cum_reveal(u):
    return 1.0 - jnp.cumprod(1.0 - u)


def step_distribution(u: Array) -> Array:
    """P(a position still masked at the start is revealed at step k), k = 0..M-1: u_k prod_{j<k}
    (1 - u_j) (sums to 1 when the last u is 1)."""
    surv = jnp.concatenate([jnp.ones(1, u.dtype), jnp.cumprod(1.0 - u)[:-1]])
    return surv * u


def pattern_log_likelihood(model, x: Array, patterns: Array, times: Array) -> Array:
    """log Q_a(x) = sum_k sum_{i: a_i = k} log p_theta(x_i | x revealed where a_j < k, t_k): the
    probability that the M-step sampler produces x given that position i is revealed at step a_i.
    x int32[B, L], patterns int32[B, S, L] -> float[B, S].  M batched model calls of B S rows."""
    mask_id = model.vocab_size
    B, S, L = patterns.shape
    xs = jnp.broadcast_to(x[:, None, :], (B, S, L))

    def one(k):
        z = jnp.where(patterns < k, xs, mask_id).reshape(B * S, L)
        logp = model(z, jnp.full((B * S,), times[k], jnp.float32)).reshape(B, S, L, -1)
        tok = jnp.take_along_axis(logp, xs[..., None], -1)[..., 0]
        return jnp.sum(jnp.where(patterns == k, tok, 0.0), axis=-1)

    return sum(one(k) for k in range(int(times.shape[0]) - 1))


def exact_distribution(model, params: LSDParams, schedule: str = "linear") -> Array:
    """The exact output distribution of the LSD sampler from the all-MASK start, by enumerating
    every sequence (V^L) and every reveal pattern (M^L): q(x) = sum_a P_u(a) Q_a(x).  Only for
    tiny problems (V^L M^L model rows).  Returns float[V^L] in sequence_index order (base V,
    first token most significant)."""
    import itertools
    L, V = model.length, model.vocab_size
    M = int(params.coefficients.shape[0])
    xs = jnp.asarray(np.array(list(itertools.product(range(V), repeat=L))), jnp.int32)
    pats = jnp.asarray(np.array(list(itertools.product(range(M), repeat=L))), jnp.int32)
    logq = pattern_log_likelihood(model, xs, jnp.broadcast_to(pats[None], (xs.shape[0],) + pats.shape),
                                  params.times)
    logw = jnp.sum(jnp.log(step_distribution(reveal_probabilities(params, schedule)))[pats], axis=-1)
    return jnp.exp(jax.scipy.special.logsumexp(logq + logw[None], axis=-1))


class DistillResult(NamedTuple):
    params: LSDParams
    loss_history: np.ndarray
    teacher_samples: Array     # int32[R, L] the teacher's samples used for training


_OBJECTIVES = ("score", "likelihood")


def distill(model, steps: int, teacher_steps: int, key, objective: str = "likelihood",
            learn_times: bool = False, n_traj: int = 256, iterations: int = 100,
            learning_rate: float = 0.05, patterns: int = 32, rounds: int = 4,
            schedule: str = "linear") -> DistillResult:
    """Fit LSD (learn_times=False) or LSD+ (learn_times=True) parameters with optax Adam.

    objective="score": the paper's Algorithm 2 (Eq. 6, plus Eq. 8 for LSD+) on coupled
    student/teacher trajectories (module docstring).  The teacher's targets are computed once
    (n_traj trajectories, N calls each); each iteration re-runs the student (M batched calls).

    objective="likelihood" (ours, not in the paper): minimise the cross-entropy of the teacher's
    samples under the student's output law, E_{x ~ teacher}[-log q_Phi(x)], with
    q_Phi(x) = sum_a P_u(a) Q_a(x) (reveal patterns a, Q_a from :func:`pattern_log_likelihood`)
    estimated by importance sampling: in each of ``rounds`` rounds, ``patterns`` patterns per
    teacher sample are drawn from the current u_r, their Q_a(x) computed once (M batched calls of
    n_traj * patterns rows), and iterations / rounds Adam steps minimise
    -mean_x log( mean_s Q_{a_s}(x) P_u(a_s) / P_{u_r}(a_s) ), an IWAE-type upper bound of the
    cross-entropy, differentiable in Phi and the times through u.  For a time-dependent model the
    model's time inputs are held at the round's grid (the gradient flows through the reveal
    probabilities only).

    Cost: teacher_steps batched calls (n_traj rows) + (score) iterations * steps calls of n_traj
    rows, or (likelihood) rounds * steps calls of n_traj * patterns rows."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"distill: steps must be an integer >= 1, got {steps!r}")
    if not isinstance(teacher_steps, int) or teacher_steps < steps or teacher_steps % steps != 0:
        raise ValueError(f"distill: teacher_steps must be a multiple of steps ({steps}), got {teacher_steps!r}")
    if objective not in _OBJECTIVES:
        raise ValueError(f"distill: objective must be one of {_OBJECTIVES}, got {objective!r}")
    if schedule not in _SCHEDULES:
        raise ValueError(f"distill: schedule must be one of {_SCHEDULES}, got {schedule!r}")
    if rounds < 1 or iterations < rounds or patterns < 1 or n_traj < 1:
        raise ValueError("distill: need rounds >= 1, iterations >= rounds, patterns >= 1, n_traj >= 1")

    def unpack(theta):
        coef = theta["coef"]
        if learn_times:
            kappa = jax.nn.softmax(theta["logits"])
            times = jnp.concatenate([jnp.ones(1, coef.dtype), 1.0 - jnp.cumsum(kappa)])
            times = times.at[-1].set(0.0)
        else:
            times = jnp.asarray(uniform_times(steps), coef.dtype)
        return LSDParams(coef, times)

    theta = {"coef": jnp.ones(steps)}
    if learn_times:
        theta["logits"] = jnp.zeros(steps)
    opt = optax.adam(learning_rate)
    state = opt.init(theta)

    def make_update(loss_fn):
        @jax.jit
        def update(theta, state, *data):
            loss, g = jax.value_and_grad(loss_fn)(theta, *data)
            upd, state = opt.update(g, state, theta)
            theta = optax.apply_updates(theta, upd)
            theta = dict(theta, coef=jnp.maximum(theta["coef"], 0.0))
            return theta, state, loss
        return update

    L, V = model.length, model.vocab_size
    k_teacher, k_pat = jax.random.split(key)
    hist = []
    if objective == "score":
        r = teacher_steps // steps
        kU, kG = jax.random.split(k_teacher)
        U = jax.random.uniform(kU, (n_traj, L))
        G = jax.random.gumbel(kG, (n_traj, L, V))
        tparams = identity_params(teacher_steps)
        u_t = reveal_probabilities(tparams, schedule)
        t_scores, t_final = _coupled_path(model, L, _cum_reveal(u_t), tparams.times, U, G,
                                          np.arange(teacher_steps))
        target = t_scores[::r]                                             # [M, R, L, V] at t_k
        mass = t_scores * u_t[:, None, None, None]
        target_mass = mass.reshape((steps, r) + mass.shape[1:]).sum(axis=1)

        def loss_fn(theta):
            p = unpack(theta)
            u = reveal_probabilities(p, schedule)
            sg = jax.lax.stop_gradient
            s_scores, _ = _coupled_path(model, L, sg(_cum_reveal(u)), sg(p.times), U, G, np.arange(steps))
            s_scores = sg(s_scores)
            loss = jnp.sum(jnp.mean((target - p.coefficients[:, None, None, None] * s_scores) ** 2,
                                    axis=(1, 2, 3))) * V
            if learn_times:
                eff = u[:, None, None, None] * s_scores
                loss = loss + jnp.sum(jnp.mean((target_mass - eff) ** 2, axis=(1, 2, 3))) * V
            return loss

        update = make_update(loss_fn)
        for _ in range(iterations):
            theta, state, loss = update(theta, state)
            hist.append(float(loss))
        hist.append(float(jax.jit(loss_fn)(theta)))
        return DistillResult(unpack(theta), np.asarray(hist), t_final)

    teacher = make_run(identity_params(teacher_steps), schedule)
    keys = sample_keys(k_teacher, n_traj)
    x_t, _ = jax.jit(lambda k: teacher(model, jnp.full((n_traj, L), model.vocab_size, jnp.int32), k))(keys)

    def loss_fn(theta, pats, logq, logp_round):
        p = unpack(theta)
        logpk = jnp.log(step_distribution(reveal_probabilities(p, schedule)) + 1e-30)
        logw = jnp.sum(logpk[pats], axis=-1) - logp_round                     # [R, S]
        return -jnp.mean(jax.scipy.special.logsumexp(logq + logw, axis=-1) - jnp.log(pats.shape[1]))

    update = make_update(loss_fn)
    pattern_ll = jax.jit(lambda x, a, t: pattern_log_likelihood(model, x, a, t))
    per_round = iterations // rounds
    for rnd in range(rounds):
        p = unpack(theta)
        pk = step_distribution(reveal_probabilities(p, schedule))
        pats = jax.random.categorical(jax.random.fold_in(k_pat, rnd), jnp.log(pk + 1e-30),
                                      shape=(n_traj, patterns, L)).astype(jnp.int32)
        logq = pattern_ll(x_t, pats, p.times)
        logp_round = jnp.sum(jnp.log(pk + 1e-30)[pats], axis=-1)
        for _ in range(per_round):
            theta, state, loss = update(theta, state, pats, logq, logp_round)
            hist.append(float(loss))
    return DistillResult(unpack(theta), np.asarray(hist), x_t)
