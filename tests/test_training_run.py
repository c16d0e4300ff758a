"""Training runs end to end: kill -9 and resume, refusing another model's checkpoint,
data-parallel training, and sampling the trained network through the experiment runner."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from samplax.experiment import WorkdirConflict, run_sample, sample_config
from samplax.experiment.checkpoints import CheckpointMismatch
from configs import train_gmm2d
from helpers import set_dotted
from samplax.experiment.config import ConfigError
from samplax.experiment.runner import run as run_experiment
from samplax.experiment.trainer import load_trained, run_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small, fast run of configs/train_gmm2d.py
OVERRIDES = dict(num_steps=1500, batch_size=64, log_every=50, checkpoint_every=100, sample_count=0, sample_every=0)
HIDDEN = (32, 32)


def small_config(**train):
    c = train_gmm2d.get_config()
    c.model.mlp.hidden = HIDDEN
    c.optim.warmup_steps = 20
    for k, v in dict(OVERRIDES, **train).items():
        setattr(c.train, k, v)
    return c


def cli(workdir, hidden=HIDDEN, **train):
    args = [sys.executable, "-m", "experiments.train", "--config=configs/train_gmm2d.py", f"--workdir={workdir}",
            "--config.model.mlp.hidden=" + ",".join(map(str, hidden)), "--config.optim.warmup_steps=20"]
    args += [f"--config.train.{k}={v}" for k, v in dict(OVERRIDES, **train).items()]
    return args


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH", "")])
    return env


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _complete_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    killed = str(tmp_path / "killed")
    n = 600  # killed once step 300 is saved: the rerun resumes mid-way and rewrites the log's tail
    proc = subprocess.Popen(cli(killed, num_steps=n), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not [s for s in _complete_steps(killed) if s >= 300]:
            assert proc.poll() is None, "the training process ended before it could be killed"
            time.sleep(0.02)
        still_running = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert still_running and proc.returncode == -signal.SIGKILL
    at_kill = _complete_steps(killed)
    assert at_kill and max(at_kill) < n, at_kill

    out = subprocess.run(cli(killed, num_steps=n), cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(os.path.join(killed, "train_summary.json")) as f:
        summary = json.load(f)
    assert max(at_kill) <= summary["resumed_from"] < n
    assert "resuming from the checkpoint of step" in out.stderr

    plain = str(tmp_path / "plain")
    run_train(small_config(num_steps=n), plain)
    a, b = load_trained(killed, which="params"), load_trained(plain, which="params")
    assert a.step == b.step == n
    assert _same(a.params, b.params), "resumed run differs from the uninterrupted one"
    assert _same(load_trained(killed).params, load_trained(plain).params), "EMA parameters differ"
    # the log has each interval once: rows written after the last checkpoint were rewritten
    with open(os.path.join(killed, "train_log.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == list(range(50, n + 1, 50))
    # only the last keep_checkpoints are kept
    assert _complete_steps(killed) == [400, 500, 600]


def test_a_checkpoint_of_another_model_config_is_refused(tmp_path):
    wd = str(tmp_path / "run")
    run_train(small_config(num_steps=40, checkpoint_every=20, log_every=20), wd)
    other = small_config(num_steps=40, checkpoint_every=20, log_every=20)
    other.model.mlp.hidden = (16, 16)
    with pytest.raises(WorkdirConflict, match=r"config\.model\.mlp\.hidden"):
        run_train(other, wd)
    # without the saved config the checkpoint itself refuses, naming the field
    os.remove(os.path.join(wd, "config.json"))
    before = _complete_steps(wd)
    with pytest.raises(CheckpointMismatch, match=r"model\.mlp\.hidden.*\[32, 32\].*\[16, 16\]"):
        run_train(other, wd)
    assert _complete_steps(wd) == before  # nothing overwritten

    # the command line: one message, exit status 2
    assert not os.path.exists(os.path.join(wd, "config.json"))  # the refused run wrote nothing
    out = subprocess.run(cli(wd, hidden=(16, 16), num_steps=40, checkpoint_every=20, log_every=20),
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error:" in out.stderr and "different model config" in out.stderr


@pytest.mark.parametrize("field, value, msg", [
    ("loss.objective", "edm", "config.loss.objective"),
    ("model.network", "unet", "config.model.network"),
    ("train.batch_size", 0, "config.train.batch_size"),
    ("optim.warmup_steps", 5000, "config.optim.warmup_steps"),
    ("schedule.name", "cosine", "config.schedule.name"),
    ("data.name", "mnist", "config.data.name"),
])
def test_bad_training_configs_name_the_field(tmp_path, field, value, msg):
    c = small_config()
    section, name = field.split(".")
    setattr(getattr(c, section), name, value)
    with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
        run_train(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_data_parallel_training_equals_single_device(tmp_path):
    """8 simulated devices (batch split 8 ways, gradients reduced by XLA) vs 1 device."""
    one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
    kw = dict(num_steps=60, checkpoint_every=60, log_every=20)
    run_train(small_config(**kw), one)
    script = textwrap.dedent(f"""
        import jax
        assert jax.device_count() == 8, jax.devices()
        from tests.test_training_run import small_config
        from samplax.experiment.trainer import run_train
        s = run_train(small_config(**{kw!r}), {eight!r})
        assert s["n_devices"] == 8, s
    """)
    env = _env()
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = load_trained(one, which="params"), load_trained(eight, which="params")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5)


def test_trained_gmm2d_network_samples_next_to_the_exact_model(tmp_path):
    """A network trained on gmm2d samples goes through the sampling runner with the
    same metrics as the exact model (mean_l2 to the exact ODE solution, sw2, log density)."""
    train = str(tmp_path / "train")
    c = small_config(num_steps=1500, batch_size=256, checkpoint_every=1500, log_every=500)
    c.model.mlp.hidden = (128, 128)
    c.optim.learning_rate = 3e-3
    run_train(c, train)
    rows = {}
    for name, ckpt in (("exact", None), ("trained", train)):
        s = sample_config()
        s.model.checkpoint = ckpt
        s.n_samples = 2048
        s.nfe = 20
        # 200 RK4 steps for the exact reference: ~1e-8 from the default 1000, against errors of
        # 1e-2 to 1e-1 here (and no report: its plots are tested elsewhere)
        s.metrics.reference_steps = 200
        rows[name] = run_experiment(s, str(tmp_path / name), expect="sample", report=False)[0]
    t, e = rows["trained"], rows["exact"]
    assert t["trained"]["checkpoint"] == os.path.abspath(train) and t["trained"]["step"] == 1500
    assert "trained" not in e
    assert t["nfe_actual"] == e["nfe_actual"] == 20
    # the network is an approximation: worse than the exact model, but close to the data
    assert e["metrics"]["mean_l2"] < 0.05
    assert 2 * e["metrics"]["mean_l2"] < t["metrics"]["mean_l2"] < 0.5
    # its samples are near the data (sw2 within 2x the noise floor of two exact sample sets)
    # but put mass between the narrow components, where the exact log density is low
    assert t["metrics"]["sw2"] < 2 * t["reference"]["sw2_floor"]
    assert np.isfinite(t["metrics"]["mean_log_density"])
    assert t["metrics"]["mean_log_density"] < e["metrics"]["mean_log_density"]
    # a guidance scale needs a class-conditional network
    s = sample_config()
    s.model.checkpoint = train
    s.model.guidance = 2.0
    with pytest.raises(ConfigError, match=r"config\.model\.guidance"):
        run_sample(s, str(tmp_path / "guided"))


def test_sampling_a_learned_only_model_needs_a_checkpoint(tmp_path):
    s = sample_config()
    s.model.name = "digits"
    with pytest.raises(ConfigError, match=r"config\.model\.checkpoint.*learned"):
        run_sample(s, str(tmp_path / "x"))
    s.model.checkpoint = str(tmp_path)
    with pytest.raises(ConfigError, match=r"config\.model\.checkpoint.*not a training workdir"):
        run_sample(s, str(tmp_path / "x"))


def test_digits_unet_samples_through_the_runner_with_fd_and_guidance(tmp_path):
    """A (briefly trained) class-conditional U-Net on digits: the runner reports the
    Frechet distance against the test split next to the training split's floor, and
    classifier-free guidance gives sample i the class i mod 10 (the classifier agrees
    more often than chance even after a short training)."""
    from configs import train_digits
    from configs import digits as digits_cfg
    from samplax.models.classifier import digits_predict, load_or_train_digits_classifier

    c = train_digits.get_config()
    for field, value in {"model.unet.channels": (16, 32), "model.unet.embed_dim": 32, "train.num_steps": 300,
                         "train.batch_size": 64, "train.checkpoint_every": 300, "train.log_every": 100,
                         "train.sample_count": 20, "train.sample_every": 0, "optim.warmup_steps": 20,
                         "optim.ema_decay": 0.99}.items():
        set_dotted(c, field, value)
    train = str(tmp_path / "train")
    run_train(c, train)
    # the preview: a grid of 20 samples, two per class, drawn with the EMA parameters
    assert os.listdir(os.path.join(train, "samples")) == ["step_0000300.png"]
    rows = {}
    # the guided run only: its row carries the FD, the floor and the classifier checks as an
    # unguided one would (unguided trained-network sampling is covered on gmm2d and two moons)
    for name, w in (("guided", 3.0),):
        s = digits_cfg.get_config()
        s.model.checkpoint = train
        s.model.guidance = w
        s.n_samples = 200
        s.metrics.max_sw_samples = 200
        s.metrics.save_samples = 200
        s.nfe = 10
        rows[name] = run_sample(s, str(tmp_path / name))[0]
    for r in rows.values():
        assert r["nfe_actual"] == 10
        assert r["reference"]["classifier_test_accuracy"] > 0.95
        assert 0 < r["reference"]["fd_floor"] < r["metrics"]["fd"]
        assert r["n_nonfinite"] == 0
    assert rows["guided"]["trained"]["guidance"] == 3.0
    # the guided samples carry their labels i mod 10
    x = np.load(os.path.join(tmp_path, "guided", rows["guided"]["samples_file"]))
    from samplax.experiment.cache import cache_dir
    params, _ = load_or_train_digits_classifier(cache_dir())  # the one the runner just used (no retraining)
    pred = np.asarray(digits_predict(params, x))
    agree = float(np.mean(pred == np.arange(len(x)) % 10))
    # chance is 0.1 with a binomial std of 0.021 for 200 samples: 0.2 is 4.7 std above it
    # (0.30 when written, after only 300 training steps)
    assert agree > 0.2, agree


@pytest.mark.parametrize("objective, schedule, solver, nfe", [("edm", "edm", "heun", 19),
                                                              ("flow", "flow", "dpm_solver_pp", 20)])
def test_edm_and_flow_matching_models_sample_two_moons(tmp_path, objective, schedule, solver, nfe):
    """EDM (sigma up to 80: x_T must be drawn with std prior_std ~ 80) and flow matching
    on two moons: 2000 steps put the samples near the data (sliced W2 0.11 and 0.06 when
    written; 0.64 with x_T ~ N(0, I) under EDM), through the runner's sw2 metric."""
    c = small_config(num_steps=2000, batch_size=256, checkpoint_every=2000, log_every=1000)
    for field, value in {"data.name": "two_moons", "schedule.name": schedule, "loss.objective": objective,
                         "model.mlp.hidden": (128, 128), "train.sample_count": 500}.items():
        set_dotted(c, field, value)
    run_train(c, str(tmp_path / "train"))
    assert os.listdir(tmp_path / "train" / "samples") == ["step_0002000.png"]  # a 2-D scatter
    s = sample_config()
    for field, value in {"model.name": "two_moons", "model.checkpoint": str(tmp_path / "train"),
                         "solver.name": solver, "nfe": nfe, "n_samples": 2048}.items():
        set_dotted(s, field, value)
    r = run_sample(s, str(tmp_path / "sample"))[0]
    assert r["nfe_actual"] == nfe
    assert r["metrics"]["sw2"] < 0.2, r["metrics"]
    assert r["reference"]["sw2_floor"] < 0.05
