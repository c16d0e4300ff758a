"""Exact augmented Lagrangian + randomized sketching (samplax.optim.eal) and learned
multistep coefficients under order conditions (samplax.search.constrained), against
exact answers: closed-form KKT points, the exact linear solve, the claimed orders."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.optim.eal import eal_sketch_solve, penalty_method, sketch_solve
from samplax.search import constrained as C


def _circle():
    # min x + y s.t. x^2 + y^2 = 2: KKT point (-1, -1), lambda = 1/2
    return (lambda x: x[0] + x[1]), (lambda x: jnp.array([x[0] ** 2 + x[1] ** 2 - 2.0]))


def test_sketch_solver_converges_to_the_exact_solve():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        n, m = 6, 3
        H = rng.standard_normal((n, n))
        H = H @ H.T + np.eye(n)
        G = rng.standard_normal((m, n))
        K = jnp.asarray(np.block([[H, G.T], [G, np.zeros((m, m))]]))  # symmetric indefinite (KKT)
        b = jnp.asarray(rng.standard_normal(n + m))
        exact = np.linalg.solve(np.asarray(K), np.asarray(b))
        for sketch, block in (("kaczmarz", 1), ("kaczmarz", 4), ("gaussian", 3)):
            r = sketch_solve(K, b, jax.random.PRNGKey(1), tol=1e-11, max_iter=200_000, block=block, sketch=sketch)
            assert float(r.residual) <= 1e-11 and int(r.iterations) > 1, (sketch, block)
            np.testing.assert_allclose(np.asarray(r.z), exact, atol=1e-8, err_msg=f"{sketch} {block}")


def test_quadratic_with_linear_constraints_closed_form():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        n, m = 5, 2
        Q = rng.standard_normal((n, n))
        Q = Q @ Q.T + 0.5 * np.eye(n)
        q, A, b = rng.standard_normal(n), rng.standard_normal((m, n)), rng.standard_normal(m)
        sol = np.linalg.solve(np.block([[Q, A.T], [A, np.zeros((m, m))]]), np.concatenate([-q, b]))
        f = lambda x: 0.5 * x @ jnp.asarray(Q) @ x + jnp.asarray(q) @ x  # noqa: E731
        c = lambda x: jnp.asarray(A) @ x - jnp.asarray(b)  # noqa: E731
        r = eal_sketch_solve(f, c, jnp.zeros(n), sketch="kaczmarz", tol=1e-10, max_iter=30)
        assert r.converged
        np.testing.assert_allclose(np.asarray(r.x), sol[:n], atol=1e-9)
        np.testing.assert_allclose(np.asarray(r.lam), sol[n:], atol=1e-9)
        assert float(np.max(np.abs(A @ np.asarray(r.x) - b))) <= 1e-10


def test_local_rates_on_the_circle_problem():
    """Exact solves: quadratic (e_{k+1} <= C e_k^2); sharpened sketch accuracy: superlinear;
    fixed accuracy theta: linear with rate about theta (the paper's local claims, abstract)."""
    with jax.enable_x64(True):
        f, c = _circle()
        x0 = jnp.array([-1.5, -0.3])
        ex = eal_sketch_solve(f, c, x0, sketch="exact", tol=1e-13)
        assert ex.converged
        np.testing.assert_allclose(np.asarray(ex.x), [-1.0, -1.0], atol=1e-12)
        np.testing.assert_allclose(np.asarray(ex.lam), [0.5], atol=1e-12)
        e = np.array(ex.history["kkt"])
        loc = [k for k in range(len(e) - 1) if e[k] < 0.1 and e[k + 1] > 1e-15]
        assert loc and all(e[k + 1] <= 5.0 * e[k] ** 2 for k in loc), e
        assert ex.history["step"][-3:] == [1.0, 1.0, 1.0]  # unit steps near the solution

        sharp = eal_sketch_solve(f, c, x0, sketch="kaczmarz", block=1, theta=0.5, accuracy_power=1.0, tol=1e-13)
        assert sharp.converged and abs(float(sharp.lam[0]) - 0.5) < 1e-10
        e = np.array(sharp.history["kkt"])
        ratios = e[1:] / e[:-1]
        assert ratios[-1] < 1e-2 and ratios[-2] < 0.1, ratios  # superlinear: ratios -> 0

        theta = 0.3
        lin = eal_sketch_solve(f, c, x0, sketch="kaczmarz", block=1, theta=theta, accuracy_power=0.0,
                               tol=1e-10, max_iter=200)
        assert lin.converged and lin.history["feas"][-1] < 1e-10
        e = np.array(lin.history["kkt"])
        loc = [k for k in range(len(e) - 1) if e[k] < 1e-3]
        assert len(loc) >= 3
        ratios = e[np.array(loc) + 1] / e[np.array(loc)]
        assert np.all(ratios <= theta + 0.05), ratios                   # linear at rate <= ~theta
        assert np.median(ratios) > 1e-3, ratios                          # ... and not superlinear


def test_penalty_baseline_multiplier_estimate():
    with jax.enable_x64(True):
        f, c = _circle()
        r = penalty_method(f, c, jnp.array([-1.5, -0.3]), mu0=1.0, growth=10.0, outer=6)
        feas = np.array(r.history["feas"])
        # c(x_mu) = O(1/mu): the residual falls ~10x per round, lambda = mu c -> 1/2
        assert np.all(feas[1:] < 0.2 * feas[:-1]) and feas[-1] < 1e-5
        assert abs(float(r.lam[0]) - 0.5) < 1e-4
        np.testing.assert_allclose(np.asarray(r.x), [-1.0, -1.0], atol=1e-5)


def _gaussian_multistep(grid, c, mask, mean, std, x):
    """The table's recursion x_{i+1} = a_i x_i + sum_j c_ij m_{i-j} in numpy for Gaussian data
    (x0_hat(x, t) = mean + std^2 / (std^2 + s^2) (x / alpha - mean), s = sigma / alpha)."""
    al, sg = np.asarray(grid.alpha), np.asarray(grid.sigma)
    n, K = mask.shape
    cm = np.zeros((n, K))
    cm[mask] = c
    hist = []
    for i in range(n):
        s = sg[i] / al[i]
        hist.insert(0, mean + std ** 2 / (std ** 2 + s ** 2) * (x / al[i] - mean))
        x = sg[i + 1] / sg[i] * x + sum(cm[i, j] * hist[j] for j in range(min(i + 1, K)))
    return x


def test_order_conditions_give_the_claimed_order_on_a_gaussian():
    """Linear test ODE (Gaussian data: the denoiser is linear, the PF-ODE solution closed
    form): the exponential Adams coefficients of order p, and the same plus a
    null-space perturbation (any coefficients meeting the conditions), converge at order p.
    The table runs through run_table once (equal to the numpy recursion used for the rates)."""
    from samplax.models.analytic import Gaussian
    from samplax.schedules import VPLinear
    from samplax.solvers.unified import run_table
    from samplax.timesteps import time_grid

    with jax.enable_x64(True):
        # the moments against a dense quadrature
        for h in (0.3, 2.0):
            u = np.linspace(0, h, 200_001)
            for k, v in enumerate(C.exp_moments(h, 4)):
                np.testing.assert_allclose(v, np.trapezoid(np.exp(u - h) * u ** k, u) / h ** k, rtol=1e-8)
        sch = VPLinear()
        mean, std = np.array([1.0, -2.0]), np.array([0.5, 0.3])
        g = Gaussian(mean=jnp.asarray(mean), std=jnp.asarray(std))
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (32, 2), jnp.float64))
        t_min = 0.05
        exact = np.asarray(g.ode_solution(jnp.asarray(x), 1.0, t_min, sch))
        grid = time_grid(sch, 12, "logsnr", end="t_min", t_min=t_min)
        mask, _, _, _ = C.order_conditions(grid, 3, 2)
        c = C.adams_coefficients(grid, 3, 2)
        x0, _ = run_table(g.model(sch), jnp.asarray(x), C.coefficient_table(grid, c, mask))
        np.testing.assert_allclose(np.asarray(x0), _gaussian_multistep(grid, c, mask, mean, std, x), atol=1e-12)
        rng = np.random.default_rng(0)
        grids = {n: time_grid(sch, n, "logsnr", end="t_min", t_min=t_min) for n in (64, 128, 256)}
        for p in (1, 2, 3):
            errs, errs_pert = [], []
            for n, grid in grids.items():
                mask, A, b, _ = C.order_conditions(grid, p + 1, p)
                c0 = C.adams_coefficients(grid, p + 1, p)
                assert np.max(np.abs(A @ c0 - b)) < 1e-12
                # a perturbation projected onto the null space of A, 5% of the coefficients' scale
                xi = rng.standard_normal(A.shape[1]) * 0.05 * np.max(np.abs(c0))
                c1 = c0 + xi - A.T @ np.linalg.solve(A @ A.T, A @ xi)
                assert np.max(np.abs(A @ c1 - b)) < 1e-12
                for cc, out in ((c0, errs), (c1, errs_pert)):
                    out.append(float(np.max(np.abs(_gaussian_multistep(grid, cc, mask, mean, std, x) - exact))))
            for out in (errs, errs_pert):
                slope = np.log2(out[-2] / out[-1])
                assert p - 0.3 < slope < p + 0.6, (p, out)


def test_learned_coefficients_keep_the_order_conditions():
    """gmm2d (exact model and PF-ODE reference), NFE 3: the EAL-learned coefficients meet
    the conditions to 1e-8 and fit the training points better than the start."""
    from samplax.models.analytic import load_problem
    from samplax.search.evaluate import gmm_reference
    from samplax.timesteps import time_grid

    with jax.enable_x64(True):
        gmm, sch, _ = load_problem("gmm2d", dtype=jnp.float64)
        model = gmm.model(sch)
        grid = time_grid(sch, 4, "time_quadratic", end="zero", dtype=jnp.float64)
        x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (16, 2), jnp.float64))
        ref, _ = gmm_reference("gmm2d", x, n_steps=200)
        coef, info = C.learn_coefficients(model, grid, x, ref, history=3, order=2, method="eal", afs=True,
                                          eal_options=dict(tol=1e-8, max_iter=25, hessian_shift="auto"))
        assert info["constraint_residual"] <= 1e-8
        A, b = info["A"], info["b"]
        assert np.max(np.abs(A @ coef - b)) <= 1e-8
        e0 = C.sample_errors(model, grid, C.adams_coefficients(grid, 3, 2), info["mask"], x, ref, afs=True)
        e1 = C.sample_errors(model, grid, coef, info["mask"], x, ref, afs=True)
        assert e1["mean_l2"] < e0["mean_l2"]


def test_bad_arguments_raise_clear_errors():
    from samplax.experiment.config import ConfigError

    f, c = _circle()
    K = jnp.eye(3)
    with pytest.raises(ValueError, match="sketch"):
        sketch_solve(K, jnp.ones(3), jax.random.PRNGKey(0), sketch="qr")
    with pytest.raises(ValueError, match="block"):
        sketch_solve(K, jnp.ones(3), jax.random.PRNGKey(0), block=4)
    with pytest.raises(ValueError, match="b:"):
        sketch_solve(K, jnp.ones(2), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="theta"):
        eal_sketch_solve(f, c, jnp.zeros(2), theta=1.5)
    with pytest.raises(ValueError, match="rho"):
        eal_sketch_solve(f, c, jnp.zeros(2), rho=1.0)
    with pytest.raises(ValueError, match="x0"):
        eal_sketch_solve(f, c, jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="lam0"):
        eal_sketch_solve(f, c, jnp.zeros(2), lam0=jnp.zeros(2))
    with pytest.raises(ValueError, match="hessian_shift"):
        eal_sketch_solve(f, c, jnp.zeros(2), hessian_shift="big")
    with pytest.raises(ValueError, match="growth"):
        penalty_method(f, c, jnp.zeros(2), growth=0.5)
    with pytest.raises(ValueError, match="order"):
        C.order_conditions(None, 2, 3)
    with pytest.raises(ValueError, match="h:"):
        C.exp_moments(0.0, 2)
    cfg = C.constrained_config()
    cfg.order = 4
    with pytest.raises(ConfigError, match="config.order"):
        C.validate_constrained(cfg)
    cfg = C.constrained_config()
    cfg.eal.sketch = "svd"
    with pytest.raises(ConfigError, match="config.eal.sketch"):
        C.validate_constrained(cfg)
    import importlib

    assert C.validate_constrained(importlib.import_module("configs.search_constrained").get_config())["nfe"] == 5
