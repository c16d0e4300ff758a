"""Posterior sampling for linear inverse problems (samplax.smc.posterior): DPS against the
Twisted Diffusion Sampler, both against the exact posterior of the Gaussian-mixture prior.

(a) gmm2d and gmm64d, inpainting (keep coordinates) and a random Gaussian projection, y simulated
    (fixed seeds).  Every row: G independent runs (groups), one weighted draw per group (so the G
    samples are i.i.d. and the label chi-square is valid), compared with
    samplax.smc.posterior.PosteriorMixture by samplax.smc.targets.target_metrics: label TV and
    chi-square p, mean error (L2) and max z-score, covariance error (relative Frobenius), sliced W2
    (64 directions, against as many exact draws; the row "exact" is the finite-sample floor).
    Methods: DPS (likelihood step, scales 0.5 / 1 / 2; the paper's step zeta' = 0.1 / 0.5), TDS
    (noise twist) with P = 2..64 particles at 50 steps and P = 16 at 25 / 100 steps, TDS with the
    plain twist, the twisted proposal without weights.  Grid: logSNR, end at sigma = 0.
    NFE per sample = denoiser evaluations (each with one backward pass): DPS n_steps, TDS
    P (n_steps + 1).  Wall: one jitted run of all G groups, compile excluded (second call).
(b) digits: the trained U-Net (/work/runs/train_digits), bottom half of 6 test digits removed
    (keep the top 4 rows, s_y = 0.05), DPS (the paper's step, zeta' = 0.5: the likelihood step at
    scale 1 diverges to NaN there, 1 / s_y^2 = 400) and TDS (P = 8), 50 steps; a PNG grid.

    nice -n 10 python -m benchmarks.smc_posterior              # all (~10 min on 2 shared cores)
    python -m benchmarks.smc_posterior --parts a --quick       # fewer rows (part b kept from the .json)
    python -m benchmarks.smc_posterior --from-json docs/benchmarks/smc_posterior.json

Writes docs/benchmarks/smc_posterior.md and .json (and docs/benchmarks/smc_posterior_digits.png).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.smc_posterior"
OUT = os.path.join("docs", "benchmarks", "smc_posterior.md")
PNG = os.path.join("docs", "benchmarks", "smc_posterior_digits.png")


def problems():
    """(name, problem, measurement builder) with fixed seeds."""
    import jax
    from samplax.smc import posterior as post

    def gmm2d_inpaint(gmm):
        return post.measurement(post.inpainting_matrix(2, [0]), [0.3], 0.1), "keep x[0], y = 0.3, s_y = 0.1"

    def gmm2d_proj(gmm):
        return post.measurement(np.array([[1.0, 1.0]]) / np.sqrt(2), [0.5], 0.1), \
            "A = [1, 1] / sqrt 2, y = 0.5, s_y = 0.1"

    def mid(gmm):
        mu = np.asarray(gmm.means, np.float64)
        return 0.5 * (mu[0] + mu[2])

    def gmm64_inpaint(gmm):
        A = post.inpainting_matrix(64, [0, 1])
        return post.simulate_measurement(jax.random.PRNGKey(0), A, mid(gmm), 0.1), \
            "keep x[0:2], y = A (mu_0 + mu_2) / 2 + noise, s_y = 0.1"

    def gmm64_proj(gmm):
        A = post.random_projection_matrix(jax.random.PRNGKey(1), 2, 64)
        return post.simulate_measurement(jax.random.PRNGKey(0), A, mid(gmm), 0.1), \
            "A 2x64 Gaussian N(0, 1/2), y = A (mu_0 + mu_2) / 2 + noise, s_y = 0.1"

    return [("gmm2d", "inpaint", gmm2d_inpaint), ("gmm2d", "projection", gmm2d_proj),
            ("gmm64d", "inpaint", gmm64_inpaint), ("gmm64d", "projection", gmm64_proj)]


def methods(quick: bool):
    """(label, kind, options, particles, steps)."""
    rows = [("exact", "exact", {}, 0, 0)]
    rows += [(f"DPS likelihood x{s:g}", "dps", dict(scale=s, step="likelihood"), 1, 50) for s in (0.5, 1.0, 2.0)]
    rows += [(f"DPS paper zeta'={z:g}", "dps", dict(scale=z, step="dps"), 1, 50) for z in (0.1, 0.5)]
    rows += [("DPS likelihood x1, 200 steps", "dps", dict(scale=1.0, step="likelihood"), 1, 200)]
    rows += [("twisted proposal, no weights", "tds", dict(twist="noise", correct=False), 1, 50)]
    ps = (4, 16) if quick else (2, 4, 16, 64)
    rows += [(f"TDS P={p}", "tds", dict(twist="noise"), p, 50) for p in ps]
    if not quick:
        rows += [(f"TDS P=16, {n} steps", "tds", dict(twist="noise"), 16, n) for n in (25, 100)]
        rows += [("TDS plain twist P=16", "tds", dict(twist="plain"), 16, 50)]
    return rows


def part_a(quick: bool, log=print) -> list:
    import jax
    import jax.numpy as jnp
    from samplax.models.analytic import load_problem
    from samplax.smc import posterior as post
    from samplax.smc.diffusion import diffusion_smc
    from samplax.smc.targets import target_metrics
    from samplax.timesteps import time_grid

    out = []
    compiled = {}
    with jax.enable_x64(True):
        for pname, op, build in problems():
            gmm, sch, _ = load_problem(pname, dtype=jnp.float64)
            model = gmm.model(sch)
            meas, desc = build(gmm)
            d = gmm.dim
            G = 1000 if d == 2 else 400
            tgt = post.PosteriorMixture(gmm, meas, n_per_component=200_000 if d == 2 else 20_000)
            tgt.label_probs()  # computed once here (stratified Monte Carlo), reused by every row
            log(f"{pname} {op}: posterior weights {np.round(tgt.weights, 3).tolist()}, "
                f"log p(y) {tgt.log_evidence:.4f}")
            for label, kind, opts, P, steps in methods(quick):
                if kind == "exact":
                    x = tgt.sample(jax.random.PRNGKey(123), G)
                    m = target_metrics(tgt, x, jax.random.PRNGKey(8))
                    out.append(dict(problem=pname, op=op, desc=desc, method=label, kind=kind, P=0, steps=0, nfe=0,
                                    wall=0.0, G=G, log_Z=None, exact_log_Z=tgt.log_evidence, **m))
                    continue
                kern = post.tds_kernel(**opts) if kind == "tds" else post.dps_kernel(**opts)
                ck = (pname, kind, tuple(sorted(opts.items())), P, steps)
                if ck not in compiled:
                    grid = time_grid(sch, steps, spacing="logsnr", end="zero", dtype=jnp.float64)

                    def run(meas_, key, kern=kern, grid=grid, P=P):
                        x_T = jax.random.normal(jax.random.fold_in(key, 1), (G * P, d), jnp.float64)
                        x, info = diffusion_smc(kern, (model, meas_), x_T, grid, key, num_particles=P,
                                                final_resample=False)
                        return post.one_per_group(jax.random.fold_in(key, 2), x, info.log_weights), info.log_Z, \
                            jnp.mean(info.resampled), jnp.min(info.ess)
                    compiled[ck] = jax.jit(run)
                fn = compiled[ck]
                key = jax.random.PRNGKey(7)
                t0 = time.perf_counter()
                jax.block_until_ready(fn(meas, key))
                t_first = time.perf_counter() - t0
                t0 = time.perf_counter()
                x, log_Z, rs, min_ess = jax.block_until_ready(fn(meas, key))
                wall = time.perf_counter() - t0
                m = target_metrics(tgt, np.asarray(x), jax.random.PRNGKey(8))
                lz = np.asarray(log_Z)
                nfe = P * (steps + 1) if kind == "tds" else steps
                row = dict(problem=pname, op=op, desc=desc, method=label, kind=kind, P=P, steps=steps, nfe=nfe,
                           wall=wall, wall_first=t_first, G=G,
                           log_Z=float(np.log(np.mean(np.exp(lz - lz.max()))) + lz.max()) if kind == "tds" else None,
                           exact_log_Z=tgt.log_evidence, resample_rate=float(rs), min_ess=float(min_ess), **m)
                out.append(row)
                log(f"  {label:32s} NFE {nfe:5d} wall {wall:6.2f}s  tv {m['label_tv']:.3f} "
                    f"chi2_p {m['chi2_p']:.1e} mean_err {m['mean_err']:.3f} z {m['mean_z_max']:.1f} "
                    f"cov_rel {m['cov_rel']:.3f} sw2 {m['sw2']:.4f}")
    return out


def part_b(log=print, n_images: int = 6, P: int = 8, steps: int = 50) -> dict:
    import jax
    import jax.numpy as jnp
    from configs import digits as digits_cfg
    from samplax.data import load_digits_dataset
    from samplax.experiment.loading import load_model, resolve_model
    from samplax.smc import posterior as post
    from samplax.smc.diffusion import diffusion_smc
    from samplax.timesteps import time_grid

    ckpt = "/work/runs/train_digits"
    if not os.path.isdir(os.path.join(ckpt, "checkpoints")):
        return dict(measured=False, reason=f"no checkpoint in {ckpt}")
    c = digits_cfg.get_config()
    c.model.checkpoint = ckpt
    t0 = time.perf_counter()
    L = load_model(resolve_model(c.model.to_dict()), jnp.float32)
    log(f"digits: model loaded in {time.perf_counter() - t0:.1f}s, shape {L.shape}")
    data = load_digits_dataset("test")
    imgs = np.asarray(data[0])[:n_images].astype(np.float32)        # (n, 8, 8, 1) in [-1, 1]
    shape = tuple(L.shape)
    d = int(np.prod(shape))
    keep_mask = np.zeros(shape, bool)
    keep_mask[:4] = True                                               # top 4 rows observed
    A = post.inpainting_matrix(d, keep_mask.reshape(-1))
    s_y = 0.05
    grid = time_grid(L.schedule, steps, spacing="logsnr", end="zero", dtype=jnp.float32)

    def make(kern, Pn):
        def run(meas, key):
            x_T = jax.random.normal(jax.random.fold_in(key, 1), (Pn,) + shape, jnp.float32)
            x, info = diffusion_smc(kern, (L.model, meas), x_T, grid, key, num_particles=Pn, final_resample=True)
            return x, info.ess
        return jax.jit(run)

    runs = {"DPS (paper step, zeta'=0.5)": make(post.dps_kernel(0.5, "dps"), 4),
            f"TDS P={P}": make(post.tds_kernel("noise"), P)}
    results = {k: [] for k in runs}
    walls = {k: 0.0 for k in runs}
    errs = {k: [] for k in runs}
    for j in range(n_images):
        meas = post.simulate_measurement(jax.random.PRNGKey(100 + j), A, imgs[j], s_y, dtype=jnp.float32)
        for name, fn in runs.items():
            t0 = time.perf_counter()
            x, ess = jax.block_until_ready(fn(meas, jax.random.PRNGKey(200 + j)))
            walls[name] += time.perf_counter() - t0
            x = np.asarray(x)
            results[name].append(x[:4])
            # errors: observed-part residual / s_y and the missing half's RMSE against the truth
            obs = x.reshape(x.shape[0], -1) @ np.asarray(A).T - np.asarray(meas.y)
            miss = (x - imgs[j][None])[:, 4:]
            errs[name].append(dict(obs_rms_over_sy=float(np.sqrt(np.mean(obs ** 2)) / s_y),
                                   missing_rmse=float(np.sqrt(np.mean(miss ** 2)))))
        log(f"digits: image {j} done")
    _png(imgs, keep_mask, results, PNG)
    summary = {k: dict(wall_total=walls[k], wall_note="includes compile on the first image",
                       obs_rms_over_sy=float(np.mean([e["obs_rms_over_sy"] for e in errs[k]])),
                       missing_rmse=float(np.mean([e["missing_rmse"] for e in errs[k]])))
               for k in runs}
    return dict(measured=True, n_images=n_images, particles=P, steps=steps, s_y=s_y, png=PNG, summary=summary)


def _png(imgs, keep_mask, results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    n = imgs.shape[0]
    cols = 2 + 4 * len(names)
    fig, axes = plt.subplots(n, cols, figsize=(cols * 0.9, n * 0.95))
    for j in range(n):
        panels = [("truth", imgs[j]), ("observed", np.where(keep_mask, imgs[j], np.nan))]
        for name in names:
            panels += [(name if k == 0 else "", results[name][j][k]) for k in range(4)]
        for c, (title, im) in enumerate(panels):
            ax = axes[j, c]
            ax.imshow(np.asarray(im)[..., 0], cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0 and title:
                ax.set_title(title, fontsize=6, loc="left")
    fig.suptitle("digits: bottom half inpainted (observed: white = missing; 4 samples each; TDS: one resampled "
                 "group, copies = weight degeneracy)", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(res: dict) -> str:
    lines = ["# Posterior sampling for linear inverse problems: DPS vs TDS against the exact posterior", "",
             C.machine_md(res["machine"], res["command"], res["date"]), "",
             "Every row: G independent runs, one weighted draw per run (i.i.d. samples), against the exact "
             "posterior of the mixture prior (samplax.smc.posterior.PosteriorMixture). label TV / chi2 p: label "
             "frequencies vs the exact label-region probabilities; mean err: L2, z: max |mean error| / standard "
             "error; cov rel: relative Frobenius error; sw2: sliced W2 to as many exact draws (row 'exact' = the "
             "finite-sample floor). NFE per sample = denoiser evaluations with a backward pass (DPS: steps; "
             "TDS: P (steps + 1)). Wall: the whole run of G samples, compiled. log Z: log of the mean of the G "
             "TDS evidence estimates vs the exact log p(y) (the model chain's evidence differs by its "
             "discretisation error). Exact label-region probabilities: stratified Monte Carlo with 2e5 (gmm2d) / "
             "2e4 (gmm64d) draws per posterior component (standard error <= 1.1e-3 / 3.5e-3). "
             "No DPM-Solver++/UniPC rows: they sample the prior, not the posterior.", ""]
    rows = res["a"]
    for pname in ("gmm2d", "gmm64d"):
        for op in ("inpaint", "projection"):
            rr = [r for r in rows if r["problem"] == pname and r["op"] == op]
            if not rr:
                continue
            lines += [f"## {pname}, {op}: {rr[0]['desc']} (G = {rr[0]['G']})", ""]
            lines.append(C.md_table(
                ["method", "P", "steps", "NFE/sample", "wall s", "label TV", "chi2 p", "mean err", "z max",
                 "cov rel", "sw2", "log Z (exact)"],
                [[r["method"], r["P"] or "", r["steps"] or "", r["nfe"] or "", C.fmt(r["wall"]) if r["wall"] else "",
                  C.fmt(r["label_tv"]), f"{r['chi2_p']:.1e}", C.fmt(r["mean_err"]), C.fmt(r["mean_z_max"]),
                  C.fmt(r["cov_rel"]), C.fmt(r["sw2"]),
                  (C.fmt(r["log_Z"]) + f" ({C.fmt(r['exact_log_Z'])})") if r["log_Z"] is not None else ""]
                 for r in rr], ["l"] + ["r"] * 11))
            lines.append("")
    lines += ["## Findings", ""] + [f"* {f}" for f in res.get("findings", [])] + [""]
    b = res.get("b", {})
    lines += ["## Digits inpainting (trained U-Net)", ""]
    if b.get("measured"):
        lines += [f"{b['n_images']} test digits, top 4 rows observed (s_y = {b['s_y']}), {b['steps']} logSNR steps "
                  f"to sigma = 0, float32. obs/s_y: RMS residual on the observed pixels in units of s_y "
                  f"(about 1 for a sample consistent with y); missing RMSE: against the true bottom half "
                  f"(not a posterior metric: the posterior is spread).", "",
                  C.md_table(["method", "obs RMS / s_y", "missing-half RMSE", "wall s (all images, incl. compile)"],
                             [[k, C.fmt(v["obs_rms_over_sy"]), C.fmt(v["missing_rmse"]), C.fmt(v["wall_total"])]
                              for k, v in b["summary"].items()], ["l", "r", "r", "r"]), "",
                  f"![digits inpainting]({os.path.basename(b['png'])})", ""]
    else:
        lines += [f"Not measured: {b.get('reason', 'part b not run')}", ""]
    return "\n".join(lines)


def findings(rows) -> list:
    out = []
    for pname in ("gmm2d", "gmm64d"):
        for op in ("inpaint", "projection"):
            rr = {r["method"]: r for r in rows if r["problem"] == pname and r["op"] == op}
            if not rr:
                continue
            dps = [r for k, r in rr.items() if k.startswith("DPS")]
            best_dps = min(dps, key=lambda r: r["label_tv"]) if dps else None
            tds = [r for k, r in rr.items() if k.startswith("TDS P=") and "steps" not in k]
            big = max(tds, key=lambda r: r["P"]) if tds else None
            if best_dps and big:
                out.append(f"{pname} {op}: best DPS ({best_dps['method']}) label TV {best_dps['label_tv']:.3f}, "
                           f"chi2 p {best_dps['chi2_p']:.1e}, sw2 {best_dps['sw2']:.3f}; TDS P={big['P']} label TV "
                           f"{big['label_tv']:.3f}, chi2 p {big['chi2_p']:.1e}, sw2 {big['sw2']:.3f} (exact floor "
                           f"{rr['exact']['sw2']:.3f}) at {big['nfe'] // max(best_dps['nfe'], 1)}x the NFE.")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="ab")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--from-json", default=None)
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    if args.from_json:
        print(C.rerender_from_json(args.from_json, args.out, render))
        return 0
    C.enable_compilation_cache(1.0)
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now())
    json_path = args.out.replace(".md", ".json")
    old = {}
    if set(args.parts) != {"a", "b"} and os.path.exists(json_path):  # keep the part not rerun
        import json
        with open(json_path) as fh:
            old = json.load(fh)
    res["a"] = part_a(args.quick) if "a" in args.parts else old.get("a", [])
    res["findings"] = findings(res["a"])
    res["b"] = part_b() if "b" in args.parts else old.get("b", dict(measured=False, reason="part b not run"))
    text = render(res)
    C.atomic_write_json(json_path, res)
    C.atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
