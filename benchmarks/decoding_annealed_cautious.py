"""The trained causal Flax LM against its exact source, and the annealed (EAD) and cautious (CNTP)
decoders against their exact output distributions, with what they do to likelihood and diversity.

Part 1, the causal transformer (configs/train_causal_chain.py, trained on exact samples of the
markov4x8 LM, V = 4, L = 8): its exact cross-entropy and KL to the source (enumerating all 65,536
sequences), TV / chi-square of N cached samples against the source, cached vs uncached tokens
(same keys), and wall time per token of the cached and uncached paths.

Part 2, decoders on the exact LMs markov4x8 and hmm8x5 (and the trained network): for each
decoder, N samples against its own exact target (decoder.target: enumerated; TV, the TV floor of N
exact draws, Pearson chi-square p), target calls per token, and exact properties of the target q:
the mean log-likelihood per token under the LM, E_q[log p(x)] / L (higher = more probable text),
the entropy per token H(q) / L (diversity), TV(q, p) (distance from the LM), and q(S50), the
probability of landing in the LM's most probable sequences that hold half of its mass (a
quality proxy; there is no task with right answers in this benchmark).  Wall time per generated
token (jitted, batch of 10,000, median of 3) against ancestral sampling.

    nice -n 10 python -m benchmarks.decoding_annealed_cautious [--causal /work/runs/train_causal_chain]
    python -m benchmarks.decoding_annealed_cautious --from-json docs/benchmarks/decoding_annealed_cautious.json

Writes docs/benchmarks/decoding_annealed_cautious.md and .json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.decoding_annealed_cautious"
OUT = os.path.join("docs", "benchmarks", "decoding_annealed_cautious.md")
N = 50_000
N_TIME = 10_000

DECODERS = [
    ("ancestral", {}),
    ("ancestral", dict(temperature=0.7)),
    ("annealed", dict(t_start=1.2, t_end=0.1, decay=8.0)),      # the paper's tau_max / tau_min, d for L <= 10
    ("annealed", dict(t_start=1.5, t_end=0.7, decay=4.0)),
    ("cautious", dict(entropy_low=0.5, entropy_high=1.2, max_trials=4, span=2)),
    ("cautious", dict(entropy_low=0.5, entropy_high=1.2, max_trials=4, span=0, stop_tokens="0")),
    ("cautious", dict(entropy_low=0.0, entropy_high=0.0, max_trials=4, span=0)),  # best-of-4 whole sequences
]


def _label(name, opts):
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")


def _draw(dec, problem, n, seed=0):
    """n samples (chunks of N_TIME keys: one compiled program) and the median wall time per
    generated token of one chunk (3 repeats after the draws)."""
    import jax

    from samplax.decoding import sample_keys

    run = jax.jit(lambda k: dec.run(problem, k))
    chunk = min(N_TIME, n)
    keys = sample_keys(jax.random.PRNGKey(seed), -(-n // chunk) * chunk)
    xs, calls = [], []
    for off in range(0, n, chunk):
        x, info = run(keys[off:off + chunk])
        xs.append(np.asarray(x))
        calls.append(np.asarray(info.target_calls))
    wall = C.median_wall(lambda k: run(k)[0], keys[:chunk], 3) / (chunk * problem.lm.length) * 1e6
    return np.concatenate(xs)[:n], np.concatenate(calls)[:n], wall


def _s50(log_p):
    p = np.exp(log_p)
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    k = int(np.searchsorted(cum, 0.5)) + 1
    member = np.zeros(p.shape, bool)
    member[order[:k]] = True
    return member, k


def _target_props(q_log, log_p, L, member):
    q = np.exp(q_log)
    finite_p = np.where(np.isfinite(log_p), log_p, -1e30)
    return dict(loglik=float(np.sum(q * np.where(q > 0, finite_p, 0.0)) / L),
                entropy=float(-np.sum(np.where(q > 0, q * q_log, 0.0)) / L),
                tv_lm=float(0.5 * np.abs(q - np.exp(log_p)).sum()),
                s50=float(q[member].sum()))


def bench_decoders(lm_name, lm, log_p, log, n=N, decoders=None):
    from samplax.decoding import get_decoder, make_problem
    from samplax.discrete.metrics import chi_square_test, tv_floor, tv_to_exact

    problem = make_problem(lm)
    V, L = lm.vocab_size, lm.length
    member, k50 = _s50(log_p)
    rows = []
    base_wall = None
    for name, opts in (decoders or DECODERS):
        dec = get_decoder(name, **opts)
        t0 = time.perf_counter()
        target = dec.target(problem)
        t_enum = time.perf_counter() - t0
        x, calls, wall = _draw(dec, problem, n)
        base_wall = wall if base_wall is None else base_wall
        try:
            chi = chi_square_test(x, target, V)
            chi_p, cells = chi.p_value, chi.cells
        except ValueError:  # too few samples for the cells
            chi_p, cells = float("nan"), 0
        row = dict(lm=lm_name, decoder=_label(name, opts), n=n, tv=tv_to_exact(x, target, V),
                   tv_floor=tv_floor(target, n), chi_p=chi_p, chi_cells=cells,
                   calls_per_token=float(calls.mean() / L), us_per_token=wall, wall_ratio=wall / base_wall,
                   enumerate_s=t_enum, s50_size=k50, **_target_props(target, log_p, L, member))
        rows.append(row)
        log(f"{lm_name} {row['decoder']}: TV {row['tv']:.4f} (floor {row['tv_floor']:.4f}), chi p "
            f"{row['chi_p']:.3f}, calls/token {row['calls_per_token']:.2f}, loglik {row['loglik']:.3f}, "
            f"H {row['entropy']:.3f}, q(S50) {row['s50']:.3f}, {wall:.2f} us/token")
    return rows


def bench_causal(workdir, log, n=N):
    import jax

    from samplax.decoding import exact_log_probs, load_lm, sample, sample_keys
    from samplax.discrete.metrics import chi_square_test, tv_floor, tv_to_exact
    from samplax.experiment.trainer import load_trained_causal

    lm, info = load_trained_causal(workdir)
    ref = load_lm(info["lm"])
    log_p = exact_log_probs(ref)
    log_q = exact_log_probs(lm)
    p = np.exp(log_p)
    L, V = lm.length, lm.vocab_size
    keys = sample_keys(jax.random.PRNGKey(0), n)
    run = jax.jit(lambda k: (sample(lm, k, cached=True)[0], sample(lm, k, cached=False)[0]))
    xc, xu = (np.asarray(a) for a in run(keys))
    tkeys = keys[:N_TIME]
    cached_us = C.median_wall(jax.jit(lambda k: sample(lm, k, cached=True)[0]), tkeys, 3) / (N_TIME * L) * 1e6
    uncached_us = C.median_wall(jax.jit(lambda k: sample(lm, k, cached=False)[0]), tkeys, 3) / (N_TIME * L) * 1e6
    res = dict(workdir=workdir, step=info["step"], lm=info["lm"], n=n,
               entropy_per_token=float(-np.sum(p * log_p) / L),
               cross_entropy_per_token=float(-np.sum(p * log_q) / L),
               kl_per_sequence=float(np.sum(p * (log_p - log_q))),
               tv_exact=float(0.5 * np.abs(np.exp(log_q) - p).sum()),
               tv_samples=tv_to_exact(xc, log_p, V), tv_floor=tv_floor(log_p, n),
               chi_p=chi_square_test(xc, log_p, V).p_value, chi_p_model=chi_square_test(xc, log_q, V).p_value,
               identical_tokens=int(np.sum(np.all(xc == xu, axis=1))),
               cached_us_per_token=cached_us, uncached_us_per_token=uncached_us)
    log(f"causal LM: H/L {res['entropy_per_token']:.5f}, CE/L {res['cross_entropy_per_token']:.5f}, KL "
        f"{res['kl_per_sequence']:.5f} nats/seq, exact TV {res['tv_exact']:.4f}, sample TV {res['tv_samples']:.4f} "
        f"(floor {res['tv_floor']:.4f}), cached==uncached {res['identical_tokens']}/{n}")
    return lm, log_q, res


def render(res) -> str:
    c = res.get("causal")
    out = ["# The causal Flax LM, annealed (EAD) and cautious (CNTP) decoding", "",
           C.machine_md(res["machine"], res["command"], res["date"]), ""]
    if c:
        out += ["## 1. The trained causal transformer vs its exact source", "",
                f"`{c['workdir']}` (configs/train_causal_chain.py, step {c['step']}) against the exact LM "
                f"`{c['lm']}` (all {4 ** 8:,} sequences enumerated); {c['n']:,} samples.", "",
                C.md_table(["quantity", "value"], [
                    ["entropy of the source H(p) / L (nats/token)", f"{c['entropy_per_token']:.5f}"],
                    ["cross-entropy H(p, q) / L (nats/token)", f"{c['cross_entropy_per_token']:.5f}"],
                    ["KL(p || q) (nats/sequence)", C.fmt(c["kl_per_sequence"])],
                    ["exact TV(q, p)", C.fmt(c["tv_exact"])],
                    ["TV of the samples to p (floor: TV of as many exact draws)",
                     f"{C.fmt(c['tv_samples'])} (floor {C.fmt(c['tv_floor'])})"],
                    ["chi-square p of the samples vs p / vs the model's own q",
                     f"{C.fmt(c['chi_p'])} / {C.fmt(c['chi_p_model'])}"],
                    ["cached == uncached tokens (same keys)", f"{c['identical_tokens']:,} / {c['n']:,}"],
                    ["wall time per token, cached / uncached (us, batch 10,000)",
                     f"{C.fmt(c['cached_us_per_token'])} / {C.fmt(c['uncached_us_per_token'])}"],
                ], ["l", "r"]), ""]
    out += ["## 2. Decoders against their exact targets, and what they do to the LM's distribution", "",
            "TV / chi-square: samples against the decoder's own enumerated target (correctness: TV near its "
            "floor, p not small).  loglik = E_q[log p(x)] / L, H = H(q) / L (nats per token), TV(q, p), "
            "q(S50) = probability of the LM's most probable sequences holding half its mass (exact, from "
            "the target).  Time per token relative to plain ancestral sampling of the same LM.", ""]
    rows = [[r["lm"], f"`{r['decoder']}`", C.fmt(r["tv"]), C.fmt(r["tv_floor"]), C.fmt(r["chi_p"]),
             f"{r['calls_per_token']:.2f}", f"{r['loglik']:.3f}", f"{r['entropy']:.3f}", C.fmt(r["tv_lm"]),
             f"{r['s50']:.3f}", f"{r['us_per_token']:.2f} ({r['wall_ratio']:.1f}x)"] for r in res["decoders"]]
    out += [C.md_table(["LM", "decoder", "TV", "TV floor", "chi p", "calls/token", "loglik", "H", "TV(q, p)",
                        "q(S50)", "us/token"], rows, ["l", "l"] + ["r"] * 9), ""]
    out += ["## Reading", ""] + res.get("reading", [])
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--causal", default="/work/runs/train_causal_chain")
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--from-json", default=None)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    if args.from_json:
        print(C.rerender_from_json(args.from_json, args.out, render))
        return
    C.enable_compilation_cache()
    import jax

    from samplax.decoding import exact_log_probs, load_lm

    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(), decoders=[])
    t0 = time.perf_counter()
    if args.causal and os.path.exists(args.causal):
        lm, log_q, res["causal"] = bench_causal(args.causal, print, args.n)
        res["decoders"] += bench_decoders("causal(markov4x8)", lm, log_q, print, args.n,
                                          [DECODERS[i] for i in (0, 2, 4)])
    for name, which in (("markov4x8", range(len(DECODERS))), ("hmm8x5", (0, 2, 4, 6))):
        lm = load_lm(name)
        res["decoders"] += bench_decoders(name, lm, exact_log_probs(lm), print, args.n, [DECODERS[i] for i in which])
    res["seconds"] = time.perf_counter() - t0
    res["reading"] = reading(res)
    C.atomic_write_json(args.out.replace(".md", ".json"), res)
    text = render(res)
    C.atomic_write_text(args.out, text)
    print(text)
    del jax


def reading(res):
    """Plain statements computed from the numbers (rewritten by hand where needed)."""
    lines = []
    for lm in dict.fromkeys(r["lm"] for r in res["decoders"]):
        rs = [r for r in res["decoders"] if r["lm"] == lm]
        base = rs[0]
        ok = all(r["chi_p"] > 1e-3 for r in rs)
        lines.append(f"* {lm}: every decoder's samples are {'consistent with' if ok else 'NOT all consistent with'} "
                     f"its enumerated target (chi-square p > 0.001: {ok}).")
        for r in rs[1:]:
            lines.append(f"  * `{r['decoder']}`: loglik {r['loglik'] - base['loglik']:+.3f} nats/token, entropy "
                         f"{r['entropy'] - base['entropy']:+.3f} nats/token, q(S50) {r['s50'] - base['s50']:+.3f} vs "
                         f"ancestral; {r['calls_per_token']:.2f} target calls per token, "
                         f"{r['wall_ratio']:.1f}x its wall time.")
    return lines


if __name__ == "__main__":
    main()
