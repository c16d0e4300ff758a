"""The runner against exact answers: rows equal the library's own sampler, chunking
and padding change nothing, the official numbers come out of a config, NFEs are
measured, devices (1 vs 8) agree, memory stays bounded, multi-host path."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax import experiment
from samplax.experiment import devices, nfe, results
from samplax.experiment.runner import _problem_stream
from samplax.solvers.registry import SOLVERS, solver_options
from helpers import set_dotted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(**over):
    c = experiment.sample_config()
    c.n_samples = 300
    c.nfe = 6
    c.metrics.reference_steps = 100
    c.metrics.max_l2_samples = 256
    c.metrics.max_sw_samples = 256
    c.metrics.save_samples = 300
    for k, v in over.items():
        set_dotted(c, k, v)
    return c


def _samples(workdir, row):
    return np.load(os.path.join(workdir, row["samples_file"]))


@pytest.mark.parametrize("name", ["ddim_eta", "unipc"])
def test_rows_equal_library_generate_and_chunking_changes_nothing(tmp_path, name):
    """Samples of a run = samplax.generate with the same seed (x_T and solver noise from
    fold_in(seed, global index)), whatever the chunk size (300 = 2 chunks of 256 with
    212 padded samples, or one chunk); the streamed log-density uses every sample once."""
    rows = {}
    for chunk in (256, 4096):
        cfg = small_config(**{"solver.name": name, "chunk_size": chunk, "seed": 3})
        (rows[chunk],) = experiment.run_sample(cfg, str(tmp_path / f"c{chunk}"))
    gmm, schedule, _ = sx.load_problem("gmm2d")
    solver = sx.get_solver(name)
    grid = sx.time_grid(schedule, sx.steps_for_nfe(solver, 6, "zero"), "logsnr", end="zero")
    x0, _ = jax.jit(lambda k: sx.generate(solver, gmm.model(schedule), grid, k, 300, (2,)))(jax.random.PRNGKey(3))
    x0 = np.asarray(x0)
    whole = _samples(tmp_path / "c4096", rows[4096])
    first = _samples(tmp_path / "c256", rows[256])
    assert whole.shape == (300, 2) and first.shape == (256, 2)  # saved samples stop at the first chunk
    np.testing.assert_allclose(whole, x0, rtol=0, atol=2e-6)
    np.testing.assert_allclose(first, x0[:256], rtol=0, atol=2e-6)
    exact_lp = float(np.mean(np.asarray(gmm.log_prob_ve(jnp.asarray(x0), 0.0))))
    for r in rows.values():
        assert r["n_nonfinite"] == 0 and r["first_nonfinite_step"] is None
        assert r["nfe_actual"] == 6
        assert abs(r["metrics"]["mean_log_density"] - exact_lp) < 1e-5 * max(1.0, abs(exact_lp))
    assert rows[256]["n_chunks"] == 2 and rows[4096]["n_chunks"] == 1


def test_official_number_from_a_config(tmp_path):
    """UniPC-bh2 order 2 (official constants), 9 time-quadratic steps + denoise, on the
    problem's own start points in float64: the official code's 0.03496 (see
    test_solver_reproduction) comes out of the experiment system's mean_l2."""
    c = experiment.sample_config()
    c.solver.name = "unipc"
    c.solver.order = 2
    c.solver.options = dict(variant="bh2", official_rhos=True, max_step_ratio=None, max_step=None)
    c.grid.spacing, c.grid.end = "time_quadratic", "denoise"
    c.nfe, c.prior, c.dtype, c.n_samples = 10, "problem", "float64", 4096
    # 300 RK4 steps (x2, Richardson): 6e-9 mean L2 from a 2000-step solve on these 4096 points,
    # 6000x below the 1e-3 x 0.03496 tolerance (1000 steps: 3.3x the time)
    c.metrics.reference_steps = 300
    c.metrics.save_samples = 0
    (row,) = experiment.run_sample(c, str(tmp_path))
    assert row["n_steps"] == 9 and row["nfe_actual"] == 10
    assert abs(row["metrics"]["mean_l2"] / 0.03496 - 1) < 1e-3, row["metrics"]
    assert row["samples_file"] is None


def test_problem_prior_chunks_continue_the_numpy_stream():
    _, _, info = sx.load_problem("gmm64d")
    full = sx.problem_start_points(info, 1000)
    parts = [_problem_stream(info, a).standard_normal((min(a + 384, 1000) - a, info["dim"]))
             for a in range(0, 1000, 384)]
    np.testing.assert_array_equal(np.concatenate(parts), full)


# "schedule" needs a file (test_solver_tables); dpm_solver_v3 / teleport / minority are prepared (test_prepared_solvers,
# test_guided_solvers and their own tests); dpm_solver_adaptive's NFE is data-dependent, spent in a while loop (exact
# count: tests/test_adaptive.py); the particle samplers fkc / dps / tds have no AFS and count gradient passes
# (test_smc_runner, test_smc_fkc, test_smc_posterior)
NOT_HERE = {"schedule", "dpm_solver_v3", "teleport", "dpm_solver_adaptive", "minority", "fkc", "dps", "tds"}


@pytest.mark.parametrize("name", sorted(set(SOLVERS) - NOT_HERE))
def test_measured_nfe_equals_declared(name):
    """The model evaluations counted in the traced program equal solver.nfe for every
    solver, every end, with and without AFS."""
    gmm, schedule, _ = sx.load_problem("gmm2d")
    model = gmm.model(schedule)
    orders = [None]
    if "order" in solver_options(name):
        orders = experiment.plan.allowed_orders(name)
    for order in orders:
        for afs in (False, True):
            solver = sx.get_solver(name, afs=afs, **({} if order is None else {"order": order}))
            for end in ("zero", "denoise", "t_min"):
                n = max(solver.min_steps, 4)
                grid = sx.time_grid(schedule, n, "logsnr", end=end)
                assert nfe.count_model_evaluations(solver, model, grid) == solver.nfe(n, end), (name, order, afs, end)


def test_nonfinite_samples_are_reported(tmp_path):
    """A sampler that blows up: metrics become null and the step is named (not silent NaN)."""
    # Force a non-finite sample: a model that returns NaN after t < 0.5 (wrap the registry entry).
    from samplax.experiment import registry

    orig = registry.MODELS["gmm2d"]

    def bad_loader(dtype):
        lm = orig(dtype)
        apply = lm.model.apply

        def broken(params, x, t):
            x0, eps = apply(params, x, t)
            poison = jnp.where(jnp.asarray(t) < 0.5, jnp.nan, 0.0).astype(x.dtype)
            return x0 + poison, eps + poison
        return lm._replace(model=lm.model.replace(apply=broken))

    registry.MODELS["gmm2d"] = bad_loader
    try:
        (row,) = experiment.run_sample(small_config(**{"solver.name": "ddim", "grid.spacing": "time_uniform"}),
                                       str(tmp_path / "bad"))
    finally:
        registry.MODELS["gmm2d"] = orig
    assert row["n_nonfinite"] == 300
    assert row["metrics"]["mean_l2"] is None and row["metrics"]["sw2"] is None
    assert row["metrics"]["mean_log_density"] is None
    # time-uniform nodes 1, 0.8, 0.6, 0.4, ...: the model is first NaN at node 3 (evaluated at the
    # end of step 2); step 3 uses it, so x is first non-finite after step 3 (0-based)
    assert row["first_nonfinite_step"] == 3


def test_distributed_flag_calls_initialize_and_only_writer_writes(tmp_path, monkeypatch):
    calls = []
    assert devices.maybe_initialize_distributed(False, lambda: calls.append(1)) is False and calls == []
    assert devices.maybe_initialize_distributed(True, lambda: calls.append(1)) is True and calls == [1]
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append("jax"))
    rows = experiment.run_sample(small_config(distributed=True), str(tmp_path / "w0"))
    assert calls[-1] == "jax" and len(rows) == 1
    assert os.path.exists(tmp_path / "w0" / "results.jsonl")
    monkeypatch.setattr(devices, "is_writer", lambda: False)
    rows = experiment.run_sample(small_config(distributed=True), str(tmp_path / "w1"))
    assert len(rows) == 1 and rows[0]["metrics"]["mean_l2"] > 0
    assert not os.path.exists(tmp_path / "w1")  # a non-zero process writes nothing


def test_padded_chunk():
    assert devices.padded_chunk(65536, 1001, 8) == 1008
    assert devices.padded_chunk(100, 1001, 8) == 104
    assert devices.padded_chunk(65536, 64, 1) == 64


def _run_cli(args, env_extra=None, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_one_vs_eight_devices_agree(tmp_path):
    """Same config on 1 device (here) and on 8 simulated CPU devices (subprocess):
    n = 1001 is padded to a multiple of 8; per-sample fold_in keys make the samples agree."""
    over = ["--config.n_samples=1001", "--config.chunk_size=512", "--config.solver.name=ddim_eta",
            "--config.nfe=8", "--config.metrics.save_samples=512", "--config.metrics.reference_steps=100"]
    one = _run_cli(["experiments.sample", "--config=configs/gmm.py", f"--workdir={tmp_path / 'one'}", *over],
                   {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    eight = _run_cli(["experiments.sample", "--config=configs/gmm.py", f"--workdir={tmp_path / 'eight'}", *over],
                     {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert one.returncode == 0, one.stderr[-2000:]
    assert eight.returncode == 0, eight.stderr[-2000:]
    (r1,) = results.read_rows(str(tmp_path / "one" / "results.jsonl"))
    (r8,) = results.read_rows(str(tmp_path / "eight" / "results.jsonl"))
    assert r1["n_devices"] == 1 and r8["n_devices"] == 8 and r8["chunk"] == 512 and r8["n_chunks"] == 2
    assert r1["hash"] == r8["hash"]  # the device count is not part of a row's identity
    s1, s8 = _samples(tmp_path / "one", r1), _samples(tmp_path / "eight", r8)
    # float tolerance, not bitwise: XLA:CPU vectorises per-device shapes differently (one
    # element in ~1000 differs by a few float32 ulps after 8 steps)
    np.testing.assert_allclose(s8, s1, rtol=0, atol=2e-5)
    for k in ("mean_l2", "sw2", "mean_log_density"):
        assert abs(r8["metrics"][k] - r1["metrics"][k]) <= 1e-5 * max(1.0, abs(r1["metrics"][k])), k
    print(f"1 vs 8 devices: samples bitwise equal: {np.array_equal(s1, s8)}; "
          f"max |diff| = {np.abs(s1 - s8).max():.3g}")


@pytest.mark.slow
def test_million_samples_in_bounded_memory(tmp_path):
    """1,000,000 gmm2d samples in 65536-sample chunks: the peak RSS of the run exceeds
    that of a one-chunk run by less than 150 MB (the samples alone would be 8 MB in
    float32; what must not grow is everything per sample: keys, x_T, trajectories)."""
    over = ["--config.solver.name=ddim", "--config.nfe=5", "--config.metrics.reference_steps=50",
            "--config.metrics.max_l2_samples=1024", "--config.metrics.max_sw_samples=1024"]
    peak = {}
    for n in (65536, 1_000_000):
        code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
                "import absl.app\n"
                "try:\n    runpy.run_module('experiments.sample', run_name='__main__')\n"
                "except SystemExit as e:\n    assert not e.code, e.code\n"
                "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code, "experiments.sample", "--config=configs/gmm.py",
                              f"--workdir={tmp_path / str(n)}", f"--config.n_samples={n}", *over], cwd=REPO,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        peak[n] = int(out.stdout.split("MAXRSS_KB")[-1].split()[0]) / 1024
        (row,) = results.read_rows(str(tmp_path / str(n) / "results.jsonl"))
        assert row["n_samples"] == n and row["n_nonfinite"] == 0
    print(f"peak RSS: one chunk {peak[65536]:.0f} MB, 1M samples {peak[1_000_000]:.0f} MB")
    assert peak[1_000_000] - peak[65536] < 150, peak


def test_results_file_survives_a_truncated_line(tmp_path):
    path = str(tmp_path / "results.jsonl")
    results.append_row(path, dict(hash="a", x=1.0))
    results.append_row(path, dict(hash="b", x=float("nan")))
    with open(path, "ab") as f:
        f.write(b'{"hash": "c", "x": 3')  # a crash in the middle of a write
    rows = results.read_rows(path)
    assert [r["hash"] for r in rows] == ["a", "b"] and rows[1]["x"] is None  # NaN stored as null
    assert results.repair(path) == len(b'{"hash": "c", "x": 3')
    results.append_row(path, dict(hash="c", x=3))
    with open(path) as f:
        lines = f.read().splitlines()
    assert [json.loads(s)["hash"] for s in lines] == ["a", "b", "c"]


def test_load_results_dataframe_or_dicts(tmp_path, monkeypatch):
    path = str(tmp_path / "results.jsonl")
    results.append_row(path, dict(hash="a", nfe=5, metrics=dict(mean_l2=0.5)))
    results.append_row(path, dict(hash="b", nfe=10, metrics=dict(mean_l2=0.25)))
    df = experiment.load_results(str(tmp_path))
    assert list(df["metrics.mean_l2"]) == [0.5, 0.25] and list(df["nfe"]) == [5, 10]
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *a, **k):
        if name == "pandas":
            raise ImportError("no pandas")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    rows = experiment.load_results(str(tmp_path))
    assert isinstance(rows, list) and rows[1]["metrics"]["mean_l2"] == 0.25


def test_problem_prior_in_chunks_equals_one_chunk(tmp_path):
    """prior="problem": x_T are the problem file's start points (numpy stream) whether
    the run is one chunk or three; the streamed log-density and the samples agree."""
    rows = {}
    for chunk in (128, 4096):
        cfg = small_config(**{"solver.name": "dpm_solver_pp", "prior": "problem", "chunk_size": chunk})
        (rows[chunk],) = experiment.run_sample(cfg, str(tmp_path / f"c{chunk}"))
    assert rows[128]["n_chunks"] == 3 and rows[4096]["n_chunks"] == 1
    np.testing.assert_allclose(_samples(tmp_path / "c128", rows[128]), _samples(tmp_path / "c4096", rows[4096])[:128],
                               rtol=0, atol=2e-6)
    a, b = rows[128]["metrics"]["mean_log_density"], rows[4096]["metrics"]["mean_log_density"]
    assert abs(a - b) < 1e-5 * max(1.0, abs(b))
    # and the start points are the problem's: the deterministic sampler from x_T = start points
    gmm, schedule, info = sx.load_problem("gmm2d")
    x_T = jnp.asarray(sx.problem_start_points(info, 300), jnp.float32)
    solver = sx.get_solver("dpm_solver_pp")
    grid = sx.time_grid(schedule, 6, "logsnr", end="zero")
    x0, _ = jax.jit(lambda x: sx.sample(solver, gmm.model(schedule), x, grid))(x_T)
    np.testing.assert_allclose(_samples(tmp_path / "c4096", rows[4096]), np.asarray(x0), rtol=0, atol=2e-6)
