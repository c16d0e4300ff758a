"""Parallel-unmasking rules (samplax/discrete/parallel.py) against exact answers: each rule's count
on constructed scores, the per-step commit sets of every sampler on a constructed model that writes
its step into the tokens, exact NFE, batch-size independence, prompts kept, the greedy identity
threshold = 1 <=> top-1, and exactness of one-token-per-step decoding by chi-square at significance
1e-3 with mutations (two tokens per step, a wrong conditional, a draw-dependent order) that fail it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax import discrete as d
from samplax.discrete import parallel as P
from samplax.discrete.base import DiscreteModel, carry_over

ALPHA = 1e-3


# ----------------------------------------------------------------------------- pure rules
def test_counting_rules_on_constructed_scores():
    threshold_count, factor_count = jax.jit(P.threshold_count), jax.jit(P.factor_count)
    sched_tau = jax.jit(P.sched_tau, static_argnums=1)
    llada_count = jax.jit(P.llada_count, static_argnums=2)
    saber_tau, saber_remask = jax.jit(P.saber_tau), jax.jit(P.saber_remask)
    c = jnp.array([0.95, 0.9, 0.89, 0.3, 0.99])
    cand = jnp.array([True, True, True, True, False])
    assert int(threshold_count(c, cand, 0.9)) == 2          # boundary included, non-candidate out
    assert int(threshold_count(c, cand, 0.96)) == 1         # at least one
    assert int(threshold_count(c, cand, 0.3)) == 4
    # factor rule (dyadic scores, exact in float32): sorted 0.96875 0.875 0.75 0.5 give
    # (n + 1)(1 - c_n) = 0.0625, 0.375, 1.0, 2.5
    s = jnp.array([0.5, 0.96875, 0.75, 0.875, 1.0])
    cs = jnp.array([True, True, True, True, False])
    assert int(factor_count(s, cs, 1.0)) == 2               # 1.0 < 1.0 is false: strict
    assert int(factor_count(s, cs, 1.0001)) == 3
    assert int(factor_count(s, cs, 0.376)) == 2
    assert int(factor_count(s, cs, 0.375)) == 1
    assert int(factor_count(s, cs, 0.01)) == 1              # at least one
    assert int(factor_count(s, cs, 3.0)) == 4               # the non-candidate 1.0 never counts
    # SchED schedules
    for sch in ("linear", "cosine", "exp"):
        assert abs(float(sched_tau(0.0, sch, 0.9, 0.2, 3.0)) - 0.9) < 1e-6
    assert abs(float(sched_tau(0.5, "linear", 0.9, 0.2, 3.0)) - 0.55) < 1e-6
    assert abs(float(sched_tau(1.0, "linear", 0.9, 0.2, 3.0)) - 0.2) < 1e-6
    assert abs(float(sched_tau(0.5, "cosine", 0.9, 0.2, 3.0)) - 0.55) < 1e-6
    assert abs(float(sched_tau(0.25, "cosine", 0.9, 0.2, 3.0)) - (0.2 + 0.7 * (1 + np.cos(np.pi / 4)) / 2)) < 1e-6
    assert abs(float(sched_tau(1.0, "exp", 0.9, 0.2, 3.0)) - (0.2 + 0.7 * np.exp(-3.0))) < 1e-6
    # LLaDA's per-step counts: 7 tokens in 3 steps -> 3, 2, 2
    assert [int(llada_count(jnp.int32(7), jnp.int32(i), 3)) for i in range(3)] == [3, 2, 2]
    assert [int(llada_count(jnp.int32(2), jnp.int32(i), 3)) for i in range(3)] == [1, 1, 0]
    # the scores: base.confidence's values (margin by two max passes, neg_entropy as exp(-H))
    lp = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(0), (6, 5)) * 3, axis=-1)
    lp = lp.at[0].set(jnp.log(jnp.array([0.4, 0.4, 0.1, 0.05, 0.05])))      # a tie at the top
    for kind in ("max_prob", "margin"):
        np.testing.assert_allclose(P._scorer(kind)(None, lp, None), d.confidence(lp, kind), atol=1e-6)
    np.testing.assert_allclose(P._scorer("neg_entropy")(None, lp, None), jnp.exp(-d.entropy(lp)), atol=1e-6)
    # Saber's threshold and remasking
    assert abs(float(saber_tau(0.0, 0, 0.9, 0.5)) - 0.9) < 1e-6
    assert abs(float(saber_tau(1.6, 2, 0.9, 0.5)) - (0.9 - 0.4 * 0.8)) < 1e-6
    drop = jnp.array([0.5, 0.1, 0.4, 0.6])
    checked = jnp.array([True, True, True, False])
    assert np.asarray(saber_remask(drop, checked, 2, 0.3)).tolist() == [True, False, False, False]
    assert np.asarray(saber_remask(drop, checked, 3, 0.3)).tolist() == [True, False, True, False]
    assert np.asarray(saber_remask(drop, checked, 9, 0.45)).tolist() == [True, False, False, False]
    assert not np.any(np.asarray(saber_remask(drop, checked, 1, 0.0)))   # never more than n - 1


# ----------------------------------------------------------------------------- a step-writing model
V, L = 9, 8
CONF = np.array([0.5, 0.95, 0.6, 0.92, 0.99, 0.7, 0.93, 0.55])


def _clock_model():
    """At a masked position i, token c = #revealed tokens has probability CONF[i] (the rest share
    1 - CONF[i]): a greedy decoder writes into each position the number of tokens committed before
    its step, so the output shows every step's commit set."""
    conf = jnp.asarray(CONF)

    def fn(x, t):
        c = jnp.sum(x != V, axis=1)                                   # [B]
        hit = jax.nn.one_hot(c, V, dtype=bool)[:, None, :]            # [B, 1, V]
        p = jnp.where(hit, conf[None, :, None], ((1 - conf) / (V - 1))[None, :, None])
        return carry_over(jnp.log(p), x, V)
    return DiscreteModel(fn=fn, vocab_size=V, length=L, time_agnostic=True, name="clock")


CASES = [  # sampler, expected tokens (the step's start count), NFE
    (P.confidence_threshold(0.9, greedy=True), [7, 0, 5, 0, 0, 4, 0, 6], 5),
    (P.topk(3, greedy=True), [6, 0, 3, 3, 0, 3, 0, 6], 3),
    # threshold = 1 (no score reaches it): greedy one-at-a-time in max-confidence order, = top-1
    (P.confidence_threshold(1.0, greedy=True), [7, 1, 5, 3, 0, 4, 2, 6], 8),
    (P.topk(1, greedy=True), [7, 1, 5, 3, 0, 4, 2, 6], 8),
    (P.llada(4, block_length=4, kind="max_prob", greedy=True), [2, 0, 2, 0, 4, 6, 4, 6], 4),
    (P.llada(8, kind="max_prob", greedy=True), [7, 1, 5, 3, 0, 4, 2, 6], 8),
    (P.fast_dllm(factor=1.0, greedy=True), [7, 0, 5, 0, 0, 4, 0, 6], 5),
    (P.fast_dllm(0.9, block_length=4, greedy=True), [3, 0, 2, 0, 4, 6, 4, 7], 6),
    (P.sched(8, "linear", tau_high=0.9, tau_low=0.2, kind="max_prob", greedy=True), [3, 1, 3, 3, 0, 3, 2, 3], 4),
    # per-position relaxing threshold tau = 0.8 - 0.79 p: {1,3,4,6}; {5}; {2}; exit at step 3
    # (mean 0.525 >= 0.50875) commits {0,7}
    (P.sched(8, "linear", tau_high=0.8, tau_low=0.01, transfer="threshold", kind="max_prob", greedy=True),
     [6, 0, 5, 0, 0, 4, 0, 6], 4),
    # Saber: step 0 {1,3,4,6}; step 1 tau = 0.9 - 0.4 * 3.79 / 4 commits {2,5,7} and remasks the two
    # largest drops among the checked {1,3,4,6} (4 and 1); step 2 commits {1,4}, remasks 5 (cap 1);
    # steps 3 and 4 commit one each (no remasking: cap 0).  NFE = 5 steps + 0+4+3+2+1 checks.
    (P.saber(0.9, 0.5, drop=0.3, kind="max_prob", greedy=True), [7, 5, 4, 0, 5, 6, 0, 4], 15),
    # without backtracking: {1,3,4,6}, then tau = 0.521: {2,5,7}, then {0}
    (P.saber(0.9, 0.5, drop=0.3, backtrack=False, kind="max_prob", greedy=True), [7, 0, 4, 0, 0, 4, 0, 4], 3),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_commit_sets_and_nfe_per_rule(case):
    sampler, want, nfe = CASES[case]
    model = _clock_model()
    x, info = jax.jit(lambda k: d.decode(sampler, model, k, 2))(jax.random.PRNGKey(0))
    assert np.asarray(x).tolist() == [want, want]
    assert np.asarray(info.nfe).tolist() == [nfe, nfe]
    assert np.asarray(info.nonfinite_step).tolist() == [-1, -1]
    assert int(info.nfe[0]) <= sampler.max_calls(L)
    assert sampler.extra_calls == (sampler.name == "saber" and sampler.options["backtrack"])


# ----------------------------------------------------------------------------- exact model
@pytest.fixture(scope="module")
def chain():
    """A 3-token Markov chain of length 5 and its exact denoiser, tabulated once over all 4^5 mask
    patterns by forward-backward (the same conditionals as exact_model, compiled once)."""
    hmm = d.random_hmm(7, num_states=3, vocab_size=3, length=5, concentration=0.4, markov=True)
    v, length = hmm.vocab_size, hmm.length
    states = d.all_sequences(v + 1, length)
    with jax.enable_x64(True):
        table = np.asarray(jax.jit(jax.vmap(lambda x: d.conditionals(hmm, x)))(jnp.asarray(states)))
    masked = states == v
    assert np.exp(table[masked]).max() < 1 - 1e-4            # no conditional is a point mass
    table = jnp.asarray(table, jnp.float32)
    w = jnp.asarray((v + 1) ** np.arange(length - 1, -1, -1), jnp.int32)
    model = DiscreteModel(fn=lambda x, t: table[jnp.sum(x * w, axis=1)], vocab_size=v, length=length,
                          time_agnostic=True, name="exact-table")
    return hmm, model


def test_batch_size_independence_prompts_and_max_calls(chain):
    hmm, model = chain
    v, length = hmm.vocab_size, hmm.length
    rng = np.random.default_rng(0)
    x0 = np.full((5, length), v, np.int32)
    reveal = rng.random(x0.shape) < 0.3
    reveal[4] = True                                          # a fully revealed sample: 0 calls
    x0[reveal] = rng.integers(0, v, x0.shape)[reveal]
    for s, batch_check in ((P.fast_dllm(factor=1.5, kind="max_prob"), False), (P.saber(0.8, 0.2, drop=0.05), True)):
        f = jax.jit(lambda k, x, off: d.decode(s, model, k, x=x, index_offset=off))
        xb, ib = f(jax.random.PRNGKey(3), jnp.asarray(x0), 0)
        xb = np.asarray(xb)
        assert np.all(xb[reveal] == x0[reveal]) and np.all(xb < v), s.name
        assert np.all(np.asarray(ib.nfe) <= s.max_calls(length)) and int(ib.nfe[4]) == 0, s.name
        for i in ((0, 3) if batch_check else ()):     # one B = 1 compile: the rule with the most state
            x1, i1 = f(jax.random.PRNGKey(3), jnp.asarray(x0[i:i + 1]), i)
            assert np.array_equal(np.asarray(x1)[0], xb[i]), s.name
            assert int(i1.nfe[0]) == int(ib.nfe[i]) and int(i1.steps[0]) == int(ib.steps[i]), s.name


def _tempered(model, beta):
    def fn(x, t):
        lp = model(x, t)
        lp = jax.nn.log_softmax(beta * lp, axis=-1)
        return carry_over(lp, x, model.mask_id)
    return DiscreteModel(fn=fn, vocab_size=model.vocab_size, length=model.length, time_agnostic=True)


def test_one_token_per_step_is_exact_and_mutations_fail(chain):
    """One token per step, at a position chosen from the conditionals only (random order, or the
    max-probability order that threshold = 1 gives), is the chain rule in an adaptive order: exact
    on an exact model (chi-square, 20000 samples, significance 1e-3); threshold = 1 commits one
    token per step since no conditional is a point mass (NFE = L).  Mutations that must fail: two
    tokens per step (off by one); a wrong conditional (logits scaled by 1.3)."""
    hmm, model = chain
    lp = d.enumerate_log_probs(hmm)
    n = 20000
    x0 = jnp.full((n, hmm.length), hmm.vocab_size, jnp.int32)

    def run(sampler, m=model):
        x, info = jax.jit(lambda k, x: d.decode(sampler, m, k, x=x))(jax.random.PRNGKey(11), x0)
        return np.asarray(x), np.asarray(info.nfe)

    def p_value(x):
        return d.chi_square_test(x, lp, hmm.vocab_size).p_value

    x_rand, nfe = run(P.topk(1, kind="random"))
    assert p_value(x_rand) > ALPHA and np.all(nfe == hmm.length)
    x_thr, nfe = run(P.confidence_threshold(1.0, kind="max_prob"))
    assert p_value(x_thr) > ALPHA and np.all(nfe == hmm.length)
    assert p_value(run(P.topk(2, kind="random"))[0]) < ALPHA
    assert p_value(run(P.topk(1, kind="random"), _tempered(model, 1.3))[0]) < ALPHA


# ----------------------------------------------------------------------------- bad options
def test_bad_options_raise_naming_the_option():
    for bad in (0.0, 1.5, -0.1, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match=r"^threshold: must be a number in \(0, 1\]"):
            P.confidence_threshold(bad)
    with pytest.raises(ValueError, match="^threshold:"):
        P.fast_dllm(threshold=1.2)
    with pytest.raises(ValueError, match="^factor:"):
        P.fast_dllm(factor=0.0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="^k: must be an integer >= 1"):
            P.topk(bad)
    with pytest.raises(ValueError, match="^steps:"):
        P.llada(0)
    with pytest.raises(ValueError, match="^kind: unknown confidence kind 'entropy'"):
        P.topk(1, kind="entropy")
    with pytest.raises(ValueError, match="^remasking:"):
        P.llada(8, remasking="lowest")
    with pytest.raises(ValueError, match="^schedule:"):
        P.sched(8, schedule="step")
    with pytest.raises(ValueError, match="^transfer:"):
        P.sched(8, transfer="topk")
    with pytest.raises(ValueError, match="^tau_low:"):
        P.sched(8, tau_high=0.3, tau_low=0.5)
    with pytest.raises(ValueError, match="^tau_high:"):
        P.saber(tau_high=0.0)
    with pytest.raises(ValueError, match="^drop:"):
        P.saber(drop=1.0)
    with pytest.raises(ValueError, match="^block_length:"):
        P.topk(1, block_length=0)
    with pytest.raises(ValueError, match="^precision:"):
        P.topk(1, precision="float16")
    model = _clock_model()
    with pytest.raises(ValueError, match="^block_length: 3 must divide the sequence length L = 8"):
        d.decode(P.confidence_threshold(0.9, block_length=3), model, jax.random.PRNGKey(0), 1)
    with pytest.raises(ValueError, match="^steps: 3 must be a multiple of the number of blocks"):
        d.decode(P.llada(3, block_length=4), model, jax.random.PRNGKey(0), 1)


def test_registered_and_checked_by_the_config_layer():
    for name in ("confidence_threshold", "topk", "llada", "fast_dllm", "sched", "saber"):
        assert d.SAMPLERS[name] is getattr(P, name)
    assert d.get_sampler("fast_dllm", factor=1.0, block_length=4).options["factor"] == 1.0
    with pytest.raises(ValueError, match="^kind:"):
        d.get_sampler("topk", kind="entropy")
    with pytest.raises(ValueError, match="^threshold:"):
        d.get_sampler("confidence_threshold", threshold="0.9")
