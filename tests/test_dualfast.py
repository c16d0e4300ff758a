"""DualFast (samplax.solvers.dualfast): reduction to the base solver, the mixing identity of its
approximation-error reduction, its effect on an injected error of the form the paper assumes
(and on one that violates it), convergence orders, NFE, batching, bad options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax.models.analytic import Gaussian
from samplax.models.base import DiffusionModel
from samplax.schedules import VPLinear
from samplax.solvers.dualfast import dualfast, dualfast_over, mix_outputs, mixing_weights
from samplax.solvers.multistep import ddim, dpm_solver_pp


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _run(solver, model, x, grid, stepwise=False):
    """sample() under one jit (eagerly, the table and the scan setup dispatch op by op: slow)."""
    return jax.jit(lambda x_: sx.sample(solver, model, x_, grid, stepwise=stepwise)[0])(x)


def _gaussian():
    sch = VPLinear()
    g = Gaussian(mean=jnp.array([0.5, -1.0]), std=jnp.array([0.3, 0.8]))
    return g, sch


def _with_error(g, sch, delta):
    """The exact Gaussian model's noise prediction plus delta(t) u: an approximation error
    that depends on the noise level only (x-independent, so the sampler stays affine in x)."""
    exact = g.model(sch)
    u = jnp.array([1.0, 0.5])

    def apply(params, x, t):
        return exact.noise(x, t) + delta(t) * u
    return DiffusionModel(apply=apply, params=None, schedule=sch, prediction="noise")


@pytest.mark.parametrize("base,order,end", [("ddim", 1, "zero"), ("dpm_solver_pp", 3, "denoise"),
                                            ("unipc", 2, "zero")])
def test_mixing_zero_is_the_base_solver(x64, base, order, end):
    gmm, sch, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
    model = gmm.model(sch)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 2)))
    grid = sx.time_grid(sch, 6, "logsnr", end=end, dtype=jnp.float64)
    opts = {} if base == "ddim" else {"order": order}
    ref = _run(sx.get_solver(base, **opts), model, x, grid)
    solver = sx.get_solver("dualfast", base=base, order=order, mixing=0.0)
    assert solver.nfe(6, end) == sx.get_solver(base, **opts).nfe(6, end)
    out, info = jax.jit(lambda x_: sx.sample(solver, model, x_, grid))(x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-12)
    assert int(info.first_nonfinite_step) == -1
    if base == "ddim":  # with the analytic first step too (one model call fewer)
        solver_afs = sx.get_solver("dualfast", base=base, order=order, mixing=0.0, afs=True)
        assert solver_afs.nfe(6, end) == 5
        np.testing.assert_allclose(np.asarray(_run(solver_afs, model, x, grid)),
                                   np.asarray(_run(sx.get_solver(base, afs=True), model, x, grid)), rtol=0, atol=1e-12)
    if base == "unipc":  # the stepwise base (its own init / step, corrector included) too
        ref_step = _run(sx.get_solver(base, **opts), model, x, grid, stepwise=True)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref_step), rtol=0, atol=1e-12)
        # a non-zero mixing changes the result (the test above is not vacuous)
        out1 = _run(sx.get_solver("dualfast", base=base, order=order, mixing=0.3), model, x, grid)
        assert float(jnp.max(jnp.abs(out1 - ref))) > 1e-3


@pytest.mark.parametrize("mix_view", ["noise", "data"])
def test_mixed_output_carries_the_mixed_approximation_error(x64, mix_view):
    """The substitution m~_j = m_j - c (m_j - m_tau) turns the approximation errors e_j, e_tau
    of the two outputs into (1 - c) e_j + c e_tau in the mix view, whatever the base view; and
    the data-view output is the exact conversion (x - sigma eps~) / alpha of the mixed noise."""
    g, sch = _gaussian()
    rng = np.random.default_rng(1)
    x_j, x_tau = jnp.asarray(rng.standard_normal((5, 2))), jnp.asarray(rng.standard_normal((5, 2)))
    t_j, t_tau, c = 0.3, 1.0, 0.37
    err = lambda t: 0.2 * (1 - t) ** 2  # noqa: E731
    exact, noisy = g.model(sch), _with_error(g, sch, err)
    a, s = sch.alpha(t_j), sch.sigma(t_j)
    for model, which in ((exact, "exact"), (noisy, "noisy")):
        x0_j, eps_j = model.data_noise(x_j, t_j)
        x0_t, eps_t = model.data_noise(x_tau, t_tau)
        ref = eps_t if mix_view == "noise" else x0_t
        out = {bv: mix_outputs(x0_j, eps_j, ref, c, a, s, mix_view, bv)[0] for bv in ("data", "noise")}
        if which == "exact":
            exact_out = out
    # the injected eps-error delta(t) u is -(sigma / alpha) delta(t) u in the data view
    view_err = {"noise": lambda t: err(t), "data": lambda t: -sch.sigma(t) / sch.alpha(t) * err(t)}[mix_view]
    want = ((1 - c) * view_err(t_j) + c * view_err(t_tau)) * jnp.array([1.0, 0.5])
    got = out[mix_view] - exact_out[mix_view]
    np.testing.assert_allclose(np.asarray(got), np.broadcast_to(np.asarray(want), got.shape), atol=1e-12)
    np.testing.assert_allclose(np.asarray(out["data"]), np.asarray((x_j - s * out["noise"]) / a), atol=1e-12)


def _propagated_error(model, exact, base, reference, n, cs, x):
    """|x_0(model) - x_0(exact model)| of one sample for each mixing coefficient in cs
    (one program, vmapped over c)."""
    sch = exact.schedule
    grid = sx.time_grid(sch, n, "logsnr", end="zero", dtype=jnp.float64)

    def one(c):
        solver = dualfast_over(base, c, reference)
        return jnp.linalg.norm(sx.sample(solver, model, x, grid)[0] - sx.sample(solver, exact, x, grid)[0], axis=-1)
    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(cs)))


def test_error_decreasing_with_noise_level_is_reduced_and_a_constant_one_is_not(x64):
    """The paper's premise: the network's error shrinks as the step (noise level) grows, so mixing
    with the output at t_0 = T replaces part of the error by a smaller one.  With an injected
    eps-error 0.2 (1 - t)^2 u (largest near the data) the error that reaches x_0 falls strictly
    with c in (0, 1]; with a constant error (the premise violated) mixing does not reduce it but
    amplifies it, so the first assertion is a property of the error model, not of the sampler
    alone.  Measured values (DDIM, 5 steps): ratios 0.97, 0.89, 0.61 and 2.5, 4.7, 11.4."""
    g, sch = _gaussian()
    exact = g.model(sch)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2)))
    cs = [0.0, 0.25, 0.5, 1.0]
    dec = _propagated_error(_with_error(g, sch, lambda t: 0.2 * (1 - t) ** 2), exact, ddim(), "first", 5, cs, x)
    const = _propagated_error(_with_error(g, sch, lambda t: 0.2 + 0 * t), exact, ddim(), "first", 5, cs, x)
    r_dec, r_const = dec / dec[0], const / const[0]
    assert np.all(np.diff(r_dec, axis=0) < 0), r_dec  # strictly falling with c, every sample
    assert np.all(r_dec[-1] < 0.75)
    assert np.all(r_const[1:] > 1.5), r_const


def test_convergence_orders(x64):
    """Fixed c: with tau = t_{j-1} the substitution changes each output by O(c h), so DDIM keeps
    order 1 but a second-order base falls to (about) first order; with tau = t_0 it changes the
    ODE itself by O(c) and the solve does not converge to the exact solution at all."""
    g, sch = _gaussian()
    model = g.model(sch)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 2)))

    def errs(base, reference, n, cs):  # max error for each c (one program, vmapped over c)
        grid = sx.time_grid(sch, n, "logsnr", end="t_min", dtype=jnp.float64)
        ref = g.ode_solution(x, sch.t_max, grid.t[-1], sch)
        def run(c):
            return jnp.max(jnp.abs(sx.sample(dualfast_over(base, c, reference), model, x, grid)[0] - ref))
        return np.asarray(jax.jit(jax.vmap(run))(jnp.asarray(cs)))

    ddim_prev = np.log2(errs(ddim(), "previous", 32, [0.3]) / errs(ddim(), "previous", 64, [0.3]))
    assert 0.85 < ddim_prev[0] < 1.15
    dpm = np.log2(errs(dpm_solver_pp(order=2), "previous", 32, [0.0, 0.3]) /
                  errs(dpm_solver_pp(order=2), "previous", 64, [0.0, 0.3]))
    assert 1.85 < dpm[0] < 2.15 and dpm[1] < 1.3  # c = 0: the base's order 2; c = 0.3: about 1
    e32, e64 = errs(ddim(), "first", 32, [0.3])[0], errs(ddim(), "first", 64, [0.3])[0]
    assert e64 > 0.6 * e32 and e64 > 0.05  # no convergence: an O(c) bias


def test_nfe_is_exact_and_batching_under_jit_and_vmap(x64):
    g, sch = _gaussian()
    calls = []
    exact = g.model(sch)

    def apply(params, x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact.noise(x, t)
    model = DiffusionModel(apply=apply, params=None, schedule=sch, prediction="noise")
    x = jnp.asarray(np.random.default_rng(2).standard_normal((6, 2)))
    for end, n_expected in (("zero", 5), ("denoise", 6)):
        calls.clear()
        grid = sx.time_grid(sch, 5, "logsnr", end=end, dtype=jnp.float64)
        solver = dualfast("unipc", 3, mixing=0.4)
        out = jax.jit(lambda x_: sx.sample(solver, model, x_, grid)[0])(x)
        jax.effects_barrier()
        assert len(calls) == n_expected == solver.nfe(5, end)
    # a vmap over a leading axis gives the same samples as the flat batch
    xb = x.reshape(2, 3, 2)
    outb = jax.jit(jax.vmap(lambda x_: sx.sample(solver, exact, x_, grid)[0]))(xb)
    np.testing.assert_allclose(np.asarray(outb).reshape(6, 2), np.asarray(_run(solver, exact, x, grid)),
                               atol=1e-12)


def test_mixing_weights():
    np.testing.assert_allclose(np.asarray(mixing_weights(5, 0.5, "linear")), [0.5, 0.375, 0.25, 0.125, 0.0])
    np.testing.assert_allclose(np.asarray(mixing_weights(3, 0.2, "constant")), [0.2, 0.2, 0.2])


@pytest.mark.parametrize("kw,word", [
    (dict(base="heun"), "base"), (dict(base="ddim"), "order"), (dict(order=4), "order"),
    (dict(order=True), "order"), (dict(mixing=1.5), "mixing"), (dict(mixing=float("nan")), "mixing"),
    (dict(mixing="0.5"), "mixing"), (dict(reference="last"), "reference"), (dict(decay="cosine"), "decay"),
    (dict(mix_view="score"), "mix_view"), (dict(c=0.5), "unknown option")])
def test_bad_options(kw, word):
    with pytest.raises(ValueError, match=word):
        sx.get_solver("dualfast", **kw)


def test_previous_reference_table_equals_the_stepwise_solve(x64):
    """tau = t_{j-1} in the base's view is a linear multistep table (one slot deeper): the
    table program and the stepwise init / step give the same samples."""
    gmm, sch, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
    model = gmm.model(sch)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((16, 2)))
    grid = sx.time_grid(sch, 7, "time_uniform", end="zero", dtype=jnp.float64)
    for base, order in (("dpm_solver_pp", 3), ("unipc", 2)):
        solver = dualfast(base, order, mixing=0.4, reference="previous", mix_view="data", decay="constant")
        assert solver.table is not None and dualfast(base, order).table is None
        a, b = _run(solver, model, x, grid), _run(solver, model, x, grid, stepwise=True)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)
