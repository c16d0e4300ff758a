"""The discrete core against exact answers: forward-backward conditionals vs brute-force
enumeration, the first-hitting sampler's exactness (chi-square at 10^6 samples, significance 1e-3)
with two mutations that must fail it, ancestral sampling's convergence in the step count, NFE
accounting, per-sample keys and prompts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import discrete as d
from samplax.discrete.base import DiscreteModel

ALPHA = 1e-3


@pytest.fixture(scope="module")
def tiny():
    return d.random_hmm(3, num_states=2, vocab_size=3, length=5, concentration=0.4, emit_concentration=0.5)


def _brute_conditional(hmm, x):
    seqs = d.all_sequences(hmm.vocab_size, hmm.length)
    p = np.exp(d.enumerate_log_probs(hmm))
    rev = x != hmm.vocab_size
    match = np.all((seqs == x) | ~rev, axis=1)
    out = np.zeros((hmm.length, hmm.vocab_size))
    for i in range(hmm.length):
        out[i] = [p[match & (seqs[:, i] == v)].sum() for v in range(hmm.vocab_size)]
    return out / out.sum(-1, keepdims=True)


def test_conditionals_equal_brute_force(tiny):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for hmm in (tiny, d.load_problem("hmm8x5")):
            for _ in range(4):
                x = rng.integers(0, hmm.vocab_size, hmm.length)
                x[rng.random(hmm.length) < 0.6] = hmm.vocab_size
                got = np.exp(np.asarray(d.conditionals(hmm, jnp.asarray(x))))
                np.testing.assert_allclose(got, _brute_conditional(hmm, x), atol=1e-12)
        # the full enumeration is a distribution, and log_prob agrees with it
        lp = d.enumerate_log_probs(d.load_problem("markov4x8"))
        assert abs(np.exp(lp).sum() - 1) < 1e-12


def test_problem_files_and_bad_input():
    for name in d.PROBLEMS:
        h = d.load_problem(name)
        assert 4 <= h.vocab_size <= 16 and 4 <= h.length <= 12 and h.num_sequences <= 2 ** 16
    with pytest.raises(ValueError, match="problem: unknown"):
        d.load_problem("nope")
    with pytest.raises(ValueError, match="steps: must be an integer >= 1"):
        d.ancestral(steps=0)
    with pytest.raises(ValueError, match="schedule: unknown masking schedule"):
        d.first_hitting(schedule="sqrt")
    with pytest.raises(ValueError, match="precision: unknown"):
        d.ancestral(precision="float16")
    with pytest.raises(ValueError, match="sampler: unknown discrete sampler"):
        d.get_sampler("mdlm")
    with pytest.raises(ValueError, match=r"options: \['order'\] not accepted"):
        d.get_sampler("ancestral", order=2)
    with pytest.raises(ValueError, match="steps"):
        d.get_sampler("ancestral", steps="8")
    m = d.exact_model(d.load_problem("hmm8x5"))
    with pytest.raises(ValueError, match=r"x: expected int tokens of shape \(batch, 5\)"):
        d.decode(d.first_hitting(), m, jax.random.PRNGKey(0), x=jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="x: expected integer tokens"):
        d.decode(d.first_hitting(), m, jax.random.PRNGKey(0), x=jnp.zeros((2, 5)))


def _fhs_samples(model, n, key, mutate=None):
    s = d.first_hitting()
    if mutate is None:
        return jax.jit(lambda k: d.decode(s, model, k, n))(key)[0]

    def mutant(k):  # off by one: the first step unmasks TWO tokens, each from the all-masked marginal
        x = d.all_masked(model, n)
        keys = d.sample_keys(k, n)
        lp = model(x, jnp.ones((n,)))
        pos = jax.vmap(lambda kk: jax.random.choice(kk, model.length, (2,), replace=False))(keys)
        tok = jax.vmap(lambda kk, l: d.categorical(jax.random.fold_in(kk, 7), l))(keys, lp)
        hit = jax.nn.one_hot(pos, model.length, dtype=bool).any(1)
        return s.run(model, jnp.where(hit, tok, x), keys)[0]
    return jax.jit(mutant)(key)


def test_first_hitting_is_exact_and_mutations_fail(tiny):
    lp = d.enumerate_log_probs(tiny)
    model = d.exact_model(tiny)
    x = _fhs_samples(model, 1_000_000, jax.random.PRNGKey(0))
    assert d.chi_square_test(x, lp, tiny.vocab_size).p_value > ALPHA
    n = 100_000
    # mutation 1: two tokens at once in the first step
    assert d.chi_square_test(_fhs_samples(model, n, jax.random.PRNGKey(1), mutate=True), lp,
                             tiny.vocab_size).p_value < ALPHA
    # mutation 2: a wrong conditional (the model ignores the first revealed position)
    def wrong(x, t):
        return model(x.at[:, 0].set(tiny.vocab_size), t).at[:, 0].set(model(x, t)[:, 0])
    bad = DiscreteModel(wrong, tiny.vocab_size, tiny.length, True)
    assert d.chi_square_test(_fhs_samples(bad, n, jax.random.PRNGKey(2)), lp, tiny.vocab_size).p_value < ALPHA


def test_ancestral_converges_with_steps_and_counts_calls(tiny):
    lp = d.enumerate_log_probs(tiny)
    model = d.exact_model(tiny)
    n = 50_000
    tvs, floor = [], d.tv_floor(lp, n)
    for steps in (1, 2, 5, 50):
        x, info = jax.jit(lambda k: d.decode(d.ancestral(steps), model, k, n))(jax.random.PRNGKey(steps))
        tvs.append(d.tv_to_exact(x, lp, tiny.vocab_size))
        assert int(info.nfe.max()) <= min(steps, tiny.length)   # the cache: a call only after a change
        # a sample stops counting steps once nothing is masked; each call is within a step
        assert np.all(np.asarray(info.nfe) <= np.asarray(info.steps)) and int(info.steps.max()) <= steps
    assert tvs[0] > tvs[1] > tvs[2] > tvs[3]
    assert tvs[3] < floor + 0.01 < tvs[1]
    x, info = d.decode(d.ancestral(7, cache=False), model, jax.random.PRNGKey(0), 64)
    assert np.all(np.asarray(info.nfe) == np.asarray(info.steps)) and np.all(np.asarray(info.nonfinite_step) == -1)
    assert not np.any(np.asarray(x) == tiny.vocab_size)


def test_time_of_each_call_follows_the_schedule():
    """A time-conditioned model that reveals 1 with probability t: the mean token is the mean
    unmasking time, 1/2 for the linear schedule (times ~ U(0, 1)) and 2/3 for poly2
    (P(tau <= t) = t^2).  Ancestral queries the grid's left end t_k; first-hitting the hitting time."""
    def fn(x, t):
        p1 = jnp.broadcast_to(t[:, None], x.shape)
        return jnp.log(jnp.stack([1 - p1, p1], -1).clip(1e-30))
    m = DiscreteModel(fn, 2, 6, time_agnostic=False)
    n = 40_000
    for sched, mean in (("linear", 0.5), ("poly2", 2 / 3)):
        x, info = d.decode(d.first_hitting(schedule=sched), m, jax.random.PRNGKey(3), n)
        se = 0.5 / np.sqrt(n * 6)
        assert abs(float(np.mean(x)) - mean) < 5 * se
        assert np.all(np.asarray(info.nfe) == 6)


def test_per_sample_keys_and_prompts(tiny):
    model = d.exact_model(tiny)
    key = jax.random.PRNGKey(5)
    for sampler in (d.first_hitting(), d.ancestral(3)):
        big, _ = d.decode(sampler, model, key, 6)
        one, _ = d.decode(sampler, model, key, 1, index_offset=4)
        np.testing.assert_array_equal(np.asarray(big)[4], np.asarray(one)[0])
        prompt = d.all_masked(model, 50).at[:, 1].set(2).at[:, 3].set(0)
        x, info = d.decode(sampler, model, key, x=prompt)
        assert np.all(np.asarray(x)[:, 1] == 2) and np.all(np.asarray(x)[:, 3] == 0)
        assert not np.any(np.asarray(x) == tiny.vocab_size)
    x, info = d.decode(d.first_hitting(), model, key, x=d.all_masked(model, 4).at[:, :2].set(1))
    assert np.all(np.asarray(info.nfe) == tiny.length - 2)


def test_nonfinite_model_output_is_reported():
    def fn(x, t):
        n_revealed = jnp.sum(x != 3, axis=-1)
        lp = jnp.full(x.shape + (3,), -jnp.log(3.0))
        return jnp.where((n_revealed == 2)[:, None, None], jnp.nan, lp)
    m = DiscreteModel(fn, 3, 4, True)
    _, info = d.decode(d.first_hitting(), m, jax.random.PRNGKey(0), 3)
    assert np.all(np.asarray(info.nonfinite_step) == 2)


def test_samplers_run_in_float64(tiny):
    """Under x64 the exact model answers in float64; the samplers' counters and times keep their
    dtypes and the float64 categorical is available."""
    with jax.enable_x64(True):
        model = d.exact_model(tiny)
        for sampler in (d.first_hitting(), d.ancestral(3, precision="float64")):
            x, info = d.decode(sampler, model, jax.random.PRNGKey(0), 64)
            assert x.dtype == jnp.int32 and not np.any(np.asarray(x) == tiny.vocab_size)
            assert info.nfe.dtype == jnp.int32 and int(info.nfe.max()) <= tiny.length
