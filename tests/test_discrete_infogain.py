"""Information-gain unmasking (samplax/discrete/infogain.py): its scores against brute force on an
enumerated joint distribution, exactness of the expected mode (chi-square, with a mutation), exact
NFE accounting, option checks."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.discrete.exact import table_model
from samplax.discrete import (chi_square_test, decode, enumerate_log_probs, exact_model,
                              get_sampler, random_hmm)
from samplax.discrete.infogain import expected_candidates, info_gain, model_call, sampled_scores

ALPHA = 1e-3  # significance of the chi-square tests


_table_model = table_model  # the brute-force exact denoiser (samplax.discrete.exact)


def _joint(hmm):
    v, n = hmm.vocab_size, hmm.length
    p = np.exp(enumerate_log_probs(hmm))
    seqs = np.array(list(itertools.product(range(v), repeat=n)))
    return seqs, p / p.sum()


def _marginal_entropies(seqs, p, x, v_size):
    """Brute force: H(x_j | revealed tokens of x) for every position j (numpy, float64)."""
    cons = np.all((x == v_size) | (seqs == x), axis=1)
    w = p * cons
    w = w / w.sum()
    h = []
    for j in range(seqs.shape[1]):
        m = np.bincount(seqs[:, j], weights=w, minlength=v_size)
        h.append(-np.sum(np.where(m > 0, m * np.log(np.where(m > 0, m, 1.0)), 0.0)))
    return np.array(h), w


def _brute_expected(seqs, p, x, v_size, cost_weight):
    """J(i) = -cw H(x_i | z) - sum_v p(x_i = v | z) * mean_{j masked, j != i} H(x_j | z, x_i = v)."""
    h, w = _marginal_entropies(seqs, p, x, v_size)
    masked = np.flatnonzero(x == v_size)
    out = {}
    for i in masked:
        pi = np.bincount(seqs[:, i], weights=w, minlength=v_size)
        rest = [j for j in masked if j != i]
        exp_h = 0.0
        for v in range(v_size):
            if pi[v] == 0:
                continue
            z = x.copy()
            z[i] = v
            hv, _ = _marginal_entropies(seqs, p, z, v_size)
            exp_h += pi[v] * (hv[rest].mean() if rest else 0.0)
        out[int(i)] = -cost_weight * h[i] - exp_h
    return out


def test_expected_scores_equal_brute_force():
    """The expected-mode score of every masked position equals the brute-force expected objective
    computed from the enumerated joint, and the chosen position is its argmax."""
    with jax.enable_x64(True):
        hmm = random_hmm(3, num_states=3, vocab_size=3, length=3)
        model = exact_model(hmm)
        seqs, p = _joint(hmm)
        v = hmm.vocab_size
        starts = np.array([[v, v, v], [v, 1, v], [2, v, v], [v, v, 0]], np.int32)
        x = jnp.asarray(starts)
        score_fn = jax.jit(lambda x, cw: expected_candidates(model, x, model_call(model, x), 8, cw)[:2])
        for cost_weight in (1.0, 0.0):
            positions, scores = score_fn(x, cost_weight)
            for b, start in enumerate(starts):
                brute = _brute_expected(seqs, p, start, v, cost_weight)
                got = {int(i): float(s) for i, s in zip(positions[b], scores[b]) if np.isfinite(s)}
                assert set(got) == set(brute)
                for i in brute:
                    np.testing.assert_allclose(got[i], brute[i], rtol=0, atol=1e-10)
                # the chosen position attains the brute-force maximum (ties are exact: with two masked
                # positions and cost_weight 1 both scores are minus the pair's joint entropy)
                assert brute[int(positions[b][np.argmax(scores[b])])] >= max(brute.values()) - 1e-12


def test_sampled_scores_equal_brute_force():
    """The paper's objective of a (position, token) action, -H(p_i) - mean remaining entropy after
    it, equals brute force for every action from a start with one revealed token."""
    with jax.enable_x64(True):
        hmm = random_hmm(5, num_states=2, vocab_size=3, length=3)
        model = exact_model(hmm)
        seqs, p = _joint(hmm)
        v = hmm.vocab_size
        start = np.array([v, 2, v], np.int32)
        h, _ = _marginal_entropies(seqs, p, start, v)
        actions = [(i, t) for i in (0, 2) for t in range(v)]
        states = np.stack([np.where(np.arange(3) == i, t, start) for i, t in actions]).astype(np.int32)
        got = jax.jit(lambda a, b: sampled_scores(model_call(model, a)[0], model_call(model, b), b == v,
                                                  jnp.asarray([a[0] for a in actions])))(
            jnp.asarray(start[None]), jnp.asarray(states))
        for (i, t), g, z in zip(actions, np.asarray(got), states):
            hz, _ = _marginal_entropies(seqs, p, z, v)
            np.testing.assert_allclose(g, -h[i] - hz[z == v].mean(), rtol=0, atol=1e-10)


def _tempered(model, factor):
    """A deliberately wrong denoiser: every conditional raised to a power and renormalised."""
    def fn(x, t):
        return jax.nn.log_softmax(factor * model(x, t), axis=-1)
    return type(model)(fn=fn, vocab_size=model.vocab_size, length=model.length, time_agnostic=True,
                       name="tempered")


def test_expected_mode_is_exact_and_mutation_fails():
    """With exact conditionals the expected mode draws every token from its conditional (only the
    order is planned), so it samples the joint exactly: chi-square at significance ALPHA.  The same
    check rejects the sampler run on a wrong (tempered) denoiser."""
    with jax.enable_x64(True):
        hmm = random_hmm(7, num_states=3, vocab_size=3, length=3)
        lp = enumerate_log_probs(hmm)
        sampler = info_gain(candidates=3, mode="expected")
        n = 6000
        run = jax.jit(lambda k, m: decode(sampler, m, k, n)[0], static_argnums=1)
        x = run(jax.random.PRNGKey(11), _table_model(hmm))
        assert chi_square_test(np.asarray(x), lp, hmm.vocab_size).p_value > ALPHA
        bad = run(jax.random.PRNGKey(11), _tempered(_table_model(hmm), 1.5))
        assert chi_square_test(np.asarray(bad), lp, hmm.vocab_size).p_value < ALPHA


@pytest.mark.parametrize("mode", ["sampled", "expected"])
def test_nfe_accounting_is_exact(mode):
    """nfe = 1 + calls_per_step * (m - 1) for a start with m >= 1 masked positions (0 for none),
    steps = m; sampled: N calls per step, expected: min(N, L) * V."""
    with jax.enable_x64(True):
        hmm = random_hmm(2, num_states=2, vocab_size=3, length=4)
        model = _table_model(hmm)
        n_cand = 2 if mode == "sampled" else 3
        v, length = hmm.vocab_size, hmm.length
        x = np.array([[v, v, v, v], [0, v, v, 1], [2, 2, v, 0], [0, 1, 2, 0]], np.int32)
        sampler = info_gain(candidates=n_cand, mode=mode)
        out, info = jax.jit(lambda x: decode(sampler, model, jax.random.PRNGKey(0), x=x))(jnp.asarray(x))
        m = (x == v).sum(1)
        per_step = n_cand if mode == "sampled" else min(n_cand, length) * v
        want = np.where(m > 0, 1 + per_step * (m - 1), 0)
        np.testing.assert_array_equal(np.asarray(info.nfe), want)
        np.testing.assert_array_equal(np.asarray(info.steps), m)
        np.testing.assert_array_equal(np.asarray(info.nonfinite_step), -1)
        out = np.asarray(out)
        assert np.all(out < v) and np.all(out[x < v] == x[x < v])
        if mode == "sampled":
            assert info_gain(candidates=n_cand).max_calls(length) == want.max()


def test_registry_and_bad_options():
    s = get_sampler("info_gain", candidates=4, mode="expected")
    assert s.extra_calls and s.options["candidates"] == 4
    for kwargs, name in [(dict(candidates=0), "candidates"), (dict(candidates=2.5), "candidates"),
                         (dict(position_temperature=0.0), "position_temperature"),
                         (dict(mode="beam"), "mode"), (dict(cost_weight=-1.0), "cost_weight"),
                         (dict(schedule="cubic"), "schedule"), (dict(precision="bf16"), "precision")]:
        with pytest.raises(ValueError, match=name):
            info_gain(**kwargs)
