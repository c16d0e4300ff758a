"""The table-driven program (samplax.solvers.unified) against the dedicated engine.

Every multistep solver's ``sample`` now runs ``run_table`` on its step table; its
own ``init`` / ``step`` (``sample(..., stepwise=True)``) is the reference.  Both
are compared in float64 on both GMMs, every grid spacing and every end; a batch
of different solvers' tables is one vmapped program; per-step schedules
(SolverSchedule) reproduce the classic solvers; bad schedules are refused."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.models import load_problem, problem_start_points
from samplax.solvers import get_solver, sample
from samplax.solvers.schedule import (ScheduleError, SolverSchedule, check_schedule, check_table, constant_schedule,
                                      load_schedule, save_schedule, schedule_table)
from samplax.solvers.unified import run_table, stack_tables
from samplax.timesteps import time_grid

# (solver, options): every multistep solver and the options that change its coefficients
MULTISTEP = [
    ("ddim", {}), ("ddim", {"afs": True}),
    ("dpm_solver_multistep", {"order": 2}), ("dpm_solver_multistep", {"order": 3}),
    ("dpm_solver_multistep", {"order": 3, "solver_type": "taylor", "third_order": "official"}),
    ("dpm_solver_pp", {"order": 2}), ("dpm_solver_pp", {"order": 3}),
    ("dpm_solver_pp", {"order": 2, "solver_type": "taylor", "afs": True}),
    ("dpm_solver_pp", {"order": 3, "lower_order_final": False, "max_step_ratio": None, "max_step": None}),
    ("unipc", {"order": 2}), ("unipc", {"order": 3}),
    ("unipc", {"order": 3, "variant": "bh1"}), ("unipc", {"order": 2, "prediction": "noise"}),
    ("unipc", {"order": 3, "corrector": False}), ("unipc", {"order": 2, "official_rhos": False, "afs": True}),
    ("deis", {"order": 3}), ("deis", {"order": 4}),
    ("ipndm", {"order": 4}), ("ipndm", {"order": 2, "lower_order_final": True}),
    ("ipndm_v", {"order": 3}), ("ipndm_v", {"order": 4, "coefficients": "diff_sampler"}),
]
SPACINGS = ("time_uniform", "time_quadratic", "logsnr", "karras")
ENDS = ("zero", "denoise", "t_min")
RTOL = 1e-11  # float64 round-off, amplified by the noise-prediction steps near t_min (as test_solver_identities)


@functools.lru_cache(maxsize=None)
def _problem(name):
    with jax.enable_x64(True):
        gmm, schedule, info = load_problem(name, dtype=jnp.float64)
        x = jnp.asarray(problem_start_points(info, 16))
    return gmm.model(schedule), schedule, x


@pytest.fixture(scope="module")
def gmm2d():
    return _problem("gmm2d")


def _stacked(schedule, n, end):
    grids = [time_grid(schedule, n, sp, end, dtype=jnp.float64) for sp in SPACINGS]
    return jax.tree.map(lambda *a: jnp.stack(a), *grids)


# gmm64d shares gmm2d's noise schedule (the same tables): one end suffices for the 64-d model.
# Each end and gmm64d run every other configuration (alternating halves; each solver and AFS are
# still among them), so every configuration is checked on two of the four (problem, end) pairs.
@pytest.mark.parametrize("name,end", [("gmm2d", e) for e in ENDS] + [("gmm64d", "zero")])
def test_tables_reproduce_every_multistep_solver(name, end):
    """run_table(solver.table(grid)) == the solver's own step loop, to float64 round-off, for
    every multistep solver, every spacing (vmapped) and every end; the tables of all
    solvers also run as ONE vmapped program with the same results."""
    model, schedule, x = _problem(name)
    configs = {("gmm2d", "zero"): MULTISTEP[1::2], ("gmm2d", "t_min"): MULTISTEP[1::2]}.get((name, end),
                                                                                           MULTISTEP[::2])
    assert {n for n, _ in configs} == {n for n, _ in MULTISTEP} and any(o.get("afs") for _, o in configs)
    with jax.enable_x64(True):
        n = 6
        grids = _stacked(schedule, n, end)
        tables, refs = [], []
        for solver_name, opts in configs:
            solver = get_solver(solver_name, **opts)
            ref = jax.jit(jax.vmap(lambda g: sample(solver, model, x, g, stepwise=True)[0]))(grids)
            tab = jax.vmap(lambda g: solver.table(g, schedule))(grids)
            out = jax.jit(jax.vmap(lambda t: run_table(model, x, t)[0]))(tab)
            scale = float(jnp.max(jnp.abs(ref)))
            err = float(jnp.max(jnp.abs(out - ref))) / scale
            assert err < RTOL, (solver_name, opts, end, err)
            if not opts.get("afs"):
                tables.append(tab)
                refs.append(ref)
        # one program for all (non-AFS) solvers x spacings: widen + stack, vmap over solvers and spacings
        big = stack_tables([jax.tree.map(lambda a, j=j: a[j], t) for t in tables for j in range(len(SPACINGS))])
        out = jax.jit(jax.vmap(lambda t: run_table(model, x, t)[0]))(big)
        ref = jnp.concatenate(refs, 0)
        assert float(jnp.max(jnp.abs(out - ref))) / float(jnp.max(jnp.abs(ref))) < RTOL


def test_tables_at_the_shortest_grids():
    """n = the solver's minimum step count (warm-up only, no history to extrapolate)."""
    with jax.enable_x64(True):
        gmm, schedule, info = load_problem("gmm2d", dtype=jnp.float64)
        model, x = gmm.model(schedule), jnp.asarray(problem_start_points(info, 16))
        for name, opts in MULTISTEP[::5]:
            solver = get_solver(name, **opts)
            for end in ENDS:
                n = max(solver.min_steps, 2 if opts.get("afs") else 1)
                g = time_grid(schedule, n, "logsnr", end, dtype=jnp.float64)
                a = jax.jit(lambda y: sample(solver, model, y, g)[0])(x)
                b = jax.jit(lambda y: sample(solver, model, y, g, stepwise=True)[0])(x)
                np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * float(jnp.max(jnp.abs(b))), err_msg=f"{name} {end}")


SCHEDULE_CASES = [  # constant schedule == solver without the safeguard
    (("ddim", {}), dict(order=1)),
    (("dpm_solver_pp", {"order": 2}), dict(order=2)),
    (("dpm_solver_pp", {"order": 3}), dict(order=3)),
    (("dpm_solver_pp", {"order": 2, "solver_type": "taylor"}), dict(order=2, derivative="taylor")),
    (("dpm_solver_multistep", {"order": 3}), dict(order=3, prediction="noise")),
    (("unipc", {"order": 2}), dict(order=2, derivative="unipc_bh2", corrector=True)),
    (("unipc", {"order": 3, "variant": "bh1"}), dict(order=3, derivative="unipc_bh1", corrector=True)),
    (("unipc", {"order": 3, "prediction": "noise"}), dict(order=3, prediction="noise", derivative="unipc_bh2",
                                                          corrector=True)),
    (("unipc", {"order": 2, "corrector": False}), dict(order=2, derivative="unipc_bh2")),
]


@pytest.mark.parametrize("end", ["zero", "denoise"])
def test_constant_schedules_are_the_classic_solvers(gmm2d, end):
    model, schedule, x = gmm2d
    # every case at sigma = 0; with a final denoise (the same steps but the last) every other one
    cases = SCHEDULE_CASES if end == "zero" else SCHEDULE_CASES[::2]
    with jax.enable_x64(True):
        for (name, opts), sched_opts in cases:
            extra = {} if name == "ddim" else dict(max_step_ratio=None, max_step=None)
            solver = get_solver(name, **opts, **extra)
            g = time_grid(schedule, 6, "logsnr", end, dtype=jnp.float64)
            times = g.t[:-1] if end == "zero" else g.t
            sched = constant_schedule(times, end=end, **sched_opts)
            check_schedule(sched, schedule, nfe=solver.nfe(6, end))
            a = jax.jit(lambda y: run_table(model, y, schedule_table(sched, schedule))[0])(x)
            b = jax.jit(lambda y: sample(solver, model, y, g, stepwise=True)[0])(x)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(b))),
                                       err_msg=f"{name} {opts} {end}")


def test_mixed_schedule_is_a_vmappable_program(gmm2d):
    """A schedule that changes order, prediction, derivative and corrector per step runs,
    and a batch of schedules is one vmap whose members equal the single runs."""
    model, schedule, x = gmm2d
    with jax.enable_x64(True):
        g = time_grid(schedule, 6, "logsnr", "zero", dtype=jnp.float64)
        t = g.t[:-1]
        mixed = SolverSchedule(times=t, order=jnp.array([1, 2, 3, 2, 3, 1], jnp.int32),
                               prediction=jnp.array([0, 1, 0, 0, 1, 0], jnp.int32),
                               derivative=jnp.array([0, 3, 1, 2, 3, 0], jnp.int32),
                               corrector=jnp.array([True, False, True, True, False, False]))
        check_schedule(mixed, schedule, nfe=6)
        plain = constant_schedule(t, order=2)
        batch = jax.tree.map(lambda a, b: jnp.stack([a, b]), mixed, plain)
        outs = jax.jit(jax.vmap(lambda s: run_table(model, x, schedule_table(s, schedule))[0]))(batch)
        for j, s in enumerate((mixed, plain)):
            one = run_table(model, x, schedule_table(s, schedule))[0]
            np.testing.assert_allclose(outs[j], one, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(one))))
        assert outs.shape == (2,) + x.shape and bool(jnp.all(jnp.isfinite(outs)))


def test_schedule_gradient_in_the_time_points(gmm2d):
    """d loss / d times through schedule_table + run_table is finite and matches central
    finite differences (UniPC-3 with the corrector: its warm-up used to give NaN)."""
    model, schedule, x = gmm2d
    with jax.enable_x64(True):
        t = time_grid(schedule, 5, "logsnr", "zero", dtype=jnp.float64).t[:-1]

        def loss(tt):
            s = constant_schedule(tt, order=3, derivative="unipc_bh2", corrector=True)
            return jnp.mean(run_table(model, x, schedule_table(s, schedule))[0] ** 2)

        g = jax.jit(jax.grad(loss))(t)
        assert bool(jnp.all(jnp.isfinite(g)))
        eps = 1e-6
        loss_j = jax.jit(loss)
        for j in range(1, t.shape[0]):
            fd = (loss_j(t.at[j].add(eps)) - loss_j(t.at[j].add(-eps))) / (2 * eps)
            assert abs(float(g[j]) - float(fd)) <= 1e-5 * max(1.0, abs(float(fd))), (j, g[j], fd)


def test_time_grid_accepts_traced_times():
    with jax.enable_x64(True):
        _, schedule, _ = load_problem("gmm2d", dtype=jnp.float64)
        t = jnp.array([1.0, 0.5, 0.1, 0.01])
        f = lambda tt: jnp.sum(time_grid(schedule, 0, times=tt, end="zero").lam[:-1])  # noqa: E731
        np.testing.assert_allclose(jax.grad(f)(t), jax.vmap(jax.grad(lambda s: schedule.lambda_(s)))(t), rtol=1e-12)
        assert jax.jit(lambda tt: time_grid(schedule, 0, times=tt, end="zero").t)(t).shape == (5,)


def _good(n=5, end="zero"):
    t = np.linspace(1.0, 1e-3, n if end == "zero" else n + 1)
    return constant_schedule(t, order=2, end=end)


@pytest.mark.parametrize("field,value,words", [
    ("times", np.array([1.0, 0.5, 0.6, 0.1, 0.01]), "strictly decreasing"),
    ("times", np.array([1.0, 0.5, np.nan, 0.1, 0.01]), "finite"),
    ("times", np.array([2.0, 0.5, 0.3, 0.1, 0.01]), "within the noise schedule's range"),
    ("order", np.array([2, 2, 2, 2, 1], np.int32), "order 2 but only 1 model"),
    ("order", np.array([1, 2, 4, 2, 1], np.int32), "integers in 1..3"),
    ("order", np.array([1, 2, 1], np.int32), "one entry per step"),
    ("prediction", np.array([0, 0, 2, 0, 0], np.int32), "0 = data, 1 = noise"),
    ("derivative", np.array([0, 0, 9, 0, 0], np.int32), "3 = unipc_bh2"),
    ("corrector", np.array([0, 1, 0, 1, 0], np.int32), "booleans"),
])
def test_bad_schedules_are_refused(field, value, words):
    _, schedule, _ = load_problem("gmm2d")
    bad = _good().replace(**{field: value})
    with pytest.raises(ScheduleError, match=f"schedule.{field}") as e:
        check_schedule(bad, schedule)
    assert words in str(e.value)


def test_schedule_nfe_mismatch_and_nan_coefficients():
    _, schedule, _ = load_problem("gmm2d")
    with pytest.raises(ScheduleError, match="spends 5 model evaluations.*not nfe=6"):
        check_schedule(_good(), schedule, nfe=6)
    tab = schedule_table(_good(), schedule)
    check_table(tab)
    with pytest.raises(ScheduleError, match=r"table.c: non-finite coefficient at step 3"):
        check_table(tab.replace(c=tab.c.at[3, 1].set(jnp.nan)))


def test_schedule_files_round_trip(tmp_path):
    _, schedule, _ = load_problem("gmm2d")
    s = _good(end="denoise").replace(corrector=np.array([True, False, True, False, False]),
                                      prediction=np.array([0, 1, 0, 1, 0], np.int32))
    path = tmp_path / "best.json"
    save_schedule(str(path), s, problem="gmm2d", score=0.1)
    back = load_schedule(str(path), schedule, nfe=6)
    for f in ("times", "order", "prediction", "derivative", "corrector"):
        np.testing.assert_array_equal(np.asarray(getattr(back, f)), np.asarray(getattr(s, f)))
    assert back.end == "denoise" and json.loads(path.read_text())["meta"]["score"] == 0.1
    with pytest.raises(ScheduleError, match="not nfe=5"):
        load_schedule(str(path), schedule, nfe=5)
    d = json.loads(path.read_text())
    d["derivative"][2] = "rk4"
    path.write_text(json.dumps(d))
    with pytest.raises(ScheduleError, match=r"derivative: 'rk4' is not one of"):
        load_schedule(str(path))
    with pytest.raises(ScheduleError, match="does not exist"):
        load_schedule(str(tmp_path / "missing.json"))
