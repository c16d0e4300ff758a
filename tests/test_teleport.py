"""Gaussian-score teleportation (samplax.solvers.teleport): the closed-form jump is the
exact PF-ODE solution of a Gaussian on every schedule family (float64 round-off), composes,
is accurate in float32; teleport + base on a Gaussian target leaves only the base solver's
error; the empirical Gaussian fit converges to the exact moments; bad options are refused."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.experiment.nfe import count_model_evaluations
from samplax.models import Gaussian, load_problem
from samplax.schedules import EDM, VE, FlowLinear, VPCosine, VPDiscrete, VPLinear
from samplax.solvers import get_solver, model_data, prepare_solver, sample
from samplax.solvers.base import ModelData
from samplax.solvers.teleport import (eigh_psd, empirical_moments, gaussian_denoiser, gaussian_jump, gaussian_model,
                                      switch_time)
from samplax.timesteps import time_grid

SCHEDULES = [VPLinear(), VPCosine(), VPDiscrete.linear(), VE(), EDM(), FlowLinear()]
IDS = [type(s).__name__ for s in SCHEDULES]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _rotation(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _ab(schedule, t):
    if t is None:
        return 1.0, 0.0
    t = jnp.asarray(t, jnp.float64)
    return float(schedule.alpha(t)), float(schedule.sigma(t))


def _times(schedule):
    hi, lo = float(schedule.t_max), float(schedule.t_min)
    return hi, lo + 0.3 * (hi - lo), max(lo, 1e-3 * hi)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_jump_is_the_exact_gaussian_solution(x64, schedule):
    """Diagonal covariance: the closed form of samplax.models.analytic.Gaussian; full
    covariance: the same Gaussian in a rotated frame (x -> R x), from t_max to a middle
    level, to t_min and to sigma = 0."""
    rng = np.random.default_rng(1)
    d = 6
    mu, std = rng.normal(size=d), rng.uniform(0.05, 2.0, size=d)
    g = Gaussian(jnp.asarray(mu), jnp.asarray(std))
    R = _rotation(d, 2)
    lam, vecs = eigh_psd(R @ np.diag(std ** 2) @ R.T)  # numerical eigenbasis, not R itself
    x = rng.normal(size=(9, d)) * 3
    t_hi, t_mid, t_lo = _times(schedule)
    for t1, t2 in ((t_hi, t_mid), (t_hi, t_lo), (t_mid, None), (t_hi, None)):
        (a1, s1), (a2, s2) = _ab(schedule, t1), _ab(schedule, t2)
        ref = np.asarray(g.ode_solution(jnp.asarray(x), t1, t2, schedule))
        out = np.asarray(gaussian_jump(mu, std ** 2, np.eye(d), x, a1, s1, a2, s2))
        np.testing.assert_allclose(out, ref, rtol=1e-13, atol=1e-13 * np.abs(ref).max())
        out_rot = np.asarray(gaussian_jump(R @ mu, lam, vecs, x @ R.T, a1, s1, a2, s2))
        np.testing.assert_allclose(out_rot, ref @ R.T, rtol=0, atol=2e-13 * np.abs(ref).max())


def test_jump_against_rk4_of_the_full_covariance_ode(x64):
    """An independent reference: float64 RK4 of du/ds = s (C + s^2 I)^{-1} (u - mu) with a
    dense solve (no eigendecomposition), on VP-linear from t = 1 to t = 0.02."""
    rng = np.random.default_rng(3)
    d = 4
    a = rng.normal(size=(d, d))
    C = a @ a.T / d + 0.05 * np.eye(d)
    mu = rng.normal(size=d)
    x = rng.normal(size=(5, d))
    sch = VPLinear()
    (a1, s1), (a2, s2) = _ab(sch, 1.0), _ab(sch, 0.02)
    st1, st2 = s1 / a1, s2 / a2  # the ODE runs in sigma_tilde = sigma / alpha
    f = lambda u, s: (s * jnp.linalg.solve(C + s * s * jnp.eye(d), (u - mu).T)).T  # noqa: E731
    n = 4000
    grid = (st1 ** (1 / 3) + (st2 ** (1 / 3) - st1 ** (1 / 3)) * np.arange(n + 1) / n) ** 3

    def body(u, i):
        s0, h = grid[i], grid[i + 1] - grid[i]
        k1 = f(u, s0)
        k2 = f(u + h / 2 * k1, s0 + h / 2)
        k3 = f(u + h / 2 * k2, s0 + h / 2)
        k4 = f(u + h * k3, s0 + h)
        return u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None
    grid = jnp.asarray(grid)
    u, _ = jax.lax.scan(body, jnp.asarray(x / a1), jnp.arange(n))
    lam, vecs = eigh_psd(C)
    out = np.asarray(gaussian_jump(mu, lam, vecs, x, a1, s1, a2, s2))
    np.testing.assert_allclose(out, a2 * np.asarray(u), rtol=0, atol=1e-10)


def test_jump_composes_and_is_schedule_free(x64):
    """jump(a -> b) o jump(b -> c) = jump(a -> c), with a, b, c noise levels of different
    schedules (only sigma / alpha matters); a rank-deficient basis (d, r) equals the full one
    with zero eigenvalues."""
    rng = np.random.default_rng(4)
    d, r = 7, 3
    vecs = _rotation(d, 5)
    lam = np.concatenate([rng.uniform(0.1, 3, r), np.zeros(d - r)])
    mu = rng.normal(size=d)
    x = rng.normal(size=(6, d)) * 80
    a = _ab(EDM(), 80.0)
    b = _ab(VPDiscrete.linear(), 0.5)
    c = _ab(VPCosine(), 0.05)
    for vv, ll in ((vecs, lam), (vecs[:, :r], lam[:r])):
        direct = np.asarray(gaussian_jump(mu, ll, vv, x, *a, *c))
        two = np.asarray(gaussian_jump(mu, ll, vv, gaussian_jump(mu, ll, vv, x, *a, *b), *b, *c))
        np.testing.assert_allclose(two, direct, rtol=0, atol=1e-13 * np.abs(direct).max())
        to0 = np.asarray(gaussian_jump(mu, ll, vv, gaussian_jump(mu, ll, vv, x, *a, *b), *b, 1.0, 0.0))
        np.testing.assert_allclose(to0, np.asarray(gaussian_jump(mu, ll, vv, x, *a, 1.0, 0.0)), rtol=0,
                                   atol=1e-13 * np.abs(to0).max())
    full = np.asarray(gaussian_jump(mu, lam, vecs, x, *a, *b))
    low = np.asarray(gaussian_jump(mu, lam[:r], vecs[:, :r], x, *a, *b))
    np.testing.assert_allclose(low, full, rtol=0, atol=1e-13 * np.abs(full).max())


@pytest.mark.parametrize("schedule", [VPDiscrete.linear(), EDM()], ids=["VPDiscrete", "EDM"])
def test_jump_float32_is_accurate(schedule):
    """float32 from the prior (alpha ~ 6e-3 for the discrete VP, sigma = 80 for EDM) to
    sigma = 0: within 5e-6 (relative) of float64."""
    rng = np.random.default_rng(6)
    d = 16
    lam, vecs = eigh_psd(np.cov(rng.normal(size=(200, d)) * rng.uniform(0.01, 3, d), rowvar=False))
    mu = rng.normal(size=d)
    x = rng.normal(size=(32, d)) * float(schedule.sigma(schedule.t_max))
    with jax.enable_x64(True):
        a1, s1 = _ab(schedule, schedule.t_max)
        ref = np.asarray(gaussian_jump(mu, lam, vecs, x, a1, s1, 1.0, 0.0))
    out = np.asarray(gaussian_jump(mu, lam, vecs, jnp.asarray(x, jnp.float32), jnp.float32(a1), jnp.float32(s1),
                                   jnp.float32(1.0), jnp.float32(0.0)))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.max(np.abs(out - ref)) <= 5e-6 * np.max(np.abs(ref))


def _gaussian_target(schedule):
    mu = np.array([0.3, -0.5, 1.0])
    std = np.array([0.2, 0.7, 1.3])
    g = Gaussian(jnp.asarray(mu), jnp.asarray(std))
    data = ModelData(samples=None, shape=(3,), moments=lambda: (mu, np.diag(std ** 2)))
    return g, g.model(schedule), data


def test_teleport_on_a_gaussian_leaves_only_the_base_error(x64):
    """Target = a Gaussian: teleport + DPM-Solver++(2M) from lambda_s equals DPM-Solver++
    started from the exact solution at lambda_s (round-off), so its error to the exact solution
    is the base's and falls with n (by > 2.5x per doubling), the NFE is the base's on the grid, and the
    Gaussian first step (afs=True) gives the same samples with one evaluation fewer."""
    sch = VPLinear()
    g, model, data = _gaussian_target(sch)
    x_T = jnp.asarray(np.random.default_rng(7).standard_normal((16, 3)))
    lam_s, t_end = -1.0, 0.02
    tele = prepare_solver(get_solver("teleport", switch=lam_s), model, data)
    t_s = float(sch.t_from_lambda(lam_s))
    assert tele.t_start == pytest.approx(t_s, rel=1e-6)
    base = get_solver("dpm_solver_pp")
    x_s = g.ode_solution(x_T, sch.t_max, tele.t_start, sch)
    exact = g.ode_solution(x_T, sch.t_max, t_end, sch)
    def run(solver, x, grid, stepwise=False):
        return jax.jit(lambda x_: sample(solver, model, x_, grid, stepwise=stepwise)[0])(x)

    errs = []
    for n in (8, 16):
        grid = time_grid(sch, n, "time_uniform", end="t_min", t_max=tele.t_start, t_min=t_end, dtype=jnp.float64)
        out = run(tele, x_T, grid)
        np.testing.assert_allclose(out, run(base, x_s, grid, stepwise=True), rtol=0, atol=1e-13)
        errs.append(float(jnp.max(jnp.abs(out - exact))))
    assert errs[0] > 2.5 * errs[1] > 0, errs
    assert count_model_evaluations(tele, model, grid, (4, 3), jnp.float64) == base.nfe(16, "t_min") == 16
    tele_gfs = prepare_solver(get_solver("teleport", switch=lam_s, afs=True), model, data)
    grid = time_grid(sch, 8, "time_uniform", end="zero", t_max=tele.t_start, dtype=jnp.float64)
    np.testing.assert_allclose(run(tele_gfs, x_T, grid), run(tele, x_T, grid), rtol=0, atol=1e-12)
    assert count_model_evaluations(tele_gfs, model, grid, (4, 3), jnp.float64) == 7 == tele_gfs.nfe(8, "zero")


def test_switch_kinds_agree_and_the_rule_on_a_gaussian(x64):
    """A fixed switch as lambda, sigma_tilde = e^{-lambda} or t is the same time; on a Gaussian
    target the rule's probe discrepancy is round-off, so it switches at the last level."""
    sch = VPCosine()
    g, model, data = _gaussian_target(sch)
    lam_s = 0.5
    ts = [prepare_solver(get_solver("teleport", switch=v, switch_kind=k), model, data).t_start
          for k, v in (("lambda", lam_s), ("sigma_tilde", math.exp(-lam_s)), ("t", float(sch.t_from_lambda(lam_s))))]
    np.testing.assert_allclose(ts, ts[0], rtol=1e-6)
    stats = get_solver("teleport")._replace().prepare(model, data)
    assert np.max(stats["probe_error"]) < 1e-5
    assert float(stats["t_switch"]) == pytest.approx(float(sch.t_from_lambda(stats["probe_lambda"][-1])), rel=1e-5)
    assert set(stats) >= {"mean", "eigvals", "eigvecs", "t_switch", "t_prior"}


def test_the_rule_on_gmm2d_is_monotone_in_the_tolerance():
    """On gmm2d (exact mixture model, exact moments): the probe discrepancy grows towards low
    noise, and a smaller tolerance never gives a later (lower-noise) switch."""
    gmm, sch, _ = load_problem("gmm2d")
    model, data = gmm.model(sch), model_data(gmm=gmm)
    st = [get_solver("teleport", tolerance=tol).prepare(model, data) for tol in (0.003, 0.03)]
    e = st[0]["probe_error"]
    assert e[-1] > 10 * e[0]
    assert sch.t_max > float(st[0]["t_switch"]) >= float(st[1]["t_switch"]) > sch.t_min
    assert np.all(np.diff(st[0]["probe_accumulated"]) >= 0)


def test_gaussian_model_matches_the_analytic_gaussian(x64):
    sch = VE()
    g, model, _ = _gaussian_target(sch)
    gm = gaussian_model(np.asarray(g.mean), np.asarray(g.std) ** 2, np.eye(3), sch)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(5, 3)) * 5)
    for t in (0.2, 0.9):
        for view in ("data", "noise"):
            np.testing.assert_allclose(getattr(gm, view)(x, t), getattr(model, view)(x, t), rtol=1e-12, atol=1e-12)
    a, s = float(sch.alpha(0.5)), float(sch.sigma(0.5))
    np.testing.assert_allclose(gaussian_denoiser(g.mean, g.std ** 2, np.eye(3), x, a, s), model.data(x, 0.5),
                               rtol=1e-12)


def test_empirical_fit_converges_to_the_exact_moments():
    """gmm64d samples: the mean error is within 4.5 standard errors in every coordinate
    (a false alarm has probability < 64 * 7e-6), the covariance error (Frobenius) falls like
    n^{-1/2} (ratio 4 +- 1.5 from n = 2000 to 32000); a constant coordinate keeps variance 0 and
    with n < d the estimate stays positive definite on the other coordinates."""
    gmm, _, _ = load_problem("gmm64d")
    data = model_data(gmm=gmm)
    mu, cov = data.moments()
    x = data.samples(32000, 11)
    errs = []
    for n in (2000, 32000):
        m, c = empirical_moments(x[:n])
        errs.append(np.linalg.norm(c - cov))
        z = (m - mu) / np.sqrt(np.diag(cov) / n)
        assert np.max(np.abs(z)) < 4.5
    assert 2.5 < errs[0] / errs[1] < 5.5, errs
    y = np.array(x[:40])
    y[:, 5] = 0.25
    m, c = empirical_moments(y)
    assert m[5] == 0.25 and np.all(c[5] == 0) and np.all(c[:, 5] == 0)
    keep = np.arange(64) != 5
    assert np.linalg.eigvalsh(c[np.ix_(keep, keep)]).min() > 0


def test_empirical_fit_used_when_no_exact_moments():
    """model_data(x0=...) has no moments: prepare fits n_fit_samples of them."""
    gmm, sch, _ = load_problem("gmm2d")
    x0 = model_data(gmm=gmm).samples(3000, 3)
    st = get_solver("teleport", switch=0.0, n_fit_samples=1000).prepare(gmm.model(sch), model_data(x0=x0))
    sub = model_data(x0=x0).samples(1000, 0)
    np.testing.assert_allclose(st["mean"], sub.mean(0), rtol=1e-12)
    m, c = empirical_moments(sub)
    np.testing.assert_allclose(st["eigvals"].sum(), np.trace(c), rtol=1e-10)


@pytest.mark.parametrize("kwargs,name", [
    (dict(base="nope"), "base"), (dict(base="teleport"), "base"), (dict(switch_kind="logsnr"), "switch_kind"),
    (dict(tolerance=0.0), "tolerance"), (dict(tolerance=float("nan")), "tolerance"),
    (dict(n_fit_samples=1), "n_fit_samples"), (dict(n_probes=0), "n_probes"), (dict(switch=float("inf")), "switch"),
    (dict(base="deis", order=7), "deis"), (dict(afs="yes"), "afs"),
])
def test_bad_options_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        get_solver("teleport", **kwargs)


def test_bad_switch_and_unprepared_use_are_refused():
    gmm, sch, _ = load_problem("gmm2d")
    model, data = gmm.model(sch), model_data(gmm=gmm)
    for k, v in (("lambda", -9.0), ("lambda", 20.0), ("t", 1.5), ("sigma_tilde", -1.0)):
        with pytest.raises(ValueError, match="switch"):
            get_solver("teleport", switch=v, switch_kind=k).prepare(model, data)
    with pytest.raises(ValueError, match="data"):
        get_solver("teleport", switch=0.0).prepare(model, None)
    with pytest.raises(ValueError, match="prepared"):
        sample(get_solver("teleport"), model, jnp.zeros((2, 2)), time_grid(sch, 4))
    with pytest.raises(ValueError, match="switch"):
        switch_time(sch, 5.0, "t", float(sch.t_max))
