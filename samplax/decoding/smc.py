"""SMC decoders: reward-guided SMC for ``p exp(r / beta) / Z`` and Power-SMC for ``p^alpha / Z``.

Both run :func:`samplax.smc.lm.lm_smc` (a particle filter over token prefixes on the SMC core:
ESS-triggered resampling, the unbiased ``Z_hat``) with ``particles`` particles per output sequence, one
independent particle system per key, and return one particle drawn from the final weights together
with the run's ``log Z_hat`` (``DecodeInfo.log_Z``).  Cost: ``particles * (L - P)`` target calls per
output sequence (``+ P`` to read a prompt through the cached path).

* ``smc_reward`` (Markovic-Voronov et al. 2026, "Sampling for Quality: Training-Free Reward-Guided LLM
  Decoding via Sequential Monte Carlo", Sec. 3, the prefix-only SMC): proposal = the LM (optionally at
  ``proposal_temperature``), intermediate targets ``p(x_<=t) exp(r(x_<=t) / beta)`` with the problem's
  prefix reward; with the LM as proposal the weight is ``exp((r(x_<=t) - r(x_<t)) / beta)``.
* ``power_smc`` (Azizi et al. 2026, "Power-SMC: Low-Latency Sequence-Level Power Sampling for
  Training-Free LLM Reasoning"): intermediate targets ``p(x_<=t)^{alpha_t}``, ``alpha_t`` ramped
  linearly from 1 to ``alpha`` (``schedule="linear"``, over ``ramp`` tokens, 0 = all) or constant;
  proposal = the LM at temperature ``1 / alpha_t`` (``proposal_temperature="adaptive"``, the paper's
  variance-minimising prefix-only proposal) or at a fixed temperature.  The weight carries the
  catch-up factor ``p(x_<t)^{alpha_t - alpha_{t-1}}`` (:mod:`samplax.smc.lm`, eq. 2).

``Decoder.target`` is the exact tilted / power target by enumeration.  ``DecodeInfo``: ``log_p`` of the
chosen particle under the untransformed LM, ``log_q`` the sum of the proposal log-probabilities along its
path (it is not the output's law: resampling and the final draw change that), ``extras``: ``ess`` and
``resampled`` per step ``[B, L - P]``, ``num_resampled [B]``, ``first_invalid_step [B]`` (first SMC step
with NaN/+inf or all-zero weights, -1 if none).
"""
from __future__ import annotations

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np

from samplax.decoding.base import (DecodeInfo, Decoder, LanguageModel, Problem, check_int, check_keys,
                                   check_positive, check_prompt)
from samplax.decoding.exact import Reward, enumerate_rewards, exact_log_probs, power_target, tilted_target
from samplax.discrete.base import categorical
from samplax.smc import lm as lmsmc
from samplax.smc.core import check_ess_threshold
from samplax.smc.resampling import RESAMPLING

__all__ = ["smc_reward", "power_smc", "reward_target", "power_smc_target"]


_RUNNERS: "OrderedDict" = OrderedDict()
_MAX_RUNNERS = 32


def _check_bool(name, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name}: must be True or False, got {v!r}")
    return v


def _check_common(particles, resampling, ess_threshold):
    """ValueErrors that start with the option's name (the experiment layer maps them to the config)."""
    check_int("particles", particles, 1)
    if not isinstance(resampling, str) or resampling not in RESAMPLING:
        raise ValueError(f"resampling: must be one of {sorted(RESAMPLING)}, got {resampling!r}")
    try:
        check_ess_threshold(ess_threshold)
    except ValueError:
        raise ValueError(f"ess_threshold: must be a number in [0, 1] (resample when ESS / particles falls below "
                         f"it; 1 = every step, 0 = never), got {ess_threshold!r}") from None


def _prompt_key(prompt):
    return None if prompt is None else tuple(int(t) for t in np.asarray(prompt))


def _runner(lm: LanguageModel, reward, particles, resampling, ess_threshold, prompt):
    """The jitted ``(keys, LMSMCParams) -> (tokens, DecodeInfo)`` of one structural configuration,
    shared by every SMC decoder with the same LM, reward, particle count, resampling and prompt: both
    decoders run :func:`samplax.smc.lm.tilted_power_potential`, and alpha, beta, the schedule, the
    proposal temperature and the mutation switches are traced parameters (a sweep over them, or over
    the two decoders on one problem, compiles once)."""
    key = (lm, reward, int(particles), resampling, float(ess_threshold), _prompt_key(prompt))
    if key in _RUNNERS:
        _RUNNERS.move_to_end(key)
        return _RUNNERS[key]
    pot = lmsmc.tilted_power_potential(None if reward is None else reward.fn, np.ones(lm.length))
    smc_fn = lmsmc.lm_smc(lm, pot, particles, None, resampling, ess_threshold, prompt,
                          categorical=categorical, jit=False)
    calls = lmsmc.num_model_calls(lm, particles, 0 if prompt is None else len(prompt))

    @jax.jit
    def run(keys, params):
        res = smc_fn(keys, params)
        # the final draw among n weights: JAX's Gumbel in the weights' dtype is enough (a weight below
        # e^-16 of the largest, never drawn in float32, is far below the O(1/n) bias of the output)
        idx = lmsmc.pick_particle(keys, res)
        take = jax.vmap(lambda a, i: a[i])
        B = keys.shape[0]
        extras = {"ess": res.ess, "resampled": res.resampled,
                  "num_resampled": jnp.sum(res.resampled, axis=1).astype(jnp.int32),
                  "first_invalid_step": res.first_invalid_step}
        info = DecodeInfo(target_calls=jnp.full((B,), calls, jnp.int32), draft_calls=jnp.zeros((B,), jnp.int32),
                          log_p=take(res.log_p, idx), log_q=take(res.log_q, idx), log_Z=res.log_Z,
                          nonfinite_step=take(res.nonfinite, idx), extras=extras)
        return take(res.tokens, idx), info

    _RUNNERS[key] = run
    if len(_RUNNERS) > _MAX_RUNNERS:
        _RUNNERS.popitem(last=False)
    return run


def reward_target(problem: Problem, beta: float):
    """``(log_probs float64[V**L], log Z)`` of ``p(y | prompt) exp(r(prompt, y) / beta) / Z``."""
    lm = problem.lm
    with jax.enable_x64(True):
        log_p = exact_log_probs(lm, None, problem.prompt)
        r = enumerate_rewards(problem.reward, lm.vocab_size, lm.length)
    return tilted_target(log_p, r, beta)


def power_smc_target(problem: Problem, alpha: float):
    """``(log_probs float64[V**L], log Z)`` of ``p(y | prompt)^alpha / Z``."""
    return power_target(exact_log_probs(problem.lm, None, problem.prompt), alpha)


def _proposal_temperature(proposal_temperature):
    if proposal_temperature == "adaptive":
        return "adaptive"
    if isinstance(proposal_temperature, str):
        raise ValueError(f"proposal_temperature: must be a number > 0 or 'adaptive' (1 / alpha_t), "
                         f"got {proposal_temperature!r}")
    return check_positive("proposal_temperature", proposal_temperature)


def smc_reward(particles: int = 16, beta: float = 1.0, resampling: str = "systematic", ess_threshold: float = 0.5,
               proposal_temperature: float = 1.0, telescoping: bool = True) -> Decoder:
    """Reward-guided SMC for ``p(x) exp(r(x) / beta) / Z`` (module docstring); ``problem.reward`` gives
    the prefix rewards.  ``telescoping=False`` weights by ``exp(r(x_<=t) / beta)`` at every step instead
    of the increment: a deliberately wrong sampler for the mutation tests."""
    _check_common(particles, resampling, ess_threshold)
    beta = check_positive("beta", beta)
    T = check_positive("proposal_temperature", proposal_temperature)
    _check_bool("telescoping", telescoping)

    def run(problem: Problem, keys):
        keys = check_keys(keys)
        if not isinstance(problem.reward, Reward):
            raise ValueError("smc_reward: problem.reward must be a samplax.decoding.Reward "
                             "(make_problem(..., reward='token_count'))")
        prompt = check_prompt(problem.prompt, problem.lm)
        L = problem.lm.length
        fn = _runner(problem.lm, problem.reward, particles, resampling, ess_threshold, prompt)
        params = lmsmc.tilted_power_params(np.ones(L), beta, True, telescoping)
        return fn(keys, lmsmc.LMSMCParams(params, np.full(L, 1.0 / T)))

    def target(problem: Problem):
        return reward_target(problem, beta)[0]

    options = dict(particles=particles, beta=beta, resampling=resampling, ess_threshold=ess_threshold,
                   proposal_temperature=proposal_temperature, telescoping=telescoping)
    return Decoder("smc_reward", run, options, target, needs=("reward",),
                   log_Z=lambda problem: reward_target(problem, beta)[1])


def power_smc(particles: int = 16, alpha: float = 4.0, schedule: str = "linear", ramp: int = 0,
              proposal_temperature="adaptive", resampling: str = "systematic", ess_threshold: float = 0.5,
              catch_up: bool = True) -> Decoder:
    """Power-SMC for ``p(x)^alpha / Z`` (module docstring).  ``schedule``: ``"linear"`` (alpha_t from 1
    to alpha over ``ramp`` generated tokens, 0 = all of them) or ``"constant"``; ``proposal_temperature``:
    ``"adaptive"`` (1 / alpha_t) or a number > 0.  ``catch_up=False`` drops the catch-up factor: a
    deliberately wrong sampler for the mutation tests and the benchmark."""
    _check_common(particles, resampling, ess_threshold)
    alpha = check_positive("alpha", alpha)
    lmsmc.power_schedule(alpha, 2, 0, schedule, ramp)     # validates schedule and ramp
    T = _proposal_temperature(proposal_temperature)
    _check_bool("catch_up", catch_up)

    def run(problem: Problem, keys):
        keys = check_keys(keys)
        lm = problem.lm
        prompt = check_prompt(problem.prompt, lm)
        P = 0 if prompt is None else len(prompt)
        alphas = lmsmc.power_schedule(alpha, lm.length, P, schedule, ramp)
        inv_t = alphas if T == "adaptive" else np.full(lm.length, 1.0 / T)
        # the problem's reward (if any) is carried with beta = inf, so this shares smc_reward's compilation
        reward = problem.reward if isinstance(problem.reward, Reward) else None
        fn = _runner(lm, reward, particles, resampling, ess_threshold, prompt)
        return fn(keys, lmsmc.LMSMCParams(lmsmc.tilted_power_params(alphas, np.inf, catch_up), inv_t))

    def target(problem: Problem):
        return power_smc_target(problem, alpha)[0]

    options = dict(particles=particles, alpha=alpha, schedule=schedule, ramp=ramp,
                   proposal_temperature=proposal_temperature, resampling=resampling, ess_threshold=ess_threshold,
                   catch_up=catch_up)
    return Decoder("power_smc", run, options, target, log_Z=lambda problem: power_smc_target(problem, alpha)[1])
