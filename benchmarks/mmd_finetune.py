"""MMD finetuning (MMD-DDM) of the trained models for few-step sampling: the metric before
and after, one finetune per NFE (as the paper finetunes per timestep budget).

* gmm2d (configs/train_mmd_gmm2d.py on the MLP of configs/train_gmm2d.py, DPM-Solver++ on
  the logSNR grid): exact sw2 (the experiment runner's exact reference samples and
  directions), MMD^2 to data, and the fraction of samples with |x| > 2 (the data have none),
  at NFE 2, 4, 6, 10, each mean +- std over 3 sampling seeds of 4096 samples; plus the
  RBF-only ablation (kernel.energy_weight = 0) at NFE 4.
* digits (configs/train_mmd_digits.py on the U-Net of configs/train_digits.py, unconditional):
  FD (classifier features, test split) of 1438 samples, mean +- std over 3 sampling seeds,
  before / after, at NFE 4, with the kernel on pixels and/or on the classifier's features
  (--digits-features); scaled for a shared CPU: 24 steps of 32 images (see the notes).

    python -m benchmarks.mmd_finetune --gmm2d=/work/runs/train_gmm2d --digits=/work/runs/train_digits --write
    python -m benchmarks.mmd_finetune --part=gmm2d --quick      # fewer steps / NFEs, prints only

``--write`` updates docs/benchmarks/mmd_finetune.json (per part: a later --part=digits keeps
the gmm2d results) and renders docs/benchmarks/mmd_finetune.md from it.  Finetune workdirs go
to --workdir (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.mmd_finetune"
GMM_NFES = (2, 4, 6, 10)
SEEDS = (1000, 1001, 1002)
OUT = os.path.join(C.REPO_ROOT, "docs", "benchmarks", "mmd_finetune.md")
NOTES = [
    "The finetuning objective (MMD² with the training kernel) falls at every NFE; the exact-sample metric "
    "follows it where the base's few-step error is large (NFE 2, 4) and not where it is already near the "
    "floor (NFE 6: unchanged; NFE 10: worse): 150 steps of 256-sample MMD estimates carry more noise than "
    "the error left to remove there.",
    "RBF only (energy_weight 0): MMD² falls further but a fraction of samples is flung far out (the RBF "
    "gradient vanishes for far points), so sw2 improves less; the energy-distance term keeps them in.",
    "Wall times are on a shared, heavily loaded 2-core CPU (load average ~13-16 while measured); most of "
    "each finetune's time is two XLA compilations of the step.",
]


def _stats(values):
    v = np.asarray(values, np.float64)
    return dict(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0, values=v.tolist())


def _evaluate(tr, params, sampler, n: int, data: np.ndarray) -> dict:
    from samplax.experiment.mmd_finetune import few_step_samples, sample_metrics

    rows = []
    for seed in SEEDS:
        x = few_step_samples(tr, params, sampler, n, seed)
        m = sample_metrics(tr, x, data)
        m["far"] = float(np.mean(np.linalg.norm(x.reshape(len(x), -1), axis=1) > 2.0)) if x[0].size == 2 else None
        rows.append(m)
    return {k: _stats([r[k] for r in rows]) for k in rows[0] if rows[0][k] is not None}


def finetune_and_measure(config, workdir: str, n_eval: int, log=print) -> dict:
    from samplax.experiment.mmd_finetune import build_sampler, load_base, load_finetuned, run_mmd_finetune

    t0 = time.time()
    summary = run_mmd_finetune(config, workdir)
    wall = time.time() - t0
    ft, cfg = load_finetuned(workdir)
    base = load_base(cfg)
    sampler = build_sampler(cfg, base)
    data = np.asarray(base.setup.dataset.batch(777, 0, n_eval)[0])
    out = dict(nfe=cfg["sampler"]["nfe"], solver=cfg["sampler"]["solver"], steps=cfg["train"]["num_steps"],
               gen_batch=cfg["train"]["gen_batch"], lr=cfg["optim"]["learning_rate"], kernel=cfg["kernel"],
               finetune_wall_s=wall, resumed_from=summary["resumed_from"], final_loss=summary["final"]["loss"],
               base=_evaluate(base, base.params, sampler, n_eval, data),
               finetuned=_evaluate(base, ft.params, sampler, n_eval, data))
    log(json.dumps({k: out[k] for k in ("nfe", "finetune_wall_s")}),
        {k: (round(out["base"][k]["mean"], 4), round(out["finetuned"][k]["mean"], 4)) for k in out["base"]})
    return out


def gmm_part(base: str, workdir: str, quick: bool, log=print) -> dict:
    from configs import train_mmd_gmm2d

    rows, ablation = [], []
    for nfe in (GMM_NFES[1:2] if quick else GMM_NFES):
        for w in ((1.0, 0.0) if nfe == 4 else (1.0,)):
            c = train_mmd_gmm2d.get_config()
            c.base, c.sampler.nfe, c.kernel.energy_weight = base, nfe, w
            if quick:
                c.train.num_steps = 50
            log(f"gmm2d: NFE {nfe}, energy_weight {w}")
            r = finetune_and_measure(c, os.path.join(workdir, f"gmm2d_nfe{nfe}_w{w:g}" + ("_quick" if quick else "")),
                                     4096, log)
            (rows if w else ablation).append(r)
    return dict(rows=rows, ablation=ablation, n_eval=4096, seeds=list(SEEDS))


def digits_part(base: str, workdir: str, quick: bool, log=print, features=("raw",)) -> dict:
    from configs import train_mmd_digits

    rows = []
    for feat in features:
        c = train_mmd_digits.get_config()
        c.base, c.kernel.features = base, feat
        if quick:
            c.train.num_steps = 10
        log(f"digits: NFE {c.sampler.nfe}, {c.train.num_steps} steps, features {feat}")
        wd = os.path.join(workdir, "digits_nfe4" + ("" if feat == "raw" else f"_{feat}") + ("_quick" if quick else ""))
        rows.append(finetune_and_measure(c, wd, 1438, log))
        with open(os.path.join(wd, "train_summary.json")) as f:
            rows[-1]["base_step"] = json.load(f)["base_step"]
    return dict(rows=rows, n_eval=1438, seeds=list(SEEDS))


def _pm(d, k, digits=3):
    if k not in d:
        return "—"
    return f"{C.fmt(d[k]['mean'], digits)} ± {C.fmt(d[k]['std'], 2)}"


def render(res: dict) -> str:
    lines = ["# MMD finetuning for few-step sampling (MMD-DDM)", "", C.machine_md(res["machine"], res["command"],
                                                                                 res["date"]),
             "* Machine load: 2-core CPU container shared by up to 7 sessions (noisy; wall times are indicative only)",
             "", "Aiello, Valsesia & Magli 2023 finetune a trained model per timestep budget so that its few-step "
             "sampler's output matches data under an MMD loss, back-propagating through the sampling chain "
             "(docs/mmd_finetune.md). Here: one finetune per NFE, each evaluated with the same solver, grid and NFE "
             "it was finetuned for; mean ± std over sampling seeds "
             f"{res.get('gmm2d', res.get('digits', {})).get('seeds')} (x_T of each seed independent of the "
             "finetuning's draws)."]
    g = res.get("gmm2d")
    if g:
        lines += ["", "## gmm2d (MLP of configs/train_gmm2d.py, DPM-Solver++ 2M, logSNR grid)", "",
                  f"{g['n_eval']} samples per seed. sw2: sliced W2 to exact samples (the experiment runner's "
                  "reference set and 128 directions; its floor, two exact sets of 4096, is 0.028 in docs/benchmarks/trained_models.md). MMD²: raw RBF, median "
                  "bandwidths of a data batch. far: fraction of samples with |x| > 2 (the data: 0). Finetune: "
                  f"configs/train_mmd_gmm2d.py ({g['rows'][0]['steps']} Adam steps, lr {g['rows'][0]['lr']:g}, "
                  f"{g['rows'][0]['gen_batch']} generated vs as many data samples per step, RBF bandwidths "
                  f"{g['rows'][0]['kernel']['scales']} x median + energy distance x "
                  f"{g['rows'][0]['kernel']['energy_weight']:g}).", ""]
        body = []
        for r in g["rows"] + g["ablation"]:
            tag = f"{r['nfe']}" + ("" if r["kernel"]["energy_weight"] else " (RBF only)")
            body.append([tag, _pm(r["base"], "sw2"), _pm(r["finetuned"], "sw2"), _pm(r["base"], "mmd2"),
                         _pm(r["finetuned"], "mmd2"), _pm(r["base"], "far"), _pm(r["finetuned"], "far"),
                         f"{r['finetune_wall_s']:.0f}"])
        lines.append(C.md_table(["NFE", "sw2 base", "sw2 finetuned", "MMD² base", "MMD² finetuned", "far base",
                                 "far finetuned", "finetune wall s"], body, ["l"] + ["r"] * 7))
    d = res.get("digits")
    if d:
        r = d["rows"][0]
        lines += ["", "## digits (U-Net of configs/train_digits.py, unconditional, DPM-Solver++ 2M, logSNR grid)", "",
                  f"FD: Fréchet distance of {d['n_eval']} samples to the 359-image test split in the digits "
                  "classifier's features (the experiment runner's FD). Finetune: configs/train_mmd_digits.py, scaled "
                  f"down for a CPU: {r['steps']} Adam steps (lr {r['lr']:g}), {r['gen_batch']} generated vs as many "
                  f"data images per step, RBF kernel ({r['kernel']['scales']} x median) on the raw pixels or "
                  f"on the digits classifier's 64 features (the FD's own feature space). Base: the digits run's checkpoint of "
                  "the step given (each row's base FD is measured on its own base).", ""]
        body = [[f"{x['nfe']}", str(x.get("base_step", d.get("base_step"))),
                 "pixels" if x["kernel"]["features"] == "raw" else "classifier features",
                 _pm(x["base"], "fd"), _pm(x["finetuned"], "fd"), _pm(x["base"], "mmd2"),
                 _pm(x["finetuned"], "mmd2"), f"{x['finetune_wall_s']:.0f}"] for x in d["rows"]]
        lines.append(C.md_table(["NFE", "base step", "kernel on", "FD base", "FD finetuned", "MMD² base", "MMD² finetuned",
                                 "finetune wall s"], body, ["l", "r", "l"] + ["r"] * 5))
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"* {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gmm2d", default="/work/runs/train_gmm2d", help="training workdir of configs/train_gmm2d.py")
    p.add_argument("--digits", default="/work/runs/train_digits", help="training workdir of configs/train_digits.py")
    p.add_argument("--part", choices=("all", "gmm2d", "digits"), default="all")
    p.add_argument("--digits-features", default="raw", help="comma-separated kernel.features of the digits "
                   "finetunes: raw, classifier")
    p.add_argument("--quick", action="store_true", help="NFE 4 only, few steps (a smoke run; not for the docs)")
    p.add_argument("--workdir", default=os.path.join(C.REPO_ROOT, "runs", "bench_mmd_finetune"))
    p.add_argument("--write", action="store_true", help="update docs/benchmarks/mmd_finetune.json and .md")
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    C.enable_compilation_cache()
    json_path = os.path.splitext(args.out)[0] + ".json"
    res = {}
    if args.write and os.path.exists(json_path):
        with open(json_path) as f:
            res = json.load(f)
    res.update(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(), notes=NOTES)
    if args.part in ("all", "gmm2d"):
        res["gmm2d"] = gmm_part(os.path.abspath(args.gmm2d), args.workdir, args.quick)
    if args.part in ("all", "digits"):
        res["digits"] = digits_part(os.path.abspath(args.digits), args.workdir, args.quick,
                                    features=tuple(args.digits_features.split(",")))
    text = render(res)
    print(text)
    if args.write:
        C.atomic_write_json(json_path, res)
        C.atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
