"""PPO and snapshot starts (samplax.rl.ppo, samplax.rl.snapshot, samplax.experiment.rl_snapshot):
GAE and the clipped loss against direct computations, exact snapshot restores, the S3RL
selection rule's probabilities (chi-square), the truncation horizon, PPO learning CartPole,
config errors and a kill -9 resume."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

pytest.importorskip("gymnax")

from samplax.experiment.errors import ConfigError  # noqa: E402
from samplax.experiment import rl_snapshot  # noqa: E402
from samplax.rl import ppo, snapshot as sn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gae_matches_direct_numpy():
    rng = np.random.default_rng(0)
    T, N, g, lam = 9, 3, 0.9, 0.8
    r, v, nv = rng.normal(size=(3, T, N)).astype(np.float32)
    term = rng.random((T, N)) < 0.2
    ended = term | (rng.random((T, N)) < 0.2)
    adv, ret = ppo.gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(nv), jnp.asarray(term), jnp.asarray(ended), g, lam)
    want = np.zeros((T, N))
    for n in range(N):
        a = 0.0
        for t in reversed(range(T)):
            delta = r[t, n] + g * nv[t, n] * (0.0 if term[t, n] else 1.0) - v[t, n]
            a = delta + g * lam * (0.0 if ended[t, n] else 1.0) * a
            want[t, n] = a
    np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want + v, rtol=1e-5, atol=1e-5)


def test_ppo_clipped_loss_by_hand():
    # two samples, two actions; new/old probabilities chosen so that sample 0 is clipped
    logits = jnp.log(jnp.array([[0.8, 0.2], [0.3, 0.7]]))
    actions = jnp.array([0, 1])
    old_logp = jnp.log(jnp.array([0.5, 0.7]))
    adv = jnp.array([1.0, -2.0])
    returns, values = jnp.array([1.0, 0.0]), jnp.array([0.5, 1.0])
    info = ppo.ppo_loss(logits, values, actions, old_logp, adv, returns, clip_eps=0.2, vf_coef=0.5,
                        ent_coef=0.1, normalize=False)
    ratio = np.array([0.8 / 0.5, 0.7 / 0.7])        # 1.6 (clipped to 1.2 for A > 0), 1.0
    pg = -np.mean([min(1.6 * 1.0, 1.2 * 1.0), min(1.0 * -2.0, 1.0 * -2.0)])
    vf = 0.5 * np.mean([(1.0 - 0.5) ** 2, (0.0 - 1.0) ** 2])
    ent = np.mean([-(0.8 * np.log(0.8) + 0.2 * np.log(0.2)), -(0.3 * np.log(0.3) + 0.7 * np.log(0.7))])
    np.testing.assert_allclose(float(info.policy_loss), pg, rtol=1e-6)
    np.testing.assert_allclose(float(info.value_loss), vf, rtol=1e-6)
    np.testing.assert_allclose(float(info.entropy), ent, rtol=1e-6)
    np.testing.assert_allclose(float(info.loss), pg + 0.5 * vf - 0.1 * ent, rtol=1e-6)
    np.testing.assert_allclose(float(info.clip_fraction), 0.5)
    np.testing.assert_allclose(float(info.approx_kl), np.mean(ratio - 1 - np.log(ratio)), rtol=1e-5)


@pytest.mark.parametrize("env_name", ["MountainCar-v0", "CartPole-v1"])
def test_snapshot_restore_then_step_equals_original_trajectory(env_name):
    """Step a trajectory, restore its state k as a snapshot and replay the same actions:
    the states are bitwise those of the original (``time`` too, without the reset; with
    it, ``time`` counts the steps since the snapshot)."""
    env, params = ppo.make_env(env_name)

    @jax.jit
    def replay(s0, actions):
        def step(s, a):
            o, s2, _, _, _ = env.step_env(jax.random.PRNGKey(0), s, a, params)
            return s2, (s2, o)
        return jax.lax.scan(step, s0, actions)[1]

    _, s0 = env.reset_env(jax.random.PRNGKey(3), params)
    actions = jax.random.randint(jax.random.PRNGKey(4), (40,), 0, env.num_actions)
    states, obs = replay(s0, actions)
    k = 15
    snap = jax.tree.map(lambda x: x[k - 1], states)  # the state after k steps
    for reset_time in (False, True):
        got, got_obs = replay(sn.restore(snap, reset_time=reset_time), actions[k:])
        want = jax.tree.map(lambda x: x[k:], states)
        if reset_time:
            want = want.replace(time=jnp.arange(1, 41 - k, dtype=want.time.dtype))
            assert int(sn.restore(snap).time) == 0 and int(snap.time) == k
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(got_obs), np.asarray(obs[k:]))


def _sampler(selection, k=6):
    return sn.build_sampler("MountainCar-v0", jax.random.PRNGKey(5), teacher_policy=sn.heuristic_policy(
        "MountainCar-v0", 0.3), num_episodes=3, num_clusters=k, selection=selection, prob=1.0)


@pytest.mark.parametrize("selection", ["cluster", "uniform"])
def test_selection_rule_probabilities(selection):
    """The stated rule exactly, and draws that follow it: chi-square over the clusters (and
    over the snapshots of one cluster) at significance 0.001 for a fixed seed."""
    k = 6
    s = _sampler(selection, k)
    valid, cl = np.asarray(s.valid), np.asarray(s.cluster)
    sizes = np.bincount(cl[valid], minlength=k)
    p = np.exp(np.asarray(s.log_probs, np.float64))
    if selection == "cluster":
        want = np.where(valid, 1.0 / (np.sum(sizes > 0) * sizes[np.clip(cl, 0, k - 1)]), 0.0)
    else:
        want = np.where(valid, 1.0 / valid.sum(), 0.0)
    np.testing.assert_allclose(p, want, rtol=1e-5)
    assert abs(p.sum() - 1.0) < 1e-4 and np.all(p[~valid] == 0)
    n = 60_000
    counts = sn.empirical_frequencies(jax.random.PRNGKey(9), s, n)
    assert counts[~valid].sum() == 0
    per_cluster = np.bincount(cl[valid], weights=counts[valid], minlength=k)
    exp_cluster = n * np.bincount(cl[valid], weights=want[valid], minlength=k)
    nz = exp_cluster > 0
    assert stats.chisquare(per_cluster[nz], exp_cluster[nz]).pvalue > 1e-3
    big = int(np.argmax(sizes))  # inside one cluster the draw is uniform over its members
    members = np.flatnonzero(valid & (cl == big))
    assert stats.chisquare(counts[members]).pvalue > 1e-3


def test_truncation_horizon_and_time_counter():
    """Episodes begun at a snapshot end after exactly `horizon` steps unless the env
    terminates first; standard ones are never cut before the env's limit; `time` counts
    the episode's own steps."""
    h = 7
    s = _sampler("cluster")._replace(prob=jnp.asarray(0.9, jnp.float32))
    cfg = ppo.PPOConfig(num_envs=6, num_steps=120, num_minibatches=2)
    learner = ppo.make_ppo("MountainCar-v0", cfg, starter=sn.snapshot_starter, horizon=h, snapshot_updates=1)
    st = learner.init(jax.random.PRNGKey(0), s)
    carry, tr = learner.rollout(st, jax.random.PRNGKey(1))
    ended, term, snap, tm = (np.asarray(tr[x]) for x in ("ended", "terminated", "from_snapshot", "time"))
    seen_snap = seen_std = 0
    for e in range(cfg.num_envs):
        start = 0
        for t in np.flatnonzero(ended[:, e]):
            length = t + 1 - start
            assert tm[t, e] == length  # time restarts at 0 on every start, snapshot or not
            if snap[t, e]:
                assert length == h or (term[t, e] and length <= h)
                seen_snap += 1
            else:
                assert term[t, e] or length == 200
                seen_std += 1
            start = t + 1
    assert seen_snap > 10 and int(carry[4].draws) > 0


def test_ppo_learns_cartpole():
    """30 updates (30,720 steps): the greedy policy's mean return over 16 episodes must
    exceed 100; a uniformly random policy averages about 22 (std about 12), so 100 is
    more than 6 standard deviations above random for a single episode."""
    cfg = ppo.PPOConfig(num_envs=8, num_steps=128, num_updates=30)
    learner = ppo.make_ppo("CartPole-v1", cfg)
    st, m = learner.run(learner.init(jax.random.PRNGKey(0), jnp.zeros((), jnp.int32)), 30)
    ret = np.asarray(learner.evaluate(st.params, jax.random.PRNGKey(1), 16, True))  # greedy
    assert ret.mean() > 100, ret
    assert np.isfinite(np.asarray(m.losses.loss)).all()


@pytest.mark.parametrize("field,value,path", [
    ("rl.env", "Pong-v0", "config.rl.env"),
    ("rl.snapshot.selection", "best", "config.rl.snapshot.selection"),
    ("rl.snapshot.prob", 1.5, "config.rl.snapshot.prob"),
    ("rl.ppo.num_minibatches", 7, "config.rl.ppo.num_minibatches"),
    ("train.total_env_steps", 10, "config.train.total_env_steps"),
    ("rl.snapshot.teacher", "oracle", "config.rl.snapshot.teacher"),
    ("rl.snapshot.bogus", 1, "config.rl.snapshot.bogus"),
])
def test_config_errors_name_the_field(field, value, path, tmp_path):
    c = rl_snapshot.snapshot_rl_config()
    *parents, leaf = field.split(".")
    d = c
    for p in parents:
        d = d[p]
    with d.unlocked() if hasattr(d, "unlocked") else _null():
        d[leaf] = value
    with pytest.raises(ConfigError) as e:
        rl_snapshot.run_snapshot_rl(c, str(tmp_path / "w"))
    assert e.value.path == path
    assert not (tmp_path / "w").exists()  # nothing written


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


TINY = ["--config.rl.env=MountainCar-v0", "--config.rl.snapshot.teacher=heuristic", "--config.rl.num_envs=4", "--config.rl.num_steps=32", "--config.rl.ppo.num_minibatches=2",
        "--config.rl.ppo.update_epochs=1", "--config.rl.snapshot.teacher_episodes=2",
        "--config.rl.snapshot.truncation=10", "--config.train.total_env_steps=1024",
        "--config.train.updates_per_chunk=2", "--config.train.eval_episodes=1"]


def _tiny_config():
    c = rl_snapshot.snapshot_rl_config()
    c.rl.env, c.rl.snapshot.teacher = "MountainCar-v0", "heuristic"
    c.rl.num_envs, c.rl.num_steps, c.rl.ppo.num_minibatches, c.rl.ppo.update_epochs = 4, 32, 2, 1
    c.rl.snapshot.teacher_episodes, c.rl.snapshot.truncation = 2, 10
    c.train.total_env_steps, c.train.updates_per_chunk, c.train.eval_episodes = 1024, 2, 1
    return c


def _rows(wd):
    with open(os.path.join(wd, "train_log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in f]


def test_kill9_resume_is_bitwise_equal(tmp_path):
    """SIGKILL a real `python -m experiments.train` after its first checkpoints, rerun the same
    config (in process, to spare a second interpreter start): the final state (params, optimiser, envs, snapshot buffer and counters) and the
    log rows equal an uninterrupted run's bit for bit."""
    ref = str(tmp_path / "ref")
    summary = rl_snapshot.run_snapshot_rl(_tiny_config(), ref)  # 8 updates, uninterrupted
    wd = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "experiments.train", "--config=configs/train_snapshot_rl.py", f"--workdir={wd}"] + TINY
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = os.path.join(wd, "checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= 2 for d in os.listdir(ckpts)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(wd, "train_summary.json"))
    resumed = rl_snapshot.run_snapshot_rl(_tiny_config(), wd)  # the same run again, in process: resumes
    with open(os.path.join(wd, "train_summary.json")) as f:
        assert json.load(f) == resumed
    assert resumed["resumed_from"] >= 2 and resumed["updates"] == summary["updates"] == 8
    assert resumed["state_sha256"] == summary["state_sha256"]
    assert resumed["params_sha256"] == summary["params_sha256"]
    assert resumed["snapshot_draws"] == summary["snapshot_draws"] > 0
    assert _rows(wd) == _rows(ref) and len(_rows(ref)) == 4
