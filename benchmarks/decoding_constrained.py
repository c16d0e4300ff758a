"""Constrained sampling (samplax.decoding.constrained) against the exact p(x | x in L): by how much naive
token masking is biased, and how AWRS-SMC and ASAp remove the bias, per model call and constraint check.

Problems: the exact LMs markov4x8 (V=4, L=8), hmm8x5 (V=8, L=5), markov16x4 (V=16, L=4) with the
registered constraints (CONSTRAINTS): dyck (balanced brackets, 1 or 2 bracket types, other tokens
neutral), regex_even (an even number of token 0), regex_contains (contains "0 1").

1. Masking bias (exact, no sampling): TV(q_mask, pi) and both KLs for every LM x constraint, with
   p(L); q_mask is enumerated (samplax.decoding.constrained.masked_log_probs).
2. TV to pi vs model calls on three problems:
   * masked: 20,000 samples; TV(q_mask, pi) exact (the bias; it does not shrink with more calls),
     the sampled TV against its floor and the chi-square p against its own q_mask (= sampler check).
   * awrs_smc (particles 4, 16, 64, the paper's estimator; geometric and recursive at 16, and the
     masking baseline `exact`: every token checked, exact local mass as the weight): B = 2,000
     outputs (one particle per independent system), sampled TV to pi next to the floor of B exact
     samples, chi-square p against pi, E[Z_hat] / p(L) +- its standard error (1 = unbiased).
   * asap: the EXACT distribution of the ASAp sampler after n refining samples (enumerated from its
     table, samplax.decoding.constrained.asap_log_probs), TV to pi, mean over 3 chains; model calls
     per sample = L, so the calls column is n * L (what the chain spent to get there).
   Model calls: sequence-positions evaluated (an SMC step over N particles is N calls).  Constraint
   checks: distinct (prefix, token) evaluations the algorithm makes (masking and ASAp: V per
   position; AWRS: the tokens it draws, counted per output over all particles).

    nice -n 10 python -m benchmarks.decoding_constrained          # full (~6 min on 2 shared cores at load ~12)
    python -m benchmarks.decoding_constrained --quick              # smoke run
    python -m benchmarks.decoding_constrained --from-json docs/benchmarks/decoding_constrained.json

Writes docs/benchmarks/decoding_constrained.md and .json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.decoding_constrained"
OUT = os.path.join("docs", "benchmarks", "decoding_constrained.md")
LMS = ("markov4x8", "hmm8x5", "markov16x4")
CONSTRAINTS = (("dyck", dict(pairs=1)), ("dyck", dict(pairs=2)), ("regex_even", dict(token=0)),
               ("regex_contains", dict(pattern="0,1")))
PROBLEMS = (("markov4x8", "dyck", dict(pairs=1)), ("hmm8x5", "dyck", dict(pairs=2)),
            ("markov16x4", "regex_contains", dict(pattern="0,1")))
PARTICLES = (4, 16, 64)
ASAP_AT = (0, 10, 30, 100, 300, 1000, 3000, 10000)
ASAP_CHAINS = 3


def _bias_table(quick):
    from samplax.decoding import make_problem
    from samplax.decoding import constrained as K

    rows = []
    for lm_name in LMS[:1] if quick else LMS:
        logp_all = None
        for cname, copts in CONSTRAINTS:
            pb = make_problem(lm_name, constraint=cname, constraint_options=copts)
            if logp_all is None:
                logp_all = K.conditionals_all(pb.lm)
            pi, log_Z = K.constrained_log_probs(pb.lm, pb.constraint)
            q = K.masked_log_probs(pb.lm, pb.constraint, logp_all=logp_all)
            rows.append(dict(lm=lm_name, constraint=pb.constraint.name, p_L=float(np.exp(log_Z)),
                             members=int(K.member_table(pb.constraint).sum()), tv=K.tv(pi, q),
                             kl_pi_q=K.kl(pi, q), kl_q_pi=K.kl(q, pi)))
            print(rows[-1], flush=True)
    return rows


def _run(dec, pb, n, seed=0):
    import jax

    from samplax.decoding import sample_keys

    f = jax.jit(lambda k: dec.run(pb, k))
    keys = sample_keys(jax.random.PRNGKey(seed), n)
    t0 = time.perf_counter()
    x, info = jax.block_until_ready(f(keys))
    return np.asarray(x), info, time.perf_counter() - t0


def _sweep(quick):
    import jax
    import jax.numpy as jnp

    from samplax.decoding import chi_square_test, get_decoder, make_problem, tv_floor, tv_to_exact, z_ratio
    from samplax.decoding import constrained as K

    out = []
    for lm_name, cname, copts in PROBLEMS[:1] if quick else PROBLEMS:
        pb = make_problem(lm_name, constraint=cname, constraint_options=copts)
        lm, c = pb.lm, pb.constraint
        V, L = lm.vocab_size, lm.length
        pi, log_Z = K.constrained_log_probs(lm, c)
        logp_all = K.conditionals_all(lm)
        q = K.masked_log_probs(lm, c, logp_all=logp_all)
        rows = []
        n_mask = 2000 if quick else 20000
        dec = get_decoder("masked")
        x, info, wall = _run(dec, pb, n_mask)
        rows.append(dict(method="masked", option="—", calls=L,
                         checks=float(np.mean(info.extras["constraint_checks"])),
                         tv_exact=K.tv(pi, q), tv=tv_to_exact(x, pi, V), floor=tv_floor(pi, n_mask),
                         chi2_p=chi_square_test(x, pi, V).p_value, self_p=chi_square_test(x, q, V).p_value,
                         n=n_mask, wall_s=wall))
        print(lm_name, rows[-1], flush=True)
        B = 500 if quick else 2000
        settings = [(n, "awrs") for n in PARTICLES] + [(16, "geometric"), (16, "recursive"), (16, "exact")]
        for n_part, est in settings[:1] if quick else settings:
            dec = get_decoder("awrs_smc", particles=n_part, estimator=est)
            x, info, wall = _run(dec, pb, B, seed=1)
            zr = z_ratio(np.asarray(info.log_Z), log_Z)
            rows.append(dict(method="awrs_smc", option=f"particles={n_part}, {est}", calls=n_part * L,
                             checks=float(np.mean(info.extras["constraint_checks"])), tv=tv_to_exact(x, pi, V),
                             floor=tv_floor(pi, B), chi2_p=chi_square_test(x, pi, V).p_value, z_ratio=zr.ratio,
                             z_se=zr.stderr, n=B, wall_s=wall))
            print(lm_name, rows[-1], flush=True)
        # ASAp: exact distribution of the sampler after n refining samples
        at = [a for a in ASAP_AT if a <= (100 if quick else ASAP_AT[-1])]
        chain = jax.jit(lambda k, tab: K.asap_chain(lm, c, k, 10, table=tab)[0])
        tvs = np.zeros((ASAP_CHAINS, len(at)))
        t0 = time.perf_counter()
        for ch in range(ASAP_CHAINS):
            tab = jnp.asarray(K.asap_init_table(c))
            done = 0
            for j, n in enumerate(at):
                while done < n:
                    tab = chain(jax.random.fold_in(jax.random.PRNGKey(100 + ch), done), tab)
                    done += 10
                tvs[ch, j] = K.tv(pi, K.asap_log_probs(c, tab, logp_all))
        wall = time.perf_counter() - t0
        for j, n in enumerate(at):
            rows.append(dict(method="asap", option=f"after {n} samples", calls=n * L, checks=n * L * V,
                             tv_exact=float(tvs[:, j].mean()), tv_exact_sd=float(tvs[:, j].std(ddof=1)),
                             n=ASAP_CHAINS, wall_s=wall))
        print(lm_name, rows[-len(at):], flush=True)
        out.append(dict(lm=lm_name, constraint=c.name, V=V, L=L, p_L=float(np.exp(log_Z)), rows=rows))
    return out


def render(res) -> str:
    m = res["machine"]
    lines = ["# Constrained sampling: naive masking vs AWRS-SMC vs ASAp against the exact p(x | x in L)", "",
             C.machine_md(m, res["command"], res["date"]), "",
             "Code: `samplax/decoding/constrained.py`; method notes: `docs/decoding_constrained.md`.  All "
             "distances are to the exact conditional `pi = p(x | x in L)` by enumeration (float64).", "",
             "## 1. Bias of naive token masking (exact)", "",
             "Locally constrained decoding masks the tokens that cannot be completed within the remaining "
             "length (an exact lookahead: it never dead-ends) and renormalises; `q_mask` is its enumerated "
             "distribution.  `members` = sequences in L out of V^L.", ""]
    lines.append(C.md_table(["LM", "constraint", "members", "p(L)", "TV(q_mask, pi)", "KL(pi||q_mask)",
                             "KL(q_mask||pi)"],
                            [[r["lm"], r["constraint"], r["members"], C.fmt(r["p_L"]), C.fmt(r["tv"]),
                              C.fmt(r["kl_pi_q"]), C.fmt(r["kl_q_pi"])] for r in res["bias"]],
                            ["l", "l", "r", "r", "r", "r", "r"]))
    tvs = [r["tv"] for r in res["bias"]]
    lines += ["", f"Masking is biased on every problem: TV from {C.fmt(min(tvs))} to {C.fmt(max(tvs))}.  "
              "The bias is largest where p(L) is small and the LM's local preferences lead into prefixes "
              "with little completion mass (masking weights each prefix by its next-token mass, not by "
              "its future mass p(x in L | prefix)).", "",
              "## 2. TV to pi vs model calls", "",
              "`calls` = model calls (sequence positions) per output: masking L, AWRS-SMC particles x L, ASAp "
              "n x L after n samples.  `checks` = constraint evaluations per output.  `TV exact`: the exact "
              "TV of the sampler's distribution (masking; ASAp after n samples, mean +- sd over "
              f"{ASAP_CHAINS} chains).  `TV sampled`: empirical TV of the drawn outputs to pi, read against "
              "`floor` (the TV of as many exact samples).  `chi2 p`: Pearson test of the outputs against pi "
              "(p > 1e-3: consistent).  `E[Z]/p(L)`: mean of the SMC normaliser over independent systems "
              "+- standard error (1 = unbiased).", ""]
    for prob in res["sweep"]:
        lines += [f"### {prob['lm']} (V={prob['V']}, L={prob['L']}), {prob['constraint']}, p(L) = "
                  f"{C.fmt(prob['p_L'])}", ""]
        cells = []
        for r in prob["rows"]:
            tv_ex = C.fmt(r.get("tv_exact")) + (f" ± {C.fmt(r['tv_exact_sd'])}" if "tv_exact_sd" in r else "")
            zr = f"{C.fmt(r['z_ratio'])} ± {C.fmt(r['z_se'])}" if "z_ratio" in r else "—"
            cells.append([r["method"], r["option"], r["calls"], C.fmt(r["checks"]), tv_ex, C.fmt(r.get("tv")),
                          C.fmt(r.get("floor")), C.fmt(r.get("chi2_p")), zr, r["n"]])
        lines += [C.md_table(["method", "setting", "calls", "checks", "TV exact", "TV sampled", "floor",
                              "chi2 p", "E[Z]/p(L)", "n"], cells, ["l", "l"] + ["r"] * 8), ""]
        m_row = next(r for r in prob["rows"] if r["method"] == "masked")
        lines.append(f"Masking's own chi-square (samples vs q_mask): p = {C.fmt(m_row['self_p'])}; "
                     f"wall {C.fmt(m_row['wall_s'])} s for {m_row['n']} samples.")
        lines.append("")
    lines += ["## Reading", ""] + _summary(res) + [""]
    return "\n".join(lines) + "\n"


def _summary(res):
    out = []
    for prob in res["sweep"]:
        rows = prob["rows"]
        m = next(r for r in rows if r["method"] == "masked")
        aw = [r for r in rows if r["method"] == "awrs_smc" and r["option"].endswith(", awrs")]
        asap = [r for r in rows if r["method"] == "asap"]
        best = aw[-1] if aw else None
        s = f"* {prob['lm']} / {prob['constraint']}: masking TV {C.fmt(m['tv_exact'])} at {m['calls']} calls, " \
            f"{C.fmt(m['checks'])} checks per output (chi-square vs pi p = {C.fmt(m['chi2_p'])})."
        if best:
            s += (f"  AWRS-SMC with {best['option'].split(',')[0]}: sampled TV {C.fmt(best['tv'])} vs floor "
                  f"{C.fmt(best['floor'])}, chi-square p = {C.fmt(best['chi2_p'])}, E[Z]/p(L) = "
                  f"{C.fmt(best['z_ratio'])} ± {C.fmt(best['z_se'])}, at {best['calls']} calls and "
                  f"{C.fmt(best['checks'])} checks per output ({C.fmt(best['checks'] / best['calls'])} per call "
                  f"vs V = {prob['V']} for masking).")
        if best:
            ok = best["chi2_p"] > 1e-3
            s += (" AWRS-SMC at the most particles is " + ("consistent with pi." if ok else
                  "NOT consistent with pi: more particles are needed here (the normaliser stays unbiased)."))
        if asap:
            s += (f"  ASAp's exact TV falls from {C.fmt(asap[0]['tv_exact'])} (= masking) to "
                  f"{C.fmt(asap[-1]['tv_exact'])} after {asap[-1]['option'].split()[1]} samples "
                  f"({asap[-1]['calls']} calls).")
            peak = max(asap, key=lambda r: r["tv_exact"])
            if peak["tv_exact"] > asap[0]["tv_exact"] + 1e-9:
                s += (f"  Not monotone: it first rises to {C.fmt(peak['tv_exact'])} ({peak['option']}).  The "
                      "estimates tighten only on sampled prefixes, so mass moves to prefixes whose estimate "
                      "is still the loose 1.")
        out.append(s)
    zs = [(r["z_ratio"] - 1) / r["z_se"] for prob in res["sweep"] for r in prob["rows"] if "z_ratio" in r]
    if zs:
        out.append(f"* E[Z_hat] / p(L) over all AWRS-SMC rows: |z| <= {C.fmt(max(abs(z) for z in zs))} "
                   f"({len(zs)} rows; the rows of one problem share their keys, so they are not independent "
                   "tests).  No estimator shows a bias in the normaliser.")
    out.append("* Constraint checks: masking and ASAp evaluate all V tokens at every position.  AWRS evaluates "
               "the tokens it draws (about 2 per particle and step when the constraint rarely rejects, up "
               "to ~6 of 16 on markov16x4), so per model call it checks 2-3x fewer than masking at V = 4-8 "
               "and ~3x fewer at V = 16.  Its advantage grows with the vocabulary.  The `exact` row (masking "
               "inside SMC, every token checked) is as accurate or slightly better (no weight noise) at V checks "
               "per call.")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--from-json", default=None)
    args = ap.parse_args()
    if args.from_json:
        print(C.rerender_from_json(args.from_json, OUT, render))
        return
    import jax

    with jax.enable_x64(True):
        date = C.utc_now()
        res = dict(date=date, machine=C.machine_info(), command=C.command_line(MODULE), quick=args.quick,
                   bias=_bias_table(args.quick), sweep=_sweep(args.quick))
    out = OUT if not args.quick else OUT.replace(".md", "_quick.md")
    C.atomic_write_json(out.replace(".md", ".json"), res)
    text = render(res)
    C.atomic_write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
