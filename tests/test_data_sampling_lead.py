"""LEAD data sampler (samplax.data_sampling.lead): the IDU update, the loss-change estimate,
the EXP3 bandit and the in-cluster selection against direct numpy implementations of the
paper's formulas; k-means on separated blobs; the budget LEAD spends on noisy / redundant
clusters against uniform sampling; a tiny training run from a config; option errors."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from configs import train_lead_clusters
from samplax.data_sampling import base
from samplax.data_sampling import lead as L
from samplax.experiment import trainer
from samplax.experiment.checkpoints import Checkpoints
from samplax.experiment.config import ConfigError
from test_training_run import _same


# --- numpy references of the paper's formulas -------------------------------------------
def np_paper_loss_change(lr, d_first, d_prev, cos_phi):
    """Delta L' = -eta ||beta g1 + (1-beta) g2||^2 with ||g1||^2 = d_first, ||g2||^2 = d_prev,
    beta minimising it over [0, 1] -- computed here by brute force over a fine beta grid."""
    betas = np.linspace(0.0, 1.0, 200001)
    cross = math.sqrt(d_first * d_prev) * cos_phi
    vals = betas ** 2 * d_first + (1 - betas) ** 2 * d_prev + 2 * betas * (1 - betas) * cross
    j = int(np.argmin(vals))
    return -lr * vals[j], betas[j]


def np_exp3(arms, rewards, k, gamma):
    """The authors' EXP3S with plain floats (weights, not log-weights)."""
    w = [1.0] * k
    hist = []
    for a, r in zip(arms, rewards):
        hist.append(r)
        rn = r if len(hist) < 2 else 2 * (r - min(hist)) / (max(hist) - min(hist)) - 1
        tot = sum(w)
        p = [(1 - gamma) * wi / tot + gamma / k for wi in w]
        w[a] *= math.exp(gamma / k * rn / p[a])
    tot = sum(w)
    return np.array([(1 - gamma) * wi / tot + gamma / k for wi in w])


def test_paper_loss_change_matches_minimum_over_beta():
    for lr, d1, d2, c in [(0.1, 4.0, 1.0, 0.3), (0.01, 1.0, 9.0, -0.5), (1.0, 2.0, 2.0, 0.9), (0.5, 1.0, 4.0, 1.0)]:
        dl, beta = L.paper_loss_change(jnp.float32(lr), jnp.float32(d1), jnp.float32(d2), jnp.float32(c))
        ref, ref_beta = np_paper_loss_change(lr, d1, d2, c)
        assert float(dl) == pytest.approx(ref, rel=1e-5, abs=1e-7)
        assert float(beta) == pytest.approx(ref_beta, abs=1e-4)
    # the closed-form beta* of the paper when it is inside (0, 1)
    d1, d2, c = 4.0, 1.0, 0.3
    a = math.sqrt(d1 * d2) * c
    _, beta = L.paper_loss_change(1.0, d1, d2, c)
    assert float(beta) == pytest.approx((d2 - a) / (d1 + d2 - 2 * a), rel=1e-6)


@pytest.mark.parametrize("reward,arms_per_step,loss_change", [("example", 1, "batch"), ("cluster", 2, "paper")])
def test_idu_and_bandit_against_numpy_on_a_fixed_loss_sequence(reward, arms_per_step, loss_change):
    """Drive the sampler with known losses / grad norms / learning rates and recompute the
    selection, every IDU value and the bandit's probabilities with plain numpy, step by step."""
    n, b, m = 12, 4, 4  # 3 clusters of 4
    per = b // arms_per_step
    b_s, gamma, cos_phi = 0.3, 0.2, 0.4
    s = L.lead(n, b, cluster_size=m, smoothing=b_s, gamma=gamma, reward=reward, arms_per_step=arms_per_step,
               loss_change=loss_change, cos_phi=cos_phi)
    rng = np.random.default_rng(0)
    steps = 14
    losses = rng.uniform(0.1, 3.0, size=(steps, n)).astype(np.float32)
    gnorms = rng.uniform(0.5, 2.0, size=steps).astype(np.float32)
    lrs = np.full(steps, 0.05, np.float32)
    state, stats = s.init(), base.initial_stats(s)
    step_fn = jax.jit(s.next_indices)
    idu = np.full(n, np.inf)
    seen = np.zeros(n, bool)
    arms, rewards = [], []
    cluster_u = np.zeros(3)
    visits = np.zeros(3, int)
    g2_first, g2_prev = np.zeros(3), 0.0
    for k in range(steps):
        idx, state = step_fn(base.sampler_key(3, k), state, stats)
        idx = np.asarray(idx)
        drawn = np.asarray(state["arms"])
        assert list(drawn) == sorted(drawn) and list(idx // m) == list(np.repeat(drawn, per))
        # the selection: the top (multiplicity x per) IDU examples of each drawn cluster (unseen = +inf first)
        for arm in np.unique(drawn):
            members = np.arange(arm * m, (arm + 1) * m)
            top = np.sort(idu[members])[::-1][:per * int(np.sum(drawn == arm))]
            np.testing.assert_allclose(np.sort(idu[idx[idx // m == arm]])[::-1], top)
        # this step's stats, then the reference update
        g2 = float(gnorms[k]) ** 2
        if loss_change == "batch":  # -eta ||g_t||^2 of this very step
            dl = np.full(len(drawn), -lrs[k] * g2)
        else:  # the paper's formula: first visit of the cluster -eta delta_{t-1}, later the beta* mix
            dl = np.array([-lrs[k] * g2_prev if visits[a] == 0 else
                           np_paper_loss_change(lrs[k], g2_first[a], g2_prev, cos_phi)[0] for a in drawn])
        obs = losses[k, idx] + np.repeat(dl, per)
        was_seen, before = seen[idx].copy(), idu[idx].copy()
        for i, o in zip(idx, obs):
            idu[i] = o if not seen[i] else b_s * idu[i] + (1 - b_s) * o
            seen[i] = True
        for j, arm in enumerate(drawn):  # one bandit round per group of the batch, in order
            g = slice(j * per, (j + 1) * per)
            u = float(np.mean(obs[g]))
            if reward == "cluster" and visits[arm] > 0:  # the cluster's utility now vs at its last visit
                arms.append(arm)
                rewards.append(cluster_u[arm] - u)
            if reward == "example" and was_seen[g].any():  # utility change of the group's revisited examples
                arms.append(arm)
                rewards.append(float(np.mean((before[g] - obs[g])[was_seen[g]])))
            cluster_u[arm] = u
            g2_first[arm] = g2 if visits[arm] == 0 else g2_first[arm]
            visits[arm] += 1
        g2_prev = g2
        stats = dict(indices=jnp.asarray(idx, jnp.int32), loss=jnp.asarray(losses[k, idx]),
                     grad_norm=jnp.float32(gnorms[k]), learning_rate=jnp.float32(lrs[k]),
                     step=jnp.int32(k), valid=jnp.asarray(True))
    # fold the last step's stats in (the next draw does it) and compare with the references
    _, final = step_fn(base.sampler_key(3, steps), state, stats)
    np.testing.assert_allclose(np.asarray(final["idu"]), idu, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(L.exp3_probs(final["log_w"], gamma)), np_exp3(arms, rewards, 3, gamma),
                               rtol=1e-5)
    assert int(final["rewards"]) == len(rewards) and len(rewards) >= 5


def test_selection_is_the_top_utility_examples_of_the_chosen_cluster():
    top = jax.jit(L.top_in_clusters, static_argnums=(5, 6, 7))  # batch 4, max_uses 2, 3 clusters of 8
    ids = jnp.asarray(np.repeat(np.arange(3), 8))
    u = np.random.default_rng(1).permutation(24).astype(np.float32)
    none_spent = jnp.zeros(24, jnp.int32)

    def best(arm, q, exclude=()):
        members = [i for i in range(8 * arm, 8 * arm + 8) if i not in exclude]
        return sorted(np.array(members)[np.argsort(-u[members])][:q])

    for arm in range(3):
        idx = np.asarray(top(jax.random.PRNGKey(arm), ids, jnp.array([arm]), u, none_spent, 4, 2, 3))
        assert sorted(idx) == best(arm, 4) and list(u[idx]) == sorted(u[idx], reverse=True)
    # max_uses: an example used that often comes after every other member of its cluster
    first = int(np.argmax(np.where(np.asarray(ids) == 1, u, -1.0)))
    idx = np.asarray(top(jax.random.PRNGKey(0), ids, jnp.array([1]), u, none_spent.at[first].set(2), 4, 2, 3))
    assert sorted(idx) == best(1, 4, exclude=(first,))
    # two arms per step: quota 2 each, grouped by cluster; an arm drawn twice gets quota 4
    idx = np.asarray(top(jax.random.PRNGKey(1), ids, jnp.array([0, 2]), u, none_spent, 4, 2, 3))
    assert sorted(idx[:2]) == best(0, 2) and sorted(idx[2:]) == best(2, 2)
    idx = np.asarray(top(jax.random.PRNGKey(1), ids, jnp.array([1, 1]), u, none_spent, 4, 2, 3))
    assert sorted(idx) == best(1, 4)
    # equal utilities: the tie break is random but stays inside the cluster, without repeats
    picks = [tuple(np.asarray(top(jax.random.PRNGKey(k), ids, jnp.array([2]), jnp.zeros(24), none_spent, 4, 2, 3)))
             for k in range(4)]
    assert all(len(set(p)) == 4 and set(p) <= set(range(16, 24)) for p in picks) and len(set(picks)) > 1


def test_kmeans_recovers_well_separated_blobs():
    rng = np.random.default_rng(0)
    centres = 10.0 * np.eye(5, 8)
    labels = rng.integers(0, 5, 500)
    x = centres[labels] + 0.3 * rng.normal(size=(500, 8))
    _, a = L.kmeans(jax.random.PRNGKey(0), x, 5)
    a = np.asarray(a)
    # one cluster per blob: the contingency table is a permutation matrix
    table = np.zeros((5, 5), int)
    np.add.at(table, (labels, a), 1)
    assert ((table > 0).sum(0) == 1).all() and ((table > 0).sum(1) == 1).all()
    ids = L.resolve_clusters(500, 8, features=x, num_clusters=5)
    assert ids.shape == (500,) and len(np.unique(ids)) == 5


def _known_utility_loss(idx, k):
    """Per-example losses with utility known by construction (clusters of 64): clusters 0-3
    are learnable (loss falls with time), 4-5 noisy (loss stays high: no progress), 6-7
    redundant (loss already ~0: no progress)."""
    c = idx // 64
    return jnp.where(c < 4, 2.0 * jnp.exp(-k / 100.0), jnp.where(c < 6, 2.0, 0.01))


@pytest.mark.parametrize("gamma,bandit_on", [(0.1, True), (1.0, False)])
def test_the_bandit_spends_less_on_clusters_without_utility_change_than_uniform(gamma, bandit_on):
    """Reason: EXP3's reward is the utility change of the chosen cluster; noisy and redundant
    clusters show none, learnable ones do, so their weights grow.  Statistic: steps of the
    second half (200) spent on the 4 no-progress clusters of 8.  Null (cluster chosen
    uniformly, as uniform sampling does per example): Binomial(200, 1/2); one-sided alpha =
    1e-3 (count <= 78).  gamma = 1 (clusters uniformly at random: no bandit) is the mutation
    that must not pass.  (Observed over seeds 0-5: 24-47 with the bandit, 94-111 without.)"""
    s = L.lead(512, 16, cluster_size=64, gamma=gamma)
    idx, _ = base.draw_indices(s, 7, 400, _known_utility_loss)
    arms = idx[:, 0] // 64
    assert (idx // 64 == arms[:, None]).all()  # each batch from one cluster
    count = int(np.sum(arms[200:] >= 4))
    p = sps.binom.cdf(count, 200, 0.5)
    assert (p < 1e-3) == bandit_on, (count, p)


# --- through the trainer ------------------------------------------------------------------
def _lead_config(num_steps=16):
    c = train_lead_clusters.get_config()
    c.model.mlp.hidden = (32,)
    c.train.num_steps = num_steps
    c.train.checkpoint_every = 8
    c.train.log_every = 8
    return c


def test_a_tiny_training_run_from_the_config_resumes_bitwise_equal(tmp_path, monkeypatch):
    c = _lead_config()
    plain, stopped = str(tmp_path / "plain"), str(tmp_path / "stopped")
    trainer.run_train(c, plain)
    rows = [json.loads(line) for line in open(os.path.join(plain, "train_log.jsonl"))]
    assert [r["step"] for r in rows] == [8, 16] and 0.0 <= rows[-1]["eval_accuracy"] <= 1.0
    _, st, _, _ = trainer.load_train_state(plain)
    sampler, stats = st.data.sampler, st.data.stats
    assert int(np.asarray(sampler["uses"]).sum()) == 16 * 32  # every drawn example counted once
    assert int(np.asarray(sampler["visits"]).sum()) == 15  # the stats of steps 1..15 are folded in
    assert set(np.asarray(stats["indices"]) // 256) == {int(sampler["arms"][0])}  # the last batch: one cluster
    # stopped right after the save of step 8, rerun: bitwise the uninterrupted run
    real = Checkpoints.save

    def save(self, step, state, meta=None):
        out = real(self, step, state, meta)
        if step == 8:
            raise KeyboardInterrupt("test: stopped after saving step 8")
        return out

    with monkeypatch.context() as m:
        m.setattr(Checkpoints, "save", save)
        with pytest.raises(KeyboardInterrupt):
            trainer.run_train(c, stopped)
    assert trainer.run_train(c, stopped)["resumed_from"] == 8
    _, a, _, _ = trainer.load_train_state(plain)
    _, b, _, _ = trainer.load_train_state(stopped)
    assert _same(a, b), "the resumed LEAD run differs from the uninterrupted one"


@pytest.mark.parametrize("options,msg", [
    (dict(cluster_size=100), "option 'cluster_size' must divide the data set size 2048"),
    (dict(cluster_size=256, smoothing=1.0), r"option 'smoothing' must be in \[0.0, 1.0\)"),
    (dict(cluster_size=256, loss_change="exact"), "option 'loss_change' must be one of"),
    (dict(cluster_size=256, reward="acc"), "option 'reward' must be one of"),
    (dict(), "give exactly one way to assign clusters"),
    (dict(cluster_size=256, num_clusters=4, kmeans=1), r"unknown option\(s\) \['kmeans'\]"),
])
def test_bad_lead_options_are_one_config_error_naming_the_field(options, msg):
    c = _lead_config()
    c.train.sampler.options = options
    with pytest.raises(ConfigError, match=msg) as e:
        trainer.setup(c)
    assert e.value.path == "config.train.sampler.options"


def test_clusters_mix_has_the_stated_layout():
    """Clean and redundant clusters follow the linear teacher (a linear classifier fitted on the
    teacher-labelled eval split predicts them), noisy ones do not (chance: 1/4); redundant
    clusters are 4 prototypes with tiny noise."""
    from sklearn.linear_model import LogisticRegression

    from samplax.data import make_dataset

    d = make_dataset("clusters_mix", clean=2, noisy=1, redundant=1, cluster_size=64, prototypes=4, eval_size=2000)
    x, y = d.arrays
    assert d.size == 256 and x.shape == (256, 16) and d.num_classes == 4
    fit = LogisticRegression(C=1e4, max_iter=5000).fit(*d.eval_arrays)
    agree = [np.mean(fit.predict(x[i * 64:(i + 1) * 64]) == y[i * 64:(i + 1) * 64]) for i in range(4)]
    assert min(agree[0], agree[1], agree[3]) >= 0.95 and agree[2] <= 0.5, agree
    groups = x[192:].reshape(4, 16, 16)  # 4 prototypes, each repeated 16 times
    assert groups.std(axis=1).max() < 0.03 and np.linalg.norm(np.diff(groups.mean(1), axis=0), axis=1).min() > 0.5
