"""Learned time points (and coefficient corrections) and DC-Solver ratios on the exact GMM problems.

For gmm2d and gmm64d at NFE 5, 6, 8, 10 (grids ending at sigma = 0): the time
points of UniPC-3 (bh2, with corrector) are learned by gradient descent through
the sampler (``samplax.search.gradient.learn_times``), starting from the
time-quadratic grid, on *training* start points (a different seed from the
benchmark's); then also per-step coefficient corrections.  Errors are measured
on the benchmark's 4096 start points (``problem_start_points``: never trained on)
against the exact PF-ODE solution, and compared with the best hand-designed row
of docs/benchmarks/solver_accuracy.md and the issue's targets (half of it).
DC-Solver: ratios fitted on 10 samples at each NFE vs ratios predicted by CPR from
the other NFEs (left out of the CPR fit).

    python -m benchmarks.learned_schedules            # writes docs/benchmarks/learned_schedules.{md,json}
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.learned_schedules"
OUT = os.path.join("docs", "benchmarks", "learned_schedules.md")
NFES = (5, 6, 8, 10)
BEST = {"gmm2d": {5: 0.0504, 6: 0.0437, 8: 0.0273, 10: 0.0135},
        "gmm64d": {5: 0.351, 6: 0.197, 8: 0.0623, 10: 0.0382}}


def _train_set(problem, n, seed=12345):
    import jax
    import jax.numpy as jnp

    import samplax as sx

    _, _, info = sx.load_problem(problem)
    x = np.random.default_rng(seed).standard_normal((n, info["dim"]))
    with jax.enable_x64(True):
        g64, s64, _ = sx.load_problem(problem, dtype=jnp.float64)
        ref = np.asarray(g64.ode_solution(jnp.asarray(x), 1.0, None, s64, n_steps=500))
    return x, ref


def learned_rows(problems, nfes, steps, n_train, log=print):
    import jax.numpy as jnp

    import samplax as sx
    from samplax.search.gradient import learn_times, learned_table
    from samplax.solvers.schedule import constant_schedule, schedule_table
    from samplax.solvers.unified import run_table

    rows = []
    for problem in problems:
        gmm, sch, _ = sx.load_problem(problem)
        model = gmm.model(sch)
        x_b, ref_b, _ = C.reference_solution(problem, log=log)
        xb, rb = jnp.asarray(x_b, jnp.float32), np.asarray(ref_b)
        x_t, ref_t = _train_set(problem, n_train)
        xt, rt = jnp.asarray(x_t, jnp.float32), jnp.asarray(ref_t, jnp.float32)

        def errs(tab):
            x0 = np.asarray(run_table(model, xb, tab, diagnostics=False)[0], np.float64)
            d = np.linalg.norm(x0 - rb, axis=-1)
            return float(d.mean()), float(d.max())

        for nfe in nfes:
            grid = sx.time_grid(sch, nfe, "time_quadratic", end="zero")
            tmpl = constant_schedule(grid.t[:-1], order=3, derivative="unipc_bh2", corrector=True, end="zero")
            start = errs(schedule_table(tmpl, sch))
            row = dict(problem=problem, nfe=nfe, start_mean_l2=start[0], start_max_l2=start[1],
                       best_hand=BEST[problem][nfe], target=BEST[problem][nfe] / 2)
            for label, lc in (("times", False), ("times_coef", True)):
                t0 = time.perf_counter()
                sched, deltas, hist = learn_times(model, sch, tmpl, xt, rt, steps=steps, learning_rate=3e-2,
                                                  learn_coefficients=lc)
                secs = time.perf_counter() - t0
                m, mx = errs(learned_table(sched, sch, deltas))
                row[f"{label}_mean_l2"], row[f"{label}_max_l2"], row[f"{label}_seconds"] = m, mx, secs
                row[f"{label}_times"] = [float(v) for v in np.asarray(sched.times)]
                row[f"{label}_train_l2"] = min(hist["train"])
                log(f"[learned] {problem} NFE {nfe} {label}: held-out mean {m:.4g} (max {mx:.3g}), start "
                    f"{start[0]:.4g}, best hand {BEST[problem][nfe]}, {secs:.1f} s")
            rows.append(row)
    return rows


def dc_rows(nfes, steps, n_fit=10, log=print):
    import jax.numpy as jnp

    import samplax as sx
    from samplax.search.dc_solver import cpr_fit, cpr_predict, exact_trajectory, fit_ratios, run_dc
    from samplax.solvers.unified import run_table

    problem = "gmm2d"
    gmm, sch, _ = sx.load_problem(problem)
    model = gmm.model(sch)
    x_b, ref_b, _ = C.reference_solution(problem, log=log)
    xb = jnp.asarray(x_b, jnp.float32)
    x_t = np.random.default_rng(777).standard_normal((n_fit, 2))
    fits, tabs = {}, {}
    err = lambda a: (float(np.linalg.norm(np.asarray(a, np.float64) - ref_b, axis=-1).mean()),  # noqa: E731
                     float(np.linalg.norm(np.asarray(a, np.float64) - ref_b, axis=-1).max()))
    rows = []
    for nfe in nfes:
        grid = sx.time_grid(sch, nfe, "time_quadratic", end="zero")
        tab = sx.get_solver("unipc", order=3, variant="bh2").table(grid, sch)
        ref = exact_trajectory(gmm, sch, x_t, grid, n_steps=300)
        t0 = time.perf_counter()
        r, _ = fit_ratios(model, jnp.asarray(x_t, jnp.float32), jnp.asarray(ref, jnp.float32), tab, steps=steps)
        secs = time.perf_counter() - t0
        fits[nfe], tabs[nfe] = np.asarray(r), tab
        rows.append(dict(problem=problem, nfe=nfe, unipc=err(run_table(model, xb, tab)[0]),
                         dc_fitted=err(run_dc(model, xb, tab, r)), ratios_fitted=[float(v) for v in np.asarray(r)],
                         fit_seconds=secs))
    for row in rows:
        others = {k: v for k, v in fits.items() if k != row["nfe"]}
        pred = cpr_predict(cpr_fit(others, deg_nfe=1), row["nfe"])
        row["ratios_cpr"] = [float(v) for v in pred]
        row["dc_cpr"] = err(run_dc(model, xb, tabs[row["nfe"]], jnp.asarray(pred, jnp.float32)))
        log(f"[dc] NFE {row['nfe']}: unipc {row['unipc'][0]:.4g}, fitted {row['dc_fitted'][0]:.4g}, "
            f"CPR (left out) {row['dc_cpr'][0]:.4g}")
    return rows


def render(res) -> str:
    f = C.fmt
    out = ["# Learned time steps, coefficients and DC-Solver ratios", "",
           C.machine_md(res["machine"], res["command"], res["date"]), "",
           "Setup: UniPC-3 (bh2, UniC corrector) schedules on grids ending at sigma = 0, float32. Learned: the time "
           "points (softmax logSNR increments, exact ends), then also per-step corrections of the table's predictor "
           "and corrector coefficients (L2 penalty 1e-3), by Adam through the sampler on "
           f"{res['n_train']} training start points (seed 12345, {res['steps']} iterations, start: time-quadratic "
           "grid); "
           "errors on the 4096 benchmark start points (never trained on) to the exact PF-ODE solution. "
           "`best hand` = best hand-designed row of solver_accuracy.md (end=zero); `target` = half of it.", "",
           "## Learned schedules", ""]
    hdr = ["problem", "NFE", "best hand", "target", "start (tq grid)", "learned times", "max", "s/fit",
           "times + coef", "max", "s/fit", "target met"]
    rows = []
    for r in res["learned"]:
        met = "yes" if r["times_coef_mean_l2"] <= r["target"] else "no"
        rows.append([r["problem"], r["nfe"], f(r["best_hand"]), f(r["target"]), f(r["start_mean_l2"]),
                     f(r["times_mean_l2"]), f(r["times_max_l2"]), f"{r['times_seconds']:.1f}",
                     f(r["times_coef_mean_l2"]), f(r["times_coef_max_l2"]), f"{r['times_coef_seconds']:.1f}", met])
    out.append(C.md_table(hdr, rows, ["l", "r"] + ["r"] * 9 + ["c"]))
    out += ["", "`target met` judges the mean L2 only.  The issue also asks for no higher max error and mode-flip "
            "fraction than the best hand-designed row: the max L2 here is not lower (e.g. gmm2d NFE 5: 0.697 vs "
            "0.616 for the best hand row; the loss is the mean L2, which does not control the worst sample), and "
            "mode flips are not measured in this table."]
    out += ["", "## DC-Solver (gmm2d, UniPC-3 bh2, time-quadratic grid)", "",
            f"Ratios fitted on {res['dc_n_fit']} samples (Adam, per-node trajectory loss to the exact solution) vs "
            "ratios predicted by cascade polynomial regression fitted on the *other* NFEs (the row's NFE left out; "
            "degree 2 in step / NFE, 1 in NFE / 50).", ""]
    rows = [[r["nfe"], f(r["unipc"][0]), f(r["dc_fitted"][0]), f(r["dc_cpr"][0]), f(r["unipc"][1]),
             f(r["dc_fitted"][1]), f(r["dc_cpr"][1]), f"{r['fit_seconds']:.1f}",
             " ".join(f"{v:.2f}" for v in r["ratios_fitted"]), " ".join(f"{v:.2f}" for v in r["ratios_cpr"])]
            for r in res["dc"]]
    out.append(C.md_table(["NFE", "UniPC mean", "DC fitted", "DC CPR", "UniPC max", "fitted max", "CPR max", "s/fit",
                           "ratios fitted", "ratios CPR"], rows, ["r"] * 8 + ["l", "l"]))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--problems", default="gmm2d,gmm64d")
    ap.add_argument("--from-json", default=None, help="re-render the .md from a written .json")
    args = ap.parse_args()
    if args.from_json:
        C.rerender_from_json(args.from_json, args.out, render)
        return
    C.enable_compilation_cache()
    t0 = time.perf_counter()
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(), steps=args.steps,
               n_train=args.n_train, dc_n_fit=10)
    res["learned"] = learned_rows(args.problems.split(","), NFES, args.steps, args.n_train)
    res["dc"] = dc_rows(NFES, 120)
    res["total_seconds"] = time.perf_counter() - t0
    C.atomic_write_json(os.path.splitext(args.out)[0] + ".json", res)
    C.atomic_write_text(args.out, render(res))
    print(f"wrote {args.out} in {res['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
