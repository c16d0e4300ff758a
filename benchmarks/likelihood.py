"""Probability-flow log-likelihood (samplax.likelihood): accuracy and estimator variance.

1. gmm2d: error of log p_{t_min}(x) (t_min = 1e-3) against the mixture's exact marginal
   density for 512 exact data samples (float64, exact prior at t = 1), per integrator and
   number of steps / tolerance; plus the cost of the N(0, I) prior and of float32.
2. gmm64d: Hutchinson (Rademacher, fixed per solve) standard deviation vs number of probes,
   64 independent repetitions for each of 8 data points, against the exact-divergence value of
   the same discretisation (bias z-scores).
3. digits (if a trained U-Net is given): bits/dim on the test split, with uniform
   dequantisation (an upper bound on the discrete NLL) and at the bin centres.

    python -m benchmarks.likelihood [--digits /work/runs/train_digits] [--n-digits 300]
    python -m benchmarks.likelihood --from-json docs/benchmarks/likelihood.json   # re-render only

Writes docs/benchmarks/likelihood.md (or --out) and a .json next to it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.likelihood"
DEFAULT_OUT = os.path.join("docs", "benchmarks", "likelihood.md")
T0 = 1e-3


def gmm2d_part(log=print) -> list:
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.likelihood import log_likelihood

    rows = []
    with jax.enable_x64(True):
        gmm, schedule, _ = sx.load_problem("gmm2d", dtype=jnp.float64)
        model = gmm.model(schedule)
        x = gmm.sample(jax.random.PRNGKey(0), 512)
        exact = np.asarray(gmm.log_prob(x, T0, schedule))
        p0_gap = float(np.mean(np.abs(np.asarray(gmm.log_prob_ve(x, 0.0)) - exact)))
        prior = lambda y: gmm.log_prob(y, 1.0, schedule)  # noqa: E731
        cases = [("rk4", dict(n_steps=n)) for n in (10, 20, 50, 100, 200)]
        cases += [("heun", dict(n_steps=n)) for n in (20, 50, 100, 200, 400)]
        cases += [("adaptive", dict(order=o, rtol=t, atol=t)) for o in (2, 3) for t in (1e-3, 1e-4, 1e-5, 1e-6)]
        for integ, kw in cases:
            f = jax.jit(lambda x: log_likelihood(model, x, t_start=T0, t_end=1.0, integrator=integ, prior=prior,
                                                 max_nfe=4000, **kw))
            t0 = time.perf_counter()
            lp, info = jax.block_until_ready(f(x))
            sec = time.perf_counter() - t0
            e = np.abs(np.asarray(lp) - exact)
            rows.append(dict(integrator=integ, prior="exact", dtype="float64", nfe=int(info.nfe),
                             cap_hit=bool(info.cap_hit), mean_err=float(e.mean()), max_err=float(e.max()),
                             seconds=sec, **{k: v for k, v in kw.items()}))
            log(f"[gmm2d] {integ} {kw}: NFE {int(info.nfe)} mean |err| {e.mean():.3g} max {e.max():.3g}")
        lp, info = log_likelihood(model, x, t_start=T0, t_end=1.0, n_steps=200)
        e = np.abs(np.asarray(lp) - exact)
        rows.append(dict(integrator="rk4", prior="N(0, I)", dtype="float64", nfe=int(info.nfe), n_steps=200,
                         cap_hit=False, mean_err=float(e.mean()), max_err=float(e.max()), seconds=None))
    gmm32, sch32, _ = sx.load_problem("gmm2d")
    lp, info = log_likelihood(gmm32.model(sch32), jnp.asarray(x, jnp.float32), t_start=T0, t_end=1.0, n_steps=100,
                              prior=lambda y: gmm32.log_prob(y, 1.0, sch32))
    e = np.abs(np.asarray(lp, np.float64) - exact)
    rows.append(dict(integrator="rk4", prior="exact", dtype="float32", nfe=int(info.nfe), n_steps=100,
                     cap_hit=False, mean_err=float(e.mean()), max_err=float(e.max()), seconds=None))
    return dict(rows=rows, p0_gap=p0_gap)


def hutchinson_part(log=print) -> dict:
    import jax
    import jax.numpy as jnp

    import samplax as sx
    from samplax.likelihood import log_likelihood

    n_points, reps, n_steps = 8, 64, 20
    out = []
    with jax.enable_x64(True):
        gmm, schedule, _ = sx.load_problem("gmm64d", dtype=jnp.float64)
        model = gmm.model(schedule)
        x = gmm.sample(jax.random.PRNGKey(1), n_points)
        kw = dict(t_start=T0, t_end=1.0, n_steps=n_steps, prior=lambda y: gmm.log_prob(y, 1.0, schedule))
        t0 = time.perf_counter()
        exact, info = jax.block_until_ready(jax.jit(lambda x: log_likelihood(model, x, **kw))(x))
        sec_exact = time.perf_counter() - t0
        true = np.asarray(gmm.log_prob(x, T0, schedule))
        disc_err = float(np.abs(np.asarray(exact) - true).max())
        xr = jnp.repeat(x, reps, axis=0)
        for k in (1, 2, 4, 8, 16):
            f = jax.jit(lambda x: log_likelihood(model, x, key=jax.random.PRNGKey(100 + k), divergence="hutchinson",
                                                 n_probes=k, **kw)[0])
            t0 = time.perf_counter()
            est = np.asarray(jax.block_until_ready(f(xr))).reshape(n_points, reps)
            sec = time.perf_counter() - t0
            sd = est.std(1, ddof=1)
            z = (est.mean(1) - np.asarray(exact)) / (sd / math.sqrt(reps))
            out.append(dict(n_probes=k, mean_sd=float(sd.mean()), max_sd=float(sd.max()),
                            sd_sqrt_k=float(sd.mean() * math.sqrt(k)), max_abs_z=float(np.abs(z).max()),
                            mean_z=float(z.mean()), seconds_per_point=sec / (n_points * reps)))
            log(f"[gmm64d] Hutchinson {k} probes: sd {sd.mean():.3g} (x sqrt(k) {sd.mean() * math.sqrt(k):.3g}) "
                f"max |z| {np.abs(z).max():.2f}")
    return dict(rows=out, n_points=n_points, reps=reps, n_steps=n_steps, disc_err=disc_err,
                seconds_exact_per_point=sec_exact / n_points, exact_mean=float(np.mean(exact)),
                delta_mean=float(np.mean(info.delta)))


def trained_gmm2d_part(path: str, log=print) -> dict:
    """The trained gmm2d MLP: mean log-likelihood of 2048 exact data samples against the
    mixture's exact log-density at t_min; the difference estimates KL(p_t_min || model)."""
    import jax
    import jax.numpy as jnp

    from samplax.experiment import loading
    from samplax.likelihood import log_likelihood

    loaded = loading.load_model(loading.resolve_model({"name": "gmm2d", "checkpoint": path}), jnp.float32)
    gmm, sch = loaded.gmm, loaded.schedule
    x = gmm.sample(jax.random.PRNGKey(5), 2048)
    exact = np.asarray(gmm.log_prob(x, sch.t_min, sch), np.float64)
    rows = []
    for n_steps in (50, 100):
        lp, info = jax.jit(lambda x: log_likelihood(loaded.model, x, n_steps=n_steps))(x)
        lp = np.asarray(lp, np.float64)
        diff = exact - lp
        rows.append(dict(n_steps=n_steps, nfe=int(info.nfe), model_mean=float(lp.mean()),
                         model_se=float(lp.std(ddof=1) / math.sqrt(lp.size)), exact_mean=float(exact.mean()),
                         kl=float(diff.mean()), kl_se=float(diff.std(ddof=1) / math.sqrt(diff.size))))
        log(f"[gmm2d trained] RK4 {n_steps}: model {lp.mean():.4f} exact {exact.mean():.4f} KL {diff.mean():.4f}")
    return dict(checkpoint=path, step=loaded.trained["step"], n=int(x.shape[0]), rows=rows)


def digits_part(path: str, n_images: int, log=print) -> dict:
    import jax
    import jax.numpy as jnp

    from samplax.data import load_digits_dataset
    from samplax.experiment import loading
    from samplax.likelihood import bits_per_dim, dequantize, log_likelihood

    loaded = loading.load_model(loading.resolve_model({"name": "digits", "checkpoint": path}), jnp.float32)
    model = loaded.model
    test = load_digits_dataset("test")
    x = jnp.asarray(test.images[:n_images])
    d = int(np.prod(x.shape[1:]))
    res = dict(checkpoint=path, step=loaded.trained["step"], n_images=int(x.shape[0]), dim=d,
               schedule=type(loaded.schedule).__name__, t_start=float(loaded.schedule.t_min),
               t_end=float(loaded.schedule.t_max), rows=[])
    xd = dequantize(jax.random.PRNGKey(7), x)
    for name, xs, n_steps in (("dequantised (bound)", xd, 25), ("dequantised (bound)", xd, 50),
                              ("dequantised (bound)", xd, 100), ("bin centres", x, 50), ("bin centres", x, 100)):
        if True:
            f = jax.jit(lambda x: log_likelihood(model, x, key=jax.random.PRNGKey(11), divergence="hutchinson",
                                                 n_steps=n_steps))
            t0 = time.perf_counter()
            lp, info = jax.block_until_ready(f(xs))
            sec = time.perf_counter() - t0
            bpd = np.asarray(bits_per_dim(lp, d), np.float64)
            ok = np.isfinite(bpd)
            res["rows"].append(dict(points=name, n_steps=n_steps, nfe=int(info.nfe), bpd=float(bpd[ok].mean()),
                                    se=float(bpd[ok].std(ddof=1) / math.sqrt(ok.sum())), n_finite=int(ok.sum()),
                                    nats=float(-np.asarray(lp)[ok].mean()), seconds=sec))
            log(f"[digits] {name} RK4 {n_steps}: {bpd[ok].mean():.4f} +- {bpd[ok].std(ddof=1) / math.sqrt(ok.sum()):.4f} "
                f"bits/dim ({sec:.1f} s)")
    return res


def render(res: dict) -> str:
    g = res["gmm2d"]
    out = ["# Probability-flow log-likelihood", "", C.machine_md(res["machine"], res["command"], res["date"]), ""]
    if res.get("gmm_date"):
        out += [f"* The gmm2d / gmm64d parts: {res['gmm_date']}, `{res['gmm_command']}`", ""]
    out += [
           "`samplax.likelihood.log_likelihood`: log p_{t_start}(x) = log p_T(x_T) + int div f dt along the PF ODE, "
           "integrated in (u = x / alpha, lambda) from t_start = t_min = 1e-3 to t_max = 1.", "",
           "## gmm2d: error against the exact marginal density", "",
           f"512 exact data samples; error = |log p_(t_min)(x) - GaussianMixture.log_prob(x, t_min)| in nats, exact "
           f"divergence, exact prior unless stated.  NFE: drift evaluations (each a model linearisation with 2 "
           f"forward-mode products).  For scale: mean |log p_0(x) - log p_(t_min)(x)| = {g['p0_gap']:.3f} nats: the "
           f"result is the density of the t_min marginal, not of the clean data (sigma = 0).", ""]
    rows = []
    for r in g["rows"]:
        setting = (f"n = {r['n_steps']}" if r["integrator"] != "adaptive"
                   else f"order {r['order']}, tol {r['rtol']:g}")
        rows.append([r["integrator"], setting, r["prior"], r["dtype"], str(r["nfe"]) + (" cap" if r["cap_hit"] else ""),
                     C.fmt(r["mean_err"]), C.fmt(r["max_err"])])
    out += [C.md_table(["integrator", "setting", "prior", "dtype", "NFE", "mean err", "max err"], rows,
                       ["l", "l", "l", "l", "r", "r", "r"]), ""]
    h = res["gmm64d"]
    out += ["## gmm64d: Hutchinson standard deviation vs probes", "",
            f"{h['n_points']} exact data samples, {h['reps']} independent probe sets each, RK4 with {h['n_steps']} "
            f"steps.  Exact divergence (64 forward-mode products per evaluation): mean log p = "
            f"{h['exact_mean']:.3f} nats, its discretisation error {C.fmt(h['disc_err'])} nats (max over points), "
            f"{h['seconds_exact_per_point']:.3f} s per point.  z = (mean of the {h['reps']} estimates - exact "
            f"value) / standard error: unbiased if |z| is O(1).", ""]
    rows = [[r["n_probes"], C.fmt(r["mean_sd"]), C.fmt(r["max_sd"]), C.fmt(r["sd_sqrt_k"]), f"{r['max_abs_z']:.2f}",
             f"{r['mean_z']:+.2f}", f"{r['seconds_per_point']:.2g}"] for r in h["rows"]]
    out += [C.md_table(["probes", "sd (nats, mean over points)", "max sd", "sd x sqrt(probes)", "max |z|", "mean z",
                        "s / point"], rows, ["r"] * 7), ""]
    tg = res.get("gmm2d_trained")
    if tg:
        out += ["## gmm2d: the trained MLP", "",
                f"Checkpoint `{tg['checkpoint']}` (step {tg['step']}), {tg['n']} exact data samples, RK4 in lambda, "
                f"exact divergence, N(0, I) prior, float32.  `exact - model` = mean of log p_(t_min)(x) - "
                f"log p_model(x): an estimate of KL(p_(t_min) || model) (>= 0).", ""]
        rows = [[r["n_steps"], r["nfe"], f"{r['model_mean']:.4f} ± {r['model_se']:.4f}", f"{r['exact_mean']:.4f}",
                 f"{r['kl']:.4f} ± {r['kl_se']:.4f}"] for r in tg["rows"]]
        out += [C.md_table(["RK4 steps", "NFE", "model mean log p", "exact mean log p", "exact - model"], rows,
                           ["r"] * 5), ""]
    out += ["## digits: bits/dim", ""]
    dg = res.get("digits")
    if not dg:
        out += ["Unmeasured: " + res.get("digits_note", "no trained digits model was given."), ""]
    else:
        out += [f"Checkpoint `{dg['checkpoint']}` (step {dg['step']}, EMA parameters, unconditional: the null "
                f"label), the first {dg['n_images']} images of the test split, d = {dg['dim']}; schedule "
                f"{dg['schedule']}, t from {dg['t_start']:g} to {dg['t_end']:g}; RK4 in lambda, Hutchinson "
                f"divergence (1 Rademacher probe per image; the standard error over images includes its variance), "
                f"N(0, I) prior.  bits/dim = -log p(x) / (d ln 2) + log2(8): the data pipeline maps intensity p in "
                f"0..16 to x = p / 8 - 1, so a bin of the discrete data has width 1/8 in x (+3 bits/dim).  "
                f"Dequantised: x + U(-1/16, 1/16) per pixel, whose mean is an upper bound on the discrete NLL; bin "
                f"centres: the density at the data values themselves (not a bound; the model was trained on the "
                f"centres).", ""]
        rows = [[r["points"], r["n_steps"], r["nfe"], f"{r['bpd']:.4f}", f"{r['se']:.4f}", f"{r['nats']:.2f}",
                 f"{r['n_finite']}", f"{r['seconds']:.0f}"] for r in dg["rows"]]
        out += [C.md_table(["points", "RK4 steps", "NFE", "bits/dim", "standard error", "NLL (nats, continuous)",
                            "finite", "s"], rows, ["l", "r", "r", "r", "r", "r", "r", "r"]), ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--from-json", default=None)
    ap.add_argument("--digits", default=None, help="a training workdir of the digits U-Net")
    ap.add_argument("--n-digits", type=int, default=300)
    ap.add_argument("--gmm2d-trained", default=None, help="a training workdir of the gmm2d MLP")
    ap.add_argument("--trained-only", action="store_true", help="keep the analytic parts of the existing .json")
    args = ap.parse_args()
    if args.from_json:
        C.rerender_from_json(args.from_json, args.out, render)
        return
    C.enable_compilation_cache()
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now())
    if args.trained_only:
        with open(os.path.splitext(args.out)[0] + ".json") as fh:
            old = json.load(fh)
        res.update(gmm2d=old["gmm2d"], gmm64d=old["gmm64d"], gmm_date=old["date"], gmm_command=old["command"])
    else:
        res["gmm2d"] = gmm2d_part()
        res["gmm64d"] = hutchinson_part()
    if args.gmm2d_trained:
        res["gmm2d_trained"] = trained_gmm2d_part(args.gmm2d_trained)
    if args.digits:
        res["digits"] = digits_part(args.digits, args.n_digits)
    else:
        res["digits_note"] = "no trained digits model was given (--digits)."
    C.atomic_write_json(os.path.splitext(args.out)[0] + ".json", res)
    C.atomic_write_text(args.out, render(res))
    print(render(res))


if __name__ == "__main__":
    main()
