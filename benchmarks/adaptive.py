"""Adaptive DPM-Solver-12 / -23 against fixed-step DPM-Solver++ and UniPC at equal NFE.

For gmm2d and gmm64d, from the problem files' 4096 start points (float32 samples), the mean /
max L2 distance at sigma = 0 to the exact probability-flow ODE solution (float64 RK4, cached
under .bench_cache/, as benchmarks/solver_accuracy.py).  Adaptive rows: order 2 / 3, noise or
data prediction, the official default tolerances (rtol 0.05, atol 0.0078) and rtol = atol = tol
for a few tol, one step size for the batch (the official control) and, for some rows, one per
sample; each integrates from t = 1 to t_min = 1e-3 and jumps to sigma = 0 (x0_hat, counted).
Fixed-step rows: DPM-Solver++(2M, 3M) and UniPC-bh2 (orders 2, 3) from the registry with their
default options on logSNR grids ending at sigma = 0 (t_min = 1e-3), at the NFE each adaptive row
realised.

    python -m benchmarks.adaptive            # both problems (~10 min on 2 busy cores)
    python -m benchmarks.adaptive --quick    # gmm2d, fewer rows
    python -m benchmarks.adaptive --from-json docs/benchmarks/adaptive.json   # re-render only

Writes docs/benchmarks/adaptive.md (or --out) and a .json next to it.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.adaptive"
DEFAULT_OUT = os.path.join("docs", "benchmarks", "adaptive.md")
T_MIN = 1e-3
OFFICIAL = ("official", 0.05, 0.0078)
TOLS = (OFFICIAL, ("1e-2", 1e-2, 1e-2), ("3e-3", 3e-3, 3e-3), ("1e-3", 1e-3, 1e-3), ("3e-4", 3e-4, 3e-4),
        ("1e-4", 1e-4, 1e-4))
ADAPTIVE = ((2, "noise"), (3, "noise"), (3, "data"))
PER_SAMPLE = ((3, "noise", "1e-2"), (3, "noise", "1e-3"))
N_PER_SAMPLE = 512  # the per-sample rows run on the first 512 start points (vmapped while loops are slow on CPU)
FIXED = (("dpm_solver_pp", {"order": 2}), ("dpm_solver_pp", {"order": 3}), ("unipc", {"order": 2}),
         ("unipc", {"order": 3}))


def reference_at_tmin(problem: str, log=print):
    """Exact PF-ODE solution at t_min (float64, 2000 RK4 steps), cached like the sigma = 0 one."""
    import jax
    import jax.numpy as jnp

    import samplax as sx

    x_T, _, _ = C.reference_solution(problem, log=log)
    path = os.path.join(C.CACHE_DIR, f"ref_tmin_{problem}_{C.digest(problem, T_MIN, x_T)}.npz")
    if not os.path.exists(path):
        with jax.enable_x64(True):
            gmm, schedule, _ = sx.load_problem(problem, dtype=jnp.float64)
            x = np.asarray(gmm.ode_solution(jnp.asarray(x_T), 1.0, T_MIN, schedule, n_steps=2000), np.float64)
        C.atomic_save_npz(path, x=x)
    with np.load(path) as z:
        return z["x"]


def _timed(fn, *args):
    import jax

    out = jax.block_until_ready(fn(*args))  # compile + run
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def run_problem(problem: str, quick: bool, log=print) -> dict:
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.solvers.adaptive import adaptive_sample

    x_T64, ref, _ = C.reference_solution(problem, log=log)
    ref_tmin = reference_at_tmin(problem, log=log)
    gmm, schedule, _ = sx.load_problem(problem)
    model = gmm.model(schedule)
    x_T = jnp.asarray(x_T64, jnp.float32)
    jump = jax.jit(lambda x: model.data(x, jnp.float32(T_MIN)))

    def err(x):
        """(mean, max) L2 at t_min, then at sigma = 0 after the x0_hat jump."""
        e1 = np.linalg.norm(np.asarray(x, np.float64) - ref_tmin, axis=-1)
        e0 = np.linalg.norm(np.asarray(jump(x), np.float64) - ref, axis=-1)
        return dict(mean_tmin=float(e1.mean()), max_tmin=float(e1.max()), mean_l2=float(e0.mean()),
                    max_l2=float(e0.max()))

    rows, nfes = [], set()
    tols = TOLS[:4] if quick else TOLS
    for order, pred in ADAPTIVE:
        for name, rtol, atol in tols:
            f = jax.jit(lambda x, r, a: adaptive_sample(model, x, 1.0, T_MIN, order=order, rtol=r, atol=a,
                                                        prediction=pred, max_nfe=4000))
            (x, info), sec = _timed(f, x_T, jnp.float32(rtol), jnp.float32(atol))
            e = err(x)
            m, mx = e["mean_l2"], e["max_l2"]
            nfe = int(info.nfe) + 1  # + the jump
            nfes.add(nfe)
            rows.append(dict(kind="adaptive", order=order, prediction=pred, tol=name, rtol=rtol, atol=atol,
                             control="batch", nfe=nfe, nfe_max=nfe, n_accept=int(info.n_accept),
                             n_reject=int(info.n_reject), cap_hit=bool(info.cap_hit), seconds=sec, **e))
            log(f"[{problem}] adaptive order {order} {pred} tol {name}: NFE {nfe} ({int(info.n_accept)} acc, "
                f"{int(info.n_reject)} rej) mean L2 {m:.3g} max {mx:.3g} ({sec:.2f} s)")
    def err_sub(x):
        e1 = np.linalg.norm(np.asarray(x, np.float64) - ref_tmin[:N_PER_SAMPLE], axis=-1)
        e0 = np.linalg.norm(np.asarray(jump(x), np.float64) - ref[:N_PER_SAMPLE], axis=-1)
        return dict(mean_tmin=float(e1.mean()), max_tmin=float(e1.max()), mean_l2=float(e0.mean()),
                    max_l2=float(e0.max()))

    if not quick:
        for order, pred, name in PER_SAMPLE:
            rtol, atol = next((r, a) for n, r, a in TOLS if n == name)
            f = jax.jit(lambda x, r, a: adaptive_sample(model, x, 1.0, T_MIN, order=order, rtol=r, atol=a,
                                                        prediction=pred, max_nfe=4000, per_sample=True))
            (x, info), sec = _timed(f, x_T[:N_PER_SAMPLE], jnp.float32(rtol), jnp.float32(atol))
            e = err_sub(x)
            m, mx = e["mean_l2"], e["max_l2"]
            nfe = np.asarray(info.nfe) + 1
            rows.append(dict(kind="adaptive", order=order, prediction=pred, tol=name, rtol=rtol, atol=atol,
                             control="per-sample", nfe=float(nfe.mean()), nfe_max=int(nfe.max()),
                             n_accept=float(np.mean(info.n_accept)), n_reject=float(np.mean(info.n_reject)),
                             cap_hit=bool(np.any(info.cap_hit)), seconds=sec, n_samples=N_PER_SAMPLE, **e))
            nfes.add(int(round(float(nfe.mean()))))
            log(f"[{problem}] adaptive per-sample order {order} {pred} tol {name}: NFE mean {nfe.mean():.1f} "
                f"max {nfe.max()} mean L2 {m:.3g} ({sec:.2f} s)")
    fixed = []
    for name, opts in FIXED:
        solver = sx.get_solver(name, **opts)
        for nfe in sorted(nfes):
            n = sx.steps_for_nfe(solver, nfe - 1, "t_min")  # then the jump: the NFE of end="zero"
            grid = sx.time_grid(schedule, n, "logsnr", end="t_min", t_min=T_MIN)
            f = jax.jit(lambda x: sx.sample(solver, model, x, grid)[0])
            x, sec = _timed(f, x_T)
            fixed.append(dict(kind="fixed", solver=name, order=opts["order"], nfe=nfe, seconds=sec, **err(x)))
        log(f"[{problem}] fixed {name} {opts}: done at NFE {sorted(nfes)}")
    return dict(adaptive=rows, fixed=fixed, denoise_floor=C.denoise_floor(problem, T_MIN, log=log))


def _table(r: dict, key: str) -> str:
    fixed = {(f["solver"], f["order"], f["nfe"]): f for f in r["fixed"]}
    mkey = key.replace("mean", "max")
    hdr = ["order", "pred", "tol", "control", "NFE", "acc / rej", "adaptive mean (max)", "s",
           "DPM++2M", "DPM++3M", "UniPC-2", "UniPC-3", "best fixed / adaptive"]
    rows = []
    for a in r["adaptive"]:
        nfe = int(round(a["nfe"]))
        fx = [fixed.get((s, o, nfe)) for s, o in (("dpm_solver_pp", 2), ("dpm_solver_pp", 3), ("unipc", 2),
                                                   ("unipc", 3))]
        best = min(f[key] for f in fx if f)
        nfe_s = f"{a['nfe']:.1f} (max {a['nfe_max']})" if a["control"] == "per-sample" else str(a["nfe"])
        acc = (f"{a['n_accept']:.1f} / {a['n_reject']:.1f}" if a["control"] == "per-sample"
               else f"{a['n_accept']} / {a['n_reject']}")
        rows.append([a["order"], a["prediction"], a["tol"], a["control"], nfe_s + (" cap" if a["cap_hit"] else ""),
                     acc, f"{C.fmt(a[key])} ({C.fmt(a[mkey])})", f"{a['seconds']:.2f}"]
                    + [C.fmt(f[key]) if f else "—" for f in fx] + [f"{best / a[key]:.2g}"])
    return C.md_table(hdr, rows, ["r", "l", "l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r"])


def render(res: dict) -> str:
    out = ["# Adaptive DPM-Solver-12 / -23 vs fixed-step solvers at equal NFE", "",
           C.machine_md(res["machine"], res["command"], res["date"]), "",
           "Mean (max) L2 distance to the exact PF-ODE solution (float64) from the problem files' 4096 start "
           "points, float32 samples.  Adaptive: `samplax.solvers.adaptive.adaptive_sample` from t = 1 to "
           "t_min = 1e-3, then the x0_hat jump to sigma = 0; its NFE = the NFE realised + 1 (the jump).  Batch "
           "control: one step-size sequence for all 4096 samples, its error the worst sample's (the official "
           "control); per-sample control: its own steps per sample (vmapped), on the first 512 start points, "
           "NFE = mean (max) over samples, the compute being that of the max.  Fixed-step rows: default "
           "options, logSNR grid from t = 1 to t_min = 1e-3 with NFE - 1 steps, then the same jump, at the "
           "adaptive row's NFE (per-sample rows: the mean NFE rounded; their fixed-step errors are over all "
           "4096 points).  `best fixed / adaptive`: the smallest mean error among DPM-Solver++(2M, 3M) and "
           "UniPC-bh2 (orders 2, 3) at that NFE over the adaptive row's (below 1: a fixed-step solver is more "
           "accurate at equal NFE).  `s`: run time of the compiled program (CPU, shared).", ""]
    for problem, r in res["problems"].items():
        out += [f"## {problem}", "", "### ODE error at t_min (before the jump)", "", _table(r, "mean_tmin"), "",
                "### Error at sigma = 0 (the problem's metric, after the jump)", "",
                f"Floor of any solver ending with the jump from t_min = 1e-3 (exact ODE to t_min, then the jump): "
                f"mean L2 {C.fmt(r['denoise_floor']['mean_l2'])}.", "", _table(r, "mean_l2"), ""]
    out += ["## Reading", "", res.get("reading", ""), ""]
    return "\n".join(out)


def reading(res: dict) -> str:
    lines = []
    for problem, r in res["problems"].items():
        for key, what in (("mean_tmin", "ODE error at t_min"), ("mean_l2", "error at sigma = 0")):
            fixed = {(f["solver"], f["order"], f["nfe"]): f[key] for f in r["fixed"]}
            wins, ratios = 0, []
            for a in r["adaptive"]:
                nfe = int(round(a["nfe"]))
                best = min(v for (s, o, n), v in fixed.items() if n == nfe)
                ratios.append(best / a[key])
                wins += a[key] < best
            lines.append(f"* {problem}, {what}: adaptive beats the best fixed-step solver at its own NFE in {wins} "
                         f"of {len(r['adaptive'])} rows; best-fixed / adaptive error ratio {min(ratios):.2g} to "
                         f"{max(ratios):.2g}.")
    lines += ["",
              "At sigma = 0 every solver with NFE >= ~60 sits at the floor of the final jump from t_min = 1e-3 "
              "(9.6e-4 on gmm2d, 3.5e-3 on gmm64d), and the differences there (up to 2x either way, the "
              "'wins' above) come from the ODE error partly cancelling the jump's error, not from accuracy.  "
              "The ODE error at t_min is the measure of the integrators: there the fixed-step solvers are more "
              "accurate at equal NFE in every row: the best of them (UniPC-3) by 1.2x to 3.4x against "
              "DPM-Solver-23 in noise prediction and 3x to 12x in data prediction at tol <= 3e-3, and by 27x "
              "to 90x against DPM-Solver-12.  The adaptive solver's costs: rejected trials (6-40% "
              "of the trials), the lower-order embedded solution (an evaluation budget that a multistep method "
              "spends on accuracy), one step size for the whole batch driven by its worst sample (per-sample "
              "control spends 52 / 93 mean NFE instead of 63 / 128 on gmm2d at tol 1e-2 / 1e-3), and, at the "
              "official tolerances, a few samples that end in another mode (max L2 ~0.35 on gmm2d, ~4 on "
              "gmm64d).  What it does give: a tolerance instead of a step count, and a measured error "
              "estimate; for sampling at a fixed budget the fixed-step multistep solvers are the better "
              "choice on these problems."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--from-json", default=None)
    args = ap.parse_args()
    if args.from_json:
        C.rerender_from_json(args.from_json, args.out, render)
        return
    C.enable_compilation_cache()
    problems = ("gmm2d",) if args.quick else ("gmm2d", "gmm64d")
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(),
               problems={p: run_problem(p, args.quick) for p in problems})
    res["reading"] = reading(res)
    print(res["reading"])
    C.atomic_write_json(os.path.splitext(args.out)[0] + ".json", res)
    C.atomic_write_text(args.out, render(res))
    print(render(res))


if __name__ == "__main__":
    main()
