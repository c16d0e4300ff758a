"""The multi-process path on one machine: 2 processes x 4 CPU devices, started the way
SLURM would (JAX's cluster detection), with --config.distributed=True.  Rows equal a
1-process run; only process 0 writes; the processes follow process 0's view of the
workdir even when theirs differs (no diverging rows, no hang)."""
import os
import random
import subprocess
import sys

import pytest

from samplax.experiment import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["-m", "experiments.sweep", "--config=configs/sweep_quick.py", "--config.sweep.solvers=(\"unipc\",)",
        "--config.sweep.nfes=(5,)", "--config.n_samples=1001", "--config.metrics.reference_steps=100"]


def _launch(workdirs, job_id, distributed=True, n_dev=4, timeout=240, args=ARGS):
    env0 = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_dev}",
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", SLURM_JOB_ID=str(job_id),
                SLURM_STEP_NODELIST="localhost", SLURM_NTASKS=str(len(workdirs)))
    procs = []
    for pid, wd in enumerate(workdirs):
        env = dict(env0, SLURM_PROCID=str(pid), SLURM_LOCALID=str(pid))
        cmd = [sys.executable, *args, f"--workdir={wd}", f"--config.distributed={distributed}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _in_process(args, workdir, fn: str):
    """The run ``args`` describes (its --config file and overrides), in this process on its one
    device: the same rows / parameters as the entrypoint run as one process."""
    import importlib
    import runpy

    from experiments._main import load_config_file
    import jax
    from helpers import set_dotted

    assert jax.device_count() == 1
    config = load_config_file(os.path.join(REPO, args[2].split("=", 1)[1]))
    for a in args[3:]:
        field, value = a[len("--config."):].split("=", 1)
        set_dotted(config, field, _parse(value))
    module = importlib.import_module("samplax.experiment.trainer" if fn == "run_train" else "samplax.experiment")
    getattr(module, fn)(config, str(workdir))


def _parse(value: str):
    import ast

    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    return tuple(v) if isinstance(v, list) else v


@pytest.mark.slow
def test_two_processes_match_one_and_follow_process_zero(tmp_path):
    job = random.randint(1000, 60000)
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    _in_process(ARGS, one, "run_sweep")  # the 1-process, 1-device reference (no subprocess to start)
    _launch([two, two], job + 1)
    r1 = {r["hash"]: r for r in results.read_rows(str(one / "results.jsonl"))}
    r2 = results.read_rows(str(two / "results.jsonl"))
    assert len(r2) == len(r1) == 2  # unipc x 2 grids x 1 NFE, each row written once
    for r in r2:
        assert r["n_processes"] == 2 and r["n_devices"] == 8
        for k, v in r["metrics"].items():
            assert abs(v - r1[r["hash"]]["metrics"][k]) <= 1e-5 * max(1.0, abs(v)), k
    # process 1 sees an empty workdir, process 0 a finished one: both follow process 0
    # (nothing to run), finish, and process 1 writes nothing
    before = (two / "results.jsonl").read_bytes()
    _launch([two, other], job + 2)
    assert (two / "results.jsonl").read_bytes() == before
    assert not other.exists()


TRAIN_ARGS = ["-m", "experiments.train", "--config=configs/train_gmm2d.py", "--config.model.mlp.hidden=32,32",
              "--config.optim.warmup_steps=20", "--config.train.num_steps=60", "--config.train.batch_size=64",
              "--config.train.log_every=20", "--config.train.checkpoint_every=30", "--config.train.sample_count=0"]


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path):
    """Data-parallel training over 2 processes x 2 CPU devices (gloo collectives):
    the parameters equal a 1-process, 1-device run to float tolerance; a rerun resumes
    from the shared checkpoint and trains nothing."""
    import json

    import jax
    import numpy as np

    from samplax.experiment.trainer import load_trained

    job = random.randint(1000, 60000)
    one, two = tmp_path / "one", tmp_path / "two"
    _in_process(TRAIN_ARGS, one, "run_train")
    _launch([two, two], job + 1, n_dev=2, args=TRAIN_ARGS)
    a, b = load_trained(str(one), which="params"), load_trained(str(two), which="params")
    assert a.step == b.step == 60
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5)
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["n_devices"] == 4
    outs = _launch([two, two], job + 2, n_dev=2, args=TRAIN_ARGS)
    assert all("resuming from the checkpoint of step 60" in o for o in outs)
