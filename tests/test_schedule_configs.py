"""Schedule files in sample and sweep configs: ``solver.name="schedule"`` (the file's
per-step decisions) and ``grid.spacing="file"`` (its time points); and a sweep of
multistep solvers as one program of stacked step tables."""
import numpy as np
import pytest

import samplax as sx
from samplax import experiment
from samplax.experiment.config import ConfigError
from samplax.solvers.schedule import constant_schedule, save_schedule


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory):
    _, schedule, _ = sx.load_problem("gmm2d")
    grid = sx.time_grid(schedule, 5, "logsnr", "zero")
    path = tmp_path_factory.mktemp("sched") / "unipc2.json"
    save_schedule(str(path), constant_schedule(np.asarray(grid.t[:-1]), order=2, derivative="unipc_bh2",
                                               corrector=True), problem="gmm2d")
    return str(path)


def _sample(tmp_path, name, **over):
    c = experiment.sample_config()
    c.n_samples, c.nfe = 256, 5
    for k, v in over.items():
        obj = c
        *parents, leaf = k.split(".")
        for p in parents:
            obj = obj[p]
        obj[leaf] = v
    return experiment.run_sample(c, str(tmp_path / name))[0]


def test_schedule_file_runs_as_its_solver(tmp_path, schedule_file):
    """The constant UniPC-2 schedule file on its own time points equals unipc(order=2) without
    the safeguard on the logSNR grid (float32 round-off); the row records the file's hash."""
    row = _sample(tmp_path, "a", **{"solver.name": "schedule", "solver.options": {"file": schedule_file},
                                    "grid.spacing": "file", "grid.file": schedule_file})
    ref = _sample(tmp_path, "b", **{"solver.name": "unipc", "solver.order": 2,
                                    "solver.options": {"max_step_ratio": None, "max_step": None}})
    assert row["step_orders"] == ref["step_orders"] == [1, 2, 2, 1, 1]
    assert abs(row["metrics"]["mean_l2"] - ref["metrics"]["mean_l2"]) <= 1e-6 * ref["metrics"]["mean_l2"]
    assert row["nfe_actual"] == 5 and len(row["schedule_files"]["grid"]["sha1"]) == 40


def test_schedule_file_errors_name_the_field(tmp_path, schedule_file):
    with pytest.raises(ConfigError, match=r"config.grid.file: .*has 5 steps .*needs 6 steps"):
        _sample(tmp_path, "c", **{"grid.spacing": "file", "grid.file": schedule_file, "nfe": 6})
    with pytest.raises(ConfigError, match=r"config.grid.file: grid spacing 'file' needs a schedule file"):
        _sample(tmp_path, "c", **{"grid.spacing": "file"})
    with pytest.raises(ConfigError, match=r"config.solver.options.file: solver 'schedule' needs the path"):
        _sample(tmp_path, "c", **{"solver.name": "schedule"})
    with pytest.raises(ConfigError, match=r"config.solver.afs: True differs from the schedule file's afs=False"):
        _sample(tmp_path, "c", **{"solver.name": "schedule", "solver.options": {"file": schedule_file},
                                  "solver.afs": True, "nfe": 4})
    with pytest.raises(ConfigError, match=r"config.grid.file: .*does not exist"):
        _sample(tmp_path, "c", **{"grid.spacing": "file", "grid.file": str(tmp_path / "nope.json")})
    assert not (tmp_path / "c").exists()  # nothing written


def test_multistep_sweep_is_one_program(tmp_path):
    """Five multistep solvers x 2 grids x 2 NFEs: one compiled program (vmapped over their
    step tables); Euler, which is not a multistep method, gets its own."""
    c = experiment.sweep_config()
    c.n_samples = 128
    c.sweep.solvers = ("euler", "ddim", "dpm_solver_pp", "unipc", "deis", "ipndm_v")
    c.sweep.orders = (2,)
    c.sweep.nfes, c.sweep.grids = (5, 8), ("logsnr", "time_quadratic")
    rows = experiment.run_sweep(c, str(tmp_path / "s"))
    programs = {r["solver"]: r["program"] for r in rows}
    assert len(rows) == 24 and len(set(programs.values())) == 2
    assert programs["euler"] != programs["ddim"]
    assert {r["rows_in_program"] for r in rows if r["solver"] != "euler"} == {20}
    for r in rows:
        assert r["nfe_actual"] == r["nfe"]
