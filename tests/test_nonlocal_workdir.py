"""A whole run on a non-local filesystem: ``gs://`` served by an in-memory fsspec
backend (tests/fake_gcs.py) through etils.epath, as gcsfs would serve it.

The run writes its rows, report, plots, samples and TensorBoard files there, nothing
in a local folder named ``gs:``; a rerun resumes (rows skipped by hash), and a killed
run's partial row is cut off before the next append."""
import json
import os

import pytest

import fake_gcs  # noqa: F401  (registers the in-memory gs:// backend)
from samplax import io as sio
from samplax.experiment import ConfigError, load_results, run_sample, run_sweep, sample_config, sweep_config
from samplax.experiment import results as store


def _tiny(c):
    c.n_samples = 128
    c.metrics.reference_steps = 50
    c.metrics.max_l2_samples = c.metrics.max_sw_samples = 128
    c.metrics.sw_projections = 16
    c.metrics.save_samples = 32
    return c


@pytest.fixture
def bucket():
    fake_gcs.FakeGCS.store.clear()
    fake_gcs.FakeGCS.pseudo_dirs[:] = [""]
    yield "gs://test-bucket"
    fake_gcs.FakeGCS.store.clear()


def test_sample_run_on_gs_then_resume(bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = f"{bucket}/runs/sample"
    c = _tiny(sample_config())
    c.nfe = 6
    (row,) = run_sample(c, w)
    assert not os.path.exists(tmp_path / "gs:"), "wrote a local folder named gs:"
    p = sio.as_path(w)
    names = {c.name for c in p.iterdir()}
    assert {"results.jsonl", "config.json", "results.md", "plots", "samples", "tb"} <= names, names
    assert (p / row["samples_file"]).exists()
    assert json.loads((p / "config.json").read_text())["identity"]["nfe"] == 6
    # a rerun resumes: the row is skipped by its hash, not recomputed
    (again,) = run_sample(c, w)
    assert again["time"] == row["time"]
    # a killed run's partial last line is cut off before the next append
    (p / "results.jsonl").write_bytes((p / "results.jsonl").read_bytes() + b'{"hash": "cut')
    c.nfe = 8
    (row8,) = run_sample(c, w)
    rows = store.read_results(p / "results.jsonl")
    assert sorted(r["nfe"] for r in rows) == [6, 8]
    df = load_results(w, as_dataframe=False)
    assert len(df) == 2 and not os.path.exists(tmp_path / "gs:")


def test_sweep_on_gs(bucket):
    w = f"{bucket}/runs/sweep"
    c = _tiny(sweep_config())
    c.sweep.solvers, c.sweep.grids, c.sweep.nfes = ("ddim", "unipc"), ("logsnr",), (5, 8)
    rows = run_sweep(c, w)
    assert len(rows) == 4 and all(r["metrics"]["mean_l2"] is not None for r in rows)
    p = sio.as_path(w)
    assert (p / "plots" / "error_vs_nfe.png").exists()
    assert len(store.read_results(p / "results.jsonl")) == 4


def test_unsupported_scheme_is_refused(tmp_path):
    c = _tiny(sample_config())
    with pytest.raises(ConfigError) as e:
        run_sample(c, "hf://datasets/x")
    assert str(e.value).startswith("workdir:") and "gs://" in str(e.value)
