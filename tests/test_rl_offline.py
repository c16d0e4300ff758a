"""Trajectory weighting (Hong et al., ICLR 2023), its sampler, the gymnax rollouts, behaviour
cloning and the offline_rl training kind (config errors, kill -9 and resume).

Statistical tests use the significance stated at each (a fixed seed, so they are
deterministic; a correct implementation fails one with that probability over seeds)."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from samplax.experiment.checkpoints import Checkpoints
from samplax.experiment.errors import ConfigError
from samplax.experiment.rl_offline import offline_rl_config, run_offline_rl
from samplax.rl import envs
from samplax.rl import offline as off

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHA_SIG = 1e-3  # significance of the chi-square and z tests


# ---------------------------------------------------------------------------------------
# Weights against their closed forms
# ---------------------------------------------------------------------------------------
def test_weights_closed_form():
    g = np.array([0.0, 10.0, 5.0, 10.0, 2.0])
    lengths = np.array([3, 1, 4, 2, 5])
    alpha = 0.5
    w = np.exp((g / 10.0) / alpha)  # min 0, max 10: Ghat = G / 10
    np.testing.assert_allclose(off.trajectory_probabilities(g, lengths, "return", alpha, "trajectory"),
                               w / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(off.trajectory_probabilities(g, lengths, "return", alpha, "transition"),
                               lengths * w / np.sum(lengths * w), rtol=1e-12)
    mixed = off.trajectory_probabilities(g, lengths, "return", alpha, "trajectory", uniform_mix=0.3)
    np.testing.assert_allclose(mixed, 0.7 * w / w.sum() + 0.3 / 5, rtol=1e-12)
    mixed_t = off.trajectory_probabilities(g, lengths, "return", alpha, "transition", uniform_mix=0.3)
    np.testing.assert_allclose(mixed_t, 0.7 * lengths * w / np.sum(lengths * w) + 0.3 * lengths / lengths.sum(),
                               rtol=1e-12)
    # uniform: 1/N over trajectories, L_i / sum L over transitions
    np.testing.assert_allclose(off.trajectory_probabilities(g, lengths, "uniform", level="trajectory"), 0.2)
    np.testing.assert_allclose(off.trajectory_probabilities(g, lengths, "uniform"), lengths / lengths.sum())
    # constant returns: every weight equal; alpha -> 0: the best trajectories only (ties share)
    np.testing.assert_allclose(off.trajectory_probabilities(np.full(5, 7.0), lengths, "return", 0.01,
                                                            "trajectory"), 0.2)
    p = off.trajectory_probabilities(g, lengths, "return", 1e-3, "trajectory")
    np.testing.assert_allclose(p, [0, 0.5, 0, 0.5, 0], atol=1e-12)
    # advantage weighting: A = G - (a s0 + b), the least-squares line; check it against the 1-D normal equations
    s0 = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    x = s0[:, 0]
    slope = np.sum((x - x.mean()) * (g - g.mean())) / np.sum((x - x.mean()) ** 2)
    adv = g - (g.mean() + slope * (x - x.mean()))
    a_hat = (adv - adv.min()) / (adv.max() - adv.min())
    wa = np.exp(a_hat / alpha)
    np.testing.assert_allclose(off.trajectory_probabilities(g, lengths, "advantage", alpha, "trajectory",
                                                            first_obs=s0), wa / wa.sum(), rtol=1e-10)
    assert off.behaviour_return(w / w.sum(), g) == pytest.approx(np.sum(w * g) / w.sum(), rel=1e-12)
    for kwargs, word in [(dict(method="best"), "method"), (dict(alpha=0.0), "alpha"), (dict(level="step"), "level"),
                         (dict(uniform_mix=1.5), "uniform_mix"), (dict(method="advantage"), "first_obs")]:
        with pytest.raises(ValueError, match=word):
            off.trajectory_probabilities(g, lengths, **kwargs)


# ---------------------------------------------------------------------------------------
# The sampler draws trajectories and steps with the stated probabilities
# ---------------------------------------------------------------------------------------
def test_sampler_probabilities_chi_square():
    lengths = np.array([3, 1, 4, 2, 5, 7])
    g = np.array([0.0, 10.0, 5.0, 8.0, 2.0, 9.0])
    probs = off.trajectory_probabilities(g, lengths, "return", 0.3, "transition", uniform_mix=0.05)
    max_len, b, steps = 8, 512, 40
    sampler = off.trajectory_sampler(probs, lengths, max_len, b)

    @jax.jit
    def draw(state):
        def one(st, k):
            idx, st = sampler.next_indices(jax.random.fold_in(jax.random.PRNGKey(7), k), st, None)
            return st, idx
        return jax.lax.scan(one, state, jnp.arange(steps))

    state, idx = draw(sampler.init())
    idx = np.asarray(idx).reshape(-1)
    traj, t = idx // max_len, idx % max_len
    assert np.all(t < lengths[traj])  # never a padding step
    counts = np.bincount(traj, minlength=len(lengths))
    np.testing.assert_array_equal(np.asarray(state["draws"]), counts)  # the state counts the draws
    n = b * steps
    assert stats.chisquare(counts, probs * n).pvalue > ALPHA_SIG
    # transition (i, t): probability p_i / L_i -- the joint over all 22 real transitions
    joint = np.zeros((len(lengths), max_len))
    np.add.at(joint, (traj, t), 1)
    expected = np.concatenate([np.full(L, p / L) for p, L in zip(probs, lengths)]) * n
    observed = np.concatenate([joint[i, :L] for i, L in enumerate(lengths)])
    assert stats.chisquare(observed, expected).pvalue > ALPHA_SIG


# ---------------------------------------------------------------------------------------
# Rollouts against a Python loop over the same gymnax env
# ---------------------------------------------------------------------------------------
def test_rollout_matches_python_loop():
    env = envs.make_env("CartPole-v1", max_steps=25)
    policy = envs.epsilon_policy(envs.controller("CartPole-v1"), 0.7, env.num_actions)
    key = jax.random.PRNGKey(3)
    n = 4
    tr = jax.device_get(jax.jit(lambda k: envs.rollout(env, policy, k, n))(key))
    step = jax.jit(lambda k, s, a: env.env.step_env(k, s, a, env.params))
    act = jax.jit(policy)
    for i in range(n):
        k_reset, k_steps = jax.random.split(jax.random.fold_in(key, i))
        obs, s = env.env.reset_env(k_reset, env.params)
        ret, length, terminated = 0.0, 0, False
        for t in range(env.max_steps):
            k_act, k_env = jax.random.split(jax.random.fold_in(k_steps, t))
            if terminated:  # padding after the end
                assert tr.mask[i, t] == 0 and tr.reward[i, t] == 0 and not tr.terminal[i, t]
                continue
            a = int(act(obs, k_act))
            obs2, s, r, term, _ = step(k_env, s, a)
            assert tr.action[i, t] == a and tr.mask[i, t] == 1
            np.testing.assert_allclose(tr.obs[i, t], np.asarray(obs), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(tr.next_obs[i, t], np.asarray(obs2), rtol=1e-6, atol=1e-6)
            assert tr.reward[i, t] == float(r) and bool(tr.terminal[i, t]) == bool(term)
            ret, length, terminated, obs = ret + float(r), length + 1, bool(term), obs2
        assert tr.length[i] == length and tr.returns[i] == ret
        np.testing.assert_allclose(tr.returns_to_go[i], np.cumsum(tr.reward[i][::-1])[::-1])
    ended = np.asarray(tr.terminal).any(axis=1)
    assert ended.any() and not ended.all()  # both a terminated episode and one cut at max_steps were checked


# ---------------------------------------------------------------------------------------
# Weighted sampling raises the sampled behaviour policy's return, as computed from the data
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cartpole_data():
    env = envs.make_env("CartPole-v1", max_steps=50)
    trajs, good = envs.mixed_dataset(env, jax.random.PRNGKey(0), 20, 0.1, good_epsilon=0.0, bad_epsilon=1.0)
    return env, jax.device_get(trajs), good


def test_weighting_raises_behaviour_return(cartpole_data):
    env, trajs, good = cartpole_data
    g, lengths = np.asarray(trajs.returns, np.float64), np.asarray(trajs.length)
    assert np.all(g[good] == 50) and np.all(g[~good] < 50)  # the controller holds the pole for all 50 steps
    uni = off.trajectory_probabilities(g, lengths, "uniform")
    rw = off.trajectory_probabilities(g, lengths, "return", 0.1)
    # exact: sum_i p_i G_i with p_i = L_i w_i / sum L w (CartPole: L_i = G_i)
    w = lengths * np.exp((g - g.min()) / (g.max() - g.min()) / 0.1)
    assert off.behaviour_return(rw, g) == pytest.approx(np.sum(w * g) / w.sum(), rel=1e-12)
    assert off.behaviour_return(uni, g) == pytest.approx(np.sum(g * g) / g.sum(), rel=1e-12)
    assert off.behaviour_return(rw, g) > off.behaviour_return(uni, g) > g.mean()
    # the sampler's draws have that mean return: z-test of the drawn trajectories' returns
    b = 4096
    sampler = off.trajectory_sampler(rw, lengths, env.max_steps, b)
    idx, _ = jax.jit(sampler.next_indices)(jax.random.PRNGKey(11), sampler.init(), None)
    drawn = g[np.asarray(idx) // env.max_steps]
    mean = off.behaviour_return(rw, g)
    sd = np.sqrt(np.dot(rw, (g - mean) ** 2))
    z = (drawn.mean() - mean) / (sd / np.sqrt(b))
    assert abs(z) < stats.norm.ppf(1 - ALPHA_SIG / 2)


# ---------------------------------------------------------------------------------------
# Behaviour cloning recovers the behaviour policy
# ---------------------------------------------------------------------------------------
def test_bc_recovers_behaviour_policy():
    eps = 0.2
    env = envs.make_env("CartPole-v1", max_steps=100)
    rule = envs.controller("CartPole-v1")
    behaviour = envs.epsilon_policy(rule, eps, env.num_actions)
    trajs = jax.device_get(jax.jit(lambda k: envs.rollout(env, behaviour, k, 12))(jax.random.PRNGKey(5)))
    lengths = np.asarray(trajs.length)
    probs = off.trajectory_probabilities(np.asarray(trajs.returns), lengths, "uniform")
    sampler = off.trajectory_sampler(probs, lengths, env.max_steps, 256)
    net = envs.MLP((64, 64), env.num_actions)
    learner = off.make_learner("bc", net, env.obs_dim, optax.adam(3e-3))
    state, _ = jax.jit(off.make_train_chunk(learner, sampler, 1500))(off.init_state(learner, sampler, 0),
                                                                     off.flat_transitions(trajs), 0)
    real = np.asarray(trajs.mask).reshape(-1) > 0
    obs = np.asarray(trajs.obs).reshape(-1, env.obs_dim)[real]
    acts = np.asarray(trajs.action).reshape(-1)[real]
    rule_a = np.asarray(jax.vmap(lambda o: rule(o, None))(obs))
    p_rule = np.asarray(jax.nn.softmax(net.apply(state.learner.params, obs), axis=-1))[np.arange(len(obs)), rule_a]
    freq = np.mean(acts == rule_a)  # the data's frequency of the rule's action: 1 - eps/2 = 0.9 in expectation
    n = len(obs)
    assert abs(freq - (1 - eps / 2)) < stats.norm.ppf(1 - ALPHA_SIG / 2) * np.sqrt(0.9 * 0.1 / n)
    # the maximum-likelihood fit reproduces the behaviour: the rule's action is the argmax almost everywhere,
    # and the fitted probability of it averages to the data's frequency
    assert np.mean(p_rule > 0.5) > 0.97
    assert abs(p_rule.mean() - freq) < 0.03


# ---------------------------------------------------------------------------------------
# The offline_rl training kind
# ---------------------------------------------------------------------------------------
def tiny_config(**train):
    c = offline_rl_config()
    c.rl.max_steps = 40
    c.rl.data.num_trajectories = 10
    c.rl.data.good_fraction = 0.2
    c.rl.learner.name = "cql"
    c.rl.learner.hidden = (16,)
    c.train.batch_size = 32
    c.train.num_steps = 500
    c.train.log_every = 1
    c.train.checkpoint_every = 100
    c.eval.num_episodes = 2
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


@pytest.mark.parametrize("field,value", [
    ("rl.env", "Pong-v0"), ("rl.weighting.name", "best"), ("rl.weighting.alpha", 0.0),
    ("rl.weighting.level", "step"), ("rl.data.good_fraction", 1.5), ("rl.learner.name", "iql"),
    ("rl.learner.hidden", ()), ("train.num_steps", 0), ("optim.learning_rate", -1.0), ("rl.data.colour", 3),
])
def test_config_errors(tmp_path, field, value):
    c = offline_rl_config().to_dict()
    *parents, leaf = field.split(".")
    d = c
    for p in parents:
        d = d[p]
    d[leaf] = value
    wd = tmp_path / "run"
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as e:
        run_offline_rl(c, str(wd))
    assert "allowed" in str(e.value)
    assert not wd.exists()  # nothing written


def _final_sha(wd, steps):
    with Checkpoints(os.path.join(wd, "checkpoints"), {}, read_only=True) as ck:
        return ck.read_meta(steps)["state_sha256"]


def _log(wd):
    with open(os.path.join(wd, "train_log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"} for line in f]


def test_kill_minus_nine_and_resume(tmp_path):
    """A real SIGKILL of ``python -m experiments.train`` after its first checkpoint, then the
    same config rerun (here in-process, sparing a second interpreter start): the final state
    is bitwise the uninterrupted run's (every leaf, through the checkpoint's SHA-256), and so
    are the log rows and the evaluation returns."""
    c = tiny_config()
    wd = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "experiments.train", "--config=configs/train_offline_rl.py", f"--workdir={wd}",
           "--config.rl.max_steps=40", "--config.rl.data.num_trajectories=10", "--config.rl.data.good_fraction=0.2",
           "--config.rl.learner.name=cql", "--config.rl.learner.hidden=(16,)", "--config.train.batch_size=32",
           "--config.train.num_steps=500", "--config.train.log_every=1", "--config.train.checkpoint_every=100",
           "--config.eval.num_episodes=2"]
    ref = str(tmp_path / "ref")
    summary = run_offline_rl(c, ref)  # the uninterrupted run (its programs go to the compilation cache)
    assert summary["sampler_draws"] == c.train.num_steps * c.train.batch_size
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckdir = os.path.join(wd, "checkpoints")
    killed = []
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # kill -9 once a complete checkpoint exists
        steps = [int(s) for s in os.listdir(ckdir) if s.isdigit()] if os.path.isdir(ckdir) else []
        if steps:  # Orbax renames a finished step into place: a numeric directory is complete
            proc.send_signal(signal.SIGKILL)
            killed.append(max(steps))
            break
        time.sleep(0.005)
    proc.wait()
    assert killed and proc.returncode == -signal.SIGKILL, "the run was not killed mid-way"
    assert 0 < killed[0] < c.train.num_steps
    resumed = run_offline_rl(tiny_config(), wd)
    assert resumed["resumed_from"] >= killed[0]
    assert resumed["sampler_draws"] == summary["sampler_draws"]  # the draw counts came back from the checkpoint
    assert _final_sha(wd, c.train.num_steps) == _final_sha(ref, c.train.num_steps)  # bitwise: every state leaf
    assert _log(wd) == _log(ref)
    assert resumed["eval_returns"] == summary["eval_returns"]
