"""Speculative decoding and SpecTr against exact answers.

* Exactness: chi-square goodness of fit of 16,000 sequences (10,000 for SpecTr) against the enumerated target (a random
  3-state HMM, V = 3, L = 5: 243 sequences) at significance ALPHA = 1e-3; the same test must REJECT
  deliberately wrong samplers (accept every draft token, accept with min(1, q/p), resample a rejected
  token from p instead of the residual; SpecTr with the per-candidate one-draft rule for k = 3).
* Call counts: the samplers' mean target calls / accepted tokens equal the exact expectation of the
  forward recursion over prefixes (:func:`expected_counts`) within 4 standard errors; the recursion
  itself reproduces the target law, and with i.i.d. acceptance it equals a renewal recursion built
  from Leviathan et al.'s truncated-geometric block law (mean (1 - a^(g+1)) / (1 - a), eq. 1).
* SpecTr with one draft is one-draft speculative decoding: identical token-level rule (rho* = 1,
  residual max(p - q, 0)) and the same law of tokens and of call counts.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.decoding import (DRAFTS, SAMPLERS, LanguageModel, get_decoder, hmm_lm, load_lm, make_problem,
                              sample_keys, temperature)
from samplax.decoding.exact import exact_log_probs
from samplax.decoding import speculative as sp
from samplax.discrete.exact import random_hmm, sequence_index
from samplax.discrete.metrics import chi_square_test

ALPHA = 1e-3
N = 16_000
N_SPECTR = 10_000
GAMMA = 3


@pytest.fixture(scope="module")
def pair():
    lm = hmm_lm(random_hmm(3, 3, 3, 5))
    draft = sp.mix_uniform_draft(lm, 0.6)
    return lm, draft, exact_log_probs(lm)


@pytest.fixture(scope="module")
def keys():
    return sample_keys(jax.random.PRNGKey(1), N)


@pytest.fixture(scope="module")
def spec_runs(pair, keys):
    lm, draft, _ = pair
    return {rule: jax.tree_util.tree_map(np.asarray, sp.speculative_sample(lm, draft, keys, GAMMA, _rule=rule))
            for rule in ("exact", "accept_always", "accept_inverse", "residual_p")}


@pytest.fixture(scope="module")
def spectr_runs(pair, keys):
    lm, draft, _ = pair
    keys = keys[:N_SPECTR]
    runs = {}
    for rule, k_used in (("exact", 3), ("naive", 3), ("exact", 1)):
        out = sp.spectr_sample(lm, draft, keys, 3, GAMMA, _rule=rule, _k_used=k_used)
        runs[rule, k_used] = jax.tree_util.tree_map(np.asarray, out)
    return runs


@pytest.fixture(scope="module")
def expected(pair):
    lm, draft, _ = pair
    return {k: sp.expected_counts(lm, draft, GAMMA, k) for k in (1, 3)}


def _within(samples, exact, z=4.0):
    samples = np.asarray(samples, np.float64)
    se = samples.std(ddof=1) / math.sqrt(samples.size)
    assert abs(samples.mean() - exact) < z * se, (samples.mean(), exact, se)


@pytest.mark.parametrize("rule", ["exact", "accept_always", "accept_inverse", "residual_p"])
def test_speculative_exact_and_mutations_fail(pair, spec_runs, rule):
    lm, _, target = pair
    x, info = spec_runs[rule]
    p = chi_square_test(x, target, lm.vocab_size).p_value
    if rule == "exact":
        assert p > ALPHA
        # log_p is the target's log-probability of the sequence, accumulated from the verification calls
        np.testing.assert_allclose(info.log_p, target[sequence_index(x, lm.vocab_size)], atol=1e-4)
        assert np.all(info.nonfinite_step == -1)
    else:
        assert p < ALPHA, f"mutation {rule} passed the exactness test (p = {p})"


def test_speculative_counts_equal_exact_expectation(pair, spec_runs, expected):
    lm, _, _ = pair
    _, info = spec_runs["exact"]
    e = expected[1]
    _within(info.target_calls, e.target_calls)
    _within(info.extras["accepted"], e.accepted)
    _within(info.draft_calls, e.draft_calls)
    # every call emits its accepted tokens plus one (the last call possibly without the bonus)
    tokens = info.extras["accepted"] + info.target_calls
    assert np.all((tokens == lm.length) | (tokens == lm.length + 1))


def test_spectr_exact_and_naive_rule_fails(pair, spectr_runs, expected):
    lm, _, target = pair
    x, info = spectr_runs["exact", 3]
    assert chi_square_test(x, target, lm.vocab_size).p_value > ALPHA
    _within(info.target_calls, expected[3].target_calls)
    _within(info.extras["accepted"], expected[3].accepted)
    np.testing.assert_allclose(info.log_p, target[sequence_index(x, lm.vocab_size)], atol=1e-4)
    # more drafts, fewer target calls (exactly, and in the run)
    assert expected[3].target_calls < expected[1].target_calls
    xn, _ = spectr_runs["naive", 3]
    assert chi_square_test(xn, target, lm.vocab_size).p_value < ALPHA


def test_spectr_one_draft_is_speculative(pair, spectr_runs, spec_runs, expected):
    lm, _, target = pair
    x1, info1 = spectr_runs["exact", 1]
    assert chi_square_test(x1, target, lm.vocab_size).p_value > ALPHA
    _within(info1.target_calls, expected[1].target_calls)
    _within(info1.extras["accepted"], expected[1].accepted)
    # two-sample check of the call counts against the one-draft sampler
    a, b = info1.target_calls.astype(float), spec_runs["exact"][1].target_calls[N_SPECTR:].astype(float)
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert abs(a.mean() - b.mean()) < 4 * se
    # token level: rho* = 1 and the law is min(p, q) from the draft + max(p - q, 0) from the residual
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(5), 8), rng.dirichlet(np.ones(5), 8)
    assert np.all(sp._kseq_rho_np(p, q, 1) == 1.0)
    J = sp._kseq_joint(p, q, 1)
    np.testing.assert_allclose(J[1], np.minimum(p, q), atol=1e-15)
    np.testing.assert_allclose(J[0], np.maximum(p - q, 0.0), atol=1e-15)


def test_kseq_token_law_is_exact():
    """Sum over the number of matching candidates of K-SEQ's joint law is p (Sun et al., K-SEQ
    validity), the acceptance probability is 1 - (1 - beta(rho*))^k, rho* satisfies
    (1 - (1 - beta)^k) / beta <= rho* <= k, and k = 1 has rho* = 1."""
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(6, 0.5), 50)
    q = rng.dirichlet(np.full(6, 0.5), 50)
    for k in (1, 2, 3, 5):
        J = sp._kseq_joint(p, q, k)
        np.testing.assert_allclose(sum(J), p, atol=1e-12)
        rho = sp._kseq_rho_np(p, q, k)
        beta = np.minimum(q, p / rho[:, None]).sum(-1)
        f = sp._f_np(beta, k)
        assert np.all(f <= rho * (1 + 1e-12)) and np.all(rho <= k) and np.all(rho >= 1)
        # P(Y comes from a draft) >= P(accepted) = 1 - (1 - beta)^k
        assert np.all(sum(J[1:]).sum(-1) >= 1 - (1 - beta) ** k - 1e-12)
        if k == 1:
            assert np.all(rho == 1.0)
    # more candidates never lower the acceptance probability at rho*
    acc = [1 - (1 - np.minimum(q, p / sp._kseq_rho_np(p, q, k)[:, None]).sum(-1)) ** k for k in (1, 2, 4)]
    assert np.all(acc[1] >= acc[0] - 1e-12) and np.all(acc[2] >= acc[1] - 1e-12)


def test_expected_counts_recursion_and_leviathan_formula():
    """i.i.d. tokens (product target and product draft): the acceptance rate is the same alpha at
    every position, a block emits n accepted tokens + 1 with the truncated geometric law of
    Leviathan et al. (mean (1 - alpha^(g+1)) / (1 - alpha), their eq. 1), and E[target calls] for
    length L is the renewal recursion on that law (a block never crosses L)."""
    V, L, g = 3, 6, 2
    pt, qt = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5])
    seqs = np.stack(np.meshgrid(*[np.arange(V)] * L, indexing="ij"), -1).reshape(-1, L)

    def iid(probs, name):
        lp = np.log(probs)          # made a jnp array at trace time: float64 under x64
        return LanguageModel(lambda x: jnp.broadcast_to(jnp.asarray(lp), x.shape + (V,)), V, L, name)
    target, draft = iid(pt, "iid_p"), iid(qt, "iid_q")
    e = sp.expected_counts(target, draft, g, 1)
    np.testing.assert_allclose(np.exp(e.output_log_probs), np.exp(np.log(pt)[seqs].sum(-1)), atol=1e-13)
    alpha = np.minimum(pt, qt).sum()

    def calls(m):           # E[calls] to emit m tokens
        if m == 0:
            return 0.0
        gm = min(g, m)
        tot = 1.0
        for n in range(gm):                       # n accepted, then the residual token
            tot += alpha ** n * (1 - alpha) * calls(m - n - 1)
        tot += alpha ** gm * calls(max(m - gm - 1, 0))   # all accepted (+ bonus when inside)
        return tot
    assert e.target_calls == pytest.approx(calls(L), rel=1e-12)
    block = [alpha ** n * (1 - alpha) for n in range(g)] + [alpha ** g]
    assert sum((n + 1) * b for n, b in enumerate(block)) == pytest.approx(sp.leviathan_tokens_per_call(alpha, g))
    assert sp.acceptance_rate(target, draft) == pytest.approx(alpha)


def test_expected_counts_edge_cases_and_temperature(pair):
    lm, draft, _ = pair
    # a perfect draft is always accepted
    # (L = 5, gamma = 3: 3 accepted + bonus, then 1 accepted at the end; with a 1-token prompt: one block)
    e = sp.expected_counts(lm, lm, GAMMA, 2)
    assert (e.target_calls, e.accepted) == (pytest.approx(2.0), pytest.approx(4.0))
    e = sp.expected_counts(lm, lm, GAMMA, 2, prompt=np.array([1]))
    assert (e.target_calls, e.accepted) == (pytest.approx(1.0), pytest.approx(3.0))
    # with a temperature the output law is the tempered target's, the decoders' declared target
    dec = get_decoder("spectr", k=3, gamma=GAMMA, temperature=0.5)
    e = sp.expected_counts(lm, draft, GAMMA, 3, transform=temperature(0.5))
    declared = dec.target(make_problem(lm, draft="mix_uniform", draft_options={"eps": 0.6}))
    np.testing.assert_allclose(np.exp(e.output_log_probs), np.exp(declared), atol=1e-12)


def test_drafts():
    chain = hmm_lm(random_hmm(5, 3, 3, 5, markov=True))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (16, 5)))
    # the bigram fit of a homogeneous Markov chain is the chain
    np.testing.assert_allclose(DRAFTS["bigram"](chain).logits_fn(x), chain.logits_fn(x), atol=1e-5)
    assert DRAFTS["hmm_perturbed"](load_lm("hmm8x5"), eps=0.5).vocab_size == 8
    q = DRAFTS["mix_uniform"](chain, eps=0.25)
    np.testing.assert_allclose(np.exp(q.logits_fn(x)), 0.75 * np.exp(chain.logits_fn(x)) + 0.25 / 3, atol=1e-6)


def test_decoders_registered_and_bad_options(pair):
    lm, draft, target = pair
    for name in ("speculative", "spectr"):
        assert name in SAMPLERS
        d = get_decoder(name, gamma=2)
        assert d.needs == ("draft",)
    for name, opts, word in [("speculative", {"gamma": 0}, "gamma"), ("speculative", {"temperature": -1.0}, "temperature"),
                             ("spectr", {"k": 0}, "k"), ("spectr", {"gamma": 1.5}, "gamma"),
                             ("spectr", {"beam": 2}, "beam")]:
        with pytest.raises(ValueError, match=word):
            get_decoder(name, **opts)
    with pytest.raises(ValueError, match="draft"):
        get_decoder("speculative").run(make_problem(lm), sample_keys(jax.random.PRNGKey(0), 2))
    with pytest.raises(ValueError, match="eps"):
        make_problem(lm, draft="mix_uniform", draft_options={"eps": 1.5})
    with pytest.raises(ValueError, match="hmm_perturbed"):
        make_problem(lm, draft="hmm_perturbed")
    with pytest.raises(ValueError, match="k_used"):
        sp.spectr_sample(lm, draft, sample_keys(jax.random.PRNGKey(0), 2), 2, 2, _k_used=3)
