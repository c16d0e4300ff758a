"""Entropy-gated continuous bitstream diffusion (samplax/discrete/bitstream.py).

Exact answers: the bit denoisers against a brute-force Gaussian posterior over all sequences,
bits <-> tokens round trips, the I-MMSE identity of the entropy-rate profile, the gate's nodes on
a constructed profile, and the sampler's distribution against the enumerated truth (chi-square at
significance 1e-3), each with a mutation that must fail.  float64 via ``jax.enable_x64`` locally.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.discrete import bitstream as bs
from samplax.discrete.base import DiscreteModel, decode
from samplax.discrete.exact import all_sequences, enumerate_log_probs, random_hmm, true_samples
from samplax.discrete.metrics import chi_square_test, tv_floor, tv_to_exact
from samplax.models.analytic import GaussianMixture

ALPHA = 1e-3


@functools.lru_cache(maxsize=None)
def _tiny():
    # V = 3 (2 bits: pattern 11 is invalid), L = 4: 81 sequences
    return random_hmm(3, num_states=2, vocab_size=3, length=4)


@functools.lru_cache(maxsize=None)
def _model(denoiser="enumerate"):
    # the enumerated denoiser (81 sequences: one small matmul) is exact as well
    # (test_exact_denoisers_equal_brute_force) and compiles fastest
    return bs.bitstream_model(_tiny(), denoiser=denoiser, profile_samples=512, profile_bins=40)


def _decode(sampler, model, key, n=None, x=None):
    return jax.jit(lambda k, xx: decode(sampler, model, k, n, x=xx))(key, x)


# ---------------------------------------------------------------------------------------
def test_bits_round_trip_and_order():
    for v, order in ((3, "msb"), (8, "msb"), (5, "lsb")):
        x = jnp.asarray(all_sequences(v, 2))
        u = bs.tokens_to_bits(x, v, order)
        assert u.shape == (v * v, 2 * bs.num_bits(v))
        assert np.all(np.abs(np.asarray(u)) == 1.0)
        np.testing.assert_array_equal(np.asarray(bs.bits_to_tokens(0.3 * u, v, order)), np.asarray(x))
    # most significant digit first: token 1 of V = 4 is (0, 1) -> (-1, +1); token 2 is (+1, -1)
    np.testing.assert_array_equal(np.asarray(bs.token_codes(4)), [[-1, -1], [-1, 1], [1, -1], [1, 1]])
    np.testing.assert_array_equal(np.asarray(bs.token_codes(4, "lsb"))[1], [1, -1])


def test_invalid_patterns_map_to_the_most_likely_valid_token():
    v = 5  # 3 bits: patterns 5, 6, 7 are invalid
    rng = np.random.default_rng(0)
    u = jnp.asarray(rng.normal(size=(4000, 3)))  # one token per row
    tok = np.asarray(bs.bits_to_tokens(u, v))
    codes = np.asarray(bs.token_codes(v))
    np.testing.assert_array_equal(tok[:, 0], np.argmax(np.asarray(u) @ codes.T, axis=1))  # ML token under the channel
    assert np.all((tok >= 0) & (tok < v))


def _brute_posterior_mean(hmm, u, sigma, x=None):
    """E[c(S) | u] with the full Gaussian density exp(-|u - c(s)|^2 / (2 sigma^2)), over all sequences."""
    v, length = hmm.vocab_size, hmm.length
    seqs = all_sequences(v, length)
    c = np.asarray(bs.tokens_to_bits(jnp.asarray(seqs), v), np.float64)
    lp = np.asarray(enumerate_log_probs(hmm), np.float64)
    logw = lp[None] - ((np.asarray(u)[:, None, :] - c[None]) ** 2).sum(-1) / (2 * sigma ** 2)
    if x is not None:
        ok = np.all((seqs[None] == x[:, None]) | (x[:, None] >= v), axis=-1)
        logw = np.where(ok, logw, -np.inf)
    w = np.exp(logw - logw.max(1, keepdims=True))
    return (w / w.sum(1, keepdims=True)) @ c


def test_exact_denoisers_equal_brute_force():
    hmm = _tiny()
    lp = enumerate_log_probs(hmm)
    with jax.enable_x64(True):
        den_h = jax.jit(bs.hmm_denoiser(hmm))
        den_e = jax.jit(bs.enumerated_denoiser(lp, hmm.vocab_size, hmm.length, chunk=32))  # 3 chunks: streaming
        u = 1.5 * jax.random.normal(jax.random.PRNGKey(0), (6, 8), jnp.float64)
        prompt = np.array([[3, 1, 3, 3]] * 3 + [[0, 3, 3, 2]] * 3)
        for sigma in (0.15, 0.6, 2.0, 30.0):
            ref = _brute_posterior_mean(hmm, u, sigma)
            np.testing.assert_allclose(np.asarray(den_h(u, sigma)), ref, atol=1e-10)
            np.testing.assert_allclose(np.asarray(den_e(u, sigma)), ref, atol=1e-10)
            ref_p = _brute_posterior_mean(hmm, u, sigma, prompt)
            np.testing.assert_allclose(np.asarray(den_h(u, sigma, jnp.asarray(prompt))), ref_p, atol=1e-10)
            np.testing.assert_allclose(np.asarray(den_e(u, sigma, jnp.asarray(prompt))), ref_p, atol=1e-10)
        # the analytic GMM with zero-variance components (built directly: create() refuses std 0) is
        # the same exact denoiser -- it only materialises (batch, sequences, bits) differences
        keep = np.isfinite(lp)
        codes = bs.tokens_to_bits(jnp.asarray(all_sequences(3, 4))[keep], 3, dtype=jnp.float64)
        gmm = GaussianMixture(jnp.asarray(np.exp(lp[keep])), codes, jnp.zeros(int(keep.sum())),
                              jnp.arange(int(keep.sum())))
        np.testing.assert_allclose(np.asarray(gmm.denoise_ve(u, jnp.asarray(0.6))[0]),
                                   _brute_posterior_mean(hmm, u, 0.6), atol=1e-10)
        # mutation: the wrong bit order is not the posterior mean
        wrong = jax.jit(bs.hmm_denoiser(hmm, order="lsb"))
        assert np.max(np.abs(np.asarray(wrong(u, 0.6)) - _brute_posterior_mean(hmm, u, 0.6))) > 0.1


def test_entropy_rate_integrates_to_the_entropy():
    """I-MMSE (Guo, Shamai, Verdu 2005): the integral of mmse(sigma) / sigma^2 over log sigma is
    H(X_0) in nats.  Monte Carlo over 1024 exact samples (one noise draw each, all sigmas): the
    per-sample integrals' mean must lie within 4 standard errors of the enumerated entropy; the
    model's profile (512 samples) within 10 %."""
    hmm = _tiny()
    m = _model()
    edges = m.profile.log_edges
    mids = np.exp(0.5 * (edges[:-1] + edges[1:]))
    with jax.enable_x64(True):
        x0 = bs.tokens_to_bits(true_samples(hmm, jax.random.PRNGKey(7), 1024), 3)
        eps = jax.random.normal(jax.random.PRNGKey(8), x0.shape, x0.dtype)
        den = jax.jit(bs.hmm_denoiser(hmm))
        err = np.stack([np.asarray(jnp.sum((x0 - den(x0 + s * eps, s)) ** 2, -1)) for s in mids], 1)
    per_sample = (err / mids ** 2) @ np.diff(edges)
    mean, se = per_sample.mean(), per_sample.std() / np.sqrt(len(per_sample))
    assert abs(mean - m.entropy) < 4 * se, (mean, se, m.entropy)
    assert abs(float(np.sum(m.profile.rate * np.diff(edges))) - m.entropy) < 0.1 * m.entropy
    # mutation: a rate divided by sigma instead of sigma^2 is not the entropy rate
    wrong = ((err / mids) @ np.diff(edges)).mean()
    assert abs(wrong - m.entropy) > 10 * se


def _bump_profile(centre=0.0, width=0.3):
    edges = np.linspace(np.log(0.01), np.log(100.0), 201)
    mids = 0.5 * (edges[:-1] + edges[1:])
    rate = np.exp(-0.5 * ((mids - centre) / width) ** 2)
    return bs.profile_from_rate(edges, rate, reg_c=0.0)


def test_entropic_nodes_follow_the_entropy_cdf_and_the_gate_opens_only_in_its_band():
    prof = _bump_profile()
    s = bs.entropic_sigmas(prof, 21, 0.01, 100.0)
    assert np.all(np.diff(s) < 0) and s[0] == 100.0 and s[-1] == 0.01
    # inverse-CDF placement: equal entropy between consecutive nodes
    np.testing.assert_allclose(bs.entropy_cdf(prof, s), np.linspace(1, 0, 21), atol=1e-9)
    # the steps concentrate where the rate is: 19 of the 21 nodes within +-2.5 widths of the bump
    inside = np.abs(np.log(s)) < 2.5 * 0.3
    assert inside.sum() >= 19
    # the gate: churn exactly at the nodes whose CDF is in [q_lo, q_hi], capped at sqrt(2) - 1
    g = bs.gate_gammas(prof, s, 0.2, q_lo=0.27, q_hi=0.62)
    f = bs.entropy_cdf(prof, s)
    np.testing.assert_array_equal(g > 0, (f >= 0.27) & (f <= 0.62))
    assert np.all(g[g > 0] == 0.2) and (g > 0).sum() == 7
    assert np.all(bs.gate_gammas(prof, s, 5.0) == math.sqrt(2) - 1)
    # mutation: a gate on the survival function (1 - CDF) opens at other nodes
    wrong = ((1 - f) >= 0.27) & ((1 - f) <= 0.62)
    assert not np.array_equal(g > 0, wrong)


def test_closed_gate_is_the_deterministic_ddim_and_churn_changes_samples():
    m = _model()
    key = jax.random.PRNGKey(5)
    x_ode, info = _decode(bs.bitstream(steps=4), m, key, 256)
    # entropic nodes sit at CDF 1, 2/3, 1/3, 0: a band [0.5, 0.5] contains none of them
    x_closed, _ = _decode(bs.bitstream(steps=4, gamma=0.3, q_lo=0.5, q_hi=0.5), m, key, 256)
    np.testing.assert_array_equal(np.asarray(x_closed), np.asarray(x_ode))
    x_open, _ = _decode(bs.bitstream(steps=4, gamma=0.3), m, key, 256)
    assert np.any(np.asarray(x_open) != np.asarray(x_ode))
    assert int(info.nfe[0]) == 4 and int(info.nonfinite_step.max()) == -1


def test_sampler_approaches_the_truth_with_steps():
    """ODE (DDIM, entropic grid) on the exact denoiser: TV falls with the steps to the sampling
    floor and 48 steps pass a chi-square test at 1e-3; the wrong bit order fails it."""
    m = _model()
    lp = enumerate_log_probs(_tiny())
    n = 4000
    key = jax.random.PRNGKey(11)
    tvs = {}
    for steps in (1, 3, 48):
        x, info = _decode(bs.bitstream(steps=steps), m, key, n)
        assert int(info.nfe[0]) == steps
        tvs[steps] = tv_to_exact(np.asarray(x), lp, 3)
    floor = tv_floor(lp, n)
    assert tvs[1] > tvs[3] > tvs[48], tvs
    assert tvs[1] > 3 * floor and tvs[48] < 1.3 * floor, (tvs, floor)
    assert chi_square_test(np.asarray(x), lp, 3).p_value > ALPHA
    # the gated stochastic sampler at the paper's gamma also converges
    x_g, info_g = _decode(bs.bitstream(steps=48, gamma=0.2), m, key, n)
    assert chi_square_test(np.asarray(x_g), lp, 3).p_value > ALPHA
    # mutation: denoise with lsb codes, round with msb -> a permuted distribution
    wrong = dataclasses.replace(m, denoise=bs.enumerated_denoiser(lp, 3, 4, order="lsb"))
    x_w, _ = _decode(bs.bitstream(steps=48), wrong, key, n)
    assert chi_square_test(np.asarray(x_w), lp, 3).p_value < ALPHA


def test_prompt_tokens_are_kept_and_conditioned_on():
    m = _model()
    lp = enumerate_log_probs(_tiny()).reshape(3, 3, 3, 3)
    x0 = jnp.asarray(np.array([[2, 3, 3, 3]] * 3000))  # token 0 revealed as 2
    x, _ = _decode(bs.bitstream(steps=32), m, jax.random.PRNGKey(2), x=x0)
    x = np.asarray(x)
    assert np.all(x[:, 0] == 2)
    cond = np.exp(lp[2]).sum(axis=(1, 2))
    cond /= cond.sum()  # p(x_1 | x_0 = 2)
    obs = np.bincount(x[:, 1], minlength=3) / len(x)
    assert 0.5 * np.abs(obs - cond).sum() < 0.04


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=0), "steps"), (dict(spacing="uniform"), "spacing"), (dict(solver="rk45"), "solver"),
    (dict(gamma=-0.1), "gamma"), (dict(q_lo=0.7, q_hi=0.2), "q_lo"), (dict(gamma=0.2, solver="unipc"), "solver"),
    (dict(sigma_min=0.0), "sigma_min"), (dict(sigma_min=100.0), "sigma_min"), (dict(s_noise=float("nan")), "s_noise"),
])
def test_bad_options_raise_naming_the_option(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        bs.bitstream(**kwargs)


def test_bad_model_and_helpers_raise():
    with pytest.raises(ValueError, match="^order"):
        bs.token_codes(4, "big")
    with pytest.raises(ValueError, match="^vocab_size"):
        bs.num_bits(1)
    with pytest.raises(ValueError, match="^denoiser"):
        bs.bitstream_model(_tiny(), denoiser="gmm")
    plain = DiscreteModel(fn=lambda x, t: None, vocab_size=3, length=4)
    with pytest.raises(ValueError, match="^model"):
        _decode(bs.bitstream(), plain, jax.random.PRNGKey(0), 2)
