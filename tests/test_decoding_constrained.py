"""Constrained sampling (samplax.decoding.constrained) against enumeration: automata vs brute force,
naive masking = its enumerated (biased) distribution, AWRS weights unbiased, AWRS-SMC = p(x | x in L),
ASAp converging.  Statistical tests at stated significance, each with a mutation that must fail."""
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.decoding import (chi_square_test, get_decoder, make_problem, sample_keys, sequence_index, table_lm,
                              z_ratio)
from samplax.decoding import constrained as C

V, L = 3, 5
ALPHA = 1e-3          # significance of every chi-square / z-test below (z: |z| < 3.3)


class _Size:
    def __init__(self, V, L, eos_id=None):
        self.vocab_size, self.length, self.eos_id = V, L, eos_id


def _lm():
    rng = np.random.default_rng(3)
    return table_lm(rng.normal(0.0, 1.5, V ** L), V, L, name="table3x5")


def _dyck_brute(s, pairs):
    st = []
    for t in s:
        if t < 2 * pairs and t % 2 == 0:
            st.append(t // 2)
        elif t < 2 * pairs:
            if not st or st.pop() != t // 2:
                return False
    return not st


def test_automata_match_brute_force_and_completion_tables():
    size = _Size(5, 6)
    seqs = np.array(list(itertools.product(range(5), repeat=6)))
    strs = ["".join(map(str, s)) for s in seqs]
    cases = [(C.dyck(size, pairs=2), [_dyck_brute(s, 2) for s in seqs]),
             (C.dyck(size, pairs=1), [_dyck_brute(s, 1) for s in seqs]),
             (C.regex_contains(size, "3,1,3"), [re.search("313", s) is not None for s in strs]),
             (C.regex_even(size, 2), [s.count("2") % 2 == 0 for s in strs])]
    for k, (c, brute) in enumerate(cases):
        m = C.member_table(c)
        np.testing.assert_array_equal(m, np.array(brute), err_msg=c.name)
        # allowed(state, pos)[v] == some member starts with x_<pos + v, at every position of every sequence
        # (the jnp functions on the first case; the same table formula in numpy on the others: fewer compiles)
        states = C._states_np(c, seqs)[:, :6]
        if k == 0:
            np.testing.assert_array_equal(np.asarray(C.member(c, seqs[::97])), m[::97], err_msg=c.name)
            got = np.asarray(jax.jit(jax.vmap(lambda s, t: C.allowed(c, s, t), in_axes=(1, 0)))(
                jnp.asarray(states), jnp.arange(6)))
        else:
            got = np.stack([c.viable[6 - 1 - t][c.transitions[states[:, t]]] for t in range(6)])
        for t in range(6):
            can = m.reshape(5 ** (t + 1), -1).any(1).reshape(-1, 5)
            rows = sequence_index(seqs[:, :t], 5) if t else np.zeros(len(seqs), int)
            np.testing.assert_array_equal(got[t], can[rows],
                                          err_msg=f"{c.name} t={t}")
    # EOS: words of the language followed by EOS padding
    c = C.regex_even(_Size(3, 4, eos_id=2), 0)
    seqs = np.array(list(itertools.product(range(3), repeat=4)))
    brute = []
    for s in seqs:
        k = list(s).index(2) if 2 in s else 4
        brute.append(all(t == 2 for t in s[k:]) and list(s[:k]).count(0) % 2 == 0)
    np.testing.assert_array_equal(C.member_table(c), brute)


def test_masked_equals_its_enumeration_and_is_biased():
    with jax.enable_x64(True):
        lm = _lm()
        pb = make_problem(lm, constraint="dyck")
        dec = get_decoder("masked")
        q = dec.target(pb)
        pi, log_Z = C.constrained_log_probs(lm, pb.constraint)
        x, info = jax.jit(lambda k: dec.run(pb, k))(sample_keys(jax.random.PRNGKey(0), 20000))
        x = np.asarray(x)
        assert C.member_table(pb.constraint)[sequence_index(x, V)].all()          # never a dead end
        assert chi_square_test(x, q, V).p_value > ALPHA
        np.testing.assert_allclose(np.asarray(info.log_q), q[sequence_index(x, V)], atol=1e-9)
        np.testing.assert_array_equal(np.asarray(info.extras["constraint_checks"]), V * L)
        bias = C.tv(pi, q)
        assert bias > 0.05 and C.kl(pi, q) > 0.01                                  # masking is biased ...
        assert chi_square_test(x, pi, V).p_value < 1e-6                            # ... and visibly so
        # mutation: exact samples of p(x | x in L) must fail the masked distribution's test
        idx = np.random.default_rng(1).choice(V ** L, 20000, p=np.exp(pi))
        exact = np.stack(np.unravel_index(idx, (V,) * L), 1)
        assert chi_square_test(exact, q, V).p_value < ALPHA


def _awrs_draws(estimator, n=20000):
    logp = jnp.log(jnp.array([0.31, 0.22, 0.17, 0.12, 0.09, 0.06, 0.03], jnp.float64))
    ok = jnp.array([False, True, False, True, True, False, True])
    keys = jax.random.split(jax.random.PRNGKey(7), n)
    tok, log_w, checks, rej = jax.jit(jax.vmap(lambda k: C.awrs_step(k, logp, ok, estimator)))(keys)
    p = np.exp(np.asarray(logp))
    return np.asarray(tok), np.exp(np.asarray(log_w)), np.asarray(checks), np.asarray(rej), p, np.asarray(ok)


def _unbiased(w, Z):
    return abs(w.mean() - Z) / (w.std(ddof=1) / np.sqrt(w.size)) < 3.3


@pytest.mark.parametrize("estimator", ("awrs", "geometric", "recursive"))
def test_awrs_exact_token_and_unbiased_weight(estimator):
    from scipy import stats
    with jax.enable_x64(True):
        tok, w, checks, rej, p, ok = _awrs_draws(estimator)
    Z = float((p * ok).sum())
    counts = np.bincount(tok, minlength=7)
    assert counts[~ok].sum() == 0
    assert stats.chisquare(counts[ok], tok.size * p[ok] / Z).pvalue > ALPHA       # exactly p c / Z
    assert _unbiased(w, Z)                                                        # E[w] = Z
    for v in np.flatnonzero(ok):                                                  # E[w | token] = Z
        assert abs(w[tok == v].mean() - Z) / (w[tok == v].std(ddof=1) / np.sqrt((tok == v).sum())) < 4.0
    assert 1 <= checks.min() and checks.max() <= 7 and checks.mean() < 7        # fewer than full masking
    # mutations (each a plausible bug) must fail the same z-test
    if estimator == "awrs":         # off by one: (1 - M_1) / (R + 2)
        assert not _unbiased(w * (rej + 1) / (rej + 2), Z)
        with jax.enable_x64(True):  # the masking baseline inside SMC: every token checked, w = Z exactly
            logp = jnp.log(jnp.asarray(p))
            _, lw, ch, _ = jax.jit(C.awrs_step, static_argnums=3)(jax.random.PRNGKey(0), logp, jnp.asarray(ok),
                                                                   "exact")
        np.testing.assert_allclose(np.exp(float(lw)), Z, rtol=1e-12)
        assert int(ch) == 7
    elif estimator == "geometric":  # 1/N instead of 1/(N-1) (N trials to two acceptances)
        assert not _unbiased(1.0 / (rej + 2), Z)
    else:                           # forgetting the rejected mass (w = 1 when the next token passes)
        nxt_pass = w > p.max() + 1e-12
        assert not _unbiased(np.where(nxt_pass, 1.0, w), Z)


def test_awrs_smc_targets_the_conditional_with_unbiased_Z():
    with jax.enable_x64(True):
        lm = _lm()
        pb = make_problem(lm, constraint="dyck")
        pi, log_Z = C.constrained_log_probs(lm, pb.constraint)
        # the paper's estimator (the SMC driver is the same for all three; "geometric" compiles 2x slower)
        dec = get_decoder("awrs_smc", particles=32, ess_threshold=0.5, estimator="awrs")
        x, info = jax.jit(lambda k: dec.run(pb, k))(sample_keys(jax.random.PRNGKey(1), 2000))
        x = np.asarray(x)
        assert chi_square_test(x, pi, V).p_value > ALPHA
        zr = z_ratio(np.asarray(info.log_Z), log_Z)
        assert abs(zr.z_score) < 3.3                                                # E[Z_hat] = p(L)
        assert np.all(np.asarray(info.target_calls) == 32 * L)
        assert np.mean(info.extras["constraint_checks"]) < 32 * L * V              # adaptive: fewer checks
        # mutation: the same proposal without the AWRS weights is naive masking (its exact distribution,
        # tested against the sampler above), which fails this test
        q = C.masked_log_probs(lm, pb.constraint)
        idx = np.random.default_rng(2).choice(V ** L, 2000, p=np.exp(q) / np.exp(q).sum())
        assert chi_square_test(np.stack(np.unravel_index(idx, (V,) * L), 1), pi, V).p_value < ALPHA


def test_asap_converges_to_the_conditional():
    with jax.enable_x64(True):
        lm = _lm()
        c = make_problem(lm, constraint="dyck").constraint
        pi, _ = C.constrained_log_probs(lm, c)
        logp_all = C.conditionals_all(lm)
        efg = C.efg_table(c, C.exact_log_probs(lm))
        init = C.asap_init_table(c)
        # identities: the initial estimates give naive masking, the exact expected futures give pi
        np.testing.assert_allclose(np.exp(C.asap_log_probs(c, init, logp_all)),
                                   np.exp(C.masked_log_probs(lm, c, logp_all=logp_all)), atol=1e-12)
        np.testing.assert_allclose(np.exp(C.asap_log_probs(c, efg, logp_all)), np.exp(pi), atol=1e-12)

        chain = jax.jit(lambda k, tab, update: C.asap_chain(lm, c, k, 100, table=tab, update=update))

        def run(update):
            tab, tvs = jnp.asarray(init), [C.tv(pi, C.asap_log_probs(c, init, logp_all))]
            for i in range(3):
                tab, xs, _, _ = chain(jax.random.PRNGKey(i), tab, update)
                assert np.all(np.asarray(tab) >= efg - 1e-12)                      # sound over-approximation
                tvs.append(C.tv(pi, C.asap_log_probs(c, tab, logp_all)))
            return tvs
        tvs = run(True)
        assert tvs[0] > 0.05 and tvs[1] < tvs[0] and tvs[3] <= tvs[1] and tvs[3] < 0.25 * tvs[0]
        # mutation: never refining the estimates stays at naive masking's bias
        bad = run(False)
        assert not (bad[3] < 0.25 * bad[0])
        # the registered decoder: key k's output is sample iterations + 1 of its own chain
        pb = make_problem(lm, constraint="dyck")
        keys = sample_keys(jax.random.PRNGKey(5), 2)
        x, info = get_decoder("asap", iterations=99).run(pb, keys)
        for i in range(2):
            _, xs, lps, lqs = chain(keys[i], jnp.asarray(init), True)
            np.testing.assert_array_equal(np.asarray(x[i]), np.asarray(xs[-1]))
            np.testing.assert_allclose([info.log_p[i], info.log_q[i]], [lps[-1], lqs[-1]], rtol=1e-12)
        assert np.all(np.asarray(info.target_calls) == 100 * L)


def test_bad_options_and_inputs_raise():
    lm = _lm()
    for name, opts in [("awrs_smc", dict(particles=0)), ("awrs_smc", dict(estimator="unbiased")),
                       ("awrs_smc", dict(resampling="nope")), ("awrs_smc", dict(ess_threshold=1.5)),
                       ("asap", dict(iterations=-1)), ("asap", dict(chunk=0)), ("masked", dict(cached="yes")),
                       ("awrs_smc", dict(particle=4)), ("awrs_smc", dict(chunk=0))]:
        with pytest.raises(ValueError):
            get_decoder(name, **opts)
    for opts in [dict(constraint="dyck", constraint_options=dict(pairs=0)),
                 dict(constraint="dyck", constraint_options=dict(pairs=2)),
                 dict(constraint="regex_contains", constraint_options=dict(pattern="0,7")),
                 dict(constraint="regex_contains", constraint_options=dict(pattern="a")),
                 dict(constraint="regex_contains", constraint_options=dict(pattern="01")),
                 dict(constraint="regex_even", constraint_options=dict(token="0,1")),
                 dict(constraint="regex_even", constraint_options=dict(token=-1)),
                 dict(constraint="no_such_language")]:
        with pytest.raises(ValueError):
            make_problem(lm, **opts)
    keys = sample_keys(jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="constraint"):
        get_decoder("masked").run(make_problem(lm), keys)
    with pytest.raises(ValueError, match="prompt"):      # ")" can never be balanced
        get_decoder("masked").run(make_problem(lm, constraint="dyck", prompt=[1]), keys)
    with pytest.raises(ValueError, match="constraint"):
        get_decoder("asap").run(make_problem(lm, constraint="dyck")._replace(
            constraint=C.dyck(_Size(3, 4))), keys)
