"""Bad input at the edges: a fuzz test of malformed sample and sweep configs, the workdir
lock, and a damaged results store.

Requirements:
* every malformed config (wrong types, out-of-range values, unknown fields, missing
  sections, strings for numbers, NaN/inf, huge values, empty tuples) fails in
  validation with one ConfigError whose one-line message starts with the config path
  of what is wrong, and the workdir is not created; through the command line: exit 2
  and one ``error:`` line;
* one process at a time in a workdir: a second one refuses at once, naming the
  holder, and writes nothing;
* a results store with lines that are JSON but not rows, or rows without their
  metrics, is read without a crash (warnings name the lines); such rows are recomputed
  and the rewritten store has exactly one complete row per hash.
"""
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from configs import gmm
from samplax.experiment import ConfigError, WorkdirConflict, load_results, run_sample, run_sweep, sample_config, \
    sweep_config
from samplax.experiment import results as store
from samplax.experiment.config import SAMPLE_SCHEMA, SWEEP_SCHEMA, Field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH_RE = re.compile(r"^config(\.[^\s.:\[]+|\[\d+\])*: ")


# ---------------------------------------------------------------------------------------
# Fuzz: malformed configs, generated from the schema
# ---------------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")


def _bad_values(name: str, spec: Field) -> list:
    """Values that are wrong for a field of this spec whatever the rest of the config."""
    none = [] if spec.nullable else [None]
    if spec.kind == "int":
        return ["5", 5.5, True, [1], {"a": 1}, NAN, INF, -1, 10**12, 2**64] + none
    if spec.kind == "float":
        return ["2.0", True, [1.0], {"a": 1.0}, NAN, INF, -INF, 10**400] + none
    if spec.kind == "str":
        choice = [] if name == "checkpoint" else ["", "no_such_value", "nan"]
        return [5, 2.0, True, ["a"]] + choice + none
    if spec.kind == "bool":
        return ["no", "false", "yes", "true", 1, 0, 1.0] + none
    if spec.kind == "dict":
        return [5, "a", [1], (1, 2), True] + none
    if spec.kind == "tuple[int]":
        return [(), 5, "5", ("5",), (5, 5), (1.5,), (True,), (-1,), (10**12,), (NAN,), [None]] + none
    if spec.kind == "tuple[str]":
        return [(), "ddim", (5,), ("no_such_value",), ("ddim", "ddim"), (None,)] + none
    raise AssertionError(spec.kind)


def _leaves(schema: dict, prefix: str = ""):
    for name, spec in schema.items():
        path = f"{prefix}{name}"
        if isinstance(spec, dict):
            yield path, spec
            yield from _leaves(spec, path + ".")
        else:
            yield path, spec


def _mutations(schema: dict) -> list:
    """(id, dotted path that must start the error's path, mutate(dict) -> config)."""
    out = []
    for path, spec in _leaves(schema):
        if isinstance(spec, dict):  # a section
            for v in (5, "x", None, [], 1.5):
                out.append((f"{path}={v!r}", path, ("set", path, v)))
            out.append((f"{path}-deleted", path, ("del", path, None)))
            out.append((f"{path}.unknown", f"{path}.zzz_unknown", ("set", f"{path}.zzz_unknown", 1)))
            continue
        for v in _bad_values(path.rsplit(".", 1)[-1], spec):
            out.append((f"{path}={v!r}", path, ("set", path, v)))
        if spec.required:
            out.append((f"{path}-deleted", path, ("del", path, None)))
    out.append(("unknown-top-level", "zzz_unknown", ("set", "zzz_unknown", 1)))
    return out


def _apply(d: dict, op) -> dict:
    what, dotted, value = op
    *parents, leaf = dotted.split(".")
    node = d
    for p in parents:
        node = node[p]
    if what == "del":
        del node[leaf]
    else:
        node[leaf] = value
    return d


FUZZ = ([("sample",) + m for m in _mutations(SAMPLE_SCHEMA)] + [("sweep",) + m for m in _mutations(SWEEP_SCHEMA)])


def _check_refused(runner, cfg, expect_path: str, workdir) -> str:
    with pytest.raises(ConfigError) as err:
        runner(cfg, str(workdir))
    msg = str(err.value)
    assert PATH_RE.match(msg), msg
    assert "\n" not in msg, msg
    assert err.value.path.startswith("config." + expect_path) or err.value.path == "config", (expect_path, msg)
    assert not workdir.exists(), f"{expect_path}: the workdir was created"
    return msg


def test_fuzz_malformed_configs_fail_in_validation(tmp_path):
    """Every generated malformed config, as a plain dict (what a notebook or a JSON file
    gives) and, where ConfigDict's own typing accepts the assignment, as a ConfigDict;
    plus configs that are not configs at all."""
    t0 = time.monotonic()
    workdir = tmp_path / "w"
    seen, typed_by_configdict = 0, 0
    for kind, case_id, expect, op in FUZZ:
        base = sample_config if kind == "sample" else sweep_config
        runner = run_sample if kind == "sample" else run_sweep
        _check_refused(runner, _apply(base().to_dict(), op), expect, workdir)
        seen += 1
        # the same through a ConfigDict: ml_collections refuses a wrong type on assignment itself
        cd = base()
        try:
            _apply(cd, op)
        except (TypeError, KeyError, AttributeError, OverflowError):
            typed_by_configdict += 1
            continue
        what, dotted, value = op
        node = cd
        for p in dotted.split(".")[:-1]:
            node = node[p]
        leaf = dotted.split(".")[-1]
        if what == "set" and type(node[leaf]) is not type(value):
            continue  # ConfigDict converted it (True -> 1.0 for a float field): a valid value now
        _check_refused(runner, cd, expect, workdir)
        seen += 1
    for bad in (None, 5, "config", [], [("nfe", 5)], {1: 2}, 1.5):
        for runner in (run_sample, run_sweep):
            _check_refused(runner, bad, "", workdir)
            seen += 1
    elapsed = time.monotonic() - t0
    print(f"fuzz: {seen} malformed configs refused, {typed_by_configdict} more refused by ConfigDict's typing, "
          f"{elapsed:.1f} s")
    assert seen > 400
    assert elapsed < 60


def test_fuzz_solver_options_typed_like_the_factory(tmp_path):
    """A string, a list or a wrongly typed number for every option of every solver
    (sample and sweep) is refused at that option's path."""
    from samplax.experiment.config import option_kind
    from samplax.solvers.registry import SOLVERS, solver_options

    wrong = {"bool": ["no", "false", 1, [True]], "int": ["2", 1.5, True, [1]],
             "float": ["2.0", True, [1.0], NAN], "str": [5, True, ["a"]]}
    workdir = tmp_path / "w"
    n = 0
    for name in sorted(SOLVERS):
        for option in solver_options(name):
            if option in ("order", "afs"):
                continue
            kind, _ = option_kind(name, option)
            for v in wrong[kind]:
                cfg = sample_config().to_dict()
                cfg["solver"].update(name=name, options={option: v})
                msg = _check_refused(run_sample, cfg, f"solver.options.{option}", workdir)
                assert repr(v) in msg, msg
                sw = sweep_config().to_dict()
                sw["sweep"].update(solvers=(name,), solver_options={name: {option: v}})
                _check_refused(run_sweep, sw, f"sweep.solver_options.{name}.{option}", workdir)
                n += 2
    assert n > 100, n


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("module,override,path", [
    ("sweep", "--config.sweep.nfes=()", "config.sweep.nfes"),
    ("sweep", "--config.sweep.seeds=abc", "config.sweep.seeds"),
    ("sample", "--config.metrics.reference_steps=1e12", "config.metrics.reference_steps"),
    ("sample", "--config.grid.rho=inf", "config.grid.rho"),
    ("sample", "--config.dtype=5", "config.dtype"),
])
def test_fuzz_cli(module, override, path, tmp_path):
    config = "configs/gmm.py" if module == "sample" else "configs/sweep_quick.py"
    workdir = tmp_path / "w"
    r = _cli(module, f"--config={config}", f"--workdir={workdir}", override)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not workdir.exists()


# ---------------------------------------------------------------------------------------
# The workdir lock
# ---------------------------------------------------------------------------------------
def _tiny(nfe: int = 5):
    c = gmm.get_config()
    c.n_samples = 64
    c.nfe = nfe
    c.metrics.reference_steps = 50
    c.metrics.max_l2_samples = 64
    c.metrics.max_sw_samples = 64
    c.metrics.sw_projections = 16
    c.metrics.save_samples = 16
    return c


TINY_CLI = ["--config=configs/gmm.py", "--config.n_samples=64", "--config.nfe=5",
            "--config.metrics.reference_steps=50", "--config.metrics.max_l2_samples=64",
            "--config.metrics.max_sw_samples=64", "--config.metrics.sw_projections=16",
            "--config.metrics.save_samples=16"]


def _tree(root) -> dict:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        out[dirpath] = os.stat(dirpath).st_mtime_ns
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[p] = (fh.read(), os.stat(p).st_mtime_ns)
    return out


def test_lock_refuses_a_second_run_in_process(tmp_path):
    w = tmp_path / "w"
    with store.WorkdirLock(w, command="the first run") as lock:
        assert lock.held
        info = json.loads((w / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        before = _tree(w)
        with pytest.raises(store.WorkdirLocked) as err:
            run_sample(_tiny(), str(w))
        msg = str(err.value)
        assert isinstance(err.value, WorkdirConflict)
        assert msg.startswith(f"workdir: locked by pid {os.getpid()} on {socket.gethostname()} since "), msg
        assert "(command: the first run)" in msg and str(w / ".lock") in msg
        assert _tree(w) == before  # nothing written
    assert not lock.held
    # released: the lock file stays (removing a flock'ed file races), emptied of the holder's info
    assert (w / ".lock").read_text() == ""
    with store.WorkdirLock(w, command="the second run"):
        assert json.loads((w / ".lock").read_text())["command"] == "the second run"


def test_object_store_lock(tmp_path):
    """The lock for workdirs without flock (gs://...), run on a local directory."""
    w = tmp_path / "w"
    a = store.WorkdirLock(w, mode="object", command="a").acquire()
    info = json.loads((w / ".lock").read_text())
    assert info["pid"] == os.getpid() and info["command"] == "a"
    with pytest.raises(store.WorkdirLocked, match=rf"^workdir: locked by pid {os.getpid()} on "):
        store.WorkdirLock(w, mode="object").acquire()  # the holder is alive: refused
    a.release()
    assert not (w / ".lock").exists()  # released: the object is deleted
    # a holder on this host that is gone (killed without release): taken over with a warning
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (w / ".lock").write_text(json.dumps(dict(pid=int(dead.stdout), host=socket.gethostname(), since="then")))
    with store.WorkdirLock(w, mode="object", command="b"):
        assert json.loads((w / ".lock").read_text())["command"] == "b"
    # a holder on another host cannot be checked: refused, naming it
    (w / ".lock").write_text(json.dumps(dict(pid=1, host="other-host", since="2026-01-01 00:00:00 UTC")))
    with pytest.raises(store.WorkdirLocked, match="locked by pid 1 on other-host since 2026-01-01 00:00:00 UTC"):
        store.WorkdirLock(w, mode="object").acquire()


_HOLD = """
import sys, time
from samplax.experiment.results import WorkdirLock
with WorkdirLock(sys.argv[1], command="holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_lock_two_processes(tmp_path):
    """A real process holds the workdir; the sample entrypoint refuses at once (exit 2,
    one line naming the holder) and writes nothing."""
    w = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(w)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _tree(w)
        r = _cli("sample", f"--workdir={w}", *TINY_CLI)
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
        assert len(lines) == 1, r.stderr[-2000:]
        assert lines[0].startswith(f"error: workdir: locked by pid {holder.pid} on {socket.gethostname()} since "), \
            lines[0]
        assert "(command: holder)" in lines[0]
        assert _tree(w) == before and sorted(os.listdir(w)) == [".lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder was killed: the kernel released its lock, the same command now runs
    r = _cli("sample", f"--workdir={w}", *TINY_CLI)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(store.read_results(w / "results.jsonl")) == 1


def test_two_runs_started_together_write_each_row_once(tmp_path):
    """Two sample entrypoints started at the same moment on one workdir: each row is
    written once; a process that found the workdir locked refused with exit 2."""
    w = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "experiments.sample", f"--workdir={w}", *TINY_CLI]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in outs)
    assert codes in ([0, 0], [0, 2]), outs
    for rc, err in outs:
        if rc == 2:
            (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
            assert line.startswith("error: workdir: locked by pid "), line
    with open(w / "results.jsonl", "rb") as f:
        assert f.read().count(b"\n") == 1  # one row, written once
    print(f"two runs started together: exit codes {codes}")


# ---------------------------------------------------------------------------------------
# A damaged results store
# ---------------------------------------------------------------------------------------
def test_read_results_skips_what_is_not_a_row(tmp_path, caplog):
    p = tmp_path / "results.jsonl"
    good = dict(hash="a", nfe=5, nfe_actual=5, metrics=dict(mean_l2=0.5))
    nonfinite = dict(hash="b", nfe=5, nfe_actual=5, metrics=dict(mean_l2=None, sw2=None))  # legitimately null
    later = dict(good, metrics=dict(mean_l2=0.25))
    lines = [json.dumps(good), "[1, 2]", "null", "5", '"text"', json.dumps(dict(nfe=5)),
             json.dumps(dict(hash="c", nfe=5)), json.dumps(dict(hash="d", metrics=None)), "{not json",
             json.dumps(nonfinite), json.dumps(later)]
    p.write_text("\n".join(lines) + "\n" + '{"hash": "e", "metr')
    with caplog.at_level(logging.WARNING):
        rows = store.read_results(p)
    assert [r["hash"] for r in rows] == ["a", "b"]
    assert rows[0]["metrics"]["mean_l2"] == 0.25  # the later complete row wins
    assert rows[1]["metrics"]["mean_l2"] is None  # a null metric of non-finite samples is a complete row
    messages = [r.getMessage() for r in caplog.records]
    for k, what in ((2, "valid JSON but not a row (a list)"), (3, "valid JSON but not a row (null)"),
                    (4, "valid JSON but not a row (a number)"), (5, "valid JSON but not a row (a string)"),
                    (6, "without a row hash"), (7, "row c has no metrics"), (8, "row d has no metrics"),
                    (9, "unparsable"), (11, "repeats row a")):
        assert any(f"line {k}:" in m and what in m or f"line {k} {what}" in m for m in messages), (k, what, messages)
    assert any("truncated last line" in m for m in messages)
    assert len(messages) == 10
    assert [r["hash"] for r in load_results(str(tmp_path), as_dataframe=False)] == ["a", "b"]
    # read_rows (any JSON object line, e.g. the training log) keeps objects in order, skips the rest
    assert len(store.read_rows(p)) == 6


def test_rows_without_metrics_are_recomputed(tmp_path):
    """A store whose only row for a setting lost its metrics, plus JSON lines that are not
    rows: the rerun recomputes the row and rewrites the store with exactly one complete
    row per hash; the dropped lines are kept in results.damaged.jsonl."""
    w = tmp_path / "w"
    (row,) = run_sample(_tiny(), str(w))
    path = w / "results.jsonl"
    cut = {k: v for k, v in row.items() if k != "metrics"}
    junk = ["[1, 2]", "null", "7", json.dumps(dict(hash=row["hash"], metrics=None))]
    path.write_text("\n".join([json.dumps(cut)] + junk) + "\n")
    assert store.read_results(path) == []
    (again,) = run_sample(_tiny(), str(w))
    assert again["hash"] == row["hash"] and again["time"] >= row["time"]
    assert again["metrics"] == pytest.approx(row["metrics"])  # recomputed, the same numbers
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["metrics"] == again["metrics"]
    damaged = (w / store.DAMAGED_FILE).read_text().splitlines()
    assert damaged == [json.dumps(cut)] + junk
    # a complete row with a repeat: the rerun keeps one (the later), computes nothing
    with open(path, "a") as f:
        f.write(lines[0] + "\n")
    (third,) = run_sample(_tiny(), str(w))
    assert third["time"] == again["time"]
    assert path.read_text().splitlines() == lines
    assert math.isfinite(third["metrics"]["mean_l2"])
