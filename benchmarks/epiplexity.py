"""Epiplexity and time-bounded entropy (samplax.metrics.epiplexity) of digits data, of controls and of
generated digits samples by solver and NFE, beside the digits FD.

Every source is 1,280 samples of 64 tokens in 0..16 (continuous images quantised to 17 levels over
[-1, 1], which maps the digits' grey levels onto themselves): the observer codes 1,024 of them
prequentially (64 Adam steps of 16, a one-hidden-layer MADE of width 128 with a direct connection)
and holds out 256 for the final loss; mean and spread (std) over the observer seeds.

* data: the digits' training split (1,438 images; 1,280 of them), uniform noise tokens, the digits
  with every image's pixels shuffled (structure destroyed, grey-level histogram kept), the digits
  with one fixed pixel permutation for all images (the same information, another order: the
  paper's "factorisation" point), the digits plus Gaussian noise (std 0.25 before quantisation);
* a compute sweep on the digits: the observer's width (hidden) and steps;
* generated: samples of the trained U-Net (--digits, a configs/train_digits.py workdir) by solver
  and NFE (logSNR grid), with the FD of the digits classifier (test split) of the same samples.

    python -m benchmarks.epiplexity --digits=/work/runs/train_digits --write
    python -m benchmarks.epiplexity --quick          # one seed, fewer rows, no files
    # the data rows first, the generated rows later (e.g. when the U-Net has finished training):
    python -m benchmarks.epiplexity --write; python -m benchmarks.epiplexity --reuse-data --digits=... --write

Writes docs/benchmarks/epiplexity.md and .json (--write).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.epiplexity"
K = 17
N = 1280
SOLVERS = ("euler", "dpm_solver_pp", "unipc")
NFES = (4, 8, 16, 32)
QUICK_SOLVERS, QUICK_NFES = ("euler", "dpm_solver_pp"), (4, 16)
OUT = os.path.join(C.REPO_ROOT, "docs", "benchmarks", "epiplexity")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def _measure(name, x, seeds, **options):
    from samplax.metrics.epiplexity import epiplexity

    t0 = time.perf_counter()
    r = epiplexity(x, K, seeds=seeds, **options)
    d = r.as_dict()
    d.update(source=name, wall_s=time.perf_counter() - t0, options=options,
             curve_mean=np.asarray(r.code.curve).mean(axis=0)[:: max(1, r.code.curve.shape[1] // 16)].tolist())
    log(f"{name}: S={d['epiplexity_bits']:.0f}±{d['epiplexity_std']:.0f} H={d['entropy_bits']:.0f} "
        f"({d['entropy_bits_per_token']:.3f}/token) {d['wall_s']:.1f}s")
    return d


def data_rows(seeds, quick: bool):
    from samplax.data import digits_tokens, load_digits_dataset
    from samplax.metrics.epiplexity import quantize

    rng = np.random.default_rng(0)
    images = load_digits_dataset("train").images[:N]
    tok = digits_tokens(images)
    rows = [_measure("digits (train split)", tok, seeds),
            _measure("uniform noise tokens", rng.integers(0, K, tok.shape), seeds),
            _measure("digits, each image's pixels shuffled", rng.permuted(tok, axis=1), seeds)]
    if not quick:
        perm = rng.permutation(tok.shape[1])
        rows += [_measure("digits, one fixed pixel permutation", tok[:, perm], seeds),
                 _measure("digits + N(0, 0.25^2) noise",
                          quantize(images + 0.25 * rng.standard_normal(images.shape), K), seeds)]
    return rows, tok


def compute_rows(tok, seeds, quick: bool):
    if quick:
        return []
    rows = []
    for hidden in (32, 512):
        rows.append(dict(_measure(f"digits, hidden={hidden}", tok, seeds, hidden=hidden), knob="hidden"))
    for steps, batch in ((16, 64), (256, 4)):  # the same 1,024 coded samples, other step counts
        rows.append(dict(_measure(f"digits, steps={steps} x batch={batch}", tok, seeds, steps=steps,
                                  batch_size=batch), knob="steps"))
    return rows


def generated_rows(workdir, seeds, quick: bool):
    from samplax.experiment import cache as refcache
    from samplax.experiment.trainer import draw_samples, load_trained
    from samplax.metrics import frechet_distance
    from samplax.metrics.epiplexity import quantize
    from samplax.models.classifier import digits_fd, digits_reference_statistics, load_or_train_digits_classifier

    t = load_trained(workdir)
    params, info = load_or_train_digits_classifier(refcache.cache_dir())
    ref = digits_reference_statistics(params, "test")
    floor = float(frechet_distance(*digits_reference_statistics(params, "train"), *ref))
    rows = []
    for solver in (QUICK_SOLVERS if quick else SOLVERS):
        for nfe in (QUICK_NFES if quick else NFES):
            t0 = time.perf_counter()
            x = draw_samples(t.setup, t.params, N, solver, nfe, seed=0)
            sample_s = time.perf_counter() - t0
            if not np.all(np.isfinite(x)):
                rows.append(dict(source=f"{solver} NFE {nfe}", solver=solver, nfe=nfe, fd=None, epiplexity_bits=None))
                continue
            fd = float(digits_fd(params, x.reshape(-1, 8, 8, 1).astype(np.float32), reference=ref))
            d = _measure(f"{solver} NFE {nfe}", quantize(x, K), seeds)
            d.update(solver=solver, nfe=nfe, fd=fd, sample_s=sample_s,
                     clipped=float(np.mean(np.abs(x) > 1.0 + 1.0 / 16)))
            rows.append(d)
    return rows, dict(step=t.step, checkpoint=t.checkpoint, fd_floor=floor,
                      classifier_test_accuracy=float(info["test_accuracy"]))


def _bits(v, sd=None) -> str:
    """Bits as integers with thousands separators, with the seeds' std."""
    if v is None:
        return "—"
    return f"{v:,.0f}" + ("" if sd is None else f" ± {sd:,.0f}")


def discrete_rows(quick: bool):
    """configs/sweep_discrete_epiplexity.py (masked diffusion on the exact chain markov4x8) in a
    temporary workdir: TV to the exact distribution beside S and H of each sampler x steps."""
    import importlib
    import tempfile

    from samplax.experiment import run_sweep

    c = importlib.import_module("configs.sweep_discrete_epiplexity").get_config()
    if quick:
        c.sweep.option_axes.steps = (2,)
    with tempfile.TemporaryDirectory() as wd:
        rows = run_sweep(c, os.path.join(wd, "run"))
    out = []
    for r in sorted(rows, key=lambda r: (r["sampler"], r["nfe"])):
        e = r["metrics"].get("epiplexity") or {}
        out.append(dict(label=r["label"], nfe=r["nfe"], tv=r["metrics"].get("tv"),
                        tv_floor=r["metrics"].get("tv_floor"),
                        exact_bits_per_token=-r["reference"]["neg_entropy"] / math.log(2) / e.get("length", 8), **e))
    log("discrete:", [(o["label"], round(o.get("epiplexity_bits", 0))) for o in out])
    return out


def render(res: dict) -> str:
    f = C.fmt
    s = res["settings"]
    lines = ["# Epiplexity of digits data, controls and generated samples", "",
             C.machine_md(res["machine"], res["command"], res["date"]),
             "* Machine load: 2-core CPU container, shared by up to 7 sessions, noisy (wall times are rough).",
             f"* Observer (the compute bound): {s['observer']}; seeds {s['seeds']} (mean ± std over them).",
             f"* Every source: {N} samples x 64 tokens in 0..16 ({s['n_coded']} coded, {s['eval_size']} held out); "
             f"the uniform code is {_bits(s['uniform_bits'])} bits.",
             f"* Data and compute rows: `{res.get('data_command', res['command'])}` "
             f"({res.get('data_wall_s', res['wall_s']):.0f} s); this run: {res['wall_s']:.0f} s.", "",
             "S = epiplexity estimate (prequential code length minus H), H = time-bounded entropy estimate "
             "(held-out final loss x coded tokens), both in bits for the coded samples; H/token in bits.", "",
             "## Data and controls", ""]

    def rows_of(rs, first="source"):
        return [[r["source"], _bits(r["epiplexity_bits"], r["epiplexity_std"]),
                 _bits(r["entropy_bits"], r["entropy_std"]), f(r["entropy_bits_per_token"]),
                 _bits(r["prequential_bits"])] for r in rs]
    head = ["source", "S (bits)", "H (bits)", "H / token", "prequential (bits)"]
    lines += [C.md_table(head, rows_of(res["data"]), ["l", "r", "r", "r", "r"]), ""]
    if res["compute"]:
        lines += ["## The compute bound (digits, the same 1,024 coded samples)", "",
                  C.md_table(head, rows_of(res["compute"]), ["l", "r", "r", "r", "r"]), ""]
    if res.get("discrete"):
        lines += ["## Masked diffusion on the exact chain markov4x8 (configs/sweep_discrete_epiplexity.py)", "",
                  "4,096 decoded sequences of 8 tokens in 0..3 per row (the observer codes 1,024, holds out 256); "
                  "TV to the exact distribution; the exact entropy is "
                  f"{res['discrete'][0]['exact_bits_per_token']:.3f} bits per token (the floor of H / token).", "",
                  C.md_table(["sampler", "NFE", "TV", "S (bits)", "H (bits)", "H / token"],
                             [[r["label"], f(r["nfe"]), f(r["tv"]),
                               _bits(r.get("epiplexity_bits"), r.get("epiplexity_std")),
                               _bits(r.get("entropy_bits"), r.get("entropy_std")), f(r.get("entropy_bits_per_token"))]
                              for r in res["discrete"]], ["l", "r", "r", "r", "r", "r"]), ""]
    if res.get("generated"):
        g = res["generated_info"]
        lines += ["## Generated digits by solver and NFE", "",
                  f"U-Net of configs/train_digits.py, step {g['step']} (EMA); {N} samples, seed 0, logSNR grid; "
                  f"FD of the digits classifier (test accuracy {f(g['classifier_test_accuracy'])}) against the test "
                  f"split on the same {N} samples (floor: the training split, {f(g['fd_floor'])}).", ""]
        rows = [[r["solver"], r["nfe"], f(r.get("fd")), _bits(r.get("epiplexity_bits"), r.get("epiplexity_std")),
                 _bits(r.get("entropy_bits"), r.get("entropy_std")), f(r.get("entropy_bits_per_token"))]
                for r in res["generated"]]
        lines += [C.md_table(["solver", "NFE", "FD", "S (bits)", "H (bits)", "H / token"], rows,
                             ["l", "r", "r", "r", "r", "r"]), ""]
        fds = [(r["fd"], r["epiplexity_bits"], r["entropy_bits"]) for r in res["generated"]
               if r.get("fd") is not None and r.get("epiplexity_bits") is not None]
        if len(fds) >= 3:
            a = np.asarray(fds)
            from scipy.stats import spearmanr
            lines += [f"Spearman rank correlation over these {len(a)} rows: "
                      f"FD vs S {spearmanr(a[:, 0], a[:, 1])[0]:.2f}, "
                      f"FD vs H {spearmanr(a[:, 0], a[:, 2])[0]:.2f}.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits", default=None, help="a configs/train_digits.py workdir (generated rows)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--write", action="store_true")
    p.add_argument("--from-json", action="store_true", help="re-render the .md from the written .json")
    p.add_argument("--reuse-data", action="store_true",
                   help="keep the data and compute rows of the written .json; measure the generated rows only")
    a = p.parse_args(argv)
    if a.from_json:
        print(C.rerender_from_json(OUT + ".json", OUT + ".md", render))
        return
    C.enable_compilation_cache()
    from samplax.metrics.epiplexity import DEFAULTS

    seeds = (0,) if a.quick else (0, 1, 2)
    t0 = time.perf_counter()
    if a.reuse_data:
        import json
        with open(OUT + ".json") as fh:
            old = json.load(fh)
        res = {k: old[k] for k in ("settings", "data", "compute", "discrete") if k in old}
        res["data_command"], res["data_wall_s"] = old.get("data_command", old["command"]), old.get("data_wall_s",
                                                                                                   old["wall_s"])
    else:
        data, tok = data_rows(seeds, a.quick)
        res = dict(settings=dict(seeds=seeds, n_coded=DEFAULTS["steps"] * DEFAULTS["batch_size"],
                                 eval_size=DEFAULTS["eval_size"],
                                 uniform_bits=DEFAULTS["steps"] * DEFAULTS["batch_size"] * 64 * math.log2(K),
                                 observer=", ".join(f"{k}={v}" for k, v in DEFAULTS.items() if k != "seeds")),
                   data=data, compute=compute_rows(tok, seeds, a.quick))
        res["data_command"], res["data_wall_s"] = C.command_line(MODULE), time.perf_counter() - t0
    if "discrete" not in res:
        res["discrete"] = discrete_rows(a.quick)
    if a.digits:
        res["generated"], res["generated_info"] = generated_rows(a.digits, seeds, a.quick)
    res.update(wall_s=time.perf_counter() - t0, machine=C.machine_info(), command=C.command_line(MODULE),
               date=C.utc_now())
    text = render(res)
    print(text)
    if a.write and not a.quick:
        C.atomic_write_json(OUT + ".json", res)
        C.atomic_write_text(OUT + ".md", text + "\n")


if __name__ == "__main__":
    main()
