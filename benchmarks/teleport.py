"""Gaussian-score teleportation (samplax.solvers.teleport) on the exact GMM problems.

(a) The error the jump itself introduces, as a function of the switch: x_T (the 4096
    benchmark start points at t = 1) is moved by the Gaussian closed form to logSNR lambda_s,
    then solved to sigma = 0 exactly (float64 RK4 of the mixture's PF-ODE, Richardson, 500
    steps), and compared with the exact solution from x_T (the first 1024 start points): mean / max L2 and sliced W2 (128
    fixed directions, against the exact solutions, which are exact samples of p0).  Beside it
    the switch rule's estimate E(lambda_s) (relative accumulated denoiser discrepancy, times
    sqrt(tr C) to be in the same units).
(b) Model evaluations saved at equal error: DPM-Solver++(2M) and UniPC (bh2, order 2) at NFE
    5..20 from t = 1 (grids logSNR and time-quadratic, end at sigma = 0, AFS off and on),
    against teleport + the same base from the switch (the rule's default, and fixed
    lambda_s), NFE 3..20 on the same spacings, with and without the Gaussian first step.  For
    each base NFE n: the best base error over spacings and AFS, and the smallest teleport NFE
    k whose best error is at most that.
(c) digits FD with the empirical Gaussian fit, when a trained U-Net is in
    /work/runs/train_digits (else reported as unmeasured).
(d) Wall time per sample at B = 4096 (gmm64d, NFE 10): base (table program, as sample() runs
    it), base stepwise, teleport + base.

    python -m benchmarks.teleport                 # all parts (~15 min on 2 shared cores)
    python -m benchmarks.teleport --parts a       # only (a)
    python -m benchmarks.teleport --from-json docs/benchmarks/teleport.json   # re-render

Writes docs/benchmarks/teleport.md and .json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.teleport"
OUT = os.path.join("docs", "benchmarks", "teleport.md")
PROBLEMS = ("gmm2d", "gmm64d")
SWITCH_LAMBDAS = (-4.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 1.0)
TOL = 1e-3  # the rule's default tolerance
N_A = 1024  # start points used in (a) (the first of the 4096)
BASES = (("dpm_solver_pp", 2, {}), ("unipc", 2, {}))
BASE_NFES = tuple(range(5, 21))
TELE_NFES = tuple(range(3, 21))
FIXED_SWITCHES = (-3.0, -2.0, -1.0, 0.0)
SPACINGS = ("logsnr", "time_quadratic")
N_PROJ = 128
DIGITS_DIR = "/work/runs/train_digits"


def _state(problem):
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.metrics import projections
    from samplax.solvers.teleport import eigh_psd

    gmm, schedule, info = sx.load_problem(problem)
    x_T, ref, _ = C.reference_solution(problem)
    mu, cov = sx.solvers.model_data(gmm=gmm).moments()
    lam, vecs = eigh_psd(cov)
    proj = np.asarray(projections(jax.random.PRNGKey(0), info["dim"], N_PROJ, jnp.float32))
    return dict(gmm=gmm, schedule=schedule, x_T=x_T, ref=ref, mean=mu, eigvals=lam, eigvecs=vecs, proj=proj,
                model=gmm.model(schedule), data=sx.solvers.model_data(gmm=gmm))


def _metrics(x, st):
    from samplax.metrics import sliced_wasserstein2_host

    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        return dict(mean_l2=float("nan"), max_l2=float("nan"), sw2=float("nan"))
    err = np.linalg.norm(x - st["ref"], axis=-1)
    return dict(mean_l2=float(err.mean()), max_l2=float(err.max()), sw2=sliced_wasserstein2_host(x, st["ref"],
                                                                                                 st["proj"]))


# ---------------------------------------------------------------------------------------
# (a) the jump's own error
# ---------------------------------------------------------------------------------------
def part_a(problem, log=print):
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.solvers.teleport import auto_switch, gaussian_jump

    st = _state(problem)
    rows = []
    rule = auto_switch(st["model"], st["mean"], st["eigvals"], st["eigvecs"], 1.0, TOL, 64)
    scale = math.sqrt(st["eigvals"].sum())
    with jax.enable_x64(True):
        gmm, sch, _ = sx.load_problem(problem, dtype=jnp.float64)
        x_T = jnp.asarray(st["x_T"][:N_A])
        st = dict(st, ref=st["ref"][:N_A])
        a1, s1 = sch.alpha(jnp.float64(1.0)), sch.sigma(jnp.float64(1.0))
        lam_max = float(sch.lambda_(jnp.float64(1.0)))
        for lam_s in (lam_max,) + SWITCH_LAMBDAS:
            t0 = time.perf_counter()
            t_s = sch.t_from_lambda(jnp.float64(lam_s))
            a2, s2 = sch.alpha(t_s), sch.sigma(t_s)
            x_s = gaussian_jump(st["mean"], st["eigvals"], st["eigvecs"], x_T, a1, s1, a2, s2)
            x0 = gmm.ode_solve_ve(x_s / a2, s2 / a2, jnp.float64(0.0), n_steps=500)
            m = _metrics(x0, st)
            est = float(np.interp(lam_s, rule["probe_lambda"], rule["probe_accumulated"])) * scale
            rows.append(dict(problem=problem, lambda_s=float(lam_s), t_s=float(t_s), sigma_tilde_s=float(s2 / a2),
                             rule_estimate=est, **m))
            log(f"[a] {problem} lambda_s={lam_s:+.2f} t={float(t_s):.3f} mean_l2={m['mean_l2']:.3g} "
                f"sw2={m['sw2']:.3g} est={est:.3g} ({time.perf_counter() - t0:.1f}s)")
    return rows, dict(problem=problem, rule_lambda=float(rule["probe_lambda"][np.searchsorted(
        rule["probe_accumulated"], TOL, side="right") - 1]), rule_t=float(rule["t_switch"]))


# ---------------------------------------------------------------------------------------
# (b) evaluations saved at equal error
# ---------------------------------------------------------------------------------------
def _grid_stack(schedule, n, t_maxes, spacings=SPACINGS):
    import jax.numpy as jnp

    import samplax as sx

    grids = [sx.time_grid(schedule, n, sp, end="zero", t_max=tm, dtype=jnp.float32)
             for tm in t_maxes for sp in spacings]
    return sx.Grid(**{k: jnp.stack([getattr(g, k) for g in grids]) for k in ("t", "alpha", "sigma", "lam")},
                   end="zero")


def _run_stacks(pairs, st):
    """One compiled program running each (solver, stacked grids) pair, vmapped over its grids."""
    import jax
    import jax.numpy as jnp

    import samplax as sx

    model = st["model"]
    x_T = jnp.asarray(st["x_T"], jnp.float32)
    solvers = [p[0] for p in pairs]

    @jax.jit
    def run(gs):
        return [jax.vmap(lambda gg, s=s: sx.sample(s, model, x_T, gg)[0])(g) for s, g in zip(solvers, gs)]
    return [np.asarray(o) for o in jax.block_until_ready(run([p[1] for p in pairs]))]


def part_b(problem, log=print, bases=BASES, base_nfes=BASE_NFES, tele_nfes=TELE_NFES):
    import samplax as sx
    from samplax.solvers.base import prepare_solver

    st = _state(problem)
    sch = st["schedule"]
    rows = []
    auto_stats = sx.get_solver("teleport").prepare(st["model"], st["data"])
    switches = [("rule", float(auto_stats["t_switch"]))] + [
        (f"lambda={v:g}", float(sx.solvers.teleport.switch_time(sch, v, "lambda", 1.0))) for v in FIXED_SWITCHES]
    log(f"[b] {problem}: switches " + ", ".join(f"{n} t={t:.4f} lambda={float(sch.lambda_(t)):.3f}"
                                                   for n, t in switches))
    for base, order, opts in bases:
        t0 = time.perf_counter()
        solvers = {afs: sx.get_solver(base, order=order, afs=afs, **opts) for afs in (False, True)}
        for nfe in base_nfes:
            pairs = [(solvers[afs], _grid_stack(sch, sx.steps_for_nfe(solvers[afs], nfe, "zero"), [1.0]))
                     for afs in (False, True)]
            for afs, out in zip((False, True), _run_stacks(pairs, st)):
                for j, sp in enumerate(SPACINGS):
                    rows.append(dict(problem=problem, base=base, kind="base", afs=afs, switch=None, t_switch=1.0,
                                     spacing=sp, nfe=nfe, **_metrics(out[j], st)))
        log(f"[b] {problem} {base}: base rows in {time.perf_counter() - t0:.0f}s")
        t0 = time.perf_counter()
        # one compiled program for every switch: the bound solver only reads the grid's start
        teles = {gfs: prepare_solver(sx.get_solver("teleport", base=base, order=order, switch=0.0, afs=gfs),
                                     st["model"], st["data"])._replace(t_start=None) for gfs in (False, True)}
        for nfe in tele_nfes:
            pairs, used = [], []
            for gfs, tele in teles.items():
                try:
                    n = sx.steps_for_nfe(tele, nfe, "zero")
                except ValueError:
                    continue
                pairs.append((tele, _grid_stack(sch, n, [t for _, t in switches])))
                used.append(gfs)
            for gfs, out in zip(used, _run_stacks(pairs, st)):
                for i, (sw, t_sw) in enumerate(switches):
                    for j, sp in enumerate(SPACINGS):
                        rows.append(dict(problem=problem, base=base, kind="teleport", afs=gfs, switch=sw,
                                         t_switch=t_sw, spacing=sp, nfe=nfe,
                                         **_metrics(out[i * len(SPACINGS) + j], st)))
        log(f"[b] {problem} {base}: teleport rows in {time.perf_counter() - t0:.0f}s")
    return rows, switches


def savings(rows):
    """Per (problem, base, switch): for each base NFE n the best base error (over spacings
    and AFS) and the smallest teleport NFE k (best over spacings, with or without the
    Gaussian first step) reaching it."""
    out = []
    keys = sorted({(r["problem"], r["base"]) for r in rows})
    for prob, base in keys:
        rs = [r for r in rows if r["problem"] == prob and r["base"] == base]
        best_base = {}
        for r in rs:
            if r["kind"] == "base" and math.isfinite(r["mean_l2"]):
                best_base[r["nfe"]] = min(best_base.get(r["nfe"], math.inf), r["mean_l2"])
        for sw in sorted({r["switch"] for r in rs if r["kind"] == "teleport"}):
            best_t = {}
            for r in rs:
                if r["kind"] == "teleport" and r["switch"] == sw and math.isfinite(r["mean_l2"]):
                    best_t[r["nfe"]] = min(best_t.get(r["nfe"], math.inf), r["mean_l2"])
            for n in sorted(best_base):
                k = next((k for k in sorted(best_t) if best_t[k] <= best_base[n]), None)
                out.append(dict(problem=prob, base=base, switch=sw, nfe_base=n, err_base=best_base[n],
                                err_tele_same_nfe=best_t.get(n), nfe_tele=k, saved=None if k is None else n - k))
    return out


# ---------------------------------------------------------------------------------------
# (c) digits
# ---------------------------------------------------------------------------------------
def part_c(log=print, nfes=(5, 8, 10, 15), n_samples=1438):
    """digits FD (the runner's metric: classifier features vs the test split) of base vs
    teleport + base with the empirical Gaussian fit of the 1438 training images."""
    ckpt = os.path.join(DIGITS_DIR, "checkpoints")
    if not os.path.isdir(ckpt) or not os.listdir(ckpt):
        return dict(status="unmeasured: no trained digits U-Net checkpoint in " + DIGITS_DIR)
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.data import load_digits_dataset
    from samplax.experiment import sample_config
    from samplax.experiment.cache import cache_dir
    from samplax.experiment.loading import load_model, resolve_model
    from samplax.metrics import frechet_distance
    from samplax.models.classifier import digits_fd, digits_reference_statistics, load_or_train_digits_classifier
    from samplax.schedules import prior_std
    from samplax.solvers.base import model_data

    msec = sample_config().model.to_dict()
    msec.update(name="digits", checkpoint=DIGITS_DIR)
    msec = resolve_model(msec)
    loaded = load_model(msec, jnp.float32)
    model, shape = loaded.model, tuple(loaded.shape)
    x_train = np.asarray(load_digits_dataset("train").images, np.float64)
    data = model_data(x0=x_train.reshape((len(x_train),) + shape))
    params, info = load_or_train_digits_classifier(cache_dir())
    ref = digits_reference_statistics(params, "test")
    floor = float(frechet_distance(*digits_reference_statistics(params, "train"), *ref))
    sch = model.schedule
    x_T = prior_std(sch) * jax.random.normal(jax.random.PRNGKey(0), (n_samples,) + shape, jnp.float32)
    rows = []
    stats = sx.get_solver("teleport", n_fit_samples=len(x_train)).prepare(model, data)
    lam_s = float(sch.lambda_(jnp.float32(stats["t_switch"])))
    log(f"[c] digits: rule switch t={float(stats['t_switch']):.4f} lambda={lam_s:.3f}")
    variants = [("rule", stats)]
    for v in (-2.0, 0.0):
        st2 = dict(stats, t_switch=np.float64(sx.solvers.teleport.switch_time(sch, v, "lambda", float(sch.t_max))))
        variants.append((f"lambda={v:g}", st2))
    for base, order, _ in BASES:
        solvers = [("base", sx.get_solver(base, order=order))]
        solvers += [(f"teleport {nm}", sx.get_solver("teleport", base=base, order=order).bind(stt))
                    for nm, stt in variants]
        for nfe in nfes:
            for kind, solver in solvers:
                n = sx.steps_for_nfe(solver, nfe, "zero")
                grid = sx.time_grid(sch, n, "logsnr", end="zero", t_max=solver.t_start)
                t0 = time.perf_counter()
                x0 = np.asarray(jax.block_until_ready(jax.jit(lambda x: sx.sample(solver, model, x, grid)[0])(x_T)))
                fd = float(digits_fd(params, x0.astype(np.float32), reference=ref)) \
                    if np.all(np.isfinite(x0)) else float("nan")
                rows.append(dict(base=base, kind=kind, nfe=nfe, fd=fd, wall_s=time.perf_counter() - t0))
                log(f"[c] digits {base} {kind} nfe={nfe} fd={fd:.4g}")
    return dict(status="measured", fd_floor=floor, t_switch=float(stats["t_switch"]), lambda_switch=lam_s,
                rows=rows, n_samples=n_samples, checkpoint=DIGITS_DIR, step=int(msec["step"]),
                switches={nm: float(stt["t_switch"]) for nm, stt in variants})


# ---------------------------------------------------------------------------------------
# (d) wall time
# ---------------------------------------------------------------------------------------
def part_d(log=print, nfe=10, reps=5):
    import jax.numpy as jnp

    import samplax as sx
    from samplax.solvers.base import jit_cpu_fast, prepare_solver

    st = _state("gmm64d")
    sch = st["schedule"]
    x_T = jnp.asarray(st["x_T"], jnp.float32)
    out = []
    for base, order, _ in BASES:
        b = sx.get_solver(base, order=order)
        tele = prepare_solver(sx.get_solver("teleport", base=base, order=order), st["model"], st["data"])
        g_b = sx.time_grid(sch, nfe, "logsnr", end="zero")
        g_t = sx.time_grid(sch, nfe, "logsnr", end="zero", t_max=tele.t_start)
        for label, solver, grid, stepwise in (("base (table)", b, g_b, False), ("base (stepwise)", b, g_b, True),
                                              ("teleport + base", tele, g_t, False)):
            fn = jit_cpu_fast(lambda x, solver=solver, grid=grid, sw=stepwise:
                              sx.sample(solver, st["model"], x, grid, stepwise=sw)[0])
            us = 1e6 * C.median_wall(fn, x_T, reps) / x_T.shape[0]
            out.append(dict(base=base, variant=label, nfe=nfe, us_per_sample=us, batch=int(x_T.shape[0])))
            log(f"[d] {base} {label}: {us:.2f} us/sample")
    return out


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
def render(res) -> str:
    fmt = C.fmt
    lines = ["# Gaussian-score teleportation on the exact GMM problems", "",
             C.machine_md(res["machine"], res["command"], res["date"]), "",
             "Solver: `teleport` (samplax/solvers/teleport.py, docs/teleport.md): the Gaussian fit's closed-form "
             "PF-ODE solution from x_T (t = 1) to the switch, then the base solver from there.  Metrics: mean / max "
             "L2 to the exact PF-ODE solution from the same x_T (float64 RK4, 4096 problem start points), sliced W2 "
             f"({N_PROJ} directions) against those exact solutions.", ""]
    if res.get("a"):
        lines += ["## (a) Error introduced by the jump itself", "",
                  "x_T jumped to lambda_s by the Gaussian closed form, then solved exactly (float64 RK4) to sigma = 0. "
                  "The first row of each problem (lambda_s = lambda(t=1)) is no jump: the reference's own error. "
                  "`rule estimate` = E(lambda_s) sqrt(tr C) of the switch rule (its default tolerance 1e-3 switches "
                  "at the lambda given below).", ""]
        for prob in PROBLEMS:
            rs = [r for r in res["a"] if r["problem"] == prob]
            if not rs:
                continue
            info = next((i for i in res.get("a_rule", []) if i["problem"] == prob), None)
            lines += [f"### {prob}" + (f" (rule: lambda_s = {info['rule_lambda']:.2f}, t = {info['rule_t']:.3f})"
                                       if info else ""), ""]
            lines += [C.md_table(["lambda_s", "t_s", "sigma_tilde_s", "mean L2", "max L2", "sliced W2",
                                  "rule estimate"],
                                 [[f"{r['lambda_s']:+.2f}", f"{r['t_s']:.3f}", fmt(r["sigma_tilde_s"]),
                                   fmt(r["mean_l2"]), fmt(r["max_l2"]), fmt(r["sw2"]), fmt(r["rule_estimate"])]
                                  for r in rs], ["r"] * 7), ""]
    if res.get("b"):
        lines += ["## (b) Model evaluations saved at equal error", "",
                  f"Grids: {', '.join(SPACINGS)} (end at sigma = 0, t_min = 1e-3).  Base: from t = 1, AFS off/on. "
                  "Teleport: from the switch, with / without the Gaussian first step (GFS: the base's first model "
                  "output at the switch from the Gaussian model, one NFE less).  Every error is the best over "
                  "spacings (and AFS / GFS).  `k` = the smallest teleport NFE whose error is <= the base's at NFE n; "
                  "saved = n - k.", ""]
        for prob in PROBLEMS:
            sws = [s for s in res.get("b_switches", {}).get(prob, [])]
            if sws:
                lines += [f"### {prob}", "", "Switches: " + "; ".join(f"{n}: t = {t:.4f}" for n, t in sws), ""]
            for base, _, _ in BASES:
                sv = [s for s in res["b_savings"] if s["problem"] == prob and s["base"] == base]
                if not sv:
                    continue
                switches = sorted({s["switch"] for s in sv}, key=lambda s: (s != "rule", s))
                header = ["NFE n", "base mean L2"] + [f"{sw}: L2 at n" for sw in switches] + \
                    [f"{sw}: k (saved)" for sw in switches]
                body = []
                for n in BASE_NFES:
                    row = [s for s in sv if s["nfe_base"] == n]
                    if not row:
                        continue
                    by = {s["switch"]: s for s in row}
                    body.append([n, fmt(row[0]["err_base"])] +
                                [fmt(by[sw]["err_tele_same_nfe"]) if sw in by else "—" for sw in switches] +
                                [(f"{by[sw]['nfe_tele']} ({by[sw]['saved']:+d})" if by.get(sw) and
                                  by[sw]["nfe_tele"] is not None else ">20") for sw in switches])
                lines += [f"**{base}** (order 2)", "", C.md_table(header, body, ["r"] * len(header)), ""]
                for sw in switches:
                    s_sw = [s for s in sv if s["switch"] == sw and s["saved"] is not None]
                    if s_sw:
                        pct = [100 * s["saved"] / s["nfe_base"] for s in s_sw]
                        lines.append(f"* {base}, {sw}: saved {np.mean([s['saved'] for s in s_sw]):+.2f} NFE on "
                                     f"average ({np.mean(pct):+.0f}% of n) over n = {s_sw[0]['nfe_base']}.."
                                     f"{s_sw[-1]['nfe_base']}")
                lines.append("")
    c = res.get("c")
    if c is not None:
        lines += ["## (c) digits (trained U-Net), empirical Gaussian fit", ""]
        if c.get("status") != "measured":
            lines += [f"{c.get('status')}.", ""]
        else:
            lines += [f"FD of {c['n_samples']} unconditional samples (null label) against the test split (floor = "
                      f"the training split's FD, {fmt(c['fd_floor'])}); checkpoint {c['checkpoint']} step "
                      f"{c.get('step')}; Gaussian fit: mean and Ledoit-Wolf covariance of the 1438 training images; "
                      "switches: " + ", ".join(f"{k}: t = {v:.4f}" for k, v in c.get("switches", {}).items()) +
                      "; logSNR grids, end at sigma = 0.", ""]
            nfes = sorted({r["nfe"] for r in c["rows"]})
            kinds = sorted({r["kind"] for r in c["rows"]}, key=lambda k: (k != "base", k))
            body = []
            for base, _, _ in BASES:
                for kind in kinds:
                    d = {r["nfe"]: r["fd"] for r in c["rows"] if r["base"] == base and r["kind"] == kind}
                    body.append([base, kind] + [fmt(d.get(n)) for n in nfes])
            lines += [C.md_table(["base", "solver"] + [f"NFE {n}" for n in nfes], body), ""]
    if res.get("d"):
        lines += ["## (d) Wall time per sample (gmm64d, B = 4096, NFE 10, CPU)", "",
                  C.md_table(["base", "variant", "us / sample"],
                             [[r["base"], r["variant"], f"{r['us_per_sample']:.2f}"] for r in res["d"]]), "",
                  "The teleport solver runs its base's own init / step (sample()'s stepwise path), not the base's "
                  "coefficient-table program; the jump is one (B, d) x (d, d) product.", ""]
    if res.get("conclusion"):
        lines += ["## Conclusion", "", res["conclusion"], ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="abcd")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--from-json", default=None)
    ap.add_argument("--merge", action="store_true", help="keep the parts of an existing JSON not rerun")
    args = ap.parse_args(argv)
    json_path = os.path.splitext(args.out)[0] + ".json"
    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        C.enable_compilation_cache()
        res = {}
        if args.merge and os.path.exists(json_path):
            with open(json_path) as f:
                res = json.load(f)
        res.update(machine=C.machine_info(), date=C.utc_now(), command=C.command_line(MODULE))
        probs = [p for p in args.problems.split(",") if p]
        if "a" in args.parts:
            res["a"], res["a_rule"] = [], []
            for p in probs:
                rows, info = part_a(p)
                res["a"] += rows
                res["a_rule"].append(info)
        if "b" in args.parts:
            res["b"], res["b_switches"] = [], {}
            for p in probs:
                rows, sws = part_b(p)
                res["b"] += rows
                res["b_switches"][p] = sws
            res["b_savings"] = savings(res["b"])
        if "c" in args.parts:
            try:
                res["c"] = part_c()
            except Exception as e:  # report, do not lose the other parts
                res["c"] = dict(status=f"failed: {type(e).__name__}: {e}")
        if "d" in args.parts:
            res["d"] = part_d()
        C.atomic_write_json(json_path, res)
    md = render(res)
    C.atomic_write_text(args.out, md + "\n")
    print(md)


if __name__ == "__main__":
    main()
