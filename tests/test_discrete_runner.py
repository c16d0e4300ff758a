"""Discrete (masked-diffusion) runs through the experiment layer: sweep expansion, resume,
independence of chunking and device count, and one-line errors for bad configs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from samplax.experiment import ConfigError, run_sample, run_sweep
from samplax.experiment.discrete import discrete_config, discrete_sweep_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(n=3000):
    c = discrete_sweep_config()
    c.model.name = "markov4x8"
    c.sweep.samplers = ("ancestral", "first_hitting")
    c.sweep.option_axes.steps = (2, 5)
    c.n_samples = n
    c.chunk_size = 1024
    return c


def _samples(wd, row):
    return np.load(os.path.join(wd, "samples", row["hash"] + ".npy"))


def test_sweep_rows_resume_and_chunking(tmp_path):
    wd = str(tmp_path / "a")
    rows = run_sweep(_sweep(), wd)
    labels = sorted(r["label"] for r in rows)
    # first_hitting has no ``steps``: it runs once, not once per axis value
    assert labels == ["ancestral steps=2", "ancestral steps=5", "first_hitting"]
    by = {r["label"]: r for r in rows}
    fh = by["first_hitting"]
    assert fh["nfe"] == 8 and fh["nfe_max"] == 8 and fh["metrics"]["chi2_p"] > 1e-3
    assert by["ancestral steps=2"]["nfe_max"] <= 2
    # two steps are far from exact (markov4x8 couples neighbours strongly); first-hitting is at its floor
    two = by["ancestral steps=2"]["metrics"]
    assert two["chi2_p"] < 1e-3 and two["tv"] > fh["metrics"]["tv"] + 0.1
    assert abs(fh["metrics"]["tv"] - fh["metrics"]["tv_floor"]) < 0.05
    assert all(r["metrics"]["tv_floor"] == fh["metrics"]["tv_floor"] for r in rows)
    md = open(os.path.join(wd, "results.md")).read()
    assert "| markov4x8 | first_hitting |" in md and os.path.exists(os.path.join(wd, "plots", "tv_vs_nfe.png"))
    # a rerun does nothing new
    n_lines = len(open(os.path.join(wd, "results.jsonl")).read().splitlines())
    again = run_sweep(_sweep(), wd)
    assert len(open(os.path.join(wd, "results.jsonl")).read().splitlines()) == n_lines
    assert {r["hash"] for r in again} == {r["hash"] for r in rows}
    # another chunk size: the same samples
    c = _sweep()
    c.chunk_size = 700
    c.sweep.option_axes.steps = (2,)
    other = run_sweep(c, str(tmp_path / "b"))
    for r in other:
        np.testing.assert_array_equal(_samples(str(tmp_path / "b"), r), _samples(wd, by[r["label"]]))


def test_bad_discrete_configs(tmp_path):
    c = discrete_config()
    c.sampler.name = "nope"
    with pytest.raises(ConfigError, match="config.sampler.name: unknown value 'nope'"):
        run_sample(c, str(tmp_path / "x"))
    c = discrete_config()
    c.sampler.options.steps = 4  # first_hitting has no steps
    with pytest.raises(ConfigError, match=r"config.sampler.options: sampler 'first_hitting': options: \['steps'\]"):
        run_sample(c, str(tmp_path / "x"))
    c = _sweep()
    c.sweep.option_axes.threshold = (0.9,)
    with pytest.raises(ConfigError, match="config.sweep.option_axes.threshold: no sampler of the sweep has option"):
        run_sweep(c, str(tmp_path / "x"))
    c = _sweep()
    c.sweep.option_axes.steps = (0, 2)
    with pytest.raises(ConfigError, match="config.sweep.option_axes.steps: sampler 'ancestral': steps: must be"):
        run_sweep(c, str(tmp_path / "x"))
    c = discrete_config()
    c.model.checkpoint = str(tmp_path / "none")
    with pytest.raises(ConfigError, match="config.model.checkpoint"):
        run_sample(c, str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")


def test_cli_on_eight_devices_matches_one(tmp_path):
    """The sample entrypoint on 8 simulated devices gives the samples of an in-process run on one."""
    wd1, wd8 = str(tmp_path / "one"), str(tmp_path / "eight")
    c = discrete_config()
    c.model.name = "hmm8x5"
    c.sampler.name = "ancestral"
    c.sampler.options.steps = 3
    c.n_samples = 1000
    row = run_sample(c, wd1)[0]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "experiments.sample", "--config=configs/sample_discrete.py", f"--workdir={wd8}",
           "--config.model.name=hmm8x5", "--config.sampler.name=ancestral", "--config.sampler.options.steps=3",
           "--config.n_samples=1000"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row8 = json.loads(open(os.path.join(wd8, "results.jsonl")).read().splitlines()[0])
    assert row8["n_devices"] == 8 and row8["hash"] == row["hash"]
    np.testing.assert_array_equal(_samples(wd8, row8), _samples(wd1, row))
    bad = subprocess.run(cmd[:4] + [f"--workdir={tmp_path / 'bad'}", "--config.sampler.options.steps=-1",
                                    "--config.sampler.name=ancestral"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "config.sampler.options.steps" in bad.stderr and not os.path.exists(tmp_path / "bad")
