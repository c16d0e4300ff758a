"""Decoding core: exact LMs against the HMM enumeration, logit transforms against direct numpy
definitions, ancestral decoding against its enumerated distribution (chi-square, with mutations)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import decoding as D
from samplax.discrete import exact as dexact

ALPHA = 1e-3  # significance of every chi-square test here


def _np_reference(p, kind, v):
    """The kept set of one distribution p (numpy, by the definitions)."""
    order = np.argsort(-p, kind="stable")
    if kind == "top_k":
        return p >= p[order][v - 1]
    if kind == "top_p":
        cum = np.cumsum(p[order])
        n = int(np.searchsorted(cum, v, side="left")) + 1     # smallest prefix with mass >= v
        return p >= p[order][min(n, len(p)) - 1]
    if kind == "min_p":
        return p >= v * p.max() * (1 - 1e-12)
    if kind == "typical":
        h = -(p * np.log(p)).sum()
        o = np.argsort(np.abs(-np.log(p) - h), kind="stable")
        n = int(np.searchsorted(np.cumsum(p[o]), v, side="left")) + 1
        keep = np.zeros(len(p), bool)
        keep[o[:n]] = True
        return keep
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,values", [("top_k", [1, 2, 5]), ("top_p", [0.3, 0.75, 0.95]),
                                         ("min_p", [0.05, 0.3, 0.9]), ("typical", [0.2, 0.6, 0.95])])
def test_transforms_keep_the_defined_sets(kind, values):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for v in values:
            for _ in range(20):
                p = rng.dirichlet(np.full(7, 0.7))
                out = np.asarray(getattr(D, kind)(v)(jnp.log(jnp.asarray(p))[None], 0))[0]
                keep = _np_reference(p, kind, v)
                np.testing.assert_array_equal(out > D.LOG_ZERO / 2, keep)
                np.testing.assert_allclose(np.exp(out[keep]), p[keep] / p[keep].sum(), rtol=1e-12)


def test_temperature_chain_and_ties():
    with jax.enable_x64(True):
        lp = jnp.log(jnp.asarray([[0.4, 0.4, 0.15, 0.05]]))
        np.testing.assert_array_equal(np.asarray(D.top_k(1)(lp, 0))[0] > -1, [True, True, False, False])
        t = np.exp(np.asarray(D.temperature(0.5)(lp, 0))[0])
        np.testing.assert_allclose(t, np.array([.4, .4, .15, .05]) ** 2 / (np.array([.4, .4, .15, .05]) ** 2).sum())
        both = D.chain(D.temperature(2.0), D.top_k(2))(lp, 0)
        np.testing.assert_allclose(np.exp(np.asarray(both))[0], [0.5, 0.5, 0, 0], atol=1e-300)
        sched = D.temperature_schedule(lambda pos: 1.0 + pos)
        np.testing.assert_allclose(np.asarray(sched(lp, 1)), np.asarray(D.temperature(2.0)(lp, 0)))


@pytest.mark.parametrize("name", D.LMS)
def test_exact_lms_match_the_hmm_enumeration(name):
    with jax.enable_x64(True):
        lm = D.load_lm(name)
        ref = dexact.enumerate_log_probs(dexact.load_problem(name))
        lp = D.exact_log_probs(lm)
        np.testing.assert_allclose(np.exp(lp), np.exp(ref), atol=1e-14)
        t = D.table_lm(lp, lm.vocab_size, lm.length)
        np.testing.assert_allclose(np.exp(D.exact_log_probs(t)), np.exp(ref), atol=1e-14)
        # cached and uncached paths: identical tokens and log-probs, one model call per token
        keys = D.sample_keys(jax.random.PRNGKey(3), 64)
        for m in (lm, t):
            x1, i1 = D.sample(m, keys, D.top_p(0.9), cached=True)
            x2, i2 = D.sample(m, keys, D.top_p(0.9), cached=False)
            np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
            np.testing.assert_allclose(np.asarray(i1.log_q), np.asarray(i2.log_q), rtol=1e-12)
            assert int(i1.target_calls[0]) == lm.length


def test_table_lm_with_impossible_sequences():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        lp = np.log(rng.dirichlet(np.ones(3 ** 4)))
        lp[rng.random(3 ** 4) < 0.6] = -np.inf
        lm = D.table_lm(lp, 3, 4)
        out = D.exact_log_probs(lm)
        np.testing.assert_array_equal(np.isinf(out), np.isinf(lp))
        np.testing.assert_allclose(np.exp(out), np.exp(lp - np.logaddexp.reduce(lp)), atol=1e-15)
        logits = np.asarray(lm.logits_fn(jnp.asarray(D.all_sequences(3, 4))))
        assert np.all(np.isfinite(logits)) and np.allclose(np.exp(logits).sum(-1), 1.0)


@pytest.mark.parametrize("opts,wrong", [(dict(temperature=0.7), dict(temperature=0.8)),
                                        (dict(top_p=0.8, temperature=1.3), dict(top_p=0.85, temperature=1.3)),
                                        (dict(min_p=0.2), dict(min_p=0.1))])
def test_ancestral_samples_its_enumerated_target(opts, wrong):
    with jax.enable_x64(True):
        problem = D.make_problem("hmm8x5", prompt=[2])
        dec = D.get_decoder("ancestral", **opts)
        q = dec.target(problem)
        keys = D.sample_keys(jax.random.PRNGKey(11), 20000)
        x, info = jax.jit(lambda k: dec.run(problem, k))(keys)
        x = np.asarray(x)
        assert np.all(x[:, 0] == 2)
        V = problem.lm.vocab_size
        idx = D.sequence_index(x, V)
        np.testing.assert_allclose(np.asarray(info.log_q), q[idx], atol=1e-10)
        assert D.chi_square_test(x, q, V).p_value > ALPHA
        bad = D.get_decoder("ancestral", **wrong)
        xb, _ = jax.jit(lambda k: bad.run(problem, k))(keys)
        assert D.chi_square_test(np.asarray(xb), q, V).p_value < ALPHA  # mutation: a different knob fails


def test_targets_and_z_ratio():
    lp = np.log(np.array([0.5, 0.3, 0.2]))
    t, logz = D.power_target(lp, 2.0)
    np.testing.assert_allclose(np.exp(t), np.array([.25, .09, .04]) / .38)
    np.testing.assert_allclose(logz, np.log(.38))
    t, logz = D.tilted_target(lp, np.array([0.0, 1.0, 2.0]), 0.5)
    w = np.array([.5, .3 * np.e ** 2, .2 * np.e ** 4])
    np.testing.assert_allclose(np.exp(t), w / w.sum())
    t, logz = D.constrained_target(lp, np.array([True, False, True]))
    np.testing.assert_allclose(np.exp(t), [.5 / .7, 0, .2 / .7])
    np.testing.assert_allclose(logz, np.log(0.7))
    r = D.z_ratio(np.log(np.array([0.5, 1.5, 1.0, 1.0])), 0.0)
    assert r.ratio == 1.0 and r.z_score == 0.0


@pytest.mark.parametrize("call,match", [
    (lambda: D.top_k(0), "top_k"), (lambda: D.top_p(1.5), "top_p"), (lambda: D.min_p(-0.1), "min_p"),
    (lambda: D.temperature(0.0), "temperature"), (lambda: D.get_decoder("nope"), "unknown decoder"),
    (lambda: D.get_decoder("ancestral", tempreature=1.0), "sampler.options"),
    (lambda: D.load_lm("gpt5"), "unknown exact language model"),
    (lambda: D.make_problem("hmm8x5", prompt=[9]), "prompt"),
    (lambda: D.make_problem("hmm8x5", draft="nope"), "draft"),
    (lambda: D.sample(D.load_lm("hmm8x5"), jnp.zeros((3,), jnp.int32)), "keys"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_nonfinite_model_output_is_reported_at_its_position():
    base = D.load_lm("markov4x8")

    def logits_fn(x):
        logp = base.logits_fn(x)
        # sample 0 meets NaN at position 3 (and after); the others never do
        bad = (jnp.arange(x.shape[0])[:, None] == 0) & (jnp.arange(x.shape[1])[None, :] >= 3)
        return jnp.where(bad[..., None], jnp.nan, logp)

    lm = D.LanguageModel(logits_fn, base.vocab_size, base.length, name="nan_lm")
    _, info = D.sample(lm, D.sample_keys(jax.random.PRNGKey(0), 4))
    np.testing.assert_array_equal(np.asarray(info.nonfinite_step), [3, -1, -1, -1])
