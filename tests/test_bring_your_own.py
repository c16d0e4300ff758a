"""Bring your own model, schedule, data set and network (docs/experiments.md).

A user module *outside the package* (a copy of examples/user_models.py in a temporary
folder) is named in configs and run through the command line from another directory:
sampled, swept and trained, and a network with plain Flax parameters in an Orbax
checkpoint samplax did not write is sampled.  Bad factories get one clear error."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax import experiment
from samplax.experiment import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("user_code")
    shutil.copy(os.path.join(REPO, "examples", "user_models.py"), d / "my_models.py")
    return d


def _env(user_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(user_dir), REPO, env.get("PYTHONPATH")) if p)
    return env


def cli(user_dir, cwd, module, *args, timeout=300):
    """python -m experiments.<module> run from ``cwd`` (not the checkout)."""
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=cwd, env=_env(user_dir),
                          capture_output=True, text=True, timeout=timeout)


def _rows(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def on_path(user_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(user_dir))
    return user_dir


def _gaussian_config(**over):
    c = experiment.sample_config()
    c.model.name = "gaussian"
    c.model.factory = "my_models:gaussian_model"
    c.model.data = "my_models:gaussian_data"
    c.n_samples = 512
    c.nfe = 10
    for k, v in over.items():
        *parents, leaf = k.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def test_cli_sample_and_sweep_a_user_model_from_another_directory(user_dir, tmp_path):
    """The exact Gaussian of the user module, sampled and swept through the CLI from a
    directory that is not the checkout: its samples match its data (sw2 at the noise
    floor), and the rows name the factory and its source digest."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    w = tmp_path / "sample"
    out = cli(user_dir, cwd, "sample", f"--config={REPO}/configs/gmm.py", f"--workdir={w}",
              "--config.model.name=gaussian", "--config.model.factory=my_models:gaussian_model",
              "--config.model.data=my_models:gaussian_data", "--config.n_samples=1024", "--config.nfe=10",
              "--config.solver.name=unipc")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = _rows(w)
    assert row["user_model"]["factory"] == "my_models:gaussian_model"
    assert row["model_source"]["source_sha1"] and len(row["model_source"]["source_sha1"]) == 12
    assert row["metrics"]["sw2"] < 3 * row["reference"]["sw2_floor"], row["metrics"]
    assert row["warning"] is None and row["nfe_actual"] == 10

    ws = tmp_path / "sweep"
    out = cli(user_dir, cwd, "sweep", f"--config={REPO}/configs/sweep_quick.py", f"--workdir={ws}",
              "--config.model.name=gaussian", "--config.model.factory=my_models:gaussian_model",
              "--config.model.data=my_models:gaussian_data", "--config.model.args.std=0.25",
              "--config.n_samples=256")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(ws)
    assert len(rows) >= 4 and all(r["user_model"]["args"] == {"std": 0.25} for r in rows)
    assert all(r["metrics"]["sw2"] is not None for r in rows)


def test_user_schedule_on_an_analytic_model_is_exact(on_path, tmp_path):
    """gmm2d under the user's schedule: the exact model under that schedule, with mean_l2
    against the exact PF-ODE of the same schedule (converges as the NFE grows)."""
    c = experiment.sample_config()
    c.n_samples = 256
    c.model.schedule = "my_models:my_schedule"
    c.model.schedule_args = {"beta_max": 12.0}
    c.solver.name = "unipc"
    c.solver.order = 3
    errs = []
    for nfe in (8, 16):
        c.nfe = nfe
        (row,) = experiment.run_sample(c, str(tmp_path / f"w{nfe}"))
        assert row["user_model"]["schedule"] == "my_models:my_schedule"
        errs.append(row["metrics"]["mean_l2"])
    assert errs[1] < errs[0] / 3, errs


def test_plain_orbax_params_of_a_user_network(on_path, tmp_path):
    """Flax parameters saved by the user with Orbax (not by samplax) are restored by path
    and step and passed to the factory; the samples equal samplax.generate's with those
    parameters."""
    import orbax.checkpoint as ocp

    import my_models

    net = my_models.TinyNet(hidden=16)
    params = net.init(jax.random.PRNGKey(3), jnp.zeros((1, 2)), jnp.zeros((1,)))
    ckpt_dir = tmp_path / "user_ckpt"
    with ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(create=True)) as mngr:
        for step in (5, 10):
            mngr.save(step, args=ocp.args.StandardSave(jax.tree.map(lambda a: a * step / 10, params)))
        mngr.wait_until_finished()
    c = _gaussian_config(**{"model.factory": "my_models:tiny_net_model", "model.args": {"hidden": 16},
                            "model.checkpoint": str(ckpt_dir), "model.step": 10, "n_samples": 64, "nfe": 5,
                            "metrics.save_samples": 64})
    w = tmp_path / "w"
    (row,) = experiment.run_sample(c, str(w))
    assert row["user_model"]["checkpoint"] == str(ckpt_dir) and row["user_model"]["step"] == 10
    got = np.load(w / row["samples_file"])
    model = my_models.tiny_net_model(params, hidden=16)
    solver = sx.get_solver("dpm_solver_pp")
    grid = sx.time_grid(model.schedule, sx.steps_for_nfe(solver, 5, "zero"), "logsnr", end="zero")
    want = sx.generate(solver, model, grid, jax.random.PRNGKey(0), 64, (2,))
    want = np.asarray(want[0] if isinstance(want, tuple) else want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the latest step when none is given; another step is another row
    c.model.step = None
    (latest,) = experiment.run_sample(c, str(tmp_path / "w2"))
    assert latest["user_model"]["step"] == 10
    c.model.step = 7
    with pytest.raises(ConfigError, match=r"config.model.step: .* has no step 7; allowed: \[5, 10\]"):
        experiment.make_plan(c)


@pytest.mark.parametrize("over, path, words", [
    ({"model.factory": "no_such_module_xyz:f"}, "config.model.factory", ("not importable",)),
    ({"model.factory": "my_models"}, "config.model.factory", ("package.module:callable",)),
    ({"model.factory": "my_models:nothing_here"}, "config.model.factory", ("has no attribute", "gaussian_model")),
    ({"model.factory": "my_models:gaussian_data"}, "config.model.factory", ("must return a samplax DiffusionModel",
                                                                           "Dataset")),
    ({"model.args": {"sigma": 1.0}}, "config.model.args", ("do not fit", "std")),
    ({"model.data": "my_models:gaussian_model"}, "config.model.data", ("must return a samplax.data.Dataset",)),
    ({"model.data": None}, "config.model.shape", ("one sample's shape is needed",)),
    ({"model.shape": (3,)}, "config.model.shape", ("(3,)", "(2,)")),
    ({"model.schedule": "my_models:gaussian_data"}, "config.model.schedule", ("NoiseSchedule",)),
    ({"model.factory": None, "model.name": "gaussian", "model.data": None}, "config.model.name",
     ("unknown model 'gaussian'", "gmm2d")),
])
def test_bad_user_factories_are_config_errors(on_path, tmp_path, over, path, words):
    c = _gaussian_config(**over)
    w = tmp_path / "untouched"
    with pytest.raises(ConfigError) as e:
        experiment.run_sample(c, str(w))
    assert str(e.value).startswith(path + ":"), str(e.value)
    for word in words:
        assert word in str(e.value), str(e.value)
    assert not w.exists()


def test_cli_train_a_user_network_on_user_data_then_sample_it(user_dir, tmp_path):
    """Data set, schedule and Flax network from the user module, trained through the CLI,
    then the trained checkpoint sampled through the CLI by its data label."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    wt = tmp_path / "train"
    out = cli(user_dir, cwd, "train", f"--config={REPO}/configs/train_gmm2d.py", f"--workdir={wt}",
              "--config.data.name=gaussian", "--config.data.factory=my_models:gaussian_data",
              "--config.schedule.name=mine", "--config.schedule.factory=my_models:my_schedule",
              "--config.model.factory=my_models:tiny_net", "--config.train.num_steps=1000",
              "--config.train.batch_size=128", "--config.train.checkpoint_every=500", "--config.train.log_every=500",
              "--config.optim.warmup_steps=20", "--config.optim.learning_rate=3e-3", "--config.train.sample_every=0",
              "--config.train.sample_count=0")
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.load(open(wt / "config.json"))
    assert saved["config"]["model"]["factory"] == "my_models:tiny_net"
    ws = tmp_path / "sample"
    out = cli(user_dir, cwd, "sample", f"--config={REPO}/configs/gmm.py", f"--workdir={ws}",
              "--config.model.name=gaussian", f"--config.model.checkpoint={wt}", "--config.n_samples=512",
              "--config.nfe=20")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = _rows(ws)
    assert row["trained"]["step"] == 1000
    # 1000 steps of a 2-layer net learn where the data N((1, -1), 0.5^2 I) is, not its spread
    # (measured: mean (1.26, -1.22), sd 0.83): the samples left the prior's N(0, I) for the data
    x = np.load(ws / row["samples_file"])
    assert np.all(np.abs(x.mean(0) - np.array([1.0, -1.0])) < 0.5), x.mean(0)
    assert np.all((x.std(0) > 0.3) & (x.std(0) < 1.0)), x.std(0)
    assert row["metrics"]["sw2"] is not None and row["warning"] is None
