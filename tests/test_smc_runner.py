"""Particle samplers through the experiment layer: a Solver with ``smc`` runs as grouped SMC in
the runner, its row carries the SMC record and the metrics against its exact target, its samples
equal a direct diffusion_smc call and do not depend on the chunking, and configs that split a
group are refused by name.  A small tilted-ancestral kernel stands in for the methods."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.experiment import run_sample, sample_config
from samplax.experiment.runner import run as run_experiment
from samplax.experiment.errors import ConfigError
from samplax.smc.diffusion import Kernel, diffusion_smc
from samplax.smc.samplers import smc_solver
from samplax.smc.targets import MixtureTarget
from samplax.solvers import registry
from samplax.solvers.base import Solver


def _kernel(a):
    def init(model, grid, x):
        return (), jnp.zeros(x.shape[0], x.dtype)

    def step(model, grid, i, x, aux, key):  # DDPM ancestral step, then a tilt exp(a x[0] / n) per step
        x0, eps = model.data_noise(x, grid.t[i])
        a_n, s_n = grid.alpha[i + 1], grid.sigma[i + 1]
        h = grid.lam[i + 1] - grid.lam[i]
        std = s_n * jnp.sqrt(-jnp.expm1(-2.0 * h))
        z = jax.random.normal(key, x.shape, x.dtype)
        x_next = a_n * x0 + jnp.sqrt(jnp.maximum(s_n**2 - std**2, 0.0)) * eps + std * z
        return x_next, aux, a * x_next[:, 0] / grid.n_steps

    return Kernel(init, step, "tilt")


def toy_tilt(a: float = 1.0, particles: int = 8, resampling: str = "systematic", ess_threshold: float = 0.5,
             afs: bool = False) -> Solver:
    return smc_solver("toy_tilt", lambda: _kernel(a), num_particles=particles, resampling=resampling,
                      ess_threshold=ess_threshold, exact_target=lambda gmm, schedule: MixtureTarget(gmm))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.SOLVERS, "toy_tilt", toy_tilt)


def _config(**kw):
    c = sample_config()
    c.model.name = "gmm2d"
    c.solver.name = "toy_tilt"
    c.solver.options.particles = 8
    c.solver.options.a = 2.0
    c.solver.options.ess_threshold = 0.9
    c.nfe = 12
    c.n_samples = 64
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_runner_rows_match_a_direct_call_and_ignore_the_chunking(toy, tmp_path):
    c = _config()
    c.metrics.save_samples = 64
    (row,) = run_experiment(c, str(tmp_path / "a"), expect="sample", report=False)  # (reports: other tests)
    c2 = _config(chunk_size=16)
    c2.metrics.save_samples = 64
    (row2,) = run_experiment(c2, str(tmp_path / "b"), expect="sample", report=False)
    xa = np.load(tmp_path / "a" / row["samples_file"])
    xb = np.load(tmp_path / "b" / row2["samples_file"])
    assert xa.shape == (64, 2) and xb.shape == (16, 2)  # samples are saved from the first chunk
    np.testing.assert_allclose(xa[:16], xb, rtol=0, atol=1e-6)  # groups are keyed by their index, not the chunk
    assert row["nfe_actual"] == 12 and row["n_steps"] == 12
    smc = row["smc"]
    assert smc["particles"] == 8 and smc["groups"] == 8 and smc["resampling"] == "systematic" and smc["ess_threshold"] == 0.9
    assert 0 < smc["ess_min_mean"] <= 1 and smc["resample_rate"] > 0 and smc["invalid_groups"] == 0
    t = row["target"]
    assert row["metrics"]["target_tv"] == t["label_tv"] and "mean_l2" not in row["metrics"]
    assert t["n"] == 64 and t["chi2_n"] == 8 and set(t) >= {"chi2_p", "label_tv", "mean_err", "cov_err", "sw2"}
    # the same numbers from a direct call: the runner's prior (key) and solver key
    import samplax as sx
    gmm, schedule, _ = sx.load_problem("gmm2d")
    grid = sx.time_grid(schedule, 12, "logsnr", end="zero")
    seed = row["seed"]
    from samplax.experiment.runner import _prior_chunk
    x_T = _prior_chunk(jnp.asarray([seed], jnp.uint32), jnp.arange(64, dtype=jnp.int32), (2,), jnp.float32)[0]
    k = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    x, info = diffusion_smc(_kernel(2.0), gmm.model(schedule), x_T, grid, k, num_particles=8, ess_threshold=0.9)
    np.testing.assert_allclose(np.asarray(x), xa, rtol=0, atol=2e-5)
    np.testing.assert_allclose(float(np.mean(np.asarray(info.log_Z))), smc["log_Z_mean"], rtol=1e-4, atol=1e-5)


def test_configs_that_split_a_group_are_refused(toy, tmp_path):
    with pytest.raises(ConfigError, match="config.n_samples"):
        run_sample(_config(n_samples=60), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="config.chunk_size"):
        run_sample(_config(chunk_size=12), str(tmp_path / "b"))
    c = _config()
    c.grid.end = "denoise"
    with pytest.raises(ConfigError, match="config.grid.end"):
        run_sample(c, str(tmp_path / "c"))
    c = _config()
    c.solver.options.particles = 0
    with pytest.raises(ConfigError, match="particles"):
        run_sample(c, str(tmp_path / "d"))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("results.jsonl"))
