"""A sweep killed with SIGKILL at any moment and rerun ends with exactly the rows of an
uninterrupted run: none duplicated, none missing, the same numbers."""
import collections
import os
import signal
import subprocess
import sys
import time

import pytest

from samplax import experiment
from samplax.experiment import results
from helpers import set_dotted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"n_samples": 256, "metrics.reference_steps": 100, "metrics.max_sw_samples": 256,
             "metrics.save_samples": 64}


def _config():
    sys.path.insert(0, REPO)
    from configs import sweep_quick

    c = sweep_quick.get_config()
    for k, v in OVERRIDES.items():
        set_dotted(c, k, v)
    return c


def _cmd(workdir):
    return [sys.executable, "-m", "experiments.sweep", "--config=configs/sweep_quick.py", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]


def _lines(path):
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def _kill_when(workdir, n_lines, timeout=240):
    """Start the sweep, SIGKILL it once results.jsonl has >= n_lines complete rows
    (n_lines = 0: as soon as the process has started working)."""
    path = os.path.join(workdir, "results.jsonl")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.Popen(_cmd(workdir), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            if p.poll() is not None:
                return False  # finished before we could kill it
            if (n_lines == 0 and os.path.exists(os.path.join(workdir, "config.json"))) or _lines(path) >= n_lines:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                return True
            time.sleep(0.02)
        raise AssertionError("sweep did not reach the kill point in time")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_kill_minus_nine_and_resume(tmp_path):
    reference = experiment.run_sweep(_config(), str(tmp_path / "ref"))
    assert len(reference) == 12  # 3 solvers x 2 grids x 2 NFEs

    work = str(tmp_path / "killed")
    path = os.path.join(work, "results.jsonl")
    killed = [_kill_when(work, 0), _kill_when(work, 1)]
    before = _lines(path)
    killed.append(_kill_when(work, before + 2))  # rows of one program are appended one by one
    assert any(killed)
    with open(path, "ab") as f:  # a kill in the middle of a row's write leaves a partial line
        f.write(b'{"hash": "0123456789ab", "metrics": {"mean_l')
    done = subprocess.run(_cmd(work), cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    rows = results.read_rows(path)
    counts = collections.Counter(r["hash"] for r in rows)
    assert max(counts.values()) == 1, "duplicated rows"
    ref = {r["hash"]: r for r in reference}
    assert set(counts) == set(ref), "missing or extra rows"
    with open(path, "rb") as f:
        assert f.read().endswith(b"\n") and len(rows) == 12
    for r in rows:
        for k, v in r["metrics"].items():
            assert abs(v - ref[r["hash"]]["metrics"][k]) <= 1e-6 * max(1.0, abs(v)), (r["label"], k)
    # and a rerun of the finished sweep adds nothing
    again = experiment.run_sweep(_config(), work)
    assert len(again) == 12 and len(results.read_rows(path)) == 12
    assert os.path.exists(os.path.join(work, "results.md")) and os.path.exists(os.path.join(work, "plots"))
