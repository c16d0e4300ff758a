"""RS2 (samplax.data_sampling.rs2): inclusion probability per round, coverage without
replacement, the hypergeometric overlap with replacement, determinism, the reduced budget,
and a training run from a config.

Statistical tests reject at significance ALPHA = 1e-3 each; each is also run on a
deliberately broken stream and must reject there (mutation checks)."""
import jax
import numpy as np
import pytest
from scipy import stats

from samplax.data_sampling.base import draw_indices, get_sampler
from samplax.data_sampling.rs2 import apply_rs2_budget, rounds_per_pass, rs2, rs2_budget

ALPHA = 1e-3
N, FRACTION, B = 205, 0.1, 16      # m = round(20.5) = 20 (not dividing N): R = 11, last round tops up
M = 20
R = 11


def rounds_of(sampler, num_rounds, seed=0):
    """The first ``num_rounds`` rounds (num_rounds, m) of the sampler's index stream."""
    m = sampler.options["subset_size"]
    steps = -(-num_rounds * m // sampler.batch_size)
    idx, _ = draw_indices(sampler, seed, steps)
    return idx.reshape(-1)[:num_rounds * m].reshape(num_rounds, m)


def inclusion_pvalue(rounds, n):
    """Chi-square test that every index is in a round with probability m / n, the rounds
    independent uniform m-subsets: with counts c_i over K rounds, p = m/n,
    T = (n-1)/n * sum_i (c_i - K p)^2 / (K p (1-p)) ~ chi2(n - 1) (the per-round covariance
    of a uniform m-subset's indicators is p(1-p) n/(n-1) (I - 11^T/n))."""
    k, m = rounds.shape
    p = m / n
    counts = np.bincount(rounds.reshape(-1), minlength=n)
    t = (n - 1) / n * np.sum((counts - k * p) ** 2) / (k * p * (1 - p))
    return float(stats.chi2.sf(t, n - 1))


def overlap_pvalue(overlaps, n, m):
    """Chi-square goodness of fit of the overlaps |S_k & S_k+1| to Hypergeometric(n, m, m),
    bins pooled so each expects >= 5."""
    k = len(overlaps)
    pmf = stats.hypergeom(n, m, m).pmf(np.arange(m + 1))
    obs = np.bincount(overlaps, minlength=m + 1).astype(float)
    e_bins, o_bins, e_acc, o_acc = [], [], 0.0, 0.0
    for e, o in zip(pmf * k, obs):
        e_acc, o_acc = e_acc + e, o_acc + o
        if e_acc >= 5:
            e_bins.append(e_acc), o_bins.append(o_acc)
            e_acc = o_acc = 0.0
    e_bins[-1] += e_acc
    o_bins[-1] += o_acc
    e_bins, o_bins = np.array(e_bins), np.array(o_bins)
    t = np.sum((o_bins - e_bins) ** 2 / e_bins)
    return float(stats.chi2.sf(t, len(e_bins) - 1))


@pytest.fixture(scope="module")
def without():
    return rounds_of(rs2(N, B, FRACTION), 400 * R)          # 400 passes


@pytest.fixture(scope="module")
def with_():
    return rounds_of(rs2(N, B, FRACTION, replacement=True), 3000)


def test_options_and_sizes():
    s = get_sampler("rs2", N, B, dict(fraction=FRACTION))
    assert (s.options["subset_size"], s.options["rounds_per_pass"]) == (M, R) == (M, rounds_per_pass(N, M))
    assert s.options["steps_per_round"] == M / B and s.options["replacement"] is False
    for bad, match in [(dict(fraction=0.0), "fraction"), (dict(fraction=1.5), "fraction"),
                       (dict(fraction=0.1, replacement="yes"), "replacement"), (dict(), "missing"),
                       (dict(fraction=0.1, seed=1.5), "seed"), (dict(fraction=0.1, bogus=1), "bogus")]:
        with pytest.raises(ValueError, match=match):
            get_sampler("rs2", N, B, bad)


def test_every_round_is_a_subset_without_repeats(without, with_):
    for rounds in (without, with_):
        assert rounds.min() >= 0 and rounds.max() < N
        assert all(len(set(r)) == M for r in rounds)


@pytest.mark.parametrize("j", [0, 5, R - 1])
def test_without_replacement_inclusion_probability(without, j):
    # round j of every pass (the last one, j = R-1, includes the top-up) is a uniform m-subset
    rounds = without[j::R]
    assert inclusion_pvalue(rounds, N) > ALPHA
    # binomial test for one index: in round j of a pass with probability m / N
    assert stats.binomtest(int(np.sum(rounds == 7)), len(rounds), M / N).pvalue > ALPHA


def test_with_replacement_inclusion_probability(with_):
    assert inclusion_pvalue(with_, N) > ALPHA
    assert stats.binomtest(int(np.sum(with_ == 204)), len(with_), M / N).pvalue > ALPHA


def test_inclusion_tests_reject_broken_streams(without):
    # a top-up that takes the first indices instead of the permutation's head
    last = without[R - 1::R].copy()
    left = N - (R - 1) * M
    last[:, left:] = np.arange(M - left)
    assert inclusion_pvalue(last, N) < ALPHA
    # an off-by-one that never draws index N-1
    rng = np.random.default_rng(0)
    biased = np.stack([rng.permutation(N - 1)[:M] for _ in range(400)])
    assert stats.binomtest(int(np.sum(biased == N - 1)), len(biased), M / N).pvalue < ALPHA


def test_without_replacement_covers_the_data_set_each_pass(without):
    for c in range(5):
        p = without[c * R:(c + 1) * R]
        first = p[:-1].reshape(-1)
        assert len(set(first)) == (R - 1) * M                      # rounds 0..R-2: disjoint
        assert set(p.reshape(-1)) == set(range(N))                 # R rounds: the whole data set
        left = N - (R - 1) * M                                      # the last round: the rest + a top-up
        assert set(p[-1][:left]).isdisjoint(first) and set(p[-1][left:]) <= set(first)
    # consecutive passes use different permutations
    assert not np.array_equal(without[:R], without[R:2 * R])


def test_without_replacement_exact_cover_when_m_divides_n():
    rounds = rounds_of(rs2(200, 7, 0.25), 12)                       # m = 50, R = 4
    for c in range(3):
        assert np.array_equal(np.sort(rounds[4 * c:4 * c + 4].reshape(-1)), np.arange(200))


def test_with_replacement_overlap_is_hypergeometric(with_, without):
    overlap = np.array([len(set(a) & set(b)) for a, b in zip(with_[:-1], with_[1:])])
    assert overlap_pvalue(overlap, N, M) > ALPHA
    # mutation: without replacement, consecutive rounds inside a pass share nothing -> rejected
    inside = np.array([len(set(a) & set(b)) for k, (a, b) in enumerate(zip(without[:-1], without[1:]))
                       if k % R < R - 2])
    assert inside.max() == 0 and overlap_pvalue(inside, N, M) < ALPHA


def test_deterministic_and_resumable(with_, without):
    m_steps = 40 * B
    a, _ = draw_indices(rs2(N, B, FRACTION, replacement=True), 5, 40)   # the step key is not used
    assert np.array_equal(a.reshape(-1), with_.reshape(-1)[:m_steps])
    c, _ = draw_indices(rs2(N, B, FRACTION, replacement=True, seed=4), 0, 40)
    assert not np.array_equal(a, c)
    for repl, full in ((False, without), (True, with_)):              # the state carries everything
        s = rs2(N, B, FRACTION, replacement=repl)
        _, st = draw_indices(s, 0, 17)
        tail, _ = draw_indices(s, 0, 23, state=st, start=17)
        assert np.array_equal(tail.reshape(-1), full.reshape(-1)[17 * B:m_steps])


def test_budget_and_schedule():
    b = rs2_budget(1438, 64, 0.1, 10, warmup_rounds=2)             # m = 144 -> 2.25 steps per round
    assert b == (144, 2.25, 23, 4)
    assert rs2_budget(1438, 64, 1.0, 3).num_steps == 68              # full data: ceil(3 * 1438 / 64)
    assert rs2_budget(200, 50, 0.25, 8).num_steps == 8
    from samplax.training.train import learning_rate_schedule
    sched = learning_rate_schedule(1e-3, b.num_steps, b.warmup_steps)
    assert float(sched(b.warmup_steps)) == pytest.approx(1e-3) and float(sched(b.num_steps)) == pytest.approx(0.0)
    for kw, match in [(dict(rounds=0), "rounds"), (dict(rounds=2, warmup_rounds=2), "warmup_rounds"),
                      (dict(rounds=2, fraction=0.0), "fraction")]:
        with pytest.raises(ValueError, match=match):
            rs2_budget(**{**dict(size=100, batch_size=10, fraction=0.5), **kw})
    import ml_collections
    c = ml_collections.ConfigDict(dict(train=dict(batch_size=64, num_steps=1,
                                                  sampler=dict(name="rs2", options=dict(fraction=0.1))),
                                       optim=dict(warmup_steps=0)))
    assert apply_rs2_budget(c, 1438, 10, 2) == b and (c.train.num_steps, c.optim.warmup_steps) == (23, 4)


# ---------------------------------------------------------------------------------------
# From a config: the trainer draws exactly the sampler's indices, on the compressed schedule
# ---------------------------------------------------------------------------------------
def test_configs_validate_with_the_compressed_budget():
    from configs import train_rs2_digits, train_rs2_digits_classifier
    from samplax.experiment import trainer

    for mod, (steps, warm) in ((train_rs2_digits_classifier, (90, 0)), (train_rs2_digits, (1002, 51))):
        c = mod.get_config()
        assert (c.train.num_steps, c.optim.warmup_steps) == (steps, warm)
        s = trainer.setup(c)
        assert s.sampler.name == "rs2" and s.sampler.options["subset_size"] == round(mod.FRACTION * 1438)


def test_a_training_run_from_the_rs2_config_draws_the_samplers_indices(tmp_path):
    from configs import train_rs2_digits_classifier
    from samplax.experiment import trainer
    from samplax.training.train import learning_rate_schedule

    c = train_rs2_digits_classifier.get_config()
    c.model.network = "mlp"
    c.model.mlp.hidden = (32,)
    c.train.sampler.options.replacement = True
    apply_rs2_budget(c, 1438, rounds=3)                              # 3 rounds of 144 at B = 64: 7 steps
    c.train.log_every = c.train.checkpoint_every = 7
    summary = trainer.run_train(c, str(tmp_path / "run"))
    s, state, _, _ = trainer.load_train_state(str(tmp_path / "run"))
    assert int(state.step) == summary["steps"] == 7
    idx, st = draw_indices(s.sampler, c.train.data_seed, 7)
    assert np.array_equal(np.asarray(state.data.stats["indices"]), idx[-1])    # the last step's batch
    for a, b in zip(jax.tree.leaves(state.data.sampler), jax.tree.leaves(st)):  # the sampler state
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert int(state.data.sampler["epoch"]) == 3 and int(state.data.sampler["pos"]) == 7 * 64 - 3 * 144
    # the learning rate of the last step is the compressed schedule's, near its end
    lr = learning_rate_schedule(c.optim.learning_rate, 7, 0)
    assert summary["final"]["learning_rate"] == pytest.approx(float(lr(6))) and float(lr(6)) < 0.06 * 1e-3
    assert 0.0 <= summary["final"]["eval_accuracy"] <= 1.0
