"""Gradients through the table-driven sampler, and learned time points / coefficients.

* "Differentiable everywhere": for every multistep solver of the registry (every
  order, UniPC with / without corrector, bh1 / bh2, data / noise), the gradient of
  a loss on the samples with respect to the time points (through
  ``grid_from_times`` with traced times and ``samplax.solvers.sample``) is finite
  and matches a central finite difference in float64, on grids ending at
  sigma = 0 and with a final denoising evaluation; likewise with respect to
  coefficient corrections of a schedule's table.
* A learned 5-step schedule on gmm2d lowers the error on held-out start points
  below its logSNR-uniform start; the gradient strategy's bookkeeping.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax.search.gradient import (TimeSpace, apply_deltas, gradient_search, learn_times, logits_from_times,
                                     make_loss, sample_error, times_from_logits, zero_deltas)
from samplax.solvers import SOLVERS, sample
from samplax.solvers.schedule import ScheduleError, constant_schedule, schedule_table
from samplax.solvers.unified import run_table, stack_tables
from samplax.timesteps import grid_from_times

UNIPC = [dict(order=o, corrector=c, variant=v, prediction=p) for o in (1, 2, 3) for c in (True, False)
         for v in ("bh1", "bh2") for p in ("data", "noise")]
CONFIGS = ([("ddim", {})]
           + [("dpm_solver_multistep", dict(order=o, solver_type=s)) for o in (2, 3) for s in ("dpmsolver", "taylor")]
           + [("dpm_solver_pp", dict(order=o, solver_type=s)) for o in (2, 3) for s in ("dpmsolver", "taylor")]
           + [("unipc", kw) for kw in UNIPC]
           + [("deis", dict(order=o)) for o in (1, 2, 3, 4)]
           + [("ipndm", dict(order=o)) for o in (2, 3, 4)]
           + [("ipndm_v", dict(order=o)) for o in (2, 3, 4)])


def test_every_multistep_solver_is_covered():
    # "schedule" runs a schedule file (tests/test_schedule_configs.py); every other table solver is here
    with_table = {name for name, f in SOLVERS.items() if name != "schedule" and getattr(f(), "table", None) is not None}
    assert with_table == {name for name, _ in CONFIGS}


@pytest.fixture(scope="module")
def problem64():
    with jax.enable_x64(True):
        gmm, sch, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2)))
        yield gmm.model(sch), sch, x


def _times(sch, n_nodes):
    # A generic (not uniform) decreasing grid from t_max to t_min.
    lam = np.asarray(sch.lambda_(jnp.asarray([sch.t_max, sch.t_min], jnp.float64)))
    u = np.linspace(0, 1, n_nodes) ** 1.3
    t = np.array(sch.t_from_lambda(jnp.asarray(lam[0] + (lam[1] - lam[0]) * u)))
    t[0], t[-1] = float(sch.t_max), float(sch.t_min)
    return t


@pytest.mark.parametrize("end", ["zero", "denoise"])
def test_time_gradients_match_finite_differences_for_every_solver(problem64, end):
    # the two ends (the same steps but the last) split the configurations between them: each
    # configuration is checked once, each end still covers every solver
    configs = CONFIGS[::2] if end == "zero" else [CONFIGS[0]] + CONFIGS[1::2]
    assert {n for n, _ in configs} == {n for n, _ in CONFIGS}
    _check_time_gradients(problem64, end, configs)


def _check_time_gradients(problem64, end, configs):
    """All configurations in one compiled program: each solver's table (what
    ``sample`` runs) is built from the traced times, the tables are stacked and run
    as one vmap; the Jacobian of the per-configuration losses in the interior time
    points is compared with central differences along a random direction."""
    model, sch, x = problem64
    target = jnp.asarray([[0.3, -0.2]], jnp.float64)
    with jax.enable_x64(True):
        n_steps = 6
        t = jnp.asarray(_times(sch, n_steps if end == "zero" else n_steps + 1))
        inner = t[1:-1]
        v = jnp.asarray(np.random.default_rng(1).standard_normal(inner.shape))
        solvers = [SOLVERS[name](**kw) for name, kw in configs]

        def grid_of(tin):
            return grid_from_times(sch, jnp.concatenate([t[:1], tin, t[-1:]]), end=end, dtype=jnp.float64)

        def losses(tin):
            g = grid_of(tin)
            tabs = stack_tables([s.table(g, sch) for s in solvers])
            x0 = jax.vmap(lambda tab: run_table(model, x, tab, diagnostics=False)[0])(tabs)
            return jnp.sum((x0 - target) ** 2, axis=(1, 2))

        f = jax.jit(losses)
        # one reverse pass for all configurations: the gradient of sum_i w_i L_i with random
        # positive weights (a NaN or a wrong term in any configuration shows in it)
        w = jnp.asarray(np.random.default_rng(2).uniform(0.5, 1.5, len(configs)))
        grad = np.asarray(jax.jit(jax.grad(lambda tin: jnp.dot(w, losses(tin))))(inner))
        assert np.all(np.isfinite(grad)), grad
        eps = 1e-6
        fd_each = np.asarray((f(inner + eps * v) - f(inner - eps * v)) / (2 * eps))
        fd = float(np.dot(np.asarray(w), fd_each))
        an = float(grad @ np.asarray(v))
        assert abs(an - fd) <= 1e-6 * max(1.0, abs(fd)), (an, fd)
        # the stacked program is what sample() computes, configuration by configuration
        g = grid_of(inner)
        for i in (0, len(configs) // 2, len(configs) - 1):
            x0, _ = sample(solvers[i], model, x, g)
            assert float(jnp.sum((x0 - target) ** 2)) == pytest.approx(float(f(inner)[i]), rel=1e-12)


@pytest.mark.parametrize("end", ["zero", "denoise"])
def test_coefficient_and_logit_gradients_match_finite_differences(problem64, end):
    model, sch, x = problem64
    ref = jnp.zeros_like(x)
    with jax.enable_x64(True):
        t = jnp.asarray(_times(sch, 5 if end == "zero" else 6))
        tmpl = constant_schedule(t, order=3, derivative="unipc_bh2", corrector=True, end=end)
        space = TimeSpace(sch, tmpl)
        loss_fn = make_loss(model, x, ref)

        def loss(params):
            tab = schedule_table(space.decode(dict(logits=params["logits"])), sch)
            return loss_fn(apply_deltas(tab, params["d"]))

        tab0 = schedule_table(tmpl, sch)
        rng = np.random.default_rng(2)
        p0 = dict(logits=logits_from_times(sch, t), d=zero_deltas(tab0))
        v = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), p0)
        g = jax.jit(jax.grad(loss))(p0)
        assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(g))
        eps = 1e-6
        f = jax.jit(loss)
        plus = jax.tree.map(lambda a, b: a + eps * b, p0, v)
        minus = jax.tree.map(lambda a, b: a - eps * b, p0, v)
        fd = (f(plus) - f(minus)) / (2 * eps)
        an = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v)))
        assert abs(float(an - fd)) <= 1e-6 * max(1.0, abs(float(fd)))
        # the gradient in the corrector / predictor coefficients is not trivially zero
        assert float(jnp.max(jnp.abs(g["d"]["c"]))) > 1e-3 and float(jnp.max(jnp.abs(g["d"]["cc"]))) > 1e-3


def test_logits_round_trip_and_monotone():
    with jax.enable_x64(True):
        _, sch, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
        t = jnp.asarray(_times(sch, 7))
        back = times_from_logits(sch, logits_from_times(sch, t))
        np.testing.assert_allclose(np.asarray(back), np.asarray(t), rtol=1e-10)
        rnd = times_from_logits(sch, jnp.asarray(np.random.default_rng(3).normal(0, 3, 6)))
        assert float(rnd[0]) == float(sch.t_max) and float(rnd[-1]) == float(sch.t_min)
        assert np.all(np.diff(np.asarray(rnd)) < 0)


def test_learned_schedule_beats_its_logsnr_start_on_held_out_points():
    gmm, sch, _ = sx.load_problem("gmm2d")
    model = gmm.model(sch)
    x = np.random.default_rng(5).standard_normal((640, 2))
    with jax.enable_x64(True):
        g64, s64, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
        ref = np.asarray(g64.ode_solution(jnp.asarray(x), 1.0, None, s64, n_steps=200))
    xtr, rtr = jnp.asarray(x[:128], jnp.float32), jnp.asarray(ref[:128], jnp.float32)
    xva, rva = jnp.asarray(x[128:], jnp.float32), jnp.asarray(ref[128:], jnp.float32)
    tmpl = constant_schedule(sx.time_grid(sch, 5, "logsnr", end="zero").t[:-1], order=3, end="zero")
    start = float(sample_error(model, xva, rva, schedule_table(tmpl, sch)))
    sched, deltas, hist = learn_times(model, sch, tmpl, xtr, rtr, steps=80, learning_rate=5e-2,
                                      x_val=xva, ref_val=rva)
    assert deltas is None
    learned = float(sample_error(model, xva, rva, schedule_table(sched, sch)))
    assert learned == pytest.approx(hist["val"][-1][1], rel=1e-5)
    assert learned < 0.6 * start, (start, learned)
    t = np.asarray(sched.times)
    assert t[0] == pytest.approx(float(sch.t_max)) and t[-1] == pytest.approx(float(sch.t_min))
    assert np.all(np.diff(t) < 0)


def test_gradient_strategy_bookkeeping():
    gmm, sch, _ = sx.load_problem("gmm2d")
    model = gmm.model(sch)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((32, 2)), jnp.float32)
    ref = jnp.zeros_like(x)
    tmpl = constant_schedule(sx.time_grid(sch, 4, "logsnr", end="zero").t[:-1], order=2, end="zero")
    strat = gradient_search(TimeSpace(sch, tmpl), make_loss(model, x, ref), learning_rate=0.05,
                            learn_coefficients=True)
    state = strat.init(jax.random.PRNGKey(0))
    assert all(isinstance(a, jax.Array) for a in jax.tree.leaves(state))
    step = jax.jit(strat.step)
    scores = []
    for i in range(5):
        state, rec = step(state, jax.random.fold_in(jax.random.PRNGKey(0), i))
        scores.append(float(rec["score"][0]))
        assert rec["genotypes"]["logits"].shape == (1, 3)
    g, best = strat.best(state)
    assert int(strat.evaluations(state)) == 5
    assert float(best) == pytest.approx(min(scores))
    assert scores[-1] < scores[0]


def test_bad_template_is_refused():
    gmm, sch, _ = sx.load_problem("gmm2d")
    model = gmm.model(sch)
    x = jnp.zeros((4, 2))
    tmpl = constant_schedule(jnp.asarray([0.9, 0.5, 0.1, 0.001]), order=2, end="zero")
    with pytest.raises(ScheduleError, match=r"template\.times: must run from t_max"):
        learn_times(model, sch, tmpl, x, x, steps=2)
    with pytest.raises(ValueError, match="learning_rate"):
        learn_times(model, sch, constant_schedule(jnp.asarray([1.0, 0.1, 0.001]), order=2), x, x, steps=2,
                    learning_rate=-1.0)
