"""Cautious Next Token Prediction (samplax.decoding.cautious): never cautious = ancestral sampling
token for token (same keys); the exact target-call count; the enumerated output distribution (one
trial = the LM; normalised) and the sampler against it by chi-square, where sampling without the
perplexity selection (a mutation) fails."""
import jax
import numpy as np
import pytest

from samplax.decoding import get_decoder, make_problem, sample, sample_keys, table_lm
from samplax.decoding.cautious import cautious_log_probs, trial_count
from samplax.decoding.exact import exact_log_probs, sequence_index
from samplax.discrete.metrics import chi_square_test

V, L = 3, 5
ALPHA = 1e-3  # significance of the chi-square tests
# N varies with the entropy (1, 2 or 3 trials), trials stop after token 0 or after 3 tokens
OPTS = dict(entropy_low=0.7, entropy_high=1.05, max_trials=3, span=3, stop_tokens="0")


@pytest.fixture(scope="module")
def lm():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        return table_lm(rng.normal(size=V ** L) * 1.2, V, L, "table3x5")


def test_trial_count_is_the_papers_linear_rule():
    H = np.array([0.0, 0.7, 0.71, 0.875, 1.04, 1.05, 3.0])
    np.testing.assert_array_equal(trial_count(H, 0.7, 1.05, 3, xp=np), [1, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(trial_count(H, 0.7, 0.7, 4, xp=np), [1, 1, 4, 4, 4, 4, 4])
    for bad in (dict(entropy_low=-1.0), dict(entropy_low=1.0, entropy_high=0.5), dict(max_trials=0),
                dict(span=-1), dict(stop_tokens="a")):
        with pytest.raises(ValueError, match=list(bad)[-1]):
            get_decoder("cautious", **bad)


def test_never_cautious_is_ancestral_and_the_call_count_is_exact(lm):
    keys = sample_keys(jax.random.PRNGKey(0), 500)
    never = get_decoder("cautious", entropy_low=float("inf"), entropy_high=float("inf"))
    always = get_decoder("cautious", entropy_low=0.0, entropy_high=0.0, max_trials=3, span=0)
    with jax.enable_x64(True):
        problem = make_problem(lm)
        (a, ia), (b, ib), (c, ic) = jax.jit(lambda k: (sample(lm, k), never.run(problem, k),
                                                       always.run(problem, k)))(keys)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(np.asarray(ia.log_p), np.asarray(ib.log_p), atol=1e-12)
        assert np.all(np.asarray(ib.target_calls) == L) and np.all(np.asarray(ib.extras["branches"]) == 0)
        # always cautious, trials to the end: one decision call + 3 trials of L - 1 further calls each
        assert np.all(np.asarray(ic.target_calls) == 1 + 3 * (L - 1))
        assert np.all(np.asarray(ic.extras["branches"]) == 1) and np.all(np.asarray(ic.extras["trial_tokens"]) == L)
        log_p = exact_log_probs(lm)
        np.testing.assert_allclose(np.asarray(ic.log_p), log_p[sequence_index(np.asarray(c), V)], atol=1e-10)
        # one trial is the LM itself
        np.testing.assert_allclose(cautious_log_probs(lm, 0.0, 0.0, 1, 0, (), log_p=log_p), log_p, atol=1e-12)


def test_samples_match_the_enumerated_distribution_and_a_mutation_fails(lm):
    dec = get_decoder("cautious", **OPTS)
    with jax.enable_x64(True):
        problem = make_problem(lm)
        target = dec.target(problem)
        log_p = exact_log_probs(lm)
        keys = sample_keys(jax.random.PRNGKey(1), 20000)
        (x, info), (xa, _) = jax.jit(lambda k: (dec.run(problem, k), sample(lm, k)))(keys)
    assert abs(np.logaddexp.reduce(target)) < 1e-12
    x = np.asarray(x)
    from_trials = np.asarray(info.extras["trial_tokens"]) / L
    assert 0.2 < from_trials.mean() < 0.9  # the test exercises both kinds of positions
    assert np.abs(np.exp(target) - np.exp(log_p)).sum() / 2 > 0.05  # CNTP is not the LM
    assert chi_square_test(x, target, V).p_value > ALPHA
    # mutation: the trials without the perplexity selection (plain ancestral sampling)
    assert chi_square_test(np.asarray(xa), target, V).p_value < ALPHA
    # lower perplexity: CNTP's mean log-likelihood exceeds the LM's own (its entropy), exactly
    assert np.sum(np.exp(target) * np.where(np.isfinite(log_p), log_p, 0)) > np.sum(np.exp(log_p) * log_p)
