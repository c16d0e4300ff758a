"""Entropy-gated continuous bitstream diffusion vs masked diffusion on the exact tiny problems.

For each problem (markov4x8: V = 4, L = 8, 2 bits per token; hmm8x5: V = 8, L = 5, 3 bits) the
exact bitstream model (samplax.discrete.bitstream.bitstream_model: exact E[bits | x_sigma] by
forward-backward, entropy-rate profile from 2048 exact samples) is sampled with

* the probability-flow ODE (gamma = 0) with DDIM and DPM-Solver++(2M) on the entropic grid, DDIM
  on the Karras grid (rho = 7), sigma from 80 to 0.02, then a final denoising jump to 0;
* the entropy-gated stochastic sampler (churn gamma = 0.2, the paper's LM1B value; full band
  [0, 1] and the official default band [0.1, 0.9]) with DDIM steps on the entropic grid, and the
  full band with Heun steps (EDM Algorithm 2; NFE = 2 steps - 1);

and, on the same problems, the masked-diffusion samplers of the core (MDLM ancestral with
2..L steps, cached; first hitting, exact with L calls).  Each row: n samples, TV of their
histogram to the enumerated truth, the TV floor of n exact samples (the estimator's bias), the
chi-square p-value (cells with expected count < 5 pooled), wall time of the compiled decode.

    python -m benchmarks.discrete_bitstream            # 13 min measured on 2 CPU cores shared with\n                                                       # 4 other jobs (load ~10); less on a quiet machine
    python -m benchmarks.discrete_bitstream --n 20000 --problems markov4x8
    python -m benchmarks.discrete_bitstream --from-json docs/benchmarks/discrete_bitstream.json

Writes docs/benchmarks/discrete_bitstream.md and .json (rows in the common frontier format).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.discrete_bitstream"
OUT = os.path.join("docs", "benchmarks", "discrete_bitstream.md")
PROBLEMS = ("markov4x8", "hmm8x5")
NFES = (4, 8, 16, 32, 64)


def _settings(length):
    rows = []
    for k in NFES:
        rows.append(("bitstream", f"ODE ddim, entropic grid, {k} steps", dict(steps=k, solver="ddim")))
    for k in NFES:
        rows.append(("bitstream", f"ODE dpm_solver_pp(2M), entropic grid, {k} steps",
                     dict(steps=k, solver="dpm_solver_pp")))
    for k in NFES:
        rows.append(("bitstream", f"ODE ddim, karras grid, {k} steps", dict(steps=k, solver="ddim", spacing="karras")))
    for k in NFES:
        rows.append(("bitstream", f"gated churn gamma=0.2 band [0,1], ddim, entropic, {k} steps",
                     dict(steps=k, solver="ddim", gamma=0.2)))
    for k in NFES[1:]:
        rows.append(("bitstream", f"gated churn gamma=0.2 band [0.1,0.9], ddim, entropic, {k} steps",
                     dict(steps=k, solver="ddim", gamma=0.2, q_lo=0.1, q_hi=0.9)))
    for k in (4, 8, 16, 32):
        rows.append(("bitstream", f"gated churn gamma=0.2 band [0,1], heun, entropic, {k} steps",
                     dict(steps=k, solver="heun", gamma=0.2)))
    for k in sorted({2, max(2, length // 2), length, 2 * length}):
        rows.append(("ancestral", f"MDLM ancestral, {k} steps, cached", dict(steps=k)))
    rows.append(("first_hitting", "first hitting (exact)", {}))
    return rows


def run(problems, n, seed, log=print):
    import jax

    from samplax.discrete import bitstream as bs
    from samplax.discrete import decode, enumerate_log_probs, get_sampler, load_problem
    from samplax.discrete.metrics import chi_square_test, tv_floor, tv_to_exact

    rows = []
    for prob in problems:
        hmm = load_problem(prob)
        lp = enumerate_log_probs(hmm)
        t0 = time.time()
        model = bs.bitstream_model(hmm)
        log(f"{prob}: model + entropy profile {time.time() - t0:.1f}s, H = {model.entropy:.4f} nats, "
            f"integral of the rate = {float(np.sum(model.profile.rate * np.diff(model.profile.log_edges))):.4f}")
        floor = tv_floor(lp, n, seed=seed)
        for name, setting, opts in _settings(hmm.length):
            sampler = get_sampler(name, **opts)
            f = jax.jit(lambda k, s=sampler: decode(s, model, k, n))
            key = jax.random.PRNGKey(seed)
            compiled = f.lower(key).compile()
            t = time.perf_counter()
            x, info = jax.block_until_ready(compiled(key))
            wall = time.perf_counter() - t
            x = np.asarray(x)
            nfe = float(np.mean(np.asarray(info.nfe)))
            tv = tv_to_exact(x, lp, hmm.vocab_size)
            chi = chi_square_test(x, lp, hmm.vocab_size)
            row = dict(problem=prob, sampler=name, setting=setting, options=opts, nfe=nfe, tv=tv, tv_floor=floor,
                       chi2_p=chi.p_value, time_s=wall, n=n)
            rows.append(row)
            log(f"  {setting:60s} NFE {nfe:6.2f}  TV {tv:.4f} (floor {floor:.4f})  p {chi.p_value:.2e}  {wall:.1f}s")
    return rows


def render(res):
    rows = res["rows"]
    table = C.md_table(["problem", "sampler", "setting", "NFE/sample", "TV", "TV floor", "chi2 p", "time"],
                       [[r["problem"], r["sampler"], r["setting"], C.fmt(r["nfe"]), C.fmt(r["tv"]),
                         C.fmt(r["tv_floor"]), C.fmt(r["chi2_p"]), f"{r['time_s']:.2f} s"] for r in rows],
                       ["l", "l", "l", "r", "r", "r", "r", "r"])
    return "\n".join([
        "# Bitstream diffusion vs masked diffusion on exact tiny problems",
        "",
        C.machine_md(res["machine"], res["command"], res["date"]),
        f"* Samples per row: {res['n']} (seed {res['seed']}); TV floor = mean TV of that many exact samples.",
        "",
        "Exact denoisers on both sides: the bitstream sampler integrates the continuous diffusion over",
        "+-1 analog bits with the exact posterior mean E[bits | x_sigma] (forward-backward); the masked",
        "samplers call the exact conditionals.  Every error is the sampler's own (discretisation,",
        "rounding, simultaneous unmasking).  Time: wall seconds of the compiled decode of all samples",
        "(CPU, shared cores: indicative only).",
        "",
        table,
        "",
        "## Reading",
        "",
        summarise(rows),
        "",
    ])


def summarise(rows):
    lines = []
    for prob in sorted({r["problem"] for r in rows}):
        rs = [r for r in rows if r["problem"] == prob]
        floor = rs[0]["tv_floor"]
        fh = [r for r in rs if r["sampler"] == "first_hitting"][0]

        def first_at_floor(prefix):
            ok = [r for r in rs if r["setting"].startswith(prefix) and r["tv"] <= 1.1 * floor]
            return min((r["nfe"] for r in ok), default=None)
        parts = [f"**{prob}** (floor {C.fmt(floor)}): first hitting TV {C.fmt(fh['tv'])} at NFE {C.fmt(fh['nfe'])};"]
        for label, prefix in (("ODE ddim entropic", "ODE ddim, entropic"),
                              ("ODE dpm_solver_pp entropic", "ODE dpm_solver_pp"),
                              ("ODE ddim karras", "ODE ddim, karras"),
                              ("gated churn [0,1]", "gated churn gamma=0.2 band [0,1]"),
                              ("gated churn [0.1,0.9]", "gated churn gamma=0.2 band [0.1,0.9]")):
            k = first_at_floor(prefix)
            parts.append(f"{label} reaches TV <= 1.1 x floor at NFE {C.fmt(k) if k is not None else '> 64'};")
        def label(setting):
            if "churn" in setting:
                return "churn [" + setting.split("band [")[1].split("]")[0] + "]"
            return setting.split(",")[0]
        at64 = {label(r["setting"]): r["chi2_p"] for r in rs
                if r["nfe"] == 64 and "entropic" in r["setting"] and "heun" not in r["setting"]}
        heun = [r for r in rs if "heun" in r["setting"]]
        if heun:
            best = max(heun, key=lambda r: r["nfe"])
            parts.append(f"Gated churn with Heun steps at NFE {C.fmt(best['nfe'])}: TV {C.fmt(best['tv'])}, "
                         f"chi-square p {C.fmt(best['chi2_p'])}.")
        parts.append("chi-square p at NFE 64 (entropic grid): " +
                     ", ".join(f"{k} {C.fmt(v)}" for k, v in at64.items()) + ".")
        lines.append(" ".join(parts))
    lines.append(
        "No gain from the entropy gate here: on an exact denoiser the probability-flow ODE on the entropic "
        "grid is the best bitstream sampler at (nearly) every NFE, and the gated churn (gamma = 0.2 per step, "
        "the paper's setting) is worse at equal NFE and on hmm8x5 is still rejected by chi-square at 64 NFE: "
        "with a fixed gamma it is not consistent as the steps grow -- each churned step "
        "raises sigma by a fixed 20 % and the DDIM step back down has a length that does not shrink with "
        "the step count, so its first-order error does not vanish.  The churn is meant to correct a learned, "
        "imperfect denoiser, which an exact model cannot show.  The entropic grid itself is a clear gain "
        "over the Karras grid (half to a quarter of the NFE for the same TV).  Masked diffusion with the "
        "exact conditionals is better still: first hitting is exact at NFE = L.")
    return "\n\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-json", default=None)
    args = ap.parse_args()
    if args.from_json:
        print(C.rerender_from_json(args.from_json, OUT, render))
        return
    rows = run(args.problems, args.n, args.seed)
    res = dict(rows=rows, n=args.n, seed=args.seed, machine=C.machine_info(), command=C.command_line(MODULE),
               date=C.utc_now(), summary=summarise(rows))
    C.atomic_write_json(OUT.replace(".md", ".json"), res)
    text = render(res)
    C.atomic_write_text(OUT, text)
    print(text)


if __name__ == "__main__":
    main()
