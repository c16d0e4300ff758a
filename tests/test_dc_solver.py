"""DC-Solver (dynamic compensation for UniPC): identities, gradients, fitted and CPR-predicted ratios."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax.search.dc_solver import (cpr_fit, cpr_predict, exact_trajectory, fit_ratios, lagrange_weights,
                                      run_dc, teacher_trajectory)
from samplax.solvers.unified import run_table


def test_lagrange_weights_interpolate_quadratics_and_are_identity_at_ratio_one():
    with jax.enable_x64(True):
        t = jnp.asarray([1.0, 0.7, 0.45, 0.2, 0.05])
        for i in (2, 3, 4):
            for rho in (1.0, 0.3, 1.7):
                w = lagrange_weights(t, i, rho)
                nodes = jnp.asarray([t[i], t[i - 1], t[i - 2]])
                tau = rho * t[i] + (1 - rho) * t[i - 1]
                poly = lambda s: 0.3 - 2.0 * s + 1.5 * s ** 2  # noqa: E731
                assert float(jnp.dot(w, poly(nodes))) == pytest.approx(float(poly(tau)), abs=1e-12)
            np.testing.assert_allclose(np.asarray(lagrange_weights(t, i, 1.0)), [1.0, 0.0, 0.0], atol=1e-15)


@pytest.mark.parametrize("end", ["zero", "denoise"])
def test_ratio_one_is_plain_unipc(end):
    with jax.enable_x64(True):
        gmm, sch, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
        model = gmm.model(sch)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 2)))
        grid = sx.time_grid(sch, 6, "time_quadratic", end=end, dtype=jnp.float64)
        dc = jax.jit(lambda tab, r: run_dc(model, x, tab, r))  # one compile per solver for the three ratios
        for kw in (dict(order=2, variant="bh2"), dict(order=3, variant="bh1"),
                   dict(order=3, variant="bh2", prediction="noise")):
            solver = sx.get_solver("unipc", **kw)
            ref, _ = sx.sample(solver, model, x, grid)
            tab = solver.table(grid, sch)
            out = dc(tab, jnp.ones(grid.n_steps))
            np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-11)  # float64 round-off: run_table orders its sums differently
            # warm-up ratios are ignored; a real ratio changes the result
            r = jnp.ones(grid.n_steps).at[:2].set(0.2)
            np.testing.assert_allclose(np.asarray(dc(tab, r)), np.asarray(ref), atol=1e-11)
            r = jnp.ones(grid.n_steps).at[3].set(1.3)
            assert float(jnp.max(jnp.abs(dc(tab, r) - ref))) > 1e-4


def test_ratio_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        gmm, sch, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
        model = gmm.model(sch)
        x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 2)))
        grid = sx.time_grid(sch, 6, "time_quadratic", end="zero", dtype=jnp.float64)
        tab = sx.get_solver("unipc", order=3).table(grid, sch)
        f = jax.jit(lambda r: jnp.sum(run_dc(model, x, tab, r) ** 2))
        r0 = jnp.asarray([1.0, 1.0, 1.2, 0.9, 1.1, 1.0])
        g = jax.grad(f)(r0)
        assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g[:2]) == 0)
        for j in range(2, 6):
            e = jnp.zeros(6).at[j].set(1e-6)
            fd = (f(r0 + e) - f(r0 - e)) / 2e-6
            assert float(g[j]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_teacher_trajectory_matches_exact_trajectory():
    with jax.enable_x64(True):
        gmm, sch, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
        x = np.random.default_rng(2).standard_normal((16, 2))
        grid = sx.time_grid(sch, 5, "time_quadratic", end="denoise", dtype=jnp.float64)
        ex = exact_trajectory(gmm, sch, x, grid, n_steps=200)
        te = np.asarray(teacher_trajectory(gmm.model(sch), x, grid, substeps=24))
        # nodes before t_min: the teacher is accurate; the last entry is x0 (teacher: denoising jump from t_min)
        assert np.max(np.linalg.norm(te[:-1] - ex[:-1], axis=-1)) < 2e-3
        assert np.mean(np.linalg.norm(te[-1] - ex[-1], axis=-1)) < 5e-3


@pytest.fixture(scope="module")
def fitted():
    """Ratios fitted on 10 samples at NFE 5..8 (UniPC-3 bh2, time-quadratic grid to sigma = 0),
    the held-out errors of plain UniPC and DC-Solver."""
    gmm, sch, _ = sx.load_problem("gmm2d")
    model = gmm.model(sch)
    x = np.random.default_rng(1).standard_normal((522, 2))
    out = {}
    for nfe in (5, 6, 7, 8):
        grid = sx.time_grid(sch, nfe, "time_quadratic", end="zero")
        tab = sx.get_solver("unipc", order=3, variant="bh2").table(grid, sch)
        ref = exact_trajectory(gmm, sch, x, grid, n_steps=200)
        xtr, rtr = jnp.asarray(x[512:], jnp.float32), jnp.asarray(ref[:, 512:], jnp.float32)
        xva, rva = jnp.asarray(x[:512], jnp.float32), ref[-1, :512]
        r, _ = fit_ratios(model, xtr, rtr, tab, steps=120)
        err = lambda a: float(np.linalg.norm(np.asarray(a) - rva, axis=-1).mean())  # noqa: E731
        out[nfe] = dict(ratios=np.asarray(r), tab=tab, unipc=err(run_table(model, xva, tab)[0]),
                        dc=err(run_dc(model, xva, tab, r)), err=err, xva=xva)
    return model, out


@pytest.mark.parametrize("nfe", [5, 6])
def test_fitted_ratios_lower_held_out_error(fitted, nfe):
    _, out = fitted
    o = out[nfe]
    assert o["dc"] < 0.9 * o["unipc"], (nfe, o["unipc"], o["dc"], o["ratios"])


def test_cpr_predicts_a_left_out_nfe(fitted):
    model, out = fitted
    cpr = cpr_fit({nfe: out[nfe]["ratios"] for nfe in (5, 7, 8)}, deg_nfe=1)
    o = out[6]
    pred = cpr_predict(cpr, 6)
    assert np.all(pred[:2] == 1.0)
    assert np.max(np.abs(pred - o["ratios"])) < 0.25, (pred, o["ratios"])
    dc_pred = o["err"](run_dc(model, o["xva"], o["tab"], jnp.asarray(pred, jnp.float32)))
    assert dc_pred < 0.95 * o["unipc"], (o["unipc"], dc_pred, o["dc"])


def test_cpr_recovers_an_exact_cascade_polynomial():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.3, (3, 3, 3))

    def truth(step, nfe, s):
        x, u, c = step / nfe, nfe / 50, s / 12
        return sum(a[i, j, k] * x ** i * c ** j * u ** k for i in range(3) for j in range(3) for k in range(3))

    data = {(nfe, s): np.array([1.0, 1.0] + [truth(st, nfe, s) for st in range(3, nfe + 1)])
            for nfe in (5, 6, 8, 10, 12) for s in (1.0, 4.0, 7.5, 10.0)}
    cpr = cpr_fit(data)
    want = np.array([1.0, 1.0] + [truth(st, 9, 6.0) for st in range(3, 10)])
    np.testing.assert_allclose(cpr_predict(cpr, 9, scale=6.0), want, atol=1e-6)


def test_bad_ratios_are_refused():
    gmm, sch, _ = sx.load_problem("gmm2d")
    grid = sx.time_grid(sch, 5, "time_quadratic", end="zero")
    tab = sx.get_solver("unipc", order=2).table(grid, sch)
    with pytest.raises(ValueError, match="ratios: must have one entry per step"):
        run_dc(gmm.model(sch), jnp.zeros((2, 2)), tab, jnp.ones(3))
