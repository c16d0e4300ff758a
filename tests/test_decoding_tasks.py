"""The toy reasoning task and the decoders that use it, against exact answers: the noisy reasoner's
joint against an independent per-sequence implementation, the value function's martingale identity,
the majority vote of N = 3 and the PC / RPC vote of N = 2 against their enumerated laws (chi-square at
significance 1e-3, each with a mutation that must fail), best-of-N's exact output distribution (and a
wrong pick probability that must fail), pruning and adaptive-N identities.  Every sampling test
draws 12,000 paths, so one compiled program serves them all."""
import itertools

import jax
import numpy as np
import pytest
from scipy.stats import chisquare

from samplax.decoding import adaptive as A
from samplax.decoding import consistency as C
from samplax.decoding import tasks as T
from samplax.decoding.base import Problem, sample_keys
from samplax.decoding.problem import make_problem
from samplax.decoding.registry import get_decoder
from samplax.discrete.metrics import chi_square_test

ALPHA = 1e-3
PATHS = 12_000
HARD = np.array([1, 3, 2, 3], np.int32)     # two hard digits: the model's favourite answer is wrong
MIXED = np.array([1, 2, 2, 3], np.int32)    # one hard digit: greedy is wrong, the vote is right
PRUNE = np.array([2, 2, 3, 2], np.int32)    # the vote is wrong, RPC (pruning confused paths) is right


@pytest.fixture(scope="module")
def task():
    return T.sum_mod_task()


def _problem(task, q):
    return Problem(lm=task.lm, task=task, prompt=q)


def _run(dec, prob, keys):
    return dec.run(prob, keys)


def _reference_prob(q, comp, m=4, acc=(0.97, 0.9, 0.75, 0.42), confuse=0.46, lost_follow=0.4, guess=0,
                    guess_p=0.6, eta=0.03):
    """The noisy reasoner written token by token (the module builds all sequences at once)."""
    p, on_track, own = 1.0, True, q[0]
    Q = len(q)
    for k in range(1, Q):
        want = (own + q[k]) % m
        dist = np.zeros(m)
        if on_track:
            dist[want] += acc[q[k]]
            if q[k] == m - 1:
                dist[(own + 1) % m] += confuse
        else:
            dist[want] += lost_follow
        free = dist == 0
        dist[free] = (1 - dist.sum()) / free.sum()
        if not on_track and k == Q - 1:
            dist = guess_p * np.eye(m)[guess] + (1 - guess_p) * dist
        tok = comp[k - 1]
        p *= dist[tok]
        on_track = on_track and tok == want
        own = tok
    return p * ((1 - eta) if comp[-1] == own else eta / (m - 1))


def test_joint_matches_reference_and_value_is_a_martingale(task):
    comps = list(itertools.product(range(4), repeat=4))
    for q in (HARD, MIXED, np.array([0, 0, 1, 0]), np.array([3, 3, 3, 3])):
        ref = np.array([_reference_prob(q, c) for c in comps])
        np.testing.assert_allclose(np.exp(T.completion_log_probs(task, q)), ref / ref.sum(), rtol=1e-12)
        # v_t(prefix) = sum_tok p(tok | prefix) v_{t+1}(prefix, tok); v_0 = P(correct); v_C in {0, 1}
        p = np.exp(T.completion_log_probs(task, q))
        v = T.value_tables(task, q)
        for t in range(4):
            marg = p.reshape(4 ** (t + 1), -1).sum(1).reshape(4 ** t, 4)
            cond = marg / marg.sum(1, keepdims=True)
            np.testing.assert_allclose(np.sum(cond * v[t + 1].reshape(4 ** t, 4), 1), v[t], atol=1e-12)
        assert v[0][0] == pytest.approx(T.answer_probs(task, q)[task.correct(q)], abs=1e-12)
        assert set(np.unique(v[4])) <= {0.0, 1.0}
    assert np.exp(task.log_probs).sum() == pytest.approx(1.0, abs=1e-12)
    # greedy misleads on MIXED: greedy answers wrong though the right answer is the most probable one
    g = T.greedy_completion(task, MIXED)
    pa = T.answer_probs(task, MIXED)
    assert g[-1] != task.correct(MIXED) and np.argmax(pa) == task.correct(MIXED)
    assert make_problem(task="sum_mod", prompt=MIXED).task.correct(MIXED) == 0
    with pytest.raises(ValueError, match="modulus"):
        T.sum_mod_task(modulus=17)
    with pytest.raises(ValueError, match="method"):
        get_decoder("rpc", method="vote")


def test_majority_vote_probs_equal_brute_force():
    pi = np.array([0.45, 0.3, 0.15, 0.1])
    for n in (1, 2, 3, 4):
        out = np.zeros(4)
        for tup in itertools.product(range(4), repeat=n):
            c = np.bincount(tup, minlength=4)
            win = c == c.max()
            out[win] += np.prod(pi[list(tup)]) / win.sum()
        np.testing.assert_allclose(C.majority_vote_probs(pi, n), out, atol=1e-14)


def _vote_freqs(info, m=4):
    return np.bincount(np.asarray(info.extras["answer"]), minlength=m)


def test_majority_vote_of_three_is_exact_and_mutation_fails(task):
    prob = _problem(task, HARD)
    dec = get_decoder("majority_vote", n=3)
    x, info = _run(dec, prob, sample_keys(jax.random.PRNGKey(0), PATHS // 3))
    exact = C.majority_vote_probs(T.answer_probs(task, HARD), 3)
    counts = _vote_freqs(info)
    assert chisquare(counts, exact * counts.sum()).pvalue > ALPHA
    assert chi_square_test(np.asarray(x), dec.target(prob), 4).p_value > ALPHA       # whole output law
    # mutation: the answer of one sample (no vote) against the N = 3 law
    one = C.majority_vote_probs(T.answer_probs(task, HARD), 1)
    assert chisquare(counts, one * counts.sum()).pvalue < ALPHA
    assert info.target_calls[0] == 3 * task.length


def test_pc_and_rpc_of_two_are_exact_and_mutation_fails(task):
    prob = _problem(task, MIXED)
    lp, ans = T.completion_log_probs(task, MIXED), T.completion_answers(task)
    dec = get_decoder("rpc", n=2, method="pc", pruning="none")
    _, info = _run(dec, prob, sample_keys(jax.random.PRNGKey(1), PATHS // 2))
    counts = _vote_freqs(info)
    exact = C.pc_vote_probs_pairs(lp, ans, 4, "pc", "none")
    assert chisquare(counts, exact * counts.sum()).pvalue > ALPHA
    # mutation: the majority vote's law of two samples differs from PC's (ties are split, not weighed)
    maj = C.majority_vote_probs(T.answer_probs(task, MIXED), 2)
    assert chisquare(counts, maj * counts.sum()).pvalue < ALPHA


def test_rpc_converges_to_its_limit(task):
    # with many samples RPC returns its exact limit answer on every key; majority's limit differs
    q = PRUNE
    lp, ans = T.completion_log_probs(task, q), T.completion_answers(task)
    lim_rpc = C.limit_vote_probs(lp, ans, 4, "rpc", "mean")
    lim_maj = C.limit_vote_probs(lp, ans, 4, "majority", "none")
    assert lim_rpc.max() == 1 and lim_maj.max() == 1 and np.argmax(lim_rpc) != np.argmax(lim_maj)
    dec = get_decoder("rpc", n=400, method="rpc", pruning="mean")
    _, info = _run(dec, _problem(task, q), sample_keys(jax.random.PRNGKey(2), PATHS // 400))
    assert np.all(np.asarray(info.extras["answer"]) == np.argmax(lim_rpc))
    assert np.argmax(lim_rpc) == task.correct(q)


def test_best_of_n_is_exact_and_wrong_pick_law_fails(task):
    prob = _problem(task, HARD)
    dec = get_decoder("best_of_n", n=4, noise=0.5)
    x, info = _run(dec, prob, sample_keys(jax.random.PRNGKey(3), PATHS // 4))
    assert chi_square_test(np.asarray(x), dec.target(prob), 4).p_value > ALPHA
    # mutation: the law of an oracle pick (noise 0) is not what a noisy self-evaluation gives
    wrong = get_decoder("best_of_n", n=4, noise=0.0).target(prob)
    assert chi_square_test(np.asarray(x), wrong, 4).p_value < ALPHA
    # pruning that keeps every candidate changes nothing; pruning costs fewer tokens
    x2, _ = _run(get_decoder("best_of_n", n=4, noise=0.5, prune_at=2, keep=4), prob, sample_keys(jax.random.PRNGKey(3), PATHS // 4))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x2))
    pruned = get_decoder("best_of_n", n=4, noise=0.5, prune_at=2, keep=1)
    x3, i3 = _run(pruned, prob, sample_keys(jax.random.PRNGKey(3), PATHS // 4))
    # the experiment runner calls decoders under jax.jit: the same tokens
    x4, _ = jax.jit(lambda k: pruned.run(prob, k))(sample_keys(jax.random.PRNGKey(3), PATHS // 4))
    np.testing.assert_array_equal(np.asarray(x3), np.asarray(x4))
    assert int(i3.target_calls[0]) == 4 * 2 + 1 * 2 < int(info.target_calls[0]) == 16


def test_adaptive_n_stopping_rule(task):
    # oracle self-evaluation (noise 0): stop at the first correct sample, or at once when the model's
    # accuracy p is so low that 1 - p >= threshold; the returned answer is right iff any used sample is
    prob = _problem(task, HARD)
    keys = sample_keys(jax.random.PRNGKey(4), PATHS // 4)
    x, lp, _ = C.sample_paths(prob, keys, 4)
    right = task.is_correct(x, HARD)
    sched = A.adaptive_schedule(4)
    np.testing.assert_array_equal(sched, [1, 3, 4])      # batches of 1, 2, then the 1 left
    p = T.value_tables(task, HARD)[0][0]
    for th, expect_one in ((0.75, True), (0.9, False)):       # 1 - p = 0.80
        _, info = _run(get_decoder("adaptive_best_of_n", n_max=4, threshold=th, noise=0.0), prob, keys)
        used = np.asarray(info.extras["n_samples"])
        if expect_one:
            assert np.all(used == 1)
        else:
            first = np.where(right.any(1), np.argmax(right, 1) + 1, 4)
            np.testing.assert_array_equal(used, sched[np.searchsorted(sched, first)])
            np.testing.assert_array_equal(np.asarray(info.extras["answer"]) == task.correct(HARD), right.any(1))
    assert 1 - p == pytest.approx(0.8015, abs=1e-3)


def test_weibull_pruning_drops_the_low_cluster():
    # two well-separated clusters of path probabilities: the low one is pruned, the high one kept
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0.001, 0.01, 20), rng.uniform(0.2, 0.3, 10)])
    keep = C.weibull_keep(p)
    np.testing.assert_array_equal(keep, p > 0.1)
    assert np.all(C.weibull_keep(p[:2]))                       # too few paths to fit: keep all


def test_task_accuracy_reads_each_sequence_prompt(task):
    x = np.array([[1, 2, 2, 3, 3, 1, 0, 0], [1, 2, 2, 3, 3, 1, 0, 2], [0, 0, 0, 1, 0, 0, 1, 1]])
    assert task.accuracy(x) == pytest.approx(2 / 3)
