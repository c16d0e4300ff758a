"""What a results row says about what actually ran: warnings for unstable settings,
the kind of model."""
from samplax import experiment


def _sweep(tmp_path, solvers, nfes, grids, n=256):
    c = experiment.sweep_config()
    c.n_samples = n
    c.sweep.solvers, c.sweep.nfes, c.sweep.grids = solvers, nfes, grids
    return {(r["solver"], r["grid"]): r for r in experiment.run_sweep(c, str(tmp_path / "w"))}


def test_unstable_setting_gets_a_warning_row(tmp_path):
    """Heun (EDM) at NFE 11 on the log-sigma grid returns finite garbage on gmm2d
    (measured: sliced W2 19.9 against a noise floor of 0.11, sample RMS 36x the data's):
    its row carries a warning; the same solver on the time-quadratic grid (sw2 0.13) and
    DPM-Solver++ on log-sigma carry none."""
    rows = _sweep(tmp_path, ("heun", "dpm_solver_pp"), (11,), ("log_sigma", "time_quadratic"))
    bad = rows[("heun", "log_sigma")]
    assert bad["metrics"]["sw2"] > 50 * bad["reference"]["sw2_floor"]
    assert "outside its stable regime" in bad["warning"] and "x the data's" in bad["warning"]
    assert bad["warning"].startswith("heun: outside its stable regime on this grid")  # the a-priori check
    assert rows[("heun", "time_quadratic")]["warning"] is None
    assert rows[("dpm_solver_pp", "log_sigma")]["warning"] is None
    assert all(r["model_kind"] == "analytic" for r in rows.values())


def test_rows_record_the_orders_that_ran(tmp_path):
    """DPM-Solver++(2M) at NFE 5 on gmm2d's logSNR grid: every log-SNR step (2.42) is
    longer than the safeguard's cap (2), so every step runs at order 1 -- the row says
    so (it equals DDIM); on the log-sigma grid the middle steps run at order 2."""
    rows = _sweep(tmp_path, ("dpm_solver_pp", "ddim"), (5,), ("logsnr", "log_sigma"), n=128)
    capped = rows[("dpm_solver_pp", "logsnr")]
    assert capped["step_orders"] == [1, 1, 1, 1, 1] and capped["safeguard_lowered"]
    assert capped["order_reasons"][1] == "safeguard"
    assert capped["metrics"]["mean_l2"] == rows[("ddim", "logsnr")]["metrics"]["mean_l2"]
    free = rows[("dpm_solver_pp", "log_sigma")]
    assert free["step_orders"] == [1, 2, 2, 1, 1] and not free["safeguard_lowered"]
    assert rows[("ddim", "logsnr")]["step_orders"] == [1] * 5
