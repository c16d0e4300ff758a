"""Model-dependent solvers (Solver.prepare / bind / t_start) through the library and the
runner: sample() refuses an unprepared solver, the runner prepares once per model and
setting, caches the statistics in the workdir, and builds the grid from t_start."""
import os
from typing import Optional

import jax
import numpy as np
import pytest

import samplax as sx
from samplax import experiment
from samplax.experiment import runner
from samplax.solvers import ModelData, model_data, prepare_solver, registry
from samplax.solvers.multistep import ddim

CALLS = []


def stats_ddim(afs: bool = False, n_stats: int = 64, t_switch: Optional[float] = None):
    """DDIM with a dummy statistic (the data mean) and an optional first grid node."""
    base = ddim(afs=afs)

    def prepare(model, data: ModelData):
        CALLS.append(n_stats)
        return {"mean": data.samples(n_stats, 0).mean(0)}

    def bind(stats):
        assert stats["mean"].shape == (2,)
        return base._replace(t_start=t_switch)
    return base._replace(name="stats_ddim", prepare=prepare, bind=bind)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(registry.SOLVERS, "stats_ddim", stats_ddim)
    CALLS.clear()


def _cfg(**options):
    c = experiment.sample_config()
    c.solver.name, c.nfe, c.n_samples, c.seed = "stats_ddim", 5, 200, 4
    c.solver.options = options
    c.metrics.reference_steps = 50
    c.metrics.save_samples = 200
    return c


def test_library_prepare(registered):
    gmm, schedule, _ = sx.load_problem("gmm2d")
    model = gmm.model(schedule)
    s = stats_ddim()
    grid = sx.time_grid(schedule, 4, "logsnr")
    with pytest.raises(ValueError, match="prepare_solver"):
        sx.sample(s, model, np.zeros((3, 2), np.float32), grid)
    bound = prepare_solver(s, model, model_data(gmm=gmm))
    assert bound.prepare is None and CALLS == [64]
    x, _ = sx.sample(bound, model, np.ones((3, 2), np.float32), grid)
    ref, _ = sx.sample(ddim(), model, np.ones((3, 2), np.float32), grid)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(ref))
    mean, cov = model_data(gmm=gmm).moments()
    np.testing.assert_allclose(mean, np.asarray(gmm.mean()), atol=1e-6)
    with pytest.raises(ValueError, match="only 2 data points"):
        prepare_solver(s, model, np.zeros((2, 2)))


def test_runner_prepares_once_caches_and_starts_at_t_start(registered, tmp_path):
    (row,) = experiment.run_sample(_cfg(), str(tmp_path / "a"))
    assert CALLS == [64] and row["prepared"]["cached"] is False
    key = row["prepared"]["key"]
    assert os.path.exists(tmp_path / "a" / runner.STATS_DIR / f"{key}.npz")
    # the row equals plain DDIM on the same grid and seed
    gmm, schedule, _ = sx.load_problem("gmm2d")
    grid = sx.time_grid(schedule, 5, "logsnr")
    x0, _ = jax.jit(lambda k: sx.generate(ddim(), gmm.model(schedule), grid, k, 200, (2,)))(jax.random.PRNGKey(4))
    np.testing.assert_allclose(np.load(tmp_path / "a" / row["samples_file"]), np.asarray(x0), atol=2e-6)
    # a second context finds the statistics in the workdir and does not recompute them
    ctx = runner._Context(dict(chunk_size=65536), str(tmp_path / "a"), True)
    loaded = experiment.loading.load_model(runner.model_section(row), np.float32)
    _, rec = runner._prepared_solver(ctx, stats_ddim(), loaded, row)
    assert rec == dict(key=key, cached=True, seconds=0.0) and CALLS == [64]
    # another statistic setting is another cache entry; t_start moves the grid's first node
    (row2,) = experiment.run_sample(_cfg(n_stats=32, t_switch=0.5), str(tmp_path / "b"))
    assert CALLS == [64, 32] and row2["prepared"]["key"] != key
    grid = sx.time_grid(schedule, 5, "logsnr", t_max=0.5)
    x0, _ = jax.jit(lambda k: sx.generate(ddim(), gmm.model(schedule), grid, k, 200, (2,)))(jax.random.PRNGKey(4))
    np.testing.assert_allclose(np.load(tmp_path / "b" / row2["samples_file"]), np.asarray(x0), atol=2e-6)
