"""Data samplers (samplax.data_sampling) and the trainer's config.train.sampler.

* The baselines draw what they say: uniform indices pass a chi-square test; "epoch" is one
  permutation per epoch (every index exactly once, batches straddling epochs); "fixed_subset"
  cycles through one fixed subset of the stated size.
* A sampler's draw reads the stats of the previous train step (per-example losses at the
  parameters before the update); the trainer hands exactly those over.
* Its state is in the checkpoint: a run stopped right after a save (in process) or killed
  with kill -9 (a real process) and rerun ends bitwise equal -- parameters, EMA, sampler
  state and the stats of the last step -- to an uninterrupted run.
* Bad names, options and data sets are one ConfigError naming the field.
"""
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from configs import train_classify_digits
from samplax.data_sampling import (DataSampler, draw_indices, get_sampler, register_sampler, step_info,
                                   steps_for_epochs)
from samplax.data_sampling import base as ds_base
from samplax.experiment import trainer
from samplax.experiment.checkpoints import Checkpoints
from samplax.experiment.config import ConfigError
from test_training_run import ROOT, _complete_steps, _env, _same

ALPHA = 1e-3  # significance of every statistical test here


def test_uniform_indices_pass_a_chi_square_test():
    n, b, steps = 50, 64, 200
    idx, _ = draw_indices(get_sampler("uniform", n, b), 0, steps)
    counts = np.bincount(idx.ravel(), minlength=n)
    assert sps.chisquare(counts).pvalue > ALPHA
    assert idx.min() >= 0 and idx.max() < n


@pytest.mark.parametrize("n,b", [(10, 4), (7, 7), (5, 12)])
def test_epoch_is_one_permutation_per_epoch_even_when_batches_straddle_epochs(n, b):
    steps = 3 * n
    idx, state = draw_indices(get_sampler("epoch", n, b), 0, steps)
    stream = idx.ravel()
    for e in range(len(stream) // n):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n)), f"epoch {e} is not a permutation"
    assert int(state["epoch"]) == (len(stream) - 1) // n
    # the orders differ between epochs (a fresh shuffle), and between seeds
    assert any(not np.array_equal(stream[:n], stream[e * n:(e + 1) * n]) for e in range(1, len(stream) // n))


def test_fixed_subset_cycles_through_one_subset_of_the_stated_size():
    n, b, frac = 40, 4, 0.25
    s = get_sampler("fixed_subset", n, b, dict(fraction=frac, seed=3))
    m = s.options["subset_size"]
    assert m == 10
    idx, _ = draw_indices(s, 0, 5 * m // b)
    stream = idx.ravel()
    subset = set(stream[:m].tolist())
    assert len(subset) == m
    for e in range(len(stream) // m):
        assert set(stream[e * m:(e + 1) * m].tolist()) == subset
    # another seed: another subset; the data seed does not change the subset
    other = get_sampler("fixed_subset", n, b, dict(fraction=frac, seed=4))
    assert set(draw_indices(other, 0, 3)[0].ravel().tolist()) != subset
    assert set(draw_indices(s, 7, 3)[0].ravel().tolist()) <= subset


def test_draws_are_a_pure_function_of_the_data_seed_and_the_state():
    s = get_sampler("epoch", 30, 8)
    a, st_a = draw_indices(s, 5, 12)
    b, _ = draw_indices(s, 5, 12)
    assert np.array_equal(a, b)
    # resuming from the state after 5 steps draws the same next 7 batches
    first, st5 = draw_indices(s, 5, 5)
    rest, st_b = draw_indices(s, 5, 7, state=st5, start=5)
    assert np.array_equal(np.concatenate([first, rest]), a)
    assert _same(st_a, st_b)
    assert steps_for_epochs(30, 8, 2) == 8


def test_get_sampler_errors_name_the_sampler_and_the_option():
    with pytest.raises(ValueError, match=r"unknown data sampler 'nope'; allowed: \[.*'uniform'"):
        get_sampler("nope", 10, 2)
    with pytest.raises(ValueError, match=r"'fixed_subset': unknown option\(s\) \['frac'\]; allowed"):
        get_sampler("fixed_subset", 10, 2, dict(frac=0.1))
    with pytest.raises(ValueError, match=r"option 'fraction' must be in \(0, 1\], got 1.5"):
        get_sampler("fixed_subset", 10, 2, dict(fraction=1.5))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        get_sampler("uniform", 10, 0)


# ---------------------------------------------------------------------------------------
# A sampler that reads the losses: the B examples with the largest last-seen loss
# ---------------------------------------------------------------------------------------
def _greedy(size, batch_size, noise=1e-3):
    def init():
        return dict(loss=jnp.full((size,), 1e9, jnp.float32))

    def next_indices(key, state, stats):
        seen = jnp.where(stats["valid"], state["loss"].at[stats["indices"]].set(stats["loss"]), state["loss"])
        score = seen + noise * jax.random.uniform(key, (size,))
        return jnp.argsort(-score)[:batch_size].astype(jnp.int32), dict(loss=seen)

    return DataSampler("test_greedy", init, next_indices, dict(noise=noise), None, size, batch_size)


@pytest.fixture
def greedy():
    register_sampler("test_greedy", _greedy)
    yield "test_greedy"
    ds_base.SAMPLERS.pop("test_greedy", None)


def _classify(num_steps=24, **train):
    c = train_classify_digits.get_config()
    c.model.network = "mlp"
    c.model.mlp.hidden = (32,)
    c.train.batch_size = 32
    c.train.num_steps = num_steps
    c.train.checkpoint_every = 8
    c.train.log_every = 8
    for k, v in train.items():
        setattr(c.train, k, v)
    return c


def test_the_trainer_hands_each_step_its_batch_losses_and_checkpoints_the_sampler(tmp_path, greedy):
    c = _classify(num_steps=9)
    c.train.sampler.name = greedy
    wd = str(tmp_path / "run")
    trainer.run_train(c, wd)
    assert _complete_steps(wd) == [8, 9]
    s, state, meta, _ = trainer.load_train_state(wd)
    _, before, _, _ = trainer.load_train_state(wd, 8)
    assert int(state.step) == 9 and bool(state.data.stats["valid"])
    idx = np.asarray(state.data.stats["indices"])
    # the stats of step 9: the per-example cross-entropy of its batch at the parameters of step 8
    x, y = s.dataset.arrays
    loss_fn = trainer.build_loss(s.cfg, s.net, s.schedule, s.dataset)
    _, aux = loss_fn(before.params, (jnp.asarray(x[idx]), jnp.asarray(y[idx])), jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(state.data.stats["loss"]), np.asarray(aux["per_example"]), rtol=1e-5)
    # the table holds the losses of steps 1..8 (the draw of step 9 read step 8's); greedy picks unseen examples first
    seen = np.asarray(state.data.sampler["loss"]) < 1e9
    assert seen.sum() == 8 * 32
    assert len(np.unique(idx)) == 32 and not seen[idx].any()


def _stop_after_save(monkeypatch, at_step):
    real = Checkpoints.save

    def save(self, step, state, meta=None):
        out = real(self, step, state, meta)
        if step == at_step:
            raise KeyboardInterrupt(f"test: stopped after saving step {step}")
        return out

    monkeypatch.setattr(Checkpoints, "save", save)


@pytest.mark.parametrize("name,options", [("greedy", {}), ("epoch", {}), ("fixed_subset", {"fraction": 0.2}),
                                          ("uniform", {})])
def test_a_run_stopped_after_a_save_resumes_bitwise_equal_with_a_loss_reading_sampler(tmp_path, greedy, monkeypatch,
                                                                                        name, options):
    c = _classify()
    c.train.sampler.name = greedy if name == "greedy" else name
    c.train.sampler.options = options
    plain, stopped = str(tmp_path / "plain"), str(tmp_path / "stopped")
    trainer.run_train(c, plain)
    with monkeypatch.context() as m:
        _stop_after_save(m, 16)
        with pytest.raises(KeyboardInterrupt):
            trainer.run_train(c, stopped)
    assert _complete_steps(stopped) == [8, 16]
    summary = trainer.run_train(c, stopped)
    assert summary["resumed_from"] == 16
    _, a, _, _ = trainer.load_train_state(plain)
    _, b, _, _ = trainer.load_train_state(stopped)
    assert _same(a, b), "the resumed run differs from the uninterrupted one (parameters, EMA or sampler state)"


def test_the_classifier_config_with_a_sampler_builds_that_sampler_on_the_training_split():
    c = train_classify_digits.get_config()
    c.train.sampler.name = "epoch"
    s = trainer.setup(c)
    assert s.sampler.name == "epoch"
    assert s.sampler.size == s.dataset.size == len(s.dataset.arrays[0]) and s.sampler.batch_size == c.train.batch_size


# ---------------------------------------------------------------------------------------
# kill -9 of a real training process with a data sampler
# ---------------------------------------------------------------------------------------
KILL = dict(num_steps=120, checkpoint_every=30, log_every=1, batch_size=32)
#: (sampler, options) covered by the kill -9 test: LEAD (its state reads every step's losses) and RS2;
#: the other samplers' resume is tested in process (test_a_run_stopped_after_a_save_resumes_bitwise_equal...)
KILL_SAMPLERS = [("lead", {"cluster_size": 719}), ("rs2", {"fraction": 0.1, "replacement": False})]


def _cli(workdir, name, options):
    args = [sys.executable, "-m", "experiments.train",
            "--config=configs/train_classify_digits.py",
            f"--workdir={workdir}", "--config.model.network=mlp", "--config.model.mlp.hidden=32",
            f"--config.train.sampler.name={name}"]
    args += [f"--config.train.sampler.options.{k}={v}" for k, v in options.items()]
    args += [f"--config.train.{k}={v}" for k, v in KILL.items()]
    return args


def _kill_config(name, options):
    """The config of :func:`_cli`, built in process (the uninterrupted run and the rerun)."""
    c = train_classify_digits.get_config()
    c.model.network, c.model.mlp.hidden = "mlp", (32,)
    c.train.sampler.name, c.train.sampler.options = name, dict(options)
    for k, v in KILL.items():
        setattr(c.train, k, v)
    return c


@pytest.mark.slow
@pytest.mark.parametrize("name,options", KILL_SAMPLERS)
def test_kill_9_then_rerun_draws_what_an_uninterrupted_run_draws(tmp_path, name, options):
    """SIGKILL a real ``python -m experiments.train`` after a checkpoint; the same config rerun
    (in process, as the uninterrupted reference: one interpreter start per test) ends bitwise
    equal to the uninterrupted run -- the command line and the in-process config are one run
    (the rerun would refuse a workdir of another config)."""
    plain, killed = str(tmp_path / "plain"), str(tmp_path / "killed")
    trainer.run_train(_kill_config(name, options), plain)
    proc = subprocess.Popen(_cli(killed, name, options), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not [s for s in _complete_steps(killed) if s >= 30]:
            assert proc.poll() is None, "the training process ended before it could be killed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert max(_complete_steps(killed)) < KILL["num_steps"], "killed too late to test a resume"
    trainer.run_train(_kill_config(name, options), killed)
    _, a, _, _ = trainer.load_train_state(plain)
    _, b, _, _ = trainer.load_train_state(killed)
    assert int(b.step) == KILL["num_steps"]
    assert _same(a, b), f"{name}: the resumed run differs from the uninterrupted one"


# ---------------------------------------------------------------------------------------
# Config errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("edit,field,msg", [
    (lambda c: setattr(c.train.sampler, "name", "nope"), "config.train.sampler.name", "allowed"),
    (lambda c: setattr(c.train.sampler, "options", {"fraction": 0.1}), "config.train.sampler.options",
     "takes no options"),
    (lambda c: (setattr(c.train.sampler, "name", "fixed_subset"), setattr(c.train.sampler, "options", {"frac": 1})),
     "config.train.sampler.options", r"unknown option\(s\) \['frac'\]"),
    (lambda c: (setattr(c.train.sampler, "name", "fixed_subset"), setattr(c.train.sampler, "options",
                                                                         {"fraction": 2.0})),
     "config.train.sampler.options", r"must be in \(0, 1\]"),
    (lambda c: setattr(c.schedule, "name", "vp_cosine"), "config.schedule.name", "no noise schedule"),
    (lambda c: setattr(c.model, "network", "unet"), "config.model.network", "allowed"),
    (lambda c: setattr(c.model, "class_conditional", True), "config.model.class_conditional", "predicts the labels"),
])
def test_bad_sampler_and_classifier_fields_are_one_config_error(edit, field, msg):
    c = train_classify_digits.get_config()
    edit(c)
    with pytest.raises(ConfigError, match=msg) as e:
        trainer.setup(c)
    assert e.value.path == field


def test_a_sampler_needs_a_finite_data_set_held_in_memory():
    from configs import train_gmm2d

    c = train_gmm2d.get_config()
    c.train.sampler.name = "uniform"
    with pytest.raises(ConfigError, match=r"picks examples of a finite data set held in memory.*'gmm2d' has none"):
        trainer.setup(c)


def test_step_info_is_the_stats_structure_of_a_train_step():
    info = step_info(4)
    assert set(info) == {"indices", "loss", "grad_norm", "learning_rate", "step", "valid"}
    assert info["indices"].shape == (4,) and not bool(info["valid"])
