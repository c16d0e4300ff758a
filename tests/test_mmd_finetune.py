"""MMD finetuning through the few-step sampler (samplax.training.mmd, kind "mmd_finetune").

* the gradient of the loss through the lax.scan sampler equals central finite differences
  (float64, a tiny MLP network);
* finetuning an analytic Gaussian model N(0, s^2) whose data are N(0, 0.4^2) recovers the
  s* at which the 3-step DDIM output has exactly std 0.4 (found by bisection on the exact,
  linear few-step map) -- not the data's 0.4: the sampler's output is what is matched;
* a run resumed from its first checkpoint (what kill -9 leaves) ends bitwise equal to an
  uninterrupted run (state checksum, log, summary), and loads back for sampling;
* bad configs: one ConfigError naming the field, nothing written.
"""
import json
import os
import shutil

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from samplax.experiment.config import ConfigError
from samplax.models.analytic import Gaussian
from samplax.schedules import get_schedule
from samplax.training import mmd as M


def test_gradient_through_sampler_matches_finite_differences():
    from samplax.models.networks import MLPScoreNet, network_model

    with jax.enable_x64(True):
        sch = get_schedule("vp_cosine")
        net = MLPScoreNet(hidden=(8,), embed_dim=8)
        params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        from samplax.solvers import get_solver
        from samplax.timesteps import time_grid

        solver = get_solver("dpm_solver_pp")
        sampler = M.FewStepSampler(solver, time_grid(sch, 3, "logsnr", dtype=jnp.float64), 3)
        model_of = lambda p: network_model(net, p, sch, "noise")  # noqa: E731
        x_T = jax.random.normal(jax.random.PRNGKey(1), (16, 2), jnp.float64)
        data = 0.5 * jax.random.normal(jax.random.PRNGKey(2), (16, 2), jnp.float64) + 0.3
        loss = jax.jit(lambda p: M.mmd_loss(p, model_of, sampler, x_T, data,
                                            bandwidth="fixed", scales=(0.3, 1.0), energy_weight=0.5))
        grad = jax.grad(loss)(params)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        g = jax.flatten_util.ravel_pytree(grad)[0]
        rng = np.random.default_rng(0)
        for _ in range(3):  # random directions: <grad, v> vs the central difference
            v = jnp.asarray(rng.standard_normal(flat.shape))
            h = 1e-5
            fd = (loss(unravel(flat + h * v)) - loss(unravel(flat - h * v))) / (2 * h)
            np.testing.assert_allclose(float(g @ v), float(fd), rtol=1e-6, atol=1e-12)


def test_finetuning_recovers_the_exact_few_step_optimum():
    """DDIM at NFE 3 maps x_T linearly, x_0 = c(s) x_T; the MMD optimum is |c(s*)| = 0.4."""
    sch = get_schedule("vp_cosine")
    sampler = M.few_step_sampler("ddim", 3, sch)
    model_of = lambda p: Gaussian(jnp.zeros(1), jnp.exp(p)).model(sch)  # noqa: E731
    c = jax.jit(lambda p: M.sample_few_step(model_of(p), sampler, jnp.ones((1, 1)))[0, 0])
    target = 0.4
    lo, hi = np.log(0.3), np.log(2.0)  # c is increasing in s on this bracket (c(0.3) < 0.4 < c(2))
    assert float(c(jnp.array([lo]))) < target < float(c(jnp.array([hi])))
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(c(jnp.array([mid]))) < target else (lo, mid)
    s_star = float(np.exp(0.5 * (lo + hi)))
    assert s_star > 1.5 * target  # the few-step sampler shrinks: the right model is not the data's std

    steps = 120
    opt = optax.adam(optax.cosine_decay_schedule(0.05, steps))
    step = M.make_finetune_step(model_of, sampler, opt, (1,), 256, 1.0, bandwidth="fixed", scales=(0.2, 0.5, 1.0),
                                remat=True)  # jax.checkpoint on each model call: memory, not values
    p = jnp.log(jnp.array([0.3]))
    st = opt.init(p)
    c0 = abs(float(c(p)))
    for k in range(steps):
        key = jax.random.PRNGKey(k)
        data = target * jax.random.normal(jax.random.fold_in(key, 7), (256, 1))
        p, st, _ = step(p, st, jax.random.fold_in(key, 1), data)
    s_fit = float(np.exp(p[0]))
    # the output std moved from c0 (~0.08) to within 3% of the data's; s within 4% of s*
    assert abs(c0 - target) > 0.25
    assert abs(abs(float(c(p))) - target) < 0.03 * target, (float(c(p)), target)
    assert abs(s_fit - s_star) < 0.04 * s_star, (s_fit, s_star)


# ---------------------------------------------------------------------------------------
# The run: resume, load, config errors
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from configs import train_gmm2d
    from samplax.experiment.trainer import run_train

    c = train_gmm2d.get_config()
    c.model.mlp.hidden = (16,)
    c.model.mlp.embed_dim = 8
    c.optim.warmup_steps = 5
    for k, v in dict(num_steps=30, batch_size=64, log_every=10, checkpoint_every=30, sample_every=0,
                     sample_count=0).items():
        setattr(c.train, k, v)
    wd = str(tmp_path_factory.mktemp("mmd") / "base")
    run_train(c, wd)
    return wd


def tiny_config(base):
    from samplax.experiment.mmd_finetune import mmd_finetune_config

    c = mmd_finetune_config()
    c.base = base
    c.sampler.nfe = 3
    c.kernel.energy_weight = 0.5
    c.optim.learning_rate = 1e-2
    for k, v in dict(num_steps=6, gen_batch=32, data_batch=32, log_every=1, checkpoint_every=2,
                     keep_checkpoints=10).items():
        setattr(c.train, k, v)
    c.eval.num_samples = 64
    return c


def _log(wd):
    with open(os.path.join(wd, "train_log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"} for line in f]


def test_resume_equals_uninterrupted_and_loads(tiny_base, tmp_path):
    from samplax.experiment.checkpoints import Checkpoints
    from samplax.experiment.mmd_finetune import build_sampler, few_step_samples, load_finetuned, model_identity
    from samplax.experiment.train_kinds import run_training

    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    a = run_training(tiny_config(tiny_base), ref)
    assert a["resumed_from"] == 0 and a["steps"] == 6
    assert a["eval_finetuned"]["mmd2"] != a["eval_base"]["mmd2"]  # the parameters moved
    # what kill -9 after the checkpoint of step 2 leaves: checkpoint 2, log rows up to step >= 2, no summary
    shutil.copytree(ref, cut)
    for s in (4, 6):
        shutil.rmtree(os.path.join(cut, "checkpoints", str(s)))
    os.remove(os.path.join(cut, "train_summary.json"))
    b = run_training(tiny_config(tiny_base), cut)
    assert b["resumed_from"] == 2
    tr_a, _ = load_finetuned(ref)
    tr_b, cfg = load_finetuned(cut)
    shas = []
    for wd in (ref, cut):
        with Checkpoints(os.path.join(wd, "checkpoints"), model_identity(tr_a), read_only=True) as ck:
            shas.append(ck.read_meta(6)["state_sha256"])
    assert shas[0] == shas[1]  # bitwise: params and optimiser state
    assert _log(ref) == _log(cut) and [r["step"] for r in _log(cut)] == list(range(1, 7))
    assert a["eval_finetuned"] == b["eval_finetuned"]
    assert tr_b.step == 6
    sampler = build_sampler(cfg, tr_b)
    x = few_step_samples(tr_b, tr_b.params, sampler, 8, 0)
    assert np.array_equal(x, few_step_samples(tr_a, tr_a.params, sampler, 8, 0))
    assert not np.array_equal(x, few_step_samples(tr_b, _base_params(cfg), sampler, 8, 0))


def _base_params(cfg):
    from samplax.experiment.mmd_finetune import load_base

    return load_base(cfg).params


@pytest.mark.parametrize("field,value,match", [
    ("sampler.solver", "ddim_eta", r"config\.sampler\.solver: unknown value 'ddim_eta'; allowed: \['ddim'"),
    ("sampler.nfe", 0, r"config\.sampler\.nfe: got 0; allowed: an integer in \[1, 1000\]"),
    ("kernel.features", "inception", r"config\.kernel\.features: unknown value 'inception'"),
    ("kernel.scales", (1.0, -2.0), r"config\.kernel\.scales: got \[1\.0, -2\.0\]; allowed: a non-empty tuple"),
    ("kernel.energy_weight", -1.0, r"config\.kernel\.energy_weight"),
    ("train.gen_batch", 1, r"config\.train\.gen_batch: got 1; allowed: an integer in \[2, inf\]"),
    ("train.checkpoint_every", 3, r"config\.train\.checkpoint_every: got 3; allowed: a multiple of train\.log_every"),
    ("optim.learning_rate", 0.0, r"config\.optim\.learning_rate"),
    ("base", " ", r"config\.base: is empty"),
])
def test_config_errors(field, value, match, tmp_path):
    from samplax.experiment.train_kinds import run_training

    c = tiny_config("/nonexistent/base")
    c.train.log_every = 2 if field == "train.checkpoint_every" else c.train.log_every
    section, _, name = field.rpartition(".")
    setattr(c[section] if section else c, name, value)
    wd = tmp_path / "never"
    with pytest.raises(ConfigError, match=match):
        run_training(c, str(wd))
    assert not wd.exists()


def test_base_errors_write_nothing(tiny_base, tmp_path):
    from samplax.experiment.train_kinds import run_training

    wd = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"config\.base: .*not a training workdir"):
        run_training(tiny_config(str(tmp_path / "missing")), str(wd))
    c = tiny_config(tiny_base)
    c.kernel.features = "classifier"
    with pytest.raises(ConfigError, match=r"config\.kernel\.features: 'classifier' is the digits classifier"):
        run_training(c, str(wd))
    c = tiny_config(tiny_base)
    c.sampler.solver, c.sampler.nfe = "heun", 2
    with pytest.raises(ConfigError, match=r"config\.sampler\.nfe: nfe=2 is impossible for solver heun"):
        run_training(c, str(wd))
    assert not wd.exists()
