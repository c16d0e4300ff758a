"""SMC decoders (samplax.decoding.smc): distance to the exact target and E[Z_hat] against particles
(target calls), and wall time per generated token against a bare ``lax.scan`` with as many model calls.

Accuracy, on the exact LM hmm8x5 (V = 8, L = 5, 32768 sequences), N output sequences per row (one
independent particle system per sequence, the output drawn from its final weights):

* Power-SMC for p^alpha / Z, alpha = 4, the linear exponent ramp over the 5 tokens, proposal at
  temperature 1 / alpha_t ("adaptive", the paper's) or the LM itself (T = 1); and without the catch-up
  factor (the mutation), whose E[Z_hat] / Z is compared with its exact value (the normaliser of
  prod_t p(x_t | x_<t)^alpha_t over Z, by enumeration).  Baseline: ancestral sampling at temperature
  1 / alpha (token-level sharpening, not p^alpha): its exact TV by enumeration.
* Reward SMC for p(y | prompt) exp(r / beta) / Z after the prompt (2, 5) (3 generated tokens, 512
  sequences, so that TV is resolved at this N) with the regex reward "ab" (token 0 directly followed
  by token 1; indicator), beta = 0.25, and with token_count(token 3), beta = 0.5; and the
  non-telescoping mutation.

TV: empirical total variation of the N outputs to the enumerated target; "TV floor": the TV of N
exact draws (the estimator's bias); chi2 p: Pearson, cells of expected count < 5 pooled.  E[Z_hat]/Z:
the mean over the N runs with its standard error; z = (mean - 1) / SE.

Speed: one jitted call generating ``runs`` sequences with ``n`` particles each (runs * n * L model
calls) against the floor, a bare ``lax.scan`` over the L positions that calls the same model's cached
step on runs * n sequences and draws each token with the same categorical sampler (no weights, no
resampling).  Two models: hmm8x5 (a forward-filter step: cheap) and a network-sized stand-in (a
recurrent LM, V = 64, width 256, L = 16, random weights: ~0.16 MFLOP per sequence and step).  Times:
the best of 9 runs after compilation, floor and SMC alternating (the machine is shared).

    nice -n 10 python -m benchmarks.decoding_smc           # ~5 min on 2 shared cores (under load)
    python -m benchmarks.decoding_smc --quick              # a smoke run (writes nothing)

Writes docs/benchmarks/decoding_smc.md and .json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.decoding_smc"
OUT = os.path.join("docs", "benchmarks", "decoding_smc.md")
PARTICLES = (1, 4, 16, 64)
ALPHA = 4.0
PROMPT = (2, 5)                    # the reward problems: 3 generated tokens after it, 512 sequences
CHUNK_PARTICLES = 1 << 18          # runs * particles per jitted call


def _decode(dec, problem, n_seq, particles, seed):
    """All N outputs, in chunks of at most CHUNK_PARTICLES particles (keys fold_in(key, i): the
    chunking does not change a sequence)."""
    import jax
    import jax.numpy as jnp
    from samplax import decoding as D

    key = jax.random.PRNGKey(seed)
    chunk = max(1, min(n_seq, CHUNK_PARTICLES // particles))
    xs, log_Z, resampled = [], [], []
    for start in range(0, n_seq, chunk):
        b = min(chunk, n_seq - start)
        keys = D.sample_keys(key, b, start)
        if b < chunk:      # keep one compiled shape
            keys = jnp.concatenate([keys, D.sample_keys(key, chunk - b, n_seq)])
        x, info = dec.run(problem, keys)
        xs.append(np.asarray(x)[:b])
        log_Z.append(np.asarray(info.log_Z)[:b])
        resampled.append(np.asarray(info.extras["num_resampled"])[:b])
    return np.concatenate(xs), np.concatenate(log_Z), np.concatenate(resampled)


def accuracy_rows(n_seq: int, particles, log=print):
    import jax
    import jax.numpy as jnp
    from scipy.special import logsumexp

    from samplax import decoding as D
    from samplax.smc import lm as lmsmc

    rows = []
    with jax.enable_x64(True):
        lm = D.load_lm("hmm8x5")
        V, L = lm.vocab_size, lm.length
        log_p = D.exact_log_probs(lm)
        seqs = D.all_sequences(V, L)
        tok_lp = np.take_along_axis(np.asarray(lm.logits_fn(jnp.asarray(seqs))), seqs[..., None], -1)[..., 0]
        lp_pow, logZ_pow = D.power_target(log_p, ALPHA)
        alphas = lmsmc.power_schedule(ALPHA, L)
        wrong_pow = float(np.exp(logsumexp((alphas[None] * tok_lp).sum(1)) - logZ_pow))
        # baseline: ancestral at temperature 1/alpha (exact law by enumeration)
        lq = D.exact_log_probs(lm, D.temperature(1.0 / ALPHA))
        rows.append(dict(target="power a=4", decoder="ancestral T=1/alpha (exact law)", particles=1, calls=L,
                         tv=float(0.5 * np.abs(np.exp(lq) - np.exp(lp_pow)).sum()), tv_floor=None, chi2_p=None,
                         z_ratio=None, z_se=None, z_expected=None, resampled=None, time_s=None))
        problems = {
            "regex 'ab' b=0.25": (D.make_problem(lm, reward="regex", reward_options={"pattern": "ab"},
                                                 prompt=PROMPT), 0.25),
            "token_count(3) b=0.5": (D.make_problem(lm, reward="token_count", reward_options={"token": 3},
                                                    prompt=PROMPT), 0.5),
        }
        log_p_prompt = D.exact_log_probs(lm, None, np.asarray(PROMPT))
        configs = []
        for n in particles:
            configs.append(("power a=4", "power_smc adaptive", n, dict(alpha=ALPHA), None))
            configs.append(("power a=4", "power_smc T=1", n, dict(alpha=ALPHA, proposal_temperature=1.0), None))
        for n in (particles[1], particles[-1]):
            configs.append(("power a=4", "power_smc T=1, no catch-up (mutation)", n,
                            dict(alpha=ALPHA, proposal_temperature=1.0, catch_up=False), wrong_pow))
        for name, (prob, beta) in problems.items():
            r = D.enumerate_rewards(prob.reward, V, L)
            for n in particles:
                configs.append((name, "smc_reward", n, dict(beta=beta), None))
            fn = jax.jit(prob.reward.fn)
            # without telescoping: initial weight 1, then exp(r(x_<=t)/beta) at each generated position t
            r_sum = sum(np.asarray(fn(jnp.asarray(seqs), k)) for k in range(len(PROMPT) + 1, L + 1))
            _, logZ = D.tilted_target(log_p_prompt, r, beta)
            wrong = float(np.exp(logsumexp(log_p_prompt + r_sum / beta) - logZ))
            configs.append((name, "smc_reward, no telescoping (mutation)", particles[-1],
                            dict(beta=beta, telescoping=False), wrong))
        for target, label, n, opts, expected in configs:
            if target.startswith("power"):
                prob, (lp, logZ) = D.Problem(lm), (lp_pow, logZ_pow)
                dec = D.get_decoder("power_smc", particles=n, **opts)
            else:
                prob, beta = problems[target]
                lp, logZ = D.tilted_target(log_p_prompt, D.enumerate_rewards(prob.reward, V, L), beta)
                dec = D.get_decoder("smc_reward", particles=n, **opts)
            t0 = time.perf_counter()
            x, lz, nres = _decode(dec, prob, n_seq, n, seed=n)
            dt = time.perf_counter() - t0
            zr = D.z_ratio(lz, logZ)
            calls = n * L if target.startswith("power") else n * (L - len(PROMPT)) + len(PROMPT)
            row = dict(target=target, decoder=label, particles=n, calls=calls, tv=D.tv_to_exact(x, lp, V),
                       tv_floor=D.tv_floor(lp, n_seq), chi2_p=D.chi_square_test(x, lp, V).p_value,
                       z_ratio=zr.ratio, z_se=zr.stderr, z_expected=expected, resampled=float(nres.mean()),
                       time_s=dt)
            rows.append(row)
            log(f"{target} | {label} | n={n}: TV {row['tv']:.4f} (floor {row['tv_floor']:.4f}) chi2 p "
                f"{row['chi2_p']:.2g}  E[Z]/Z {zr.ratio:.4f} +- {zr.stderr:.4f}"
                f"{'' if expected is None else f' (exact {expected:.4f})'}  {dt:.1f} s", flush=True)
    return rows


def rnn_lm(V: int = 64, width: int = 256, length: int = 16, seed: int = 0):
    """A network-sized stand-in: h_t = tanh(E[x_{t-1}] + h_{t-1} W), log p(x_t | x_<t) =
    log_softmax(h_t U) (h_0 from a learned start vector); random weights, cached state = h."""
    import jax
    import jax.numpy as jnp

    from samplax import decoding as D

    rng = np.random.default_rng(seed)
    E = rng.normal(size=(V, width)) / np.sqrt(width)
    W = rng.normal(size=(width, width)) / np.sqrt(width)
    U = rng.normal(size=(width, V)) * 3.0 / np.sqrt(width)
    h0 = rng.normal(size=(width,))

    def arrays():
        return tuple(jnp.asarray(a, jnp.float32) for a in (E, W, U, h0))

    def init(batch):
        return jnp.zeros((batch, width), jnp.float32)

    def step(h, prev, pos):
        E_, W_, U_, h0_ = arrays()
        h = jnp.where(pos > 0, jnp.tanh(E_[prev] + h @ W_), jnp.tanh(h0_)[None, :] + 0 * h)
        return jax.nn.log_softmax(h @ U_, axis=-1), h

    def logits_fn(x):
        h = init(x.shape[0])

        def body(h, pt):
            pos, prev = pt
            lp, h = step(h, prev, pos)
            return h, lp
        prevs = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1).T
        _, lp = jax.lax.scan(body, h, (jnp.arange(x.shape[1]), prevs))
        return jnp.swapaxes(lp, 0, 1)

    return D.LanguageModel(logits_fn, V, length, name=f"rnn{V}x{width}", init=init, step=step)


def _best_pair(fa, xa, fb, xb, repeats: int):
    """The best (minimum) wall time of ``fa(xa)`` and of ``fb(xb)`` over ``repeats`` alternating calls
    after one warm-up call each: alternating shares the load of a busy machine between the two, and
    the minimum is the least disturbed run."""
    import jax

    jax.block_until_ready(fa(xa))
    jax.block_until_ready(fb(xb))
    ta, tb = [], []
    for _ in range(repeats):
        for f, x, ts in ((fa, xa, ta), (fb, xb, tb)):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x))
            ts.append(time.perf_counter() - t0)
    return float(min(ta)), float(min(tb))


def speed_rows(configs, repeats: int = 9, log=print):
    import jax
    import jax.numpy as jnp

    from samplax import decoding as D
    from samplax.discrete.base import categorical

    rows = []
    for mname, runs, n, thr in configs:
        lm = D.load_lm("hmm8x5") if mname == "hmm8x5" else rnn_lm()
        L = lm.length
        B = runs * n

        @jax.jit
        def floor(keys):
            def body(carry, pos):
                state, tok, x = carry
                logp, state = lm.step(state, tok, pos)
                ks = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, pos)
                tok = jax.vmap(categorical)(ks, logp)
                x = jax.lax.dynamic_update_index_in_dim(x, tok, pos, axis=1)
                return (state, tok, x), None
            init = (lm.init(B), jnp.zeros((B,), jnp.int32), jnp.zeros((B, L), jnp.int32))
            return jax.lax.scan(body, init, jnp.arange(L))[0][2]

        dec = D.get_decoder("power_smc", particles=n, alpha=ALPHA, ess_threshold=thr)
        problem = D.Problem(lm)
        keys_run = D.sample_keys(jax.random.PRNGKey(0), runs)
        keys_floor = D.sample_keys(jax.random.PRNGKey(1), B)
        t_floor, t_smc = _best_pair(floor, keys_floor, lambda k: dec.run(problem, k)[0], keys_run, repeats)
        rows.append(dict(model=mname, runs=runs, particles=n, ess_threshold=thr, calls=B * L, floor_s=t_floor,
                         smc_s=t_smc, ratio=t_smc / t_floor, per_token_us=t_smc / (runs * L) * 1e6,
                         per_particle_token_ns=t_smc / (B * L) * 1e9))
        log(f"{mname} runs={runs} n={n} thr={thr}: smc {t_smc * 1e3:.2f} ms vs floor {t_floor * 1e3:.2f} ms "
            f"= {t_smc / t_floor:.2f}x", flush=True)
    return rows


def _f(v, fmt):
    return "" if v is None else format(v, fmt)


def render(res: dict) -> str:
    lines = ["# SMC decoders: Power-SMC and reward-guided SMC against their exact targets", "",
             C.machine_md(res["machine"], res["command"], res["date"]), "",
             f"hmm8x5 (V = 8, L = 5). N = {res['n']} output sequences per row, each from its own particle "
             "system (output drawn from the final weights). Power target: the whole sequence (32768 "
             "sequences); reward targets: after the prompt (2, 5), 512 sequences. Target calls per sequence = "
             "particles x generated tokens (+ 2 to read the prompt). "
             "TV floor: TV of N exact draws. chi2 p < 1e-3: distinguishable from the target at this N. "
             "E[Z_hat]/Z: mean over the N runs +- its standard error (1 for an unbiased estimator); for the "
             "mutations the exact value of what they estimate is given.", "",
             "## Accuracy and E[Z_hat] vs particles", "",
             "| target | decoder | particles | target calls | TV | TV floor | chi2 p | E[Z_hat]/Z | (exact) | "
             "resampling steps | time (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["accuracy"]:
        z = "" if r["z_ratio"] is None else f"{r['z_ratio']:.4f} +- {r['z_se']:.4f}"
        lines.append(f"| {r['target']} | {r['decoder']} | {r['particles']} | {r['calls']} | {r['tv']:.4f} | "
                     f"{_f(r['tv_floor'], '.4f')} | {_f(r['chi2_p'], '.2g')} | {z} | {_f(r['z_expected'], '.4f')} | "
                     f"{_f(r['resampled'], '.2f')} | {_f(r['time_s'], '.1f')} |")
    lines += ["", res.get("reading_accuracy", ""), "",
              "## Wall time per generated token against a bare scan", "",
              "Floor: a jitted `lax.scan` over the L positions calling the model's cached step on runs x "
              "particles sequences and drawing each token with the same categorical sampler. SMC: "
              "power_smc (alpha = 4, adaptive proposal) generating `runs` sequences with that many "
              "particles each: the same number of model calls. Best of 9 alternating runs after compilation.", "",
              "| model | runs | particles | ess_threshold | model calls | floor (ms) | SMC (ms) | ratio | "
              "SMC per output token (us) | SMC per particle-token (ns) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["speed"]:
        lines.append(f"| {r['model']} | {r['runs']} | {r['particles']} | {r['ess_threshold']} | {r['calls']} | "
                     f"{r['floor_s'] * 1e3:.2f} | {r['smc_s'] * 1e3:.2f} | {r['ratio']:.2f}x | "
                     f"{r['per_token_us']:.1f} | {r['per_particle_token_ns']:.1f} |")
    lines += ["", res.get("reading_speed", ""), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--from-json", default=None)
    args = ap.parse_args()
    if args.from_json:
        return C.rerender_from_json(args.from_json, OUT, render)
    C.enable_compilation_cache()
    n = 2_000 if args.quick else 20_000
    particles = (1, 4) if args.quick else PARTICLES
    speed_cfg = [("hmm8x5", 1, 64, 0.5), ("hmm8x5", 64, 64, 0.5), ("rnn", 1, 64, 0.5), ("rnn", 64, 64, 0.5),
                 ("rnn", 64, 64, 1.0)]
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(), n=n,
               accuracy=accuracy_rows(n, particles),
               speed=speed_rows([("rnn", 4, 16, 0.5)] if args.quick else speed_cfg, repeats=2 if args.quick else 9))
    md = render(res)
    print(md)
    if not args.quick:
        C.atomic_write_text(OUT, md)
        C.atomic_write_json(OUT[:-3] + ".json", res)
    return OUT


if __name__ == "__main__":
    main()
