"""SMC decoders (samplax.decoding.smc on samplax.smc.lm): E[Z_hat] = Z and the output law against the
exact enumerated targets on an asymmetric Markov-chain LM, with mutation tests (Power-SMC without the
catch-up factor, reward SMC without telescoping), TV decreasing with particles, ESS-triggered
resampling, the regex / token-count rewards against their definitions, bad options.

Stated tests: E[Z_hat] / Z within Z_SE = 4 standard errors of 1 (two-sided level ~6e-5); chi-square
p-value > ALPHA = 1e-3 for the correct samplers and < 1e-6 for the mutated ones.  float64 throughout."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from samplax import decoding as D
from samplax.decoding import rewards as R
from samplax.discrete.exact import markov_chain
from samplax.smc import lm as lmsmc

ALPHA = 1e-3
Z_SE = 4.0
RUNS = 4000          # independent SMC runs (= output sequences) per configuration
N = 32               # particles
POWER = 3.0
BETA = 0.5

# An asymmetric Markov chain over 3 tokens, length 4 (81 sequences).
INIT = [0.6, 0.3, 0.1]
TRANS = [[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.05, 0.65]]


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _lm():
    return D.hmm_lm(markov_chain(INIT, TRANS, 4, "mc3x4"))


def _keys(seed):
    return D.sample_keys(jax.random.PRNGKey(seed), RUNS)


def _run(decoder, problem, seed):
    x, info = decoder.run(problem, _keys(seed))
    return np.asarray(x), info


_EXACT = {}


def _exact_log_p(problem):
    """log p(y | prompt) of every sequence (enumerated once per problem)."""
    key = (problem.lm, None if problem.prompt is None else tuple(problem.prompt))
    if key not in _EXACT:
        _EXACT[key] = D.exact_log_probs(problem.lm, None, problem.prompt)
    return _EXACT[key]


@pytest.fixture(scope="module")
def runs():
    """One problem (a reward: the count of token 2; a one-token prompt), N particles, 4000 runs each of
    Power-SMC (alpha = 3, linear ramp, proposal = the LM itself) with and without the catch-up factor
    and of reward SMC (beta = 0.5) with and without telescoping: all four share one compilation."""
    with jax.enable_x64(True):
        problem = D.make_problem(_lm(), reward="token_count", reward_options={"token": 2}, prompt=[1])
        out = {}
        for catch_up in (True, False):
            dec = D.get_decoder("power_smc", particles=N, alpha=POWER, proposal_temperature=1.0, catch_up=catch_up)
            out["power", catch_up] = _run(dec, problem, 1)
        for tele in (True, False):
            dec = D.get_decoder("smc_reward", particles=N, beta=BETA, telescoping=tele)
            out["reward", tele] = _run(dec, problem, 2)
        return problem, out


def _power_target(problem):
    return D.power_target(_exact_log_p(problem), POWER)


def _reward_target(problem):
    r = D.enumerate_rewards(problem.reward, 3, 4)
    return D.tilted_target(_exact_log_p(problem), r, BETA)


def test_power_smc_unbiased_Z_and_exact_output(runs):
    problem, out = runs
    x, info = out["power", True]
    lp, log_Z = _power_target(problem)
    np.testing.assert_allclose(D.get_decoder("power_smc", alpha=POWER).target(problem), lp)
    zr = D.z_ratio(info.log_Z, log_Z)
    assert abs(zr.z_score) < Z_SE, zr
    assert np.all(x[:, 0] == 1)
    assert D.chi_square_test(x, lp, 3).p_value > ALPHA
    assert np.all(np.asarray(info.target_calls) == N * 3 + 1)   # 3 generated tokens + the prompt read once
    np.testing.assert_allclose(np.asarray(info.log_p), _exact_log_p(problem)[D.sequence_index(x, 3)], atol=1e-12)


def test_power_smc_without_catch_up_is_biased(runs):
    """Mutation: leaving out p(x_<t)^(alpha_t - alpha_{t-1}) targets prod_t p(x_t|x_<t)^alpha_t; its
    normaliser (enumerated here) is what Z_hat then estimates, and it is > Z."""
    problem, out = runs
    x, info = out["power", False]
    lp, log_Z = _power_target(problem)
    seqs = D.all_sequences(3, 4)
    cond = np.asarray(problem.lm.logits_fn(jnp.asarray(seqs)))
    tok_lp = np.take_along_axis(cond, seqs[..., None], -1)[..., 0]           # [81, 4]
    alphas = lmsmc.power_schedule(POWER, 4, 1)
    wrong = np.where(seqs[:, 0] == 1, (alphas[None, 1:] * tok_lp[:, 1:]).sum(1), -np.inf)
    expected_ratio = np.exp(logsumexp(wrong) - log_Z)
    zr = D.z_ratio(info.log_Z, log_Z)
    assert zr.z_score > 10 * Z_SE, zr                       # fails the E[Z_hat] = Z test by far
    assert abs(zr.ratio - expected_ratio) < Z_SE * zr.stderr, (zr, expected_ratio)
    assert D.chi_square_test(x, lp, 3).p_value < 1e-6


def test_tv_decreases_with_particles(runs):
    """One particle outputs the proposal (here the LM: its TV is exact, 0.36); 2 and N particles, measured
    (about 0.19 and 0.016).  The 2-particle run uses the LM without its cached path (each step calls
    logits_fn on the token buffer): the same law, one call per step, no call to read the prompt."""
    problem, out = runs
    lp, _ = _power_target(problem)
    tv1 = 0.5 * np.abs(np.exp(_exact_log_p(problem)) - np.exp(lp)).sum()
    lm = problem.lm
    uncached = problem._replace(lm=D.LanguageModel(lm.logits_fn, lm.vocab_size, lm.length, name="uncached"))
    x2, info2 = _run(D.get_decoder("power_smc", particles=2, alpha=POWER, proposal_temperature=1.0), uncached, 3)
    assert np.all(x2[:, 0] == 1) and np.all(np.asarray(info2.target_calls) == 2 * 3)
    tv2 = D.tv_to_exact(x2, lp, 3)
    tvN = D.tv_to_exact(out["power", True][0], lp, 3)
    floor = D.tv_floor(lp, RUNS)
    # each gap is more than 5 times the sampling floor (the TV of 4000 exact draws, ~0.015)
    assert tv1 > tv2 + 5 * floor and tv2 > tvN + 5 * floor, (tv1, tv2, tvN, floor)


def test_ess_triggered_resampling_skips_when_ess_is_high(runs):
    """Resampled exactly at the steps whose ESS (before the step) is below 0.5 N: the reward runs
    resample at some steps and skip others; the power runs keep ESS > N / 2 and never resample."""
    _, out = runs
    for kind, mixed in (("reward", True), ("power", False)):
        info = out[kind, True][1]
        ess, res = np.asarray(info.extras["ess"]), np.asarray(info.extras["resampled"])
        assert ess.shape == (RUNS, 3)
        np.testing.assert_array_equal(res, ess < 0.5 * N)
        np.testing.assert_allclose(ess[:, 0], N)              # equal initial weights: never resampled
        if mixed:
            assert 0.05 < res.mean() < 0.95                    # some steps resample, others skip
        else:
            assert not res.any() and ess.min() >= 0.5 * N
        np.testing.assert_array_equal(np.asarray(info.extras["num_resampled"]), res.sum(1))
        assert np.all(np.asarray(info.extras["first_invalid_step"]) == -1)


def test_smc_reward_unbiased_Z_and_exact_output(runs):
    problem, out = runs
    x, info = out["reward", True]
    lp, log_Z = _reward_target(problem)
    np.testing.assert_allclose(D.get_decoder("smc_reward", beta=BETA).target(problem), lp)
    zr = D.z_ratio(info.log_Z, log_Z)
    assert abs(zr.z_score) < Z_SE, zr
    assert np.all(x[:, 0] == 1)
    assert D.chi_square_test(x, lp, 3).p_value > ALPHA


def test_smc_reward_without_telescoping_is_biased(runs):
    """Mutation: weighting by exp(r(x_<=t)/beta) at every step targets p exp(sum_t r_t / beta)."""
    problem, out = runs
    x, info = out["reward", False]
    lp, log_Z = _reward_target(problem)
    seqs = D.all_sequences(3, 4)
    fn = jax.jit(problem.reward.fn)
    r_sum = sum(np.asarray(fn(jnp.asarray(seqs), k)) for k in (2, 3, 4))
    expected_ratio = np.exp(logsumexp(_exact_log_p(problem) + r_sum / BETA) - log_Z)
    zr = D.z_ratio(info.log_Z, log_Z)
    assert zr.z_score > 10 * Z_SE, zr
    assert abs(zr.ratio - expected_ratio) < Z_SE * zr.stderr, (zr, expected_ratio)
    assert D.chi_square_test(x, lp, 3).p_value < 1e-6


def test_power_schedule_is_the_papers_ramp():
    """Power-SMC's linear ramp alpha_t = 1 + (alpha - 1) (t + 1) / ramp over the generated tokens, alpha
    from then on and at the last position (the final catch-up); 1 on the prompt."""
    np.testing.assert_allclose(lmsmc.power_schedule(4.0, 5), [1.6, 2.2, 2.8, 3.4, 4.0])
    np.testing.assert_allclose(lmsmc.power_schedule(4.0, 6, 2, ramp=2), [1, 1, 2.5, 4, 4, 4])
    np.testing.assert_allclose(lmsmc.power_schedule(3.0, 5, 1, ramp=10), [1, 1.2, 1.4, 1.6, 3.0])
    np.testing.assert_allclose(lmsmc.power_schedule(3.0, 4, 1, "constant"), [1, 3, 3, 3])


REGEX_CASES = (("ab", False), ("c.a", False), ("c.a", True))


def test_regex_and_token_count_rewards_match_their_definitions():
    """Against Python's re.search on the token strings (token v = letter 'a' + v), every prefix length."""
    lm = _lm()
    seqs = D.all_sequences(3, 4)
    strings = [R.tokens_to_string(s) for s in seqs]
    rewards = [R.regex(lm, pattern, 2.0, soft) for pattern, soft in REGEX_CASES] + [R.token_count(lm, 1, 0.5)]
    fn = jax.jit(lambda x, n: [r.fn(x, n) for r in rewards])       # one compilation for all four
    for n in (0, 2, 3, 4):
        got = [np.asarray(g) for g in fn(jnp.asarray(seqs), n)]
        pre = [s[:n] for s in strings]
        for (pattern, soft), g in zip(REGEX_CASES, got):
            if soft:
                want = [2.0 * max(j for j in range(len(pattern) + 1) if re.search(pattern[:j], s)) / len(pattern)
                        for s in pre]
            else:
                want = [2.0 * (re.search(pattern, s) is not None) for s in pre]
            np.testing.assert_allclose(g, want, err_msg=f"{pattern} soft={soft} n={n}")
        np.testing.assert_allclose(got[-1], 0.5 * (seqs[:, :n] == 1).sum(1))


@pytest.mark.parametrize("call,match", [
    (lambda: D.get_decoder("power_smc", particles=0), "particles"),
    (lambda: D.get_decoder("power_smc", alpha=-1.0), "alpha"),
    (lambda: D.get_decoder("power_smc", schedule="cubic"), "schedule"),
    (lambda: D.get_decoder("power_smc", ramp=-2), "ramp"),
    (lambda: D.get_decoder("power_smc", proposal_temperature="hot"), "proposal_temperature"),
    (lambda: D.get_decoder("power_smc", catch_up=1), "catch_up"),
    (lambda: D.get_decoder("smc_reward", beta=0.0), "beta"),
    (lambda: D.get_decoder("smc_reward", resampling="bogus"), "resampling"),
    (lambda: D.get_decoder("smc_reward", ess_threshold=1.5), "ess_threshold"),
    (lambda: D.get_decoder("smc_reward").run(D.Problem(_lm()), _keys(0)), "problem.reward"),
    (lambda: D.get_decoder("power_smc", proposal_temperature=0.0), "proposal_temperature"),
    (lambda: D.make_problem(_lm(), reward="regex", reward_options={"pattern": "az"}), "pattern"),
    (lambda: D.make_problem(_lm(), reward="token_count", reward_options={"token": 3}), "token"),
])
def test_bad_options(call, match):
    with pytest.raises(ValueError, match=match):
        call()
