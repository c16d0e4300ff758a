"""The learned masked-diffusion models (configs/train_discrete_chain.py, configs/train_discrete_digits.py)
against the exact denoiser, and dParallel (certainty-forcing distillation + entropy-threshold decoding).

Chain (markov4x8, V = 4, L = 8, 65,536 sequences, enumerable):
  * conditional error: KL(exact || model) of the clean-token conditionals at masked positions,
    for true sequences masked at t ~ U(0, 1) (each token masked with probability t), by t bin;
  * the exact NELBO of the model (enumerated over all 255 masks, samplax.training.discrete_losses
    .masked_nelbo_enumerated) against -log p(x), on true samples (their mean is the entropy);
  * samples (N per row, float32 models, "high"-precision Gumbel): TV to the enumerated truth, its
    floor (TV of N exact samples), Pearson chi-square p (cells with < 5 expected pooled), NFE;
    samplers: first_hitting (one call per token: exact for the exact model), ancestral(steps),
    dparallel(threshold) — for the exact model, the learned one, and the learned one after
    certainty-forcing distillation on its own first-hitting samples (samplax.discrete.dparallel).
Digits (digits_tokens, V = 17, L = 64): the Frechet distance of the classifier features of decoded
samples against the held-out test split (samplax.models.classifier.digits_fd, as the experiment
runner computes FD for digits) vs NFE, and a sample grid (docs/images/discrete_learned_digits.png).

    nice -n 10 python -m benchmarks.discrete_learned          # needs the two trained workdirs
    python -m benchmarks.discrete_learned --from-json docs/benchmarks/discrete_learned.json

Workdirs: --chain /work/runs/train_discrete_chain --digits /work/runs/train_discrete_digits.
Writes docs/benchmarks/discrete_learned.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.discrete_learned"
OUT = os.path.join("docs", "benchmarks", "discrete_learned.md")
PNG = os.path.join("docs", "images", "discrete_learned_digits.png")
N_CHAIN = 20_000
N_DIGITS = 1000
CHAIN_THRESHOLDS = (0.6, 0.8, 1.0, 1.2)    # nats; log 4 = 1.39, the chain's conditionals mostly have H > 0.5
DIGITS_THRESHOLDS = (0.1, 0.3, 0.6, 1.0)   # nats; log 17 = 2.83, background pixels are near-certain
DISTILL_BETAS = (2.0, 0.0)                 # the paper's entropy weight, and the consistency-only control
DISTILL_STEPS = 300


def _decode(sampler, model, n, seed=0, chunk=20_000):
    import jax

    from samplax.discrete import decode

    run = jax.jit(lambda k, off: decode(sampler, model, k, min(chunk, n), index_offset=off))
    xs, nfes = [], []
    t0 = time.perf_counter()
    for off in range(0, n, chunk):
        x, info = run(jax.random.PRNGKey(seed), off)
        xs.append(np.asarray(x))
        nfes.append(np.asarray(info.nfe))
    x = np.concatenate(xs)[:n]
    return x, float(np.concatenate(nfes)[:n].mean()), time.perf_counter() - t0


def conditional_kl(model, hmm, n=4096, bins=(0.0, 0.25, 0.5, 0.75, 1.0), seed=1):
    import jax
    import jax.numpy as jnp

    from samplax.discrete import exact_model, true_samples

    ex = exact_model(hmm)
    key = jax.random.PRNGKey(seed)
    x0 = true_samples(hmm, jax.random.fold_in(key, 0), n)
    t = jax.random.uniform(jax.random.fold_in(key, 1), (n,))
    masked = jax.random.uniform(jax.random.fold_in(key, 2), x0.shape) < t[:, None]
    z = jnp.where(masked, hmm.vocab_size, x0).astype(jnp.int32)
    lp_ex = np.asarray(ex(z, t), np.float64)
    lp_m = np.asarray(model(z, t.astype(jnp.float32)), np.float64)
    kl = np.sum(np.exp(lp_ex) * (lp_ex - lp_m), -1)
    m = np.asarray(masked)
    tt = np.asarray(t)
    out = dict(mean=float(kl[m].mean()), n_positions=int(m.sum()), by_t=[])
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = m & ((tt >= lo) & (tt < hi))[:, None]
        out["by_t"].append(dict(t_lo=lo, t_hi=hi, kl=float(kl[sel].mean()), n=int(sel.sum())))
    return out


def chain_rows(label, model, logp, n, problem="markov4x8", ancestral=()):
    from samplax.discrete import chi_square_test, tv_to_exact
    from samplax.discrete.dparallel import dparallel
    from samplax.discrete.registry import SAMPLERS

    rows = []
    samplers = ([("first_hitting", "", SAMPLERS["first_hitting"]())]
                + [("ancestral", f"steps={s}", SAMPLERS["ancestral"](steps=s)) for s in ancestral]
                + [("dparallel", f"threshold={h}", dparallel(threshold=h)) for h in CHAIN_THRESHOLDS])
    for name, setting, sampler in samplers:
        x, nfe, wall = _decode(sampler, model, n)
        chi = chi_square_test(x, logp, 4)
        rows.append(dict(problem=problem, model=label, sampler=name, setting=setting, nfe=nfe,
                         tv=tv_to_exact(x, logp, 4), chi2_p=chi.p_value, time_s=wall, n=n))
        print(f"  {label:>10} {name:>14} {setting:>14}: NFE {nfe:.2f} TV {rows[-1]['tv']:.4f} p {chi.p_value:.2g}",
              flush=True)
    return rows


def measure_chain(workdir, quick=False):
    import jax
    import jax.numpy as jnp

    from samplax.discrete import enumerate_log_probs, exact_model, load_problem, log_prob, true_samples
    from samplax.discrete.dparallel import certainty_forcing_distill
    from samplax.discrete.learned import learned_model
    from samplax.discrete.metrics import tv_floor
    from samplax.discrete.registry import SAMPLERS
    from samplax.experiment.trainer import load_discrete_model, load_trained
    from samplax.training.discrete_losses import masked_nelbo_enumerated

    n = 4000 if quick else N_CHAIN
    hmm = load_problem("markov4x8")
    with jax.enable_x64(True):
        logp = np.asarray(enumerate_log_probs(hmm), np.float64)
        ent = float(-(np.exp(logp) * logp).sum())
    model = load_discrete_model(workdir)
    tr = load_trained(workdir)
    summary = json.load(open(os.path.join(workdir, "train_summary.json")))
    res = dict(workdir=workdir, steps=summary["steps"], final=summary["final"], entropy=ent)
    with jax.enable_x64(True):
        res["kl"] = conditional_kl(model, hmm)
        xs = np.asarray(true_samples(hmm, jax.random.PRNGKey(7), 64 if quick else 256))
        nelbo = masked_nelbo_enumerated(model, xs, 4)
        nll = -np.asarray(jax.vmap(lambda s: log_prob(hmm, s))(jnp.asarray(xs)))
    res["nelbo"] = dict(model=float(nelbo.mean()), exact=float(nll.mean()), n=len(xs),
                        gap_se=float((nelbo - nll).std() / np.sqrt(len(xs))))
    print(f"chain: KL {res['kl']['mean']:.4g}; NELBO {nelbo.mean():.4f} vs -log p {nll.mean():.4f}", flush=True)
    res["tv_floor"] = tv_floor(logp, n)
    rows = chain_rows("exact", exact_model(hmm), logp, n) + chain_rows("learned", model, logp, n, ancestral=(4, 8))

    # dParallel: certainty-forcing distillation on the model's own first-hitting samples
    targets, _, _ = _decode(SAMPLERS["first_hitting"](), model, 20_000, seed=99)
    steps = 60 if quick else DISTILL_STEPS
    net = tr.setup.net
    res["distill"] = []
    for beta in DISTILL_BETAS:
        t0 = time.perf_counter()
        out = certainty_forcing_distill(net.apply, tr.params, targets, jax.random.PRNGKey(5), 4, steps=steps,
                                        batch_size=256, learning_rate=3e-4, entropy_weight=beta)
        distilled = learned_model(net, out.params, 4, 8, time_agnostic=model.time_agnostic, name="dparallel")
        d = dict(steps=steps, batch_size=256, learning_rate=3e-4, n_targets=20_000, temperature=0.5,
                 entropy_weight=beta, mask_ratio=0.5, wall_s=time.perf_counter() - t0,
                 loss_first=float(out.losses[:20].mean()), loss_last=float(out.losses[-20:].mean()),
                 certainty_first=float(out.certainty[:20].mean()), certainty_last=float(out.certainty[-20:].mean()),
                 accuracy_first=float(out.accuracy[:20].mean()), accuracy_last=float(out.accuracy[-20:].mean()))
        with jax.enable_x64(True):
            d["kl"] = conditional_kl(distilled, hmm)["mean"]
        res["distill"].append(d)
        rows += chain_rows(f"distilled beta={beta:g}", distilled, logp, n)
    res["rows"] = rows
    return res


def measure_digits(workdir, quick=False):
    from samplax.data import tokens_to_digits
    from samplax.discrete.dparallel import dparallel
    from samplax.discrete.registry import SAMPLERS
    from samplax.experiment.trainer import image_grid, load_discrete_model
    from samplax.metrics import frechet_distance
    from samplax.models.classifier import digits_fd, digits_reference_statistics, load_or_train_digits_classifier

    n = 300 if quick else N_DIGITS
    model = load_discrete_model(workdir)
    summary = json.load(open(os.path.join(workdir, "train_summary.json")))
    params, info = load_or_train_digits_classifier(C.CACHE_DIR)
    ref = digits_reference_statistics(params, "test")
    floor = frechet_distance(*digits_reference_statistics(params, "train"), *ref)
    res = dict(workdir=workdir, steps=summary["steps"], final=summary["final"], fd_floor=floor,
               classifier_test_accuracy=info["test_accuracy"], n=n, rows=[])
    samplers = ([("first_hitting", "", SAMPLERS["first_hitting"]())]
                + [("ancestral", f"steps={s}", SAMPLERS["ancestral"](steps=s)) for s in (4, 8, 16, 32)]
                + [("dparallel", f"threshold={h}", dparallel(threshold=h)) for h in DIGITS_THRESHOLDS])
    for name, setting, sampler in samplers:
        x, nfe, wall = _decode(sampler, model, n, chunk=n)
        fd = digits_fd(params, tokens_to_digits(x), reference=ref)
        res["rows"].append(dict(problem="digits_tokens", model="learned", sampler=name, setting=setting, nfe=nfe,
                                fd=float(fd), time_s=wall, n=n))
        print(f"  digits {name:>14} {setting:>14}: NFE {nfe:.1f} FD {fd:.2f}", flush=True)
        if name == "first_hitting":
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 5))
            ax.imshow(image_grid(tokens_to_digits(x[:100])), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.axis("off")
            ax.set_title("masked-diffusion transformer on digits tokens: first_hitting, NFE 64", fontsize=9)
            fig.tight_layout()
            C.atomic_write(PNG, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")
            plt.close(fig)
    return res


def render(res) -> str:
    f = C.fmt
    out = ["# Learned masked-diffusion models and dParallel", "",
           C.machine_md(res["machine"], res["command"], res["date"]), ""]
    ch = res.get("chain")
    if ch:
        out += ["## Chain model (markov4x8, V = 4, L = 8)", "",
                f"Trained with `configs/train_discrete_chain.py` into `{ch['workdir']}`: {ch['steps']} steps, final "
                f"training loss {f(ch['final']['loss'], 4)} nats/token (EMA eval loss {f(ch['final']['eval_loss_ema'], 4)}); "
                f"the data entropy is {f(ch['entropy'] / 8, 4)} nats/token ({f(ch['entropy'], 4)} per sequence), the "
                f"loss of the exact denoiser.", "",
                f"**Conditional error** (KL(exact || model) at masked positions, {ch['kl']['n_positions']} positions "
                f"of true sequences masked at t ~ U(0, 1)): mean {f(ch['kl']['mean'], 3)} nats.", ""]
        out.append(C.md_table(["t bin", "mean KL (nats)", "positions"],
                              [[f"[{b['t_lo']}, {b['t_hi']})", f(b["kl"], 3), b["n"]] for b in ch["kl"]["by_t"]],
                              ["l", "r", "r"]))
        nb = ch["nelbo"]
        out += ["", f"**Exact NELBO** (all 255 masks) of the learned model on {nb['n']} true sequences: "
                f"{f(nb['model'], 4)} nats/sequence vs -log p(x) = {f(nb['exact'], 4)} (gap "
                f"{f(nb['model'] - nb['exact'], 3)} ± {f(nb['gap_se'], 2)} s.e.; for the exact denoiser the two are "
                f"equal).", ""]
        d0 = ch["distill"][0]
        out += [f"**dParallel distillation** (certainty forcing): {d0['steps']} AdamW steps (batch "
                f"{d0['batch_size']}, lr {d0['learning_rate']}) from the trained parameters on {d0['n_targets']} "
                f"first-hitting samples of the learned model, mask ratio {d0['mask_ratio']} + the complementary "
                f"view, T = {d0['temperature']}; beta = 2 is the paper's entropy weight, beta = 0 the "
                f"consistency-only control (self-distillation without certainty forcing).", ""]
        out.append(C.md_table(["beta", "loss", "certainty term", "masked accuracy", "KL to exact", "time"],
                              [[f(d["entropy_weight"], 2), f"{f(d['loss_first'], 3)} -> {f(d['loss_last'], 3)}",
                                f"{f(d['certainty_first'], 3)} -> {f(d['certainty_last'], 3)}",
                                f"{f(d['accuracy_first'], 3)} -> {f(d['accuracy_last'], 3)}",
                                f"{f(ch['kl']['mean'], 3)} -> {f(d['kl'], 3)}", f"{d['wall_s']:.0f} s"]
                               for d in ch["distill"]], ["r", "l", "l", "l", "l", "r"]))
        out.append("")
        out += [f"Samples: N = {ch['rows'][0]['n']} per row; TV floor (TV of N exact samples) "
                f"{f(ch['tv_floor'], 3)}.", ""]
        out.append(C.md_table(["problem", "sampler", "setting", "NFE/sample", "TV", "TV floor", "chi2 p", "time"],
                              [[r["problem"], r["sampler"], (r["model"] + (", " + r["setting"] if r["setting"] else "")),
                                f(r["nfe"], 3), f(r["tv"], 3), f(ch["tv_floor"], 3), f(r["chi2_p"], 2),
                                f"{r['time_s']:.2f} s"] for r in ch["rows"]],
                              ["l", "l", "l", "r", "r", "r", "r", "r"]))
        out.append("")
    dg = res.get("digits")
    if dg:
        out += ["## Digits model (digits_tokens, V = 17, L = 64)", "",
                f"Trained with `configs/train_discrete_digits.py` into `{dg['workdir']}`: {dg['steps']} steps, final "
                f"training loss {f(dg['final']['loss'], 4)} nats/token (EMA eval loss "
                f"{f(dg['final']['eval_loss_ema'], 4)}).  FD: classifier features (test accuracy "
                f"{f(dg['classifier_test_accuracy'], 3)}) of N = {dg['n']} samples vs the 359 held-out test images; "
                f"floor (the 1,438 training images) {f(dg['fd_floor'], 3)}.", "",
                f"![samples]({os.path.relpath(PNG, os.path.dirname(OUT))})", ""]
        out.append(C.md_table(["problem", "sampler", "setting", "NFE/sample", "FD", "time"],
                              [[r["problem"], r["sampler"], r["setting"], f(r["nfe"], 3), f(r["fd"], 3),
                                f"{r['time_s']:.2f} s"] for r in dg["rows"]], ["l", "l", "l", "r", "r", "r"]))
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chain", default="/work/runs/train_discrete_chain")
    ap.add_argument("--digits", default="/work/runs/train_discrete_digits")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--from-json", default=None)
    args = ap.parse_args()
    if args.from_json:
        print(C.rerender_from_json(args.from_json, OUT, render))
        return
    date = C.utc_now()
    res = dict(date=date, machine=C.machine_info(), command=C.command_line(MODULE), quick=args.quick)
    if args.chain and os.path.exists(args.chain):
        res["chain"] = measure_chain(args.chain, args.quick)
    if args.digits and os.path.exists(args.digits):
        res["digits"] = measure_digits(args.digits, args.quick)
    out = OUT if not args.quick else OUT.replace(".md", "_quick.md")
    C.atomic_write_json(out.replace(".md", ".json"), res)
    text = render(res)
    C.atomic_write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
