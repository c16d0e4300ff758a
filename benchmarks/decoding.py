"""Every registered decoder against its exact target, and its time per token over the floor.

Accuracy: for each entry of ENTRIES (a decoder with options on a problem: an exact LM of
samplax.decoding.LMS plus the parts the decoder needs), N sequences, one key each
(``fold_in(PRNGKey(0), i)``).  TV: the empirical total variation to the decoder's exact target
(``Decoder.target``: the enumerated distribution it claims to sample); "TV floor": the TV of N exact
samples from that target (a decoder at the floor is indistinguishable from exact at this N); chi2 p:
Pearson goodness of fit (cells with expected count < 5 pooled); target / draft calls per sequence;
tokens per target call; Z_hat/Z: the mean ratio of an SMC decoder's normaliser estimate to the exact
normaliser, with its standard error (1 = unbiased).

Speed: the time per generated token of a decoder with no model call beyond one per token and
particle, over the floor: a hand-written ``lax.scan`` over the positions that only calls the same
model's cached ``step`` (at the same batch: B sequences x particles) and writes the argmax back as
the next token (so no call can be hoisted).  Models: the exact HMM LM hmm8x5 (a call is an 8x8
matrix product: the decoder's own work dominates) and a network-sized stand-in, a random HMM LM with
1024 hidden states (V = 16, L = 16: a call is a (B, 1024) x (1024, 1024) product, ~2 MFLOP per
sequence, like a small transformer's step).  Times: the best of 5 runs after compilation.

    nice -n 10 python -m benchmarks.decoding            # ~5 min on 2 shared cores
    python -m benchmarks.decoding --quick               # a smoke run

Writes docs/benchmarks/decoding.md and .json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.decoding"
OUT = os.path.join("docs", "benchmarks", "decoding.md")

# (decoder, options, problem keyword arguments of samplax.decoding.make_problem[, sequences if not N])
TASK = dict(task="sum_mod", prompt=(1, 3, 2, 3))
ENTRIES = [
    ("ancestral", dict(), dict(lm="hmm8x5")),
    ("ancestral", dict(temperature=0.7, top_p=0.9), dict(lm="hmm8x5")),
    ("ancestral", dict(min_p=0.1), dict(lm="markov4x8")),
    ("ancestral", dict(typical=0.9), dict(lm="markov16x4")),
    ("speculative", dict(gamma=3), dict(lm="hmm8x5", draft="mix_uniform", draft_options=dict(eps=0.3))),
    ("speculative", dict(gamma=4), dict(lm="markov4x8", draft="bigram")),
    ("spectr", dict(k=4, gamma=3), dict(lm="hmm8x5", draft="mix_uniform", draft_options=dict(eps=0.3))),
    ("annealed", dict(), dict(lm="hmm8x5")),
    ("cautious", dict(entropy_low=0.5, entropy_high=1.2, max_trials=4, span=2), dict(lm="markov4x8")),
    ("smc_reward", dict(particles=32, beta=0.5), dict(lm="hmm8x5", reward="token_count")),
    ("power_smc", dict(particles=32, alpha=4.0), dict(lm="hmm8x5")),
    ("power_smc", dict(particles=32, alpha=4.0, catch_up=False), dict(lm="hmm8x5")),  # the wrong weight
    ("masked", dict(), dict(lm="markov4x8", constraint="dyck")),
    ("awrs_smc", dict(particles=64), dict(lm="markov4x8", constraint="dyck")),
    ("asap", dict(iterations=200), dict(lm="markov4x8", constraint="dyck"), 2000),
    ("majority_vote", dict(n=3), TASK),
    ("best_of_n", dict(n=4, noise=0.5), TASK),
]
# (decoder, options, particles per sample (model batch multiplier)) timed against the floor: the decoders
# that make one model call per token and particle
SPEED = [
    ("ancestral", dict(), 1),
    ("ancestral", dict(temperature=0.7, top_p=0.9), 1),
    ("annealed", dict(), 1),
    ("power_smc", dict(particles=16, alpha=4.0), 16),
]


def _accuracy(entries, n, log=print):
    import jax
    from samplax import decoding as D

    rows = []
    for name, opts, prob, *n_row in entries:
        n_row = min(n_row[0], n) if n_row else n
        if name not in D.SAMPLERS:
            log(f"skip {name}: not registered")
            continue
        with jax.enable_x64(True):
            problem = D.make_problem(**prob)
            dec = D.get_decoder(name, **opts)
            target = np.asarray(dec.target(problem))
            log_Z = None if dec.log_Z is None else float(dec.log_Z(problem))
        run = jax.jit(lambda k, dec=dec, problem=problem: dec.run(problem, k))
        keys = D.sample_keys(jax.random.PRNGKey(0), n_row)
        t0 = time.perf_counter()
        x, info = run(keys)
        x = np.asarray(x)
        dt = time.perf_counter() - t0
        V = problem.lm.vocab_size
        chi = D.chi_square_test(x, target, V)
        P = 0 if problem.prompt is None else len(problem.prompt)
        tc = np.asarray(info.target_calls)
        row = dict(decoder=name, options=opts, problem=prob, n=n_row, tv=D.tv_to_exact(x, target, V),
                   tv_floor=D.tv_floor(target, n_row), chi2_p=chi.p_value, target_calls=float(tc.mean()),
                   draft_calls=float(np.asarray(info.draft_calls).mean()),
                   tokens_per_call=float((problem.lm.length - P) * n_row / max(tc.sum(), 1)), wall_s=dt)
        lz = np.asarray(info.log_Z)
        if log_Z is not None and np.all(np.isfinite(lz)):
            z = D.z_ratio(lz, log_Z)
            row.update(z_ratio=z.ratio, z_se=z.stderr)
        rows.append(row)
        log(f"{name} {opts} {prob}: TV {row['tv']:.4f} (floor {row['tv_floor']:.4f}) chi2 p {row['chi2_p']:.3g} "
            f"calls {row['target_calls']:.2f}")
    return rows


def _wide_lm(H=1024, V=16, L=16):
    from samplax.decoding import hmm_lm
    from samplax.discrete.exact import random_hmm
    return hmm_lm(random_hmm(7, H, V, L)._replace(name=f"wide_hmm{H}"))


def _floor(lm, B):
    import jax
    import jax.numpy as jnp

    def run(x0):
        state = lm.init(B)

        def body(carry, pos):
            state, tok, acc = carry
            logp, state = lm.step(state, tok, pos)
            tok = jnp.argmax(logp, axis=-1).astype(jnp.int32)
            return (state, tok, acc + logp.sum()), tok
        (_, _, acc), toks = jax.lax.scan(body, (state, x0, jnp.zeros(())), jnp.arange(lm.length, dtype=jnp.int32))
        return toks, acc
    return jax.jit(run)


def _best(fn, arg, repeats=5):
    import jax
    jax.block_until_ready(fn(arg))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        ts.append(time.perf_counter() - t0)
    return min(ts)


def _speed(B, log=print):
    import jax
    import jax.numpy as jnp
    from samplax import decoding as D

    rows = []
    for model_name, lm in (("hmm8x5", D.load_lm("hmm8x5")), ("wide_hmm1024", _wide_lm())):
        for name, opts, mult in SPEED:
            if name not in D.SAMPLERS:
                continue
            dec = D.get_decoder(name, **opts)
            problem = D.Problem(lm=lm)
            run = jax.jit(lambda k, dec=dec, problem=problem: dec.run(problem, k))
            keys = D.sample_keys(jax.random.PRNGKey(1), B)
            t = _best(run, keys)
            tf = _best(_floor(lm, B * mult), jnp.zeros((B * mult,), jnp.int32))
            tok = B * lm.length
            rows.append(dict(model=model_name, decoder=name, options=opts, B=B, us_per_token=1e6 * t / tok,
                             floor_us_per_token=1e6 * tf / tok, ratio=t / tf))
            log(f"{model_name} {name} {opts}: {1e6 * t / tok:.3f} us/token, floor {1e6 * tf / tok:.3f}, x{t / tf:.2f}")
    return rows


def render(res: dict) -> str:
    acc = res["accuracy"]
    lines = ["# Decoders against their exact targets", "", C.machine_md(res["machine"], res["command"], res["date"]), "",
             f"N = {res['n']} sequences per row, keys fold_in(PRNGKey(0), i). TV floor: the TV of N exact samples "
             "of the same target. tokens/call: generated tokens per target call. Z_hat/Z: mean ratio of the "
             "normaliser estimate to the exact one ± standard error.", ""]
    body = []
    for r in acc:
        opts = " ".join(f"{k}={v}" for k, v in sorted(r["options"].items())) or "-"
        prob = " ".join(f"{k}={v}" for k, v in sorted(r["problem"].items()) if v is not None and v != {})
        z = f"{r['z_ratio']:.3f} ± {r['z_se']:.3f}" if "z_ratio" in r else "-"
        body.append([r["decoder"], opts, prob, str(r["n"]), C.fmt(r["tv"], 4), C.fmt(r["tv_floor"], 4), C.fmt(r["chi2_p"], 3),
                     f"{r['target_calls']:.2f}", f"{r['draft_calls']:.2f}", f"{r['tokens_per_call']:.3f}", z])
    lines.append(C.md_table(["decoder", "options", "problem", "N", "TV", "TV floor", "chi2 p", "target calls",
                             "draft calls", "tokens/call", "Z_hat/Z"], body))
    lines += ["", "## Time per token over the floor", "",
              f"B = {res['B']} sequences; best of 5 after compilation; floor = a lax.scan calling the same "
              "cached step and writing the argmax back (see the module docstring).", ""]
    lines.append(C.md_table(["model", "decoder", "options", "µs/token", "floor µs/token", "ratio"],
                            [[r["model"], r["decoder"], " ".join(f"{k}={v}" for k, v in sorted(r["options"].items())) or "-",
                              f"{r['us_per_token']:.3f}", f"{r['floor_us_per_token']:.3f}", f"{r['ratio']:.2f}"]
                             for r in res["speed"]]))
    if res.get("reading"):
        lines += ["", "## Reading", "", res["reading"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", action="store_true", help="write the docs table even with --quick")
    ap.add_argument("--from-json")
    args = ap.parse_args(argv)
    if args.from_json:
        return C.rerender_from_json(args.from_json, OUT, render)
    C.enable_compilation_cache()
    n = 5000 if args.quick else 100_000
    B = 256 if args.quick else 4096
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(), n=n, B=B)
    res["accuracy"] = _accuracy(ENTRIES, n)
    res["speed"] = _speed(B)
    md = render(res)
    print(md)
    if not args.quick or args.write:
        C.atomic_write_text(OUT, md)
        C.atomic_write_json(OUT[:-3] + ".json", res)
    return md


if __name__ == "__main__":
    main()
