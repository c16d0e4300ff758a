"""Decoding runs through the experiment layer: sweep expansion over decoder options, rows that match
a direct library call, resume, chunking independence, and one-line errors for bad configs."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from samplax import decoding as D
from samplax.experiment import ConfigError, run_sample, run_sweep
from samplax.experiment.decoding import decoding_config, decoding_sweep_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(n=4000, chunk=1024):
    c = decoding_sweep_config()
    c.problem.lm = "markov4x8"
    c.sweep.decoders = ("ancestral",)
    c.sweep.option_axes.temperature = (0.5, 1.0)
    c.n_samples = n
    c.chunk_size = chunk
    return c


def test_sweep_rows_match_the_library_resume_and_ignore_chunking(tmp_path):
    wd = str(tmp_path / "a")
    rows = run_sweep(_sweep(), wd)
    by = {r["label"]: r for r in rows}
    assert sorted(by) == ["ancestral temperature=0.5", "ancestral temperature=1.0"]
    for r in rows:
        assert r["nfe"] == 8 and r["tokens_per_call"] == 1.0 and r["metrics"]["chi2_p"] > 1e-3
        assert abs(r["metrics"]["tv"] - r["metrics"]["tv_floor"]) < 0.05
    # the saved samples are the library's, key fold_in(PRNGKey(seed), i)
    x = np.load(os.path.join(wd, "samples", by["ancestral temperature=0.5"]["hash"] + ".npy"))
    dec = D.get_decoder("ancestral", temperature=0.5)
    ref, _ = dec.run(D.make_problem("markov4x8"), D.sample_keys(jax.random.PRNGKey(0), len(x)))
    np.testing.assert_array_equal(x, np.asarray(ref))
    md = open(os.path.join(wd, "results.md")).read()
    assert "| markov4x8 | ancestral | temperature=0.5 |" in md
    assert os.path.exists(os.path.join(wd, "plots", "tv_vs_target_calls.png"))
    n_lines = len(open(os.path.join(wd, "results.jsonl")).read().splitlines())
    run_sweep(_sweep(), wd)   # a rerun does nothing new
    assert len(open(os.path.join(wd, "results.jsonl")).read().splitlines()) == n_lines
    c = _sweep(chunk=700)
    c.sweep.option_axes.temperature = (0.5,)
    (other,) = run_sweep(c, str(tmp_path / "b"))
    np.testing.assert_array_equal(np.load(os.path.join(tmp_path, "b", "samples", other["hash"] + ".npy")), x)
    # the exact target: mean log p of the samples is the exact expectation within 5 standard errors
    with jax.enable_x64(True):
        q = dec.target(D.make_problem("markov4x8"))
        lp = D.exact_log_probs(D.load_lm("markov4x8"))
    mean = float((np.exp(q) * lp).sum())
    sd = float(np.sqrt((np.exp(q) * (lp - mean) ** 2).sum()))
    assert abs(by["ancestral temperature=0.5"]["metrics"]["mean_log_p"] - mean) < 5 * sd / np.sqrt(4000)


@pytest.mark.parametrize("field,value,where", [
    ("decoder.name", "beam", "config.decoder.name"),
    ("decoder.options", {"temprature": 0.5}, "config.decoder.options"),
    ("decoder.options", {"top_p": 1.5}, "config.decoder.options.top_p"),
    ("problem.lm", "gpt5", "config.problem.lm"),
    ("problem.prompt", (99,), "config.problem.prompt"),
    ("problem.draft", "nope", "config.problem.draft"),
    ("n_samples", 0, "config.n_samples"),
])
def test_bad_configs_name_the_field(tmp_path, field, value, where):
    c = decoding_config()
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError) as e:
        run_sample(c, str(tmp_path / "w"))
    assert e.value.path == where, str(e.value)
    assert not os.path.exists(tmp_path / "w")


def test_cli_runs_the_committed_config_with_overrides(tmp_path):
    wd = str(tmp_path / "cli")
    cmd = [sys.executable, "-m", "experiments.sample", "--config=configs/sample_decoding.py", f"--workdir={wd}",
           "--config.n_samples=3000", "--config.decoder.options.top_p=0.9"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| hmm8x5 | ancestral | temperature=0.8 top_p=0.9 |" in open(os.path.join(wd, "results.md")).read()
    bad = subprocess.run(cmd[:-1] + ["--config.decoder.options.top_p=2"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and "config.decoder.options.top_p" in bad.stderr
