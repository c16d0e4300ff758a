"""RS2 (repeated random subsets, samplax.data_sampling.rs2) vs a fixed random subset of the
same size vs the full data: time-to-accuracy of the digits CNN classifier and time-to-FD of
a small digits diffusion U-Net, at 5%, 10% and 25% of the training split per round.

Every run goes through the model trainer (samplax.experiment.trainer.run_train, a sampler in
``config.train.sampler``), so the times are those of the real jitted loop: ``elapsed_s`` of
the log rows (wall seconds since the loop started, compile excluded; the classifier's rows
include its held-out evaluation, every 5 steps in every run).  Budgets as in the
paper: ``X`` rounds at ratio ``r`` = ceil(X r N / B) steps with the warm-up + cosine
learning-rate schedule compressed to them (rs2_budget); the fixed subset gets the same steps
and schedule; the full data gets ``X`` epochs (1/r times the steps) with its schedule.

* classifier: DigitsClassifier, batch 64, AdamW lr 1e-3 cosine, X = 30 rounds; held-out
  accuracy of the EMA parameters (decay 0.99) every 5 steps in every run; time and steps to
  reach 90% / 95%.
* diffusion: class-conditional U-Net channels (16, 32), one res block, no attention, embed 32
  (a smaller net than configs/train_digits.py so it fits 2 shared CPU cores), noise
  prediction, vp_cosine, batch 64, lr 2e-3, warm-up 5% of the budget, EMA 0.99, X = 20
  rounds; FD (samplax.models.classifier.digits_fd, classifier features) of 500 samples
  (DPM-Solver++ NFE 10, labels i mod 10), clipped to [-1, 1] (the raw samples' FD is kept
  too), to the held-out split at 4 points per run (the FD sampling is not in elapsed_s).

    python -m benchmarks.training_sampling_rs2 --write            # docs/benchmarks/training_sampling_rs2.md
    python -m benchmarks.training_sampling_rs2 --quick            # tiny budgets, one seed
    python -m benchmarks.training_sampling_rs2 --part classifier --write   # one part (the other kept)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time

import ml_collections
import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.training_sampling_rs2"
OUT = os.path.join(C.REPO_ROOT, "docs", "benchmarks", "training_sampling_rs2.md")
FRACTIONS = (0.05, 0.1, 0.25)
#: method -> (sampler name, extra options); "full" is the "epoch" sampler at fraction 1
METHODS = {"RS2 w/o repl.": ("rs2", dict(replacement=False)), "RS2 w/ repl.": ("rs2", dict(replacement=True)),
           "fixed subset": ("fixed_subset", {})}
ACC_TARGETS = (0.90, 0.95)
FD_TARGETS = (150.0, 75.0)  # set after seeing the full data reach ~50 in 450 steps
FD_SAMPLES, FD_NFE = 500, 10


def digits_size() -> int:
    from samplax.data import load_digits_dataset

    return len(load_digits_dataset("train").labels)


def sampler_config(method: str, fraction: float, seed: int) -> ml_collections.ConfigDict:
    if method == "full data":
        return ml_collections.ConfigDict(dict(name="epoch", options=ml_collections.ConfigDict(dict(seed=seed))))
    name, extra = METHODS[method]
    return ml_collections.ConfigDict(dict(name=name, options=ml_collections.ConfigDict(
        dict(fraction=fraction, seed=seed, **extra))))


def classifier_config(method: str, fraction: float, seed: int, rounds: float, eval_every: int):
    from samplax.data_sampling.rs2 import apply_rs2_budget
    from samplax.experiment.config import classify_train_config

    c = classify_train_config()
    c.train.batch_size = 64
    c.train.seed = c.train.data_seed = seed
    c.train.sampler = sampler_config(method, fraction, seed)
    b = apply_rs2_budget(c, digits_size(), rounds)
    c.train.log_every = eval_every  # the same evaluation grid (in steps) for every run
    c.train.checkpoint_every = b.num_steps
    return c


def diffusion_config(method: str, fraction: float, seed: int, rounds: float, points: int):
    from configs.train_digits import get_config
    from samplax.data_sampling.rs2 import apply_rs2_budget

    c = get_config()
    c.model.unet.channels = (16, 32)
    c.model.unet.attention = False
    c.model.unet.embed_dim = 32
    c.train.batch_size = 64
    c.optim.ema_decay = 0.99
    c.train.seed = c.train.data_seed = seed
    c.train.sampler = sampler_config(method, fraction, seed)
    c.train.sample_count = 0
    b = apply_rs2_budget(c, digits_size(), rounds, warmup_rounds=0.05 * rounds)
    every = max(1, b.num_steps // points)
    c.train.log_every = c.train.checkpoint_every = every
    c.train.keep_checkpoints = points + 2
    return c


def train(config, workdir: str):
    from samplax.experiment.trainer import run_train

    summary = run_train(config, workdir, restart=True)
    with open(os.path.join(workdir, "train_log.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return summary, rows


def first_time(rows, key: str, ok, field: str = "elapsed_s") -> float:
    """``field`` (elapsed_s or step) of the first row whose ``key`` satisfies ``ok``; NaN if none does."""
    for r in rows:
        if key in r and ok(r[key]):
            return float(r[field])
    return float("nan")


def plan(fractions):
    jobs = [("full data", 1.0)]
    for f in fractions:
        jobs += [(m, f) for m in METHODS]
    return jobs


def run_grid(part, jobs, seeds, make_config, measure, log=print, save=None):
    """Train ``make_config(method, fraction, seed)`` for every seed and (method, fraction) of
    ``jobs`` in a temporary workdir; ``measure(summary, rows, workdir)`` -> the run's fields."""
    out = []
    for seed in seeds:
        for method, f in jobs:
            wd = tempfile.mkdtemp(prefix=f"rs2_{part}_")
            try:
                t0 = time.perf_counter()
                summary, rows = train(make_config(method, f, seed), wd)
                rec = dict(method=method, fraction=f, seed=seed, steps=summary["steps"], train_s=rows[-1]["elapsed_s"],
                           compile_s=summary["compile_s"], wall_s=time.perf_counter() - t0)
                rec.update(measure(summary, rows, wd))
                out.append(rec)
                log(f"{part} seed {seed} {method} {f}: {rec['final']:.4g} in {rec['train_s']:.1f} s "
                    f"({rec['steps']} steps)")
                if save is not None:
                    save(out)
            finally:
                shutil.rmtree(wd, ignore_errors=True)
    return out


def classifier_part(fractions, seeds, rounds, eval_every, log=print, save=None):
    def measure(summary, rows, wd):
        acc = [dict(step=r["step"], elapsed_s=r["elapsed_s"], acc=r["eval_accuracy"]) for r in rows]
        return dict(acc=acc, final=rows[-1]["eval_accuracy"])

    return run_grid("classifier", plan(fractions), seeds,
                    lambda m, f, seed: classifier_config(m, f, seed, rounds, eval_every), measure, log, save)


class FDEval:
    """FD of ``FD_SAMPLES`` samples of a trained digits model to the held-out split: one
    jitted sampler per network architecture (the U-Net is the same in every run)."""

    def __init__(self, log=print):
        from samplax.models.classifier import digits_reference_statistics, load_or_train_digits_classifier

        self.cparams, _ = load_or_train_digits_classifier(C.CACHE_DIR)
        self.ref = digits_reference_statistics(self.cparams, "test")
        self.fn = None

    def __call__(self, workdir: str, step: int):
        """(FD of the samples clipped to the data range [-1, 1], FD of the raw samples)."""
        import jax
        import jax.numpy as jnp

        from samplax.experiment.trainer import load_trained, trained_model
        from samplax.models.classifier import digits_fd
        from samplax.schedules import prior_std
        from samplax.solvers import generate, get_solver, steps_for_nfe
        from samplax.timesteps import time_grid

        tr = load_trained(workdir, step)
        if self.fn is None:
            s = tr.setup
            solver = get_solver("dpm_solver_pp")
            grid = time_grid(s.schedule, steps_for_nfe(solver, FD_NFE), "logsnr")
            labels = jnp.arange(FD_SAMPLES, dtype=jnp.int32) % 10
            std = prior_std(s.schedule)

            def sample(params):
                x = generate(solver, trained_model(s, params, labels), grid, jax.random.PRNGKey(1), FD_SAMPLES,
                             s.dataset.shape, prior_std=std)
                return x[0] if isinstance(x, tuple) else x

            self.fn = jax.jit(sample)
        x = np.asarray(self.fn(tr.params))
        return (float(digits_fd(self.cparams, np.clip(x, -1.0, 1.0), reference=self.ref)),
                float(digits_fd(self.cparams, x, reference=self.ref)))


def diffusion_part(fractions, seeds, rounds, points, log=print, save=None):
    fd_eval = FDEval(log)

    def measure(summary, rows, wd):
        t0 = time.perf_counter()
        fds = [dict(step=r["step"], elapsed_s=r["elapsed_s"], **dict(zip(("fd", "fd_raw"), fd_eval(wd, r["step"]))))
               for r in rows]
        return dict(fd=fds, final=fds[-1]["fd"], fd_eval_s=time.perf_counter() - t0)

    # the two RS2 variants only for the classifier (CPU budget)
    jobs = [(m, f) for m, f in plan(fractions) if m != "RS2 w/ repl."]
    return run_grid("diffusion", jobs, seeds, lambda m, f, seed: diffusion_config(m, f, seed, rounds, points),
                    measure, log, save)


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
def mean_sd(vals, digits=3) -> str:
    v = np.asarray([x for x in vals if not math.isnan(x)], float)
    if len(v) == 0:
        return "--"
    if len(v) == 1:
        return C.fmt(v[0], digits)
    return f"{C.fmt(v.mean(), digits)} ± {C.fmt(v.std(ddof=1), digits)}"


def reached(vals, n, integer: bool = False) -> str:
    v = [x for x in vals if not math.isnan(x)]
    if not v:
        return f"not reached (0/{n})"
    text = f"{np.mean(v):.0f}" + (f" ± {np.std(v, ddof=1):.0f}" if len(v) > 1 else "") if integer else mean_sd(v, 2)
    return f"{text} ({len(v)}/{n})"


def table(recs, final_key: str, final_name: str, targets, target_name, curve: str, ok) -> str:
    groups = {}
    for r in recs:
        groups.setdefault((r["fraction"], r["method"]), []).append(r)
    order = sorted(groups, key=lambda k: (k[0] == 1.0, k[0], list(METHODS).index(k[1]) if k[1] in METHODS else 9))
    rows = []
    for key in order:
        g = groups[key]
        rows.append([f"{key[0]:.0%}" if key[1] != "full data" else "100% (epochs)", key[1], g[0]["steps"],
                     mean_sd([r[final_key] for r in g], 3), mean_sd([r["train_s"] for r in g], 2)]
                    + [reached([first_time(r[curve], curve, lambda v, a=a: ok(v, a), field) for r in g], len(g),
                               field == "step")
                       for a in targets for field in ("elapsed_s", "step")])
    hdr = ["per round", "method", "steps", final_name, "train s"] + [
        f"{unit} to {target_name(a)}" for a in targets for unit in ("s", "steps")]
    return C.md_table(hdr, rows, ["r", "l", "r", "r", "r"] + ["r"] * 2 * len(targets))


def render(res) -> str:
    out = ["# RS2: repeated random subsets vs a fixed subset vs the full data (digits)", "",
           C.machine_md(res["machine"], res["command"], res["date"]),
           "* 2-core CPU container, shared with other sessions and noisy: times are indicative; "
           "the spread is over seeds (mean ± sample std)."]
    out += [f"* Part `{r['part']}`: `{r['command']}` ({r['date']}, {r['total_seconds']:.0f} s)"
            for r in res.get("runs", [])] + [""]
    if res.get("classifier"):
        p = res["classifier_settings"]
        out += [f"## Time-to-accuracy: digits CNN classifier ({p['rounds']} rounds, seeds {p['seeds']})", "",
                "Held-out accuracy of the EMA parameters at the end of the budget; train s = the loop's wall "
                "seconds (compile excluded); s / steps to a target = elapsed seconds / steps at the first "
                f"evaluation (every {p['eval_every']} steps in every run) that reached it (mean over the seeds that "
                "reached it, how many did). "
                "Steps are the load-independent measure of time on this shared machine.", "",
                table(res["classifier"], "final", "final accuracy", ACC_TARGETS,
                      lambda a: f"{a:.0%}", "acc", lambda v, a: v >= a), ""]
    if res.get("diffusion"):
        p = res["diffusion_settings"]
        out += [f"## Time-to-FD: small digits diffusion U-Net ({p['rounds']} rounds, seeds {p['seeds']})", "",
                f"FD of {FD_SAMPLES} samples (DPM-Solver++, NFE {FD_NFE}), clipped to [-1, 1] (the raw samples of "
                "these under-trained models explode; their FD is in the .json as fd_raw), to the held-out split in "
                "the digits "
                "classifier's features (floor: the 1,438 training images score 2.46), measured on checkpoints at "
                f"{p['points']} points per run (a quarter of each run: coarse); time to a target as above; FD targets "
                "chosen after seeing the full data reach ~55.", "",
                table(res["diffusion"], "final", "final FD", FD_TARGETS, lambda a: f"FD ≤ {a:g}", "fd",
                      lambda v, a: v <= a), ""]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny budgets, one seed, one fraction")
    ap.add_argument("--write", action="store_true", help=f"write {OUT} (and its .json)")
    ap.add_argument("--part", choices=("all", "classifier", "diffusion"), default="all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=float, default=30, help="classifier: rounds X (full data: X epochs)")
    ap.add_argument("--diffusion-rounds", type=float, default=20, help="diffusion: rounds X")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--from-json", default=None, help="re-render the .md from a written .json")
    args = ap.parse_args(argv)
    if args.from_json:
        print(C.rerender_from_json(args.from_json, args.out, render))
        return None
    C.enable_compilation_cache()
    out = args.out if not args.quick else os.path.splitext(args.out)[0] + "_quick.md"
    json_path = os.path.splitext(out)[0] + ".json"
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now())
    seeds = list(range(1 if args.quick else args.seeds))
    fractions = (0.25,) if args.quick else FRACTIONS
    t0 = time.perf_counter()
    if args.part in ("all", "classifier"):
        cls = dict(rounds=2 if args.quick else args.rounds, eval_every=5, seeds=seeds)
        res["classifier_settings"] = cls
        res["classifier"] = classifier_part(fractions, seeds, cls["rounds"], cls["eval_every"],
                                            save=partial_saver(args, json_path, res, "classifier"))
    if args.part in ("all", "diffusion"):
        dif = dict(rounds=1 if args.quick else args.diffusion_rounds, points=1 if args.quick else 4, seeds=seeds)
        res["diffusion_settings"] = dif
        res["diffusion"] = diffusion_part(fractions, seeds, dif["rounds"], dif["points"],
                                          save=partial_saver(args, json_path, res, "diffusion"))
    res["total_seconds"] = time.perf_counter() - t0
    if args.write:  # one .json per part (parts may run as separate processes); the .md renders all of them
        for part in ("classifier", "diffusion"):
            if part in res:
                C.atomic_write_json(part_json(json_path, part), {k: v for k, v in res.items()
                                                                 if not k.startswith(OTHER[part])})
                partial = os.path.splitext(part_json(json_path, part))[0] + ".partial.json"
                if os.path.exists(partial):
                    os.remove(partial)
        res = merged(json_path)
    text = render(res)
    print(text)
    if args.write:
        C.atomic_write_json(json_path, res)
        C.atomic_write_text(out, text)
        print(f"wrote {out}")
    return res


OTHER = {"classifier": "diffusion", "diffusion": "classifier"}


def partial_saver(args, json_path: str, res: dict, part: str):
    """With --write: after every run, the part's records so far (``<part>.partial.json``), so
    a long measurement stopped early still leaves its finished runs."""
    if not args.write:
        return None
    path = os.path.splitext(part_json(json_path, part))[0] + ".partial.json"
    return lambda recs: C.atomic_write_json(path, {**res, part: recs})


def part_json(json_path: str, part: str) -> str:
    return os.path.splitext(json_path)[0] + f"_{part}.json"


def merged(json_path: str) -> dict:
    """The parts' .json files merged (each part keeps its own machine / command / date)."""
    res = {}
    for part in ("classifier", "diffusion"):
        if os.path.exists(part_json(json_path, part)):
            with open(part_json(json_path, part)) as fh:
                d = json.load(fh)
            res[part], res[part + "_settings"] = d[part], d[part + "_settings"]
            res.setdefault("runs", []).append(dict(part=part, command=d["command"], date=d["date"],
                                                   total_seconds=d.get("total_seconds")))
            res.setdefault("machine", d["machine"])
            res.setdefault("command", d["command"])
            res.setdefault("date", d["date"])
    return res


if __name__ == "__main__":
    main()
