"""Exploratory Annealed Decoding (samplax.decoding.annealed): the schedule is the paper's formula,
the decoder's exact target is the product of the per-step tempered conditionals (computed here
independently from the joint table), and its samples pass a chi-square test against it while a
wrong schedule (constant temperature) fails the same test."""
import jax
import numpy as np
import pytest

from samplax.decoding import get_decoder, make_problem, sample_keys, table_lm
from samplax.decoding.annealed import ead_schedule, ead_temperature
from samplax.decoding.exact import all_sequences, sequence_index
from samplax.discrete.metrics import chi_square_test

V, L = 3, 5
ALPHA = 1e-3  # significance of the chi-square tests
OPTS = dict(t_start=1.6, t_end=0.4, decay=3.0, warmup=1)


def test_schedule_is_the_papers_formula():
    t = np.arange(8)
    got = ead_temperature(t, 1.2, 0.1, 8.0, warmup=2)
    want = [1.0, 1.0] + [max(1 + 1.2 - np.exp(k / 8.0), 0.1) for k in range(2, 8)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[2] > got[3] > got[4] and got[-1] == pytest.approx(0.1)  # cools, then clamps at t_end
    # after a prompt of 2 tokens the first generated token (model position 2) is at t = 0: tau_max
    logp = np.log(np.array([0.5, 0.3, 0.2]))
    with jax.enable_x64(True):
        got = np.asarray(ead_schedule(1.2, 0.1, 8.0, offset=2)(logp, 2))
    want = logp / 1.2 - np.logaddexp.reduce(logp / 1.2)
    np.testing.assert_allclose(got, want, atol=1e-12)
    for bad in (dict(t_start=0.0), dict(t_end=-1.0), dict(decay=0.0), dict(warmup=-1), dict(t_start=1.0, t_end=2.0)):
        with pytest.raises(ValueError, match=list(bad)[0]):
            get_decoder("annealed", **bad)


def _tempered_product(joint, temps):
    """log q(x) = sum_t log softmax(log p(. | x_<t) / T_t)[x_t] from the joint table (numpy)."""
    seqs = all_sequences(V, L)
    out = np.zeros(len(seqs))
    for t in range(L):
        pre = sequence_index(seqs[:, :t], V) if t else np.zeros(len(seqs), np.int64)
        marg = np.logaddexp.reduce(joint.reshape((V,) * L), axis=tuple(range(t + 1, L))).reshape(-1, V)  # [V^t, V]
        cond = marg - np.logaddexp.reduce(marg, axis=1, keepdims=True)
        tempered = cond / temps[t]
        tempered -= np.logaddexp.reduce(tempered, axis=1, keepdims=True)
        out += tempered[pre, seqs[:, t]]
    return out


def test_target_is_the_product_of_tempered_conditionals_and_samples_match_it():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=V ** L) * 1.5
    joint = logits - np.logaddexp.reduce(logits)
    with jax.enable_x64(True):
        problem = make_problem(table_lm(logits, V, L))
        dec = get_decoder("annealed", **OPTS)
        target = dec.target(problem)
        temps = ead_temperature(np.arange(L), **OPTS)
        np.testing.assert_allclose(target, _tempered_product(joint, temps), atol=1e-10)
        assert np.abs(target - joint).max() > 0.3  # annealing changes the distribution
        keys = sample_keys(jax.random.PRNGKey(0), 20000)
        x, info = jax.jit(lambda k: dec.run(problem, k))(keys)
        wrong = get_decoder("ancestral", temperature=OPTS["t_start"])  # mutation: no annealing
        xw, _ = jax.jit(lambda k: wrong.run(problem, k))(keys)
    x = np.asarray(x)
    assert chi_square_test(x, target, V).p_value > ALPHA
    assert chi_square_test(np.asarray(xw), target, V).p_value < ALPHA
    idx = sequence_index(x, V)
    np.testing.assert_allclose(np.asarray(info.log_p), joint[idx], atol=1e-9)   # log p under the untempered LM
    np.testing.assert_allclose(np.asarray(info.log_q), target[idx], atol=1e-9)  # log q under what was sampled
    assert np.all(np.asarray(info.target_calls) == L)
