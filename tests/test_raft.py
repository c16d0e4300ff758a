"""GVM-RAFT (samplax.data_sampling.gvm, samplax.experiment.raft): the allocation rule against its
closed form and against brute force over integer allocations, the estimators, the variance of the
gradient estimator (gvm < uniform, a one-sided z-test at p < 1e-3), config errors, and a kill -9
resume of ``python -m experiments.train --config=configs/train_raft.py`` (bitwise equal params)."""
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from samplax.data_sampling import gvm
from samplax.experiment.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# jitted once (fixed prompt counts in each test), so the many small cases do not recompile
_continuous = jax.jit(gvm.continuous_allocation)
_round = jax.jit(gvm.round_preserving_total)
_greedy = jax.jit(gvm.greedy_allocation)
_weights = jax.jit(gvm.variance_weights)


# ---------------------------------------------------------------------------------------
# The allocation rule
# ---------------------------------------------------------------------------------------
def test_closed_form_matches_the_papers_rule():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 9)
    G = rng.uniform(0.1, 5.0, 9)
    p[3], G[5] = 0.0, 0.0           # p = 0 or G = 0: no samples (the paper's rule)
    N = 1000
    for alpha, beta in ((0.0, 2.0), (1e-3, 2.0), (0.05, 3.0)):
        raw = np.where((p > 0) & (G > 0), G / np.sqrt(np.maximum(p, 1e-30) + alpha * np.maximum(p, 1e-30) ** (1 - beta)),
                       0.0)
        want = N * raw / raw.sum()
        w = gvm.variance_weights(p, G, alpha, beta)
        np.testing.assert_allclose(np.asarray(gvm.continuous_allocation(w, N, 0.0)), want, rtol=2e-5, atol=1e-3)
        np.testing.assert_allclose(np.asarray(gvm.gvm_fractions(p, G, alpha, beta)), raw / raw.sum(), rtol=2e-5)
    # alpha = 0: n_i proportional to G_i / sqrt(p_i)
    w = gvm.variance_weights(p, G, 0.0)
    n = np.asarray(gvm.continuous_allocation(w, N))
    ok = (p > 0) & (G > 0)
    ratio = n[ok] * np.sqrt(p[ok]) / G[ok]
    np.testing.assert_allclose(ratio, ratio[0], rtol=2e-5)


def test_water_filling_satisfies_kkt():
    rng = np.random.default_rng(1)
    M = 9
    for _ in range(30):
        w = rng.exponential(1.0, M) ** 3 * (rng.uniform(size=M) > 0.2)
        m = float(rng.integers(0, 4))
        N = M * m + float(rng.integers(1, 50))
        n = np.asarray(_continuous(w, N, m), np.float64)
        assert abs(n.sum() - N) < 1e-3 * N and np.all(n >= m - 1e-5)
        if not np.any(w > 0):
            continue
        free = n > m + 1e-4
        c = (n[free] / np.sqrt(w[free]))                  # stationarity: n_i = c sqrt(w_i) off the floor
        np.testing.assert_allclose(c, c[0], rtol=1e-4)
        assert np.all(c[0] * np.sqrt(w[~free]) <= m + 1e-3)   # the floored ones would want less


def _brute_force(w, N, m):
    M = len(w)
    best, arg = np.inf, None
    for cut in itertools.combinations(range(N - M * m + M - 1), M - 1):   # stars and bars
        parts = np.diff((-1,) + cut + (N - M * m + M - 1,)) - 1 + m
        v = _objective(parts, w)
        if v < best - 1e-12:
            best, arg = v, parts
    return best, arg


def _objective(n, w):
    n, w = np.asarray(n, np.float64), np.asarray(w, np.float64)
    if np.any((w > 0) & (n == 0)):
        return np.inf
    return float(np.sum(np.where(w > 0, w / np.where(n > 0, n, 1), 0.0)))


def test_integer_allocations_against_brute_force():
    rng = np.random.default_rng(2)
    M = 4
    for case in range(30):
        m = int(rng.integers(0, 3))
        N = M * m + int(rng.integers(0, 9))
        p = rng.uniform(0.02, 1.0, M)
        G = rng.uniform(0.1, 3.0, M) * (rng.uniform(size=M) > 0.15)
        w32 = _weights(p, G, 1e-3, 2.0)
        w = np.asarray(w32, np.float64)
        best, _ = _brute_force(w, N, m)
        greedy = np.asarray(_greedy(w32, N, m))
        assert greedy.sum() == N and greedy.min() >= m
        assert _objective(greedy, w) <= best * (1 + 1e-5) + 1e-9, (case, greedy, best)   # the exact minimiser
        x = np.asarray(_continuous(w32, N, m))
        lr = np.asarray(_round(x, N))       # gvm_allocation(..., "largest_remainder") is these two steps
        assert lr.sum() == N and lr.min() >= m and np.all(np.abs(lr - x) < 1 + 1e-4)
        assert _objective(lr, w) >= best * (1 - 1e-5) - 1e-9   # no integer allocation beats brute force
    # the jnp objective, and gvm_allocation's two roundings, agree with the pieces above
    assert float(gvm.variance_objective(greedy, w)) == pytest.approx(_objective(greedy, w), rel=1e-5)
    np.testing.assert_array_equal(gvm.gvm_allocation(p, G, N, m, 1e-3, 2.0, "greedy"), greedy)
    np.testing.assert_array_equal(gvm.gvm_allocation(p, G, N, m, 1e-3, 2.0, "largest_remainder"), lr)


def test_uniform_allocation_and_argument_errors():
    assert np.asarray(gvm.uniform_allocation(4, 10)).tolist() == [3, 3, 2, 2]
    assert int(np.sum(gvm.uniform_allocation(7, 512))) == 512
    with pytest.raises(ValueError, match="rounding"):
        gvm.gvm_allocation(np.ones(3) * 0.5, np.ones(3), 9, rounding="nearest")
    with pytest.raises(ValueError, match="total"):
        gvm.gvm_allocation(np.ones(3) * 0.5, np.ones(3), 2, minimum=1)


# ---------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------
def test_estimator_arithmetic():
    s = gvm.init_state(3)
    s = gvm.update_state(s, [4, 4, 0], [1, 4, 0], [2.0, 8.0, 0.0], [1, 4, 0], decay=0.5)
    s = gvm.update_state(s, [2, 2, 2], [2, 0, 1], [6.0, 0.0, 5.0], [2, 0, 1], decay=0.5)
    np.testing.assert_allclose(s.drawn, [4.0, 4.0, 2.0])
    np.testing.assert_allclose(s.accepted, [2.5, 2.0, 1.0])
    np.testing.assert_allclose(gvm.acceptance_estimate(s), [2.5 / 4, 2.0 / 4, 1.0 / 2])
    np.testing.assert_allclose(gvm.acceptance_estimate(s, 1.0, 3.0), [3.5 / 8, 3.0 / 8, 2.0 / 6])
    gbar = (7.0 + 4.0 + 5.0) / (2.5 + 2.0 + 1.0)
    np.testing.assert_allclose(gvm.grad_norm_estimate(s), [7.0 / 2.5, 2.0, 5.0], rtol=1e-6)
    np.testing.assert_allclose(gvm.grad_norm_estimate(s, 2.0), [(7.0 + 2 * gbar) / 4.5, (4.0 + 2 * gbar) / 4.0,
                                                               (5.0 + 2 * gbar) / 3.0], rtol=1e-6)
    # nothing measured yet: G = 1 everywhere (the allocation then follows p)
    np.testing.assert_allclose(gvm.grad_norm_estimate(gvm.init_state(2)), [1.0, 1.0])


def test_acceptance_estimate_is_unbiased_statistically():
    """decay = 1, no prior: the pooled ratio over T iterations is unbiased for p (z-test, 5 s.e.)."""
    rng = np.random.default_rng(3)
    p = np.array([0.05, 0.3, 0.7, 0.95])
    R, T, n = 4000, 3, 8
    s = gvm.init_state(R * len(p))
    pp = np.tile(p, R)
    for _ in range(T):
        s = gvm.update_state(s, np.full(pp.shape, n), rng.binomial(n, pp), decay=1.0)
    est = np.asarray(gvm.acceptance_estimate(s)).reshape(R, len(p))
    se = np.sqrt(p * (1 - p) / (n * T) / R)
    assert np.all(np.abs(est.mean(0) - p) < 5 * se), (est.mean(0), p)


# ---------------------------------------------------------------------------------------
# The claim in miniature: lower gradient variance than uniform at the same budget
# ---------------------------------------------------------------------------------------
def _estimator_sq_norms(n, p, G, R, d, rng):
    """||g_hat||^2 over R replications of g_hat = sum_i (1 / (n_i p_i)) sum_j 1[acc_ij] g_ij, with
    accepted gradients g ~ N(0, G_i^2 / d I_d) (so E||g||^2 = G_i^2, mean 0): Var = sum G^2 / (n p)."""
    tot = np.zeros((R, d))
    for ni, pi, Gi in zip(n, p, G):
        if ni == 0:
            continue
        acc = rng.uniform(size=(R, ni)) < pi
        g = rng.normal(size=(R, ni, d)) * Gi / np.sqrt(d)
        tot += np.einsum("rn,rnd->rd", acc, g) / (ni * pi)
    return np.sum(tot ** 2, axis=1)


def test_gvm_lowers_the_gradient_variance_vs_uniform():
    rng = np.random.default_rng(4)
    p = np.array([0.05, 0.1, 0.3, 0.5, 0.8, 0.95])
    G = np.array([1.0, 3.0, 1.0, 2.0, 0.5, 1.0])
    N, R, d = 60, 6000, 4
    n_gvm = np.asarray(gvm.gvm_allocation(p, G, N, 1, 0.0, 2.0, "greedy"))
    n_uni = np.asarray(gvm.uniform_allocation(len(p), N))
    a = _estimator_sq_norms(n_gvm, p, G, R, d, rng)
    b = _estimator_sq_norms(n_uni, p, G, R, d, rng)
    w = G ** 2 / p
    for x, n in ((a, n_gvm), (b, n_uni)):   # each matches its exact variance sum w / n (5 s.e.)
        assert abs(x.mean() - np.sum(w / n)) < 5 * x.std() / np.sqrt(R)
    z = (b.mean() - a.mean()) / np.sqrt(a.var() / R + b.var() / R)
    assert z > 3.09, z   # one-sided p < 1e-3: gvm's variance is lower


# ---------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------
def _config():
    sys.path.insert(0, ROOT)
    from configs.train_raft import get_config
    return get_config()


@pytest.mark.parametrize("field,value,match", [
    ("raft.allocation", "proportional", "config.raft.allocation"),
    ("raft.budget_per_iteration", 10, "config.raft.budget_per_iteration"),
    ("raft.rounding", "floor", "config.raft.rounding"),
    ("raft.decay", 1.5, "config.raft.decay"),
    ("raft.alpha", -1.0, "config.raft.alpha"),
    ("task.train_prompts", 256, "config.task.train_prompts"),
    ("model.heads", 3, "config.model.heads"),
    ("raft.loss_weighting", "sum", "config.raft.loss_weighting"),
    ("warmup.steps", -1, "config.warmup.steps"),
    ("task.modulus", 8, "config.task.modulus"),
])
def test_config_errors_name_the_field(field, value, match, tmp_path):
    from samplax.experiment.raft import run_raft, validate_raft

    c = _config()
    with c.unlocked():
        sec, key = field.split(".")
        c[sec][key] = value
    with pytest.raises(ConfigError, match=match):
        validate_raft(c)
    with pytest.raises(ConfigError, match=match):
        run_raft(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()   # nothing written


def test_config_cross_field_errors():
    from samplax.experiment.raft import validate_raft

    c = _config()
    c.raft.allocation = "uniform"
    c.raft.presample_per_prompt = 2
    with pytest.raises(ConfigError, match="config.raft.presample_per_prompt"):
        validate_raft(c)
    c = _config()
    with c.unlocked():
        c.raft.extra = 1
    with pytest.raises(ConfigError, match="config.raft.extra: unknown"):
        validate_raft(c)
    validate_raft(_config())   # the shipped config is valid


# ---------------------------------------------------------------------------------------
# kill -9 and resume: bitwise the parameters of an uninterrupted run
# ---------------------------------------------------------------------------------------
TINY = ["--config.task.modulus=3", "--config.task.n_digits=3", "--config.task.train_prompts=18",
        "--config.model.width=16", "--config.model.depth=1", "--config.model.heads=2", "--config.warmup.steps=30",
        "--config.warmup.batch_size=64", "--config.raft.iterations=5", "--config.raft.budget_per_iteration=54",
        "--config.train.checkpoint_every=2", "--config.train.log_every=1"]


def _rows(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        r.pop("elapsed_s")
    return rows


def test_kill9_resume_is_bitwise(tmp_path):
    from samplax.experiment.raft import PAUSE_ENV, run_raft

    c = _config()
    for a in TINY:
        k, v = a[len("--config."):].split("=")
        sec, key = k.split(".")
        c[sec][key] = type(c[sec][key])(v)
    ref = run_raft(c, str(tmp_path / "ref"))                       # uninterrupted, in process
    assert ref["resumed_from"] == 0

    wd = tmp_path / "killed"
    cmd = [sys.executable, "-m", "experiments.train", "--config=configs/train_raft.py", f"--workdir={wd}"] + TINY
    env = dict(os.environ, **{PAUSE_ENV: "3"}, PYTHONPATH=ROOT)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = wd / "train_log.jsonl"
    t0 = time.time()
    try:
        while time.time() - t0 < 120:   # paused after iteration 3 (checkpoint 2 on disk, 3 logged)
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}")
            if log.exists() and any(json.loads(line)["iteration"] == 3 for line in log.read_text().splitlines()
                                    if line.endswith("}")):
                break
            time.sleep(0.2)
        else:
            pytest.fail("iteration 3 never logged")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(os.listdir(wd / "checkpoints")) == ["0", "2"]
    summary = run_raft(c, str(wd))                                 # the same run again: resumes
    assert summary == json.loads((wd / "train_summary.json").read_text())
    assert summary["resumed_from"] == 2
    assert summary["params_sha256"] == ref["params_sha256"]
    # the log: iterations 0..5 once each, identical numbers to the uninterrupted run (wall time aside)
    assert _rows(wd / "train_log.jsonl") == _rows(tmp_path / "ref" / "train_log.jsonl")
