"""What a results row says about what actually ran: warnings for unstable settings,
the kind of model."""
from samplax import experiment


def test_unstable_setting_gets_a_warning_row(tmp_path):
    """Heun (EDM) at NFE 11 on the log-sigma grid returns finite garbage on gmm2d
    (measured: sliced W2 19.9 against a noise floor of 0.11, sample RMS 36x the data's):
    its row carries a warning; the same solver on the time-quadratic grid (sw2 0.13) and
    DPM-Solver++ on log-sigma carry none."""
    c = experiment.sweep_config()
    c.n_samples = 256
    c.sweep.solvers = ("heun", "dpm_solver_pp")
    c.sweep.nfes = (11,)
    c.sweep.grids = ("log_sigma", "time_quadratic")
    rows = {(r["solver"], r["grid"]): r for r in experiment.run_sweep(c, str(tmp_path / "w"))}
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
    c = experiment.sweep_config()
    c.n_samples = 128
    c.sweep.solvers = ("dpm_solver_pp", "ddim")
    c.sweep.nfes = (5,)
    c.sweep.grids = ("logsnr", "log_sigma")
    rows = {(r["solver"], r["grid"]): r for r in experiment.run_sweep(c, str(tmp_path / "w"))}
    capped = rows[("dpm_solver_pp", "logsnr")]
    assert capped["step_orders"] == [1, 1, 1, 1, 1] and capped["safeguard_lowered"]
    assert capped["order_reasons"][1] == "safeguard"
    assert capped["metrics"]["mean_l2"] == rows[("ddim", "logsnr")]["metrics"]["mean_l2"]
    free = rows[("dpm_solver_pp", "log_sigma")]
    assert free["step_orders"] == [1, 2, 2, 1, 1] and not free["safeguard_lowered"]
    assert rows[("ddim", "logsnr")]["step_orders"] == [1] * 5
