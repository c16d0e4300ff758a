"""FastLightGen at CPU scale: the digits U-Net teacher distilled in steps only, in size only, and
in both (with the optimal teacher T + beta (T - W), and with the plain teacher as an ablation), at
an equal training budget; digits FD (samplax.models.classifier.digits_fd against the held-out test
split, mean and spread over sampling seeds) against NFE and parameter count, beside the teacher.

    python -m benchmarks.fastlightgen --write            # docs/benchmarks/fastlightgen.md + .json
    python -m benchmarks.fastlightgen --quick            # a smoke run (few steps, few samples)
    python -m benchmarks.fastlightgen --teacher=runs/train_digits --teacher-step=4000 --steps=400

The distillation runs are samplax ``kind="distill"`` runs (samplax.experiment.distill) in
.bench_cache/fastlightgen/<settings digest>/<variant>; a rerun with the same settings reuses them.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import _common as C

MD = os.path.join(C.REPO_ROOT, "docs", "benchmarks", "fastlightgen.md")
JSON = os.path.join(C.REPO_ROOT, "docs", "benchmarks", "fastlightgen.json")
DEFAULT_TEACHER = "/work/runs/train_digits"


def variants(beta: float):
    """(name, config overrides) of the compared distillations."""
    return [
        ("step-only", dict(mode="step", prune_fraction=0.0, guide_beta=0.0)),
        ("size-only", dict(mode="size", prune_fraction=0.3, guide_beta=0.0)),
        ("both, plain teacher (beta=0)", dict(mode="both", prune_fraction=0.3, guide_beta=0.0)),
        (f"FastLightGen: both, optimal teacher (beta={beta:g})", dict(mode="both", prune_fraction=0.3,
                                                                       guide_beta=beta)),
    ]


def distill_cfg(a, teacher_step: int, over: dict):
    from samplax.experiment.distill import distill_config

    d = distill_config()
    d.teacher = a.teacher
    d.teacher_step = teacher_step
    d.mode = over["mode"]
    d.student.prune_fraction = over["prune_fraction"]
    d.student.nfe = a.nfe
    d.distill.teacher_steps = a.teacher_steps
    d.distill.teacher_nfe = a.teacher_nfe
    d.distill.guide_beta = over["guide_beta"]
    if over["mode"] != "step":   # the narrow student's initialisation (the step student starts from the teacher)
        d.student.init = a.init
    d.train.num_steps = a.steps
    d.train.batch_size = a.batch
    d.train.learning_rate = a.lr
    d.train.log_every = max(1, a.steps // 10)
    d.train.checkpoint_every = a.steps
    return d


def fd_over_seeds(cparams, ref, setup, params, solver, nfe, n, seeds):
    from samplax.experiment.trainer import draw_samples
    from samplax.models.classifier import digits_fd

    fds, t0 = [], time.perf_counter()
    for seed in seeds:
        x = draw_samples(setup, params, n, solver, nfe, seed=1000 + seed)
        fds.append(float(digits_fd(cparams, x, reference=ref)))
    return fds, time.perf_counter() - t0


def measure(a) -> dict:
    from samplax.experiment.cache import cache_dir
    from samplax.experiment.distill import load_student, run_distill
    from samplax.experiment.trainer import load_trained
    from samplax.metrics import frechet_distance
    from samplax.models.classifier import digits_reference_statistics, load_or_train_digits_classifier
    from samplax.training.distill import param_count

    teacher = load_trained(a.teacher, None if a.teacher_step < 0 else a.teacher_step)
    cparams, cinfo = load_or_train_digits_classifier(cache_dir())
    ref = digits_reference_statistics(cparams, "test")
    floor = frechet_distance(*digits_reference_statistics(cparams, "train"), *ref)
    seeds = list(range(a.seeds))
    n_teacher = param_count(teacher.params)
    res = dict(teacher=a.teacher, teacher_step=teacher.step, teacher_params=n_teacher, steps=a.steps, batch=a.batch,
               lr=a.lr, nfe=a.nfe, teacher_nfe=a.teacher_nfe, teacher_steps_per_interval=a.teacher_steps,
               beta=a.beta, init=a.init, n_samples=a.n, seeds=seeds, fd_floor_train_vs_test=floor,
               classifier_test_accuracy=cinfo.get("test_accuracy"), rows=[], runs=[])

    def row(model, params_n, solver, nfe, fds, wall, train_s=None):
        r = dict(model=model, params=params_n, param_fraction=params_n / n_teacher, solver=solver, nfe=nfe,
                 cost=params_n * nfe / (n_teacher * a.teacher_nfe), fd=fds, fd_mean=float(np.mean(fds)),
                 fd_std=float(np.std(fds, ddof=1)) if len(fds) > 1 else 0.0, sample_s=wall, train_s=train_s)
        res["rows"].append(r)
        print(f"  {model:>52} {solver:>14} NFE {nfe:>3}: FD {r['fd_mean']:.2f} +- {r['fd_std']:.2f}", flush=True)

    for solver, nfe in ((a.teacher_solver, a.teacher_nfe), ("ddim", a.nfe), (a.teacher_solver, a.nfe)):
        fds, wall = fd_over_seeds(cparams, ref, teacher.setup, teacher.params, solver, nfe, a.n, seeds)
        row(f"teacher (step {teacher.step})", n_teacher, solver, nfe, fds, wall)

    digest = C.digest(a.teacher, teacher.step, a.steps, a.batch, a.lr, a.nfe, a.teacher_nfe, a.teacher_steps, a.beta)
    root = os.path.join(C.CACHE_DIR, "fastlightgen", digest)
    for name, over in variants(a.beta):
        wd = os.path.join(root, over["mode"] + f"_beta{over['guide_beta']:g}"
                          + ("" if over["mode"] == "step" or a.init == "random" else f"_{a.init}"))
        t0 = time.perf_counter()
        summary = run_distill(distill_cfg(a, teacher.step, over), wd)
        train_s = time.perf_counter() - t0
        res["runs"].append(dict(name=name, workdir=wd, train_s=train_s, summary=summary))
        print(f"{name}: trained in {train_s:.0f}s, {summary['student_params']} params "
              f"({summary['param_fraction']:.3f}), final {summary['final']}", flush=True)
        tr, spec = load_student(wd)
        n_p = summary["student_params"]
        fds, wall = fd_over_seeds(cparams, ref, tr.setup, tr.params, spec.solver, spec.nfe, a.n, seeds)
        row(name, n_p, spec.solver, spec.nfe, fds, wall, train_s)
        if over["mode"] == "size":   # the size-only student at the few-step budget as well
            for solver in ("ddim", a.teacher_solver):
                fds, wall = fd_over_seeds(cparams, ref, tr.setup, tr.params, solver, a.nfe, a.n, seeds)
                row(name, n_p, solver, a.nfe, fds, wall, train_s)
    return res


def render(res: dict) -> str:
    rows = [[r["model"], f"{r['params']:,}", C.fmt(r["param_fraction"]), r["solver"], r["nfe"], C.fmt(r["cost"]),
             f"{r['fd_mean']:.2f} ± {r['fd_std']:.2f}", " ".join(f"{v:.2f}" for v in r["fd"]),
             "—" if r["train_s"] is None else f"{r['train_s']:.0f}"] for r in res["rows"]]
    table = C.md_table(["model", "params", "fraction", "solver", "NFE", "cost (params×NFE ÷ teacher@NFE 20)",
                        "FD mean ± sd", "FD per seed", "train s"], rows,
                       ["l", "r", "r", "l", "r", "r", "r", "l", "r"])
    lines = [
        "# FastLightGen at CPU scale: steps-only, size-only and both distillation of the digits U-Net",
        "",
        C.machine_md(res["machine"], res["command"], res["date"]),
        "* Machine note: 2-core CPU container, shared by 7 sessions, noisy (wall times are indicative only).",
        "",
        f"Teacher: `{res['teacher']}` checkpoint step {res['teacher_step']} (EMA, {res['teacher_params']:,} "
        f"parameters; the lead's configs/train_digits.py U-Net), used unconditionally (null label).  "
        f"Every student is trained for **{res['steps']} steps of batch {res['batch']}** (Adam, lr {res['lr']:g}, "
        f"EMA 0.99): the equal training budget.  The narrow (size / both) students are initialised "
        f"{'from the teacher by channel pruning with weight inheritance' if res.get('init', 'random') == 'inherit' else 'randomly'}; "
        f"the step-only student with the teacher's weights.  Step / both students sample with DDIM at NFE {res['nfe']}; the "
        f"interval targets come from the teacher's dpm_solver_pp with {res['teacher_steps_per_interval']} steps per "
        f"interval.  FD: digits classifier features of {res['n_samples']} samples per seed against the held-out "
        f"test split, seeds {res['seeds']} (mean ± sample sd over seeds); the floor (the 1,438 training images "
        f"against the test split) is {res['fd_floor_train_vs_test']:.2f}.  'cost' = parameters × NFE relative to "
        f"the teacher at NFE {res['teacher_nfe']}.",
        "",
        table,
        "",
    ]
    if res.get("notes"):
        lines += [res["notes"], ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=DEFAULT_TEACHER)
    p.add_argument("--teacher-step", type=int, default=-1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--nfe", type=int, default=4)
    p.add_argument("--teacher-nfe", type=int, default=20)
    p.add_argument("--teacher-solver", default="dpm_solver_pp")
    p.add_argument("--teacher-steps", type=int, default=4)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--init", default="inherit", choices=("inherit", "random"),
                   help="the narrow students' initialisation (student.init)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--write", action="store_true")
    p.add_argument("--from-json", action="store_true", help="re-render the .md from the written .json")
    a = p.parse_args()
    if a.from_json:
        print(C.rerender_from_json(JSON, MD, render))
        return
    if a.quick:
        a.steps, a.n, a.seeds = 8, 100, 2
    C.enable_compilation_cache()
    t0 = time.perf_counter()
    res = measure(a)
    res.update(machine=C.machine_info(), command=C.command_line("benchmarks.fastlightgen"), date=C.utc_now(),
               wall_s=time.perf_counter() - t0)
    if a.write:   # the measurements first, so a rendering error loses nothing (--from-json re-renders)
        C.atomic_write_json(JSON, res)
    text = render(res)
    print(text)
    if a.write:
        C.atomic_write_text(MD, text)


if __name__ == "__main__":
    main()
