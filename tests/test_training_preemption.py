"""Training that survives preemption and damage.

* SIGTERM: the step in flight is finished and saved (0 steps lost), the process exits
  with status 143, and the same command resumes and ends bitwise equal to an
  uninterrupted run; kill -9 loses at most one checkpoint interval (measured here).
* A damaged newest checkpoint (an item missing, truncated array data, garbage meta JSON,
  an emptied step directory, a flipped bit) is skipped with a warning naming its step,
  for resuming and for sampling; a clear error when none is intact.
* The checkpoint carries the whole training identity; a refused run writes nothing.
* Non-finite parameters are never saved.
"""
import gc
import glob
import json
import os
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from samplax.experiment import WorkdirConflict, trainer
from samplax.experiment.checkpoints import CheckpointDamaged, CheckpointMismatch, Checkpoints, state_checksum
from samplax.experiment.config import ConfigError
from samplax.experiment.trainer import load_trained, run_train
from test_training_run import ROOT, _complete_steps, _env, _same, cli, small_config

# A failed Orbax restore (a damaged checkpoint) leaves the read coroutines of the other
# arrays un-awaited (Orbax's own, harmless): collect them here, under this module's filter,
# not as warnings in whichever later test the garbage collector happens to run.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_orbax_coroutines():
    yield
    gc.collect()


# ---------------------------------------------------------------------------------------
# SIGTERM and kill -9 of a real `python -m experiments.train` process
# ---------------------------------------------------------------------------------------
# log_every=1: the log (one fsynced row per step) says which steps the process completed
PRE = dict(num_steps=200, checkpoint_every=50, log_every=1)


def _logged_steps(workdir):
    path = os.path.join(workdir, "train_log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")[:-1]  # complete lines only
    return [json.loads(line)["step"] for line in lines]


def _interrupt(workdir, sig, after_step):
    """Start a training process, send ``sig`` once it has logged ``after_step``; returns
    (exit status, stderr, last completed step, latest complete checkpoint)."""
    err_path = workdir + ".stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cli(workdir, **PRE), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and (_logged_steps(workdir) or [0])[-1] < after_step:
                assert proc.poll() is None, "the training process ended before the signal"
                time.sleep(0.01)
            assert proc.poll() is None
            os.kill(proc.pid, sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with open(err_path) as f:
        stderr = f.read()
    return proc.returncode, stderr, _logged_steps(workdir)[-1], max(_complete_steps(workdir))


@pytest.mark.slow
def test_sigterm_saves_the_step_in_flight_and_kill_9_loses_at_most_one_interval(tmp_path):
    plain = str(tmp_path / "plain")
    run_train(small_config(**PRE), plain)
    ref_params, ref_ema = load_trained(plain, which="params"), load_trained(plain)
    lost = {}
    for name, sig, status in (("sigterm", signal.SIGTERM, 143), ("kill9", signal.SIGKILL, -signal.SIGKILL)):
        wd = str(tmp_path / name)
        rc, stderr, done, saved = _interrupt(wd, sig, after_step=75)
        assert rc == status, stderr[-3000:]
        assert done < PRE["num_steps"]
        lost[name] = done - saved
        if sig == signal.SIGTERM:
            assert f"preempted: train: SIGTERM at step {saved}" in stderr
            assert "Rerun the same command to resume" in stderr
        out = subprocess.run(cli(wd, **PRE), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        with open(os.path.join(wd, "train_summary.json")) as f:
            assert json.load(f)["resumed_from"] == saved
        a, e = load_trained(wd, which="params"), load_trained(wd)
        assert a.step == PRE["num_steps"]
        assert _same(a.params, ref_params.params), f"{name}: resumed parameters differ from the uninterrupted run"
        assert _same(e.params, ref_ema.params), f"{name}: resumed EMA differs from the uninterrupted run"
        assert _logged_steps(wd) == list(range(1, PRE["num_steps"] + 1))  # every step logged once
    print(f"\nsteps lost: {lost} (checkpoint_every={PRE['checkpoint_every']})")
    assert lost["sigterm"] == 0
    assert 0 <= lost["kill9"] <= PRE["checkpoint_every"]


# ---------------------------------------------------------------------------------------
# Damaged checkpoints
# ---------------------------------------------------------------------------------------
SHORT = dict(num_steps=40, checkpoint_every=10, log_every=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 40-step run with checkpoints 20, 30, 40, and its final params and EMA."""
    wd = str(tmp_path_factory.mktemp("base") / "run")
    run_train(small_config(**SHORT), wd)
    assert _complete_steps(wd) == [20, 30, 40]
    return wd, load_trained(wd, which="params").params, load_trained(wd).params


def _largest_data_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
             if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _remove_item(d):
    shutil.rmtree(os.path.join(d, "state"))


def _truncate_array_data(d):
    f = _largest_data_file(d)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)


def _garbage_meta(d):
    with open(os.path.join(d, "meta", "metadata"), "w") as f:
        f.write('{"step": 40, "model_hash"')


def _empty_step_dir(d):
    for name in os.listdir(d):
        p = os.path.join(d, name)
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)


def _flip_a_bit(d):
    f = _largest_data_file(d)
    with open(f, "r+b") as fh:
        data = bytearray(fh.read())
        data[len(data) // 2] ^= 0x10
        fh.seek(0)
        fh.write(bytes(data))


DAMAGE = {"item_missing": _remove_item, "truncated_array_data": _truncate_array_data,
          "garbage_meta_json": _garbage_meta, "emptied_step_dir": _empty_step_dir, "flipped_bit": _flip_a_bit}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_is_skipped_for_sampling_and_resuming(tmp_path, trained, kind, caplog):
    base, params40, ema40 = trained
    wd = str(tmp_path / "run")
    shutil.copytree(base, wd)
    DAMAGE[kind](os.path.join(wd, "checkpoints", "40"))
    # sampling (read-only): the newest intact checkpoint, with a warning naming the damaged step
    caplog.clear()
    t = load_trained(wd)
    assert t.step == 30 and t.checkpoint.endswith(os.path.join("checkpoints", "30"))
    assert "checkpoint step 40 is damaged" in caplog.text and "newest intact one (damaged: 40)" in caplog.text
    assert trainer.latest_checkpoint_step(wd) == 30
    with pytest.raises(CheckpointDamaged, match=r"checkpoints/40"):  # asked for explicitly: a clear error
        load_trained(wd, step=40)
    assert os.path.isdir(os.path.join(wd, "checkpoints", "40"))  # sampling changed nothing
    # resuming: from step 30; the damaged step is moved aside and saved again, bitwise as before
    caplog.clear()
    summary = run_train(small_config(**SHORT), wd)
    assert summary["resumed_from"] == 30
    assert "checkpoint step 40 is damaged" in caplog.text
    assert os.path.isdir(os.path.join(wd, "checkpoints", "40.damaged"))
    assert _complete_steps(wd) == [20, 30, 40]
    assert _same(load_trained(wd, which="params").params, params40)
    assert _same(load_trained(wd).params, ema40)


def test_a_state_with_valid_files_but_changed_values_fails_its_checksum(tmp_path, trained):
    """Files Orbax reads without complaint (re-saved state with one parameter bit flipped):
    only the SHA-256 in the meta sees it."""
    base, params40, _ = trained
    wd = str(tmp_path / "run")
    shutil.copytree(base, wd)
    s = trainer.setup(small_config(**SHORT))
    fresh = trainer.init_train_state(trainer.init_params(s.cfg, s.net, s.dataset), s.optimizer)
    with Checkpoints(os.path.join(wd, "checkpoints"), s.identity, read_only=True) as ck:
        state, meta = ck.restore(fresh, 40)
    assert state_checksum(state) == meta["state_sha256"]
    leaves, tree = jax.tree.flatten(state)
    bits = np.asarray(leaves[1]).view(np.uint32).copy()
    bits.flat[0] ^= 1  # the lowest mantissa bit of one parameter
    leaves[1] = jnp.asarray(bits.view(np.float32))
    bad = jax.tree.unflatten(tree, leaves)
    item = os.path.join(wd, "checkpoints", "40", "state")
    shutil.rmtree(item)
    with ocp.StandardCheckpointer() as c:
        c.save(item, bad)
    with pytest.raises(CheckpointDamaged, match="state fails its checksum"):
        load_trained(wd, step=40)
    assert load_trained(wd).step == 30


def test_no_intact_checkpoint_is_a_clear_error_not_a_fresh_start(tmp_path, trained):
    base = trained[0]
    wd = str(tmp_path / "run")
    shutil.copytree(base, wd)
    for step in (20, 30, 40):
        _garbage_meta(os.path.join(wd, "checkpoints", str(step)))
    with pytest.raises(CheckpointDamaged, match=r"no intact checkpoint.*step 40.*step 30.*step 20.*--restart"):
        run_train(small_config(**SHORT), wd)
    with pytest.raises(CheckpointDamaged, match="no intact checkpoint"):
        load_trained(wd)
    assert _complete_steps(wd) == [20, 30, 40]  # nothing moved or overwritten
    # the command line: one line, exit status 2
    out = subprocess.run(cli(wd, **SHORT), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: no intact checkpoint" in out.stderr


# ---------------------------------------------------------------------------------------
# The whole training identity; refused runs write nothing
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, shown", [
    ("optim.learning_rate", 3e-3, r"config\.optim\.learning_rate: saved 0\.002, now 0\.003"),
    ("train.num_steps", 60, r"config\.train\.num_steps: saved 40, now 60"),
    ("train.seed", 1, r"config\.train\.seed: saved 0, now 1"),
    ("optim.ema_decay", 0.99, r"config\.optim\.ema_decay: saved 0\.999, now 0\.99"),
])
def test_without_config_json_the_checkpoint_refuses_another_training_config(tmp_path, trained, field, value,
                                                                            shown):
    base = trained[0]
    wd = str(tmp_path / "run")
    shutil.copytree(base, wd)
    os.remove(os.path.join(wd, "config.json"))
    other = small_config(**SHORT)
    section, name = field.split(".")
    setattr(getattr(other, section), name, value)
    before = sorted(os.listdir(wd))
    with pytest.raises(CheckpointMismatch, match=r"different training config.*" + shown):
        run_train(other, wd)
    assert sorted(os.listdir(wd)) == before and not os.path.exists(os.path.join(wd, "config.json"))
    # sampling needs only the model part: unaffected
    assert load_trained(str(base)).step == 40


def test_a_refused_run_leaves_the_saved_config_so_the_original_command_still_runs(tmp_path, trained):
    base = trained[0]
    wd = str(tmp_path / "run")
    shutil.copytree(base, wd)
    cfg_path = os.path.join(wd, "config.json")
    with open(cfg_path, "rb") as f:
        saved = f.read()
    other = small_config(**SHORT)
    other.train.seed = 1
    with pytest.raises(WorkdirConflict, match=r"config\.train\.seed"):
        run_train(other, wd)
    with open(cfg_path, "rb") as f:
        assert f.read() == saved
    os.remove(cfg_path)
    with pytest.raises(CheckpointMismatch, match=r"config\.train\.seed"):
        run_train(other, wd)
    assert not os.path.exists(cfg_path)  # refused: nothing written
    summary = run_train(small_config(**SHORT), wd)  # the original command
    assert summary["resumed_from"] == 40


@pytest.mark.parametrize("field, value, msg", [
    ("train.sample_solver", "heun", r"config\.train\.sample_nfe: nfe=20 is impossible for solver heun"),
    ("train.sample_nfe", 1, r"config\.train\.sample_nfe: nfe=1 is impossible"),
    ("train.sample_solver", "teleport", r"config\.train\.sample_solver: 'teleport' needs model statistics"),
])
def test_an_impossible_preview_nfe_is_refused_before_anything_is_written(tmp_path, field, value, msg):
    c = small_config(**SHORT, sample_count=10)
    section, name = field.split(".")
    setattr(getattr(c, section), name, value)
    if field == "train.sample_nfe":
        c.train.sample_solver = "dpm_solver_pp"
    with pytest.raises(ConfigError, match=msg + r".*allowed"):
        run_train(c, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_bad_workdirs_are_refused_before_anything_is_written(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for wd, msg in ((str(a_file), "is a file"), (str(a_file / "sub"), "which is a file"), ("", "is empty"),
                    ("hf://org/repo", "not supported for writing")):
        with pytest.raises(ConfigError, match=r"^workdir: .*" + msg):
            run_train(small_config(**SHORT), wd)
    assert a_file.read_text() == "x"
    out = subprocess.run(cli(str(a_file), **SHORT), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "error: workdir: " in out.stderr and "is a file" in out.stderr


# ---------------------------------------------------------------------------------------
# Non-finite parameters are never checkpointed
# ---------------------------------------------------------------------------------------
def test_non_finite_parameters_are_not_saved_and_the_last_good_checkpoint_is_kept(tmp_path, monkeypatch):
    """The step turns the parameters to NaN from step 25 on; the log interval (1000) is
    longer than the run, so only the check before each save can see it."""
    real = trainer.make_train_step

    def poisoned(*args, **kw):
        step = real(*args, **kw)

        def wrapped(state, batch, key):
            new, metrics = step(state, batch, key)
            bad = new.step > 25
            params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)
            return new.replace(params=params), metrics
        return wrapped

    monkeypatch.setattr(trainer, "make_train_step", poisoned)
    wd = str(tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"non-finite loss or parameters between steps 20 and 30; not saved "
                                                 r"\(the last good checkpoint, step 20, is kept"):
        run_train(small_config(num_steps=40, checkpoint_every=10, log_every=1000), wd)
    assert _complete_steps(wd) == [10, 20]
    t = load_trained(wd, which="params")
    assert t.step == 20 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(t.params))


def test_a_second_training_run_in_a_locked_workdir_is_refused(tmp_path):
    """The training run holds the workdir lock from its first write: another run in the
    same workdir (here: the lock held in this process) is refused, naming the holder,
    and writes nothing."""
    from samplax.experiment import results as store

    w = tmp_path / "w"
    with store.WorkdirLock(w, command="the first training run"):
        before = sorted(os.listdir(w))
        with pytest.raises(store.WorkdirLocked, match=r"^workdir: locked by pid .*the first training run"):
            run_train(small_config(**SHORT), str(w))
        assert sorted(os.listdir(w)) == before
