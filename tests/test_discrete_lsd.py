"""Learnable sampler distillation (samplax/discrete/lsd.py): identity = ancestral bit for bit, the
exact output law of a coefficient sampler (chi-square, with a wrong-coefficient mutation), exact
NFE, the distillation objectives, coefficient files and option checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.discrete.exact import table_model
from samplax.discrete import (ancestral, chi_square_test, decode, enumerate_log_probs,
                              exact_model, get_sampler, markov_chain, random_hmm)
from samplax.discrete.lsd import (LSDParams, distill, exact_distribution, identity_params, lsd, save_params,
                                  uniform_times)

ALPHA = 1e-3  # significance of the chi-square tests


_table_model = table_model  # the brute-force exact denoiser (samplax.discrete.exact)


def test_identity_coefficients_are_ancestral_bitwise():
    """Phi = 1 on the uniform grid reproduces MDLM ancestral (cached) exactly: samples, NFE, steps."""
    model = _table_model(random_hmm(0, num_states=2, vocab_size=4, length=4))
    a_s, l_s = ancestral(3), lsd(3)
    a, b = jax.jit(lambda k: (decode(a_s, model, k, 256), decode(l_s, model, k, 256)))(jax.random.PRNGKey(4))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_output_law_is_exact_and_wrong_coefficient_fails():
    """Samples of a 2-step LSD sampler with Phi = (0.3, 1) pass a chi-square test (significance
    ALPHA) against its exact law (enumerated reveal patterns); samples with the identity
    coefficient fail the same test (the mutation)."""
    with jax.enable_x64(True):
        hmm = random_hmm(1, num_states=3, vocab_size=3, length=3, markov=True, concentration=0.2)
        model = _table_model(hmm)
        params = LSDParams(jnp.asarray([0.3, 1.0]), uniform_times(2))
        law = jax.jit(lambda p: exact_distribution(model, p))
        q = np.asarray(law(params))
        np.testing.assert_allclose(q.sum(), 1.0, atol=1e-12)
        n = 4000  # the identity law is 0.045 away in TV: chi-square noncentrality ~ 95
        good_s, bad_s = lsd(2, coefficients="0.3,1"), lsd(2)
        good, bad = jax.jit(lambda k: (decode(good_s, model, k, n)[0], decode(bad_s, model, k, n)[0]))(
            jax.random.PRNGKey(1))
        assert chi_square_test(np.asarray(good), np.log(q), 3).p_value > ALPHA
        assert chi_square_test(np.asarray(bad), np.log(q), 3).p_value < ALPHA


def test_nfe_with_zero_coefficients():
    """Phi = (0, 0, 1): nothing is revealed before the last step, so with the cache a time-agnostic
    model is called once (NFE 1, 3 steps), without it three times, and every token is revealed."""
    model = _table_model(random_hmm(0, num_states=2, vocab_size=4, length=4))
    cached, uncached = lsd(3, coefficients="0,0,1"), lsd(3, coefficients="0,0,1", cache=False)
    outs = jax.jit(lambda k: (decode(cached, model, k, 16), decode(uncached, model, k, 16)))(jax.random.PRNGKey(0))
    for (x, info), nfe in zip(outs, (1, 3)):
        np.testing.assert_array_equal(np.asarray(info.nfe), nfe)
        np.testing.assert_array_equal(np.asarray(info.steps), 3)
        assert np.all(np.asarray(x) < model.vocab_size)


def test_likelihood_distillation_reduces_loss_and_exact_tv():
    """On a strongly correlated chain (x_{i+1} = x_i w.p. 0.95) the 2-step ancestral sampler is far
    from its best allocation (revealing fewer tokens first is better: exact TV 0.414 at Phi = 1,
    0.364 at Phi_0 ~ 0.7).  A few optax steps of the likelihood objective lower its loss and the
    EXACT TV of the learned sampler's law (enumerated) by > 0.03.  The paper's score objective
    cannot move the first coefficient: student and teacher agree at the all-MASK start."""
    with jax.enable_x64(True):
        hmm = markov_chain([0.5, 0.5], [[0.95, 0.05], [0.05, 0.95]], 4)
        model = exact_model(hmm)  # the forward-backward denoiser of samplax.discrete.exact
        truth = np.exp(enumerate_log_probs(hmm))
        law = jax.jit(lambda p: exact_distribution(model, p))
        tv = lambda p: 0.5 * np.abs(np.asarray(law(p)) - truth).sum()  # noqa: E731
        res = distill(model, 2, 16, jax.random.PRNGKey(0), objective="likelihood", n_traj=128,
                      iterations=12, rounds=1, patterns=16, learning_rate=0.1)
        assert res.loss_history[-1] < res.loss_history[0]
        assert tv(res.params) < tv(identity_params(2)) - 0.03
        res = distill(model, 2, 16, jax.random.PRNGKey(0), objective="score", n_traj=64, iterations=5)
        assert float(res.params.coefficients[0]) == 1.0
        assert res.loss_history[-1] < res.loss_history[0]


def test_coefficients_file_and_bad_options(tmp_path):
    path = str(tmp_path / "lsd.json")
    params = LSDParams(jnp.asarray([0.8, 1.2, 1.0]), jnp.asarray([1.0, 0.6, 0.25, 0.0]))
    save_params(path, params, {"schedule": "linear"})
    model = _table_model(random_hmm(0, num_states=2, vocab_size=4, length=4))
    from_file = lsd(3, coefficients_file=path)
    from_text = get_sampler("lsd", steps=3, coefficients="0.8,1.2,1", times="1,0.6,0.25,0")
    a, b = jax.jit(lambda k: (decode(from_file, model, k, 32)[0], decode(from_text, model, k, 32)[0]))(
        jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for kwargs, name in [(dict(steps=0), "steps"), (dict(steps=2, coefficients="1"), "coefficients"),
                         (dict(steps=2, coefficients="1,-1"), "coefficients"),
                         (dict(steps=2, coefficients="1,x"), "coefficients"),
                         (dict(steps=2, times="1,0.7,0.8"), "times"), (dict(steps=2, times="1,0.5"), "times"),
                         (dict(steps=3, coefficients_file=path, coefficients="1,1,1"), "coefficients_file"),
                         (dict(steps=3, coefficients_file=str(tmp_path / "no.json")), "coefficients_file"),
                         (dict(steps=3, coefficients_file=path, schedule="cosine"), "schedule"),
                         (dict(steps=2, schedule="cubic"), "schedule"), (dict(steps=2, cache=1), "cache")]:
        with pytest.raises(ValueError, match=name):
            lsd(**kwargs)
    with pytest.raises(ValueError, match="objective"):
        distill(model, 2, 8, jax.random.PRNGKey(0), objective="kl")
    with pytest.raises(ValueError, match="teacher_steps"):
        distill(model, 3, 8, jax.random.PRNGKey(0))
