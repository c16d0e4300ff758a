"""FastLightGen-style distillation (samplax.training.distill, samplax.experiment.distill) against
exact answers:

* on a 1-D Gaussian (the analytic model of samplax.models.analytic, whose probability-flow ODE and
  autoguided ODE are known in closed form), the step-distillation loss from the optimal teacher
  T + beta (T - W) of an affine student is minimised exactly at the closed-form per-interval DDIM
  targets, and the 4-step DDIM student then
  transports the prior to the guided teacher's exact output distribution;
* the optimal-teacher construction's defining identity D_opt = D_T + beta (D_T - D_W), in the data
  and the noise view, and beta = 0 is the teacher itself;
* the pruned digits U-Net holds the requested fraction of the parameters;
* a run interrupted between checkpoints and rerun ends with bitwise the parameters of an
  uninterrupted run; bad configs are one ConfigError naming the field, before anything is written.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.experiment.config import ConfigError
from samplax.models.analytic import Gaussian
from samplax.models.base import DiffusionModel
from samplax.models.guidance import autoguidance_gaussian_gain
from samplax.schedules import get_schedule
from samplax.training import distill as D

MU, S_GOOD, S_BAD, BETA, NFE, K = 0.5, 0.3, 0.6, 0.5, 4, 32


def _affine_student(grid, schedule):
    """D_S(x, t_i) = a_i x + b_i at the student's nodes t_i (params (a, b), each (NFE,))."""
    nodes = grid.t[:-1]

    def apply(p, x, t):
        i = jnp.argmin(jnp.abs(jnp.reshape(t, (-1,))[0] - nodes))
        return p[0][i] * x + p[1][i]
    return lambda p: DiffusionModel(apply=apply, params=p, schedule=schedule, prediction="data")


def _guided_coeffs(grid, schedule, w):
    """Closed-form optimum (a_i, b_i): the DDIM target of the autoguided Gaussian ODE over each
    interval (the last one: the ODE down to t_min, then the guided data prediction there)."""
    al, sg = np.asarray(grid.alpha, np.float64), np.asarray(grid.sigma, np.float64)
    s_min = float(schedule.sigma(schedule.t_min) / schedule.alpha(schedule.t_min))
    a, b = [], []
    for i in range(NFE):
        S = sg[i] / al[i]
        if i < NFE - 1:       # x_next = alpha' (mu + m (x / alpha - mu))
            m = autoguidance_gaussian_gain(S_GOOD, S_BAD, w, S, sg[i + 1] / al[i + 1])
            slope, icpt = al[i + 1] * m / al[i], al[i + 1] * MU * (1 - m)
        else:                 # D at t_min of the guided model after the ODE from S to s_min
            m = autoguidance_gaussian_gain(S_GOOD, S_BAD, w, S, s_min)
            c = w * S_GOOD**2 / (S_GOOD**2 + s_min**2) + (1 - w) * S_BAD**2 / (S_BAD**2 + s_min**2)
            slope, icpt = c * m / al[i], MU * (1 - c * m)
        r = sg[i + 1] / sg[i]
        den = al[i + 1] - al[i] * r
        a.append((slope - r) / den)
        b.append(icpt / den)
    return np.array(a), np.array(b)


def test_step_distillation_from_the_optimal_teacher_is_exact_on_a_gaussian():
    from samplax.solvers import get_solver, sample

    sch = get_schedule("vp_cosine")
    teacher = Gaussian(mean=jnp.array([MU]), std=jnp.array([S_GOOD])).model(sch)
    weak = Gaussian(mean=jnp.array([MU]), std=jnp.array([S_BAD])).model(sch)
    opt = D.optimal_teacher(teacher, weak, BETA)
    grid = D.student_grid(sch, NFE)
    subs = D.segment_grids(sch, NFE, K)
    assert subs[-1] is None and all(g.n_steps == K for g in subs[:-1])
    solver = get_solver("dpm_solver_pp")
    make = _affine_student(grid, sch)
    key = jax.random.PRNGKey(0)
    x0 = MU + S_GOOD * jax.random.normal(key, (NFE, 256, 1))
    eps = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)

    def loss(flat):
        return D.step_distillation_loss(make((flat[:NFE], flat[NFE:])), opt, grid, subs, solver, x0, eps)[0]

    # the closed-form per-interval DDIM targets of the guided ODE are the loss's minimiser: its gradient
    # vanishes there (up to the teacher's K-step discretisation) and the loss drops to ~0
    a_ex, b_ex = _guided_coeffs(grid, sch, 1.0 + BETA)
    p = jnp.asarray(np.concatenate([a_ex, b_ex]), jnp.float32)
    vg = jax.jit(jax.value_and_grad(loss))
    (l0, g0), (l1, g1) = vg(jnp.zeros(2 * NFE)), vg(p)
    assert float(jnp.linalg.norm(g1)) < 2e-3 * float(jnp.linalg.norm(g0))
    assert float(l1) < 1e-5 * float(l0)

    # the distilled 4-step DDIM student transports N(0, 1) to the guided teacher's exact output
    x_T = jax.random.normal(jax.random.fold_in(key, 2), (20000, 1))
    xs, _ = jax.jit(lambda q: sample(get_solver(D.STUDENT_SOLVER), make((q[:NFE], q[NFE:])), x_T, grid))(p)
    s_min = float(sch.sigma(sch.t_min) / sch.alpha(sch.t_min))
    S0 = float(grid.sigma[0] / grid.alpha[0])
    w = 1.0 + BETA
    c = w * S_GOOD**2 / (S_GOOD**2 + s_min**2) + (1 - w) * S_BAD**2 / (S_BAD**2 + s_min**2)
    gain = c * autoguidance_gaussian_gain(S_GOOD, S_BAD, w, S0, s_min) / float(grid.alpha[0])
    np.testing.assert_allclose(float(jnp.std(xs - MU) / jnp.std(x_T)), gain, rtol=3e-3)
    # ... which the teacher itself at 4 DDIM steps misses by far (the point of distilling)
    xt, _ = jax.jit(lambda m: sample(get_solver("ddim"), m, x_T, grid))(opt)
    assert abs(float(jnp.std(xt - MU) / jnp.std(x_T)) / gain - 1) > 0.05


def test_optimal_teacher_identity():
    sch = get_schedule("vp_cosine")
    teacher = Gaussian(mean=jnp.array([0.2, -1.0]), std=jnp.array([0.5, 0.8])).model(sch)
    weak = Gaussian(mean=jnp.array([0.0, -0.7]), std=jnp.array([0.9, 1.1])).model(sch)
    assert D.optimal_teacher(teacher, weak, 0.0) is teacher and D.optimal_teacher(teacher, None, 2.0) is teacher
    x = jax.random.normal(jax.random.PRNGKey(3), (7, 2))
    for t in (0.9, 0.3, 0.02):
        opt = D.optimal_teacher(teacher, weak, 0.75)
        for view in ("data", "noise"):
            want = getattr(teacher, view)(x, t) + 0.75 * (getattr(teacher, view)(x, t) - getattr(weak, view)(x, t))
            np.testing.assert_allclose(np.asarray(getattr(opt, view)(x, t)), np.asarray(want), rtol=1e-5, atol=1e-5)
        # a light model equal to the teacher leaves it unchanged whatever beta
        np.testing.assert_allclose(np.asarray(D.optimal_teacher(teacher, teacher, 3.0).data(x, t)),
                                   np.asarray(teacher.data(x, t)), rtol=1e-5, atol=1e-6)


def test_pruned_digits_unet_holds_the_requested_fraction():
    from configs.train_digits import get_config
    from samplax.models.unet import UNet

    u = get_config().to_dict()["model"]["unet"]

    def count(w):
        return D.unet_param_count(w, u["num_res_blocks"], u["attention"], u["embed_dim"], 10, 1)

    rng = np.random.default_rng(0)

    def init(w):   # the network's parameter structure (eval_shape), filled with random numbers
        net = UNet(channels=w, num_res_blocks=u["num_res_blocks"], attention=u["attention"], embed_dim=u["embed_dim"],
                   groups=u["groups"], num_classes=10)
        shapes = jax.eval_shape(net.init, jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))
        return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), shapes)

    widths = D.narrow_channels((32, 64), 8, 0.3, count)
    assert widths == (16, 56)
    # the closed form is the built network's count (teacher and student)
    tp, sp = init((32, 64)), init(widths)
    full, small = D.param_count(tp), D.param_count(sp)
    assert (full, small) == (count((32, 64)), count(widths)) == (612705, 411961)
    # the nearest fraction to 0.7 among all multiple-of-8 widths: 0.672 (33 % pruned)
    fracs = [count((a, b)) / full for a in range(8, 33, 8) for b in range(8, 65, 8)]
    assert abs(small / full - 0.7) == min(abs(f - 0.7) for f in fracs)
    with pytest.raises(ValueError, match="prune_fraction"):
        D.narrow_channels((32, 64), 8, 1.0, len)

    # weight inheritance: the student's shapes; equal widths give the teacher back; an up-path block
    # reading [features, skip] keeps the leading channels of each part
    got = D.inherit_unet_params(tp, sp, (32, 64), widths, 1)
    assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, sp)
    assert all(bool(np.all(np.asarray(a) == b)) for a, b in zip(jax.tree.leaves(D.inherit_unet_params(tp, tp, (32, 64), (32, 64), 1)),
                                                     jax.tree.leaves(tp)))
    k_t, k_s = tp["params"]["ResBlock_4"]["Conv_0"]["kernel"], got["params"]["ResBlock_4"]["Conv_0"]["kernel"]
    assert k_t.shape[2] == 128 and k_s.shape[2] == 112       # [64 + 64] -> [56 + 56]
    np.testing.assert_array_equal(np.asarray(k_s[:, :, 56:, :]), np.asarray(k_t[:, :, 64:120, :56]))
    np.testing.assert_array_equal(np.asarray(got["params"]["Conv_0"]["kernel"]),
                                  np.asarray(tp["params"]["Conv_0"]["kernel"][..., :16]))


def _teacher(root):
    """A tiny MLP teacher workdir on gmm2d, written as run_train writes it (config + an Orbax
    checkpoint of its TrainState) but at its initialisation, perturbed: no train-step compile."""
    from samplax.experiment import results as store
    from samplax.experiment.checkpoints import Checkpoints
    from samplax.experiment.config import train_config
    from samplax.experiment.trainer import fresh_train_state, setup, train_identity

    c = train_config()
    c.data.name = "gmm2d"
    c.schedule.name = "problem"
    c.model.network = "mlp"
    c.model.mlp.hidden = (16, 16)
    c.model.mlp.embed_dim = 16
    s = setup(c)
    state = fresh_train_state(s)
    leaves, tree = jax.tree.flatten(state.ema_params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    ema = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    wd = os.path.join(root, "teacher")
    os.makedirs(wd)
    store.save_config(wd, "train", s.cfg, train_identity(s.cfg))
    with Checkpoints(os.path.join(wd, "checkpoints"), s.identity, train_identity(s.cfg)) as ckpt:
        ckpt.save(1, state.replace(ema_params=ema))
    return wd


def _distill_config(teacher):
    from samplax.experiment.distill import distill_config

    d = distill_config()
    d.teacher = teacher
    d.student.prune_fraction = 0.5
    d.student.nfe = 2
    d.distill.teacher_steps = 2
    d.distill.teacher_nfe = 4
    d.distill.size_fraction = 0.5
    d.train.num_steps = 6
    d.train.batch_size = 8
    d.train.log_every = 1
    d.train.checkpoint_every = 2
    return d


def test_run_resumes_bitwise_and_bad_configs_are_one_error(tmp_path, monkeypatch):
    from samplax.experiment import distill as E
    from samplax.experiment.train_kinds import validate_training

    root = str(tmp_path)
    teacher = _teacher(root)
    d = _distill_config(teacher)

    # bad fields: one ConfigError naming the field; nothing written
    for field, value, match in [("mode", "prune", r"config.mode: unknown value 'prune'"),
                                ("student.nfe", 0, r"config.student.nfe"),
                                ("train.batch_size", 9, r"config.train.batch_size: must be a multiple of"),
                                ("distill.teacher_solver", "rk45", r"config.distill.teacher_solver")]:
        bad = _distill_config(teacher)
        parent, _, name = ("." + field).rpartition(".")
        setattr(bad if not parent else bad[parent[1:]], name, value)
        with pytest.raises(ConfigError, match=match):
            validate_training(bad)
    bad = _distill_config(teacher)
    bad.mode = "step"
    with pytest.raises(ConfigError, match=r"config.student.prune_fraction: must be 0 with mode='step'"):
        validate_training(bad)
    bad = _distill_config(os.path.join(root, "no_teacher"))
    with pytest.raises(ConfigError, match=r"config.teacher: cannot load the teacher"):
        E.run_distill(bad, os.path.join(root, "never"))
    assert not os.path.exists(os.path.join(root, "never"))

    # uninterrupted vs interrupted after step 3 (checkpoint 2, both stages) and rerun
    full = E.run_distill(d, os.path.join(root, "full"))
    monkeypatch.setenv(E.CRASH_ENV, "3")
    with pytest.raises(E.SimulatedCrash):
        E.run_distill(d, os.path.join(root, "cut"))
    monkeypatch.delenv(E.CRASH_ENV)
    cut = E.run_distill(d, os.path.join(root, "cut"))
    assert cut["resumed_from"] == 2 and full["resumed_from"] == 0
    assert cut["params_sha256"] == full["params_sha256"]
    rows = [json.loads(r) for r in open(os.path.join(root, "cut", E.LOG_FILE))]
    assert [r["step"] for r in rows] == list(range(1, 7)) and [r["stage"] for r in rows] == ["size"] * 3 + ["step"] * 3
    assert full["student_params"] < 0.75 * full["teacher_params"] and (full["solver"], full["nfe"]) == ("ddim", 2)

    # the student loads for sampling
    from samplax.experiment.trainer import draw_samples

    tr, spec = E.load_student(os.path.join(root, "full"))
    assert tr.step == 6 and spec == D.SampleSpec("ddim", 2)
    x = draw_samples(tr.setup, tr.params, 5, spec.solver, spec.nfe)
    assert x.shape == (5, 2) and np.all(np.isfinite(x))
