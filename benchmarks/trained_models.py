"""Sample quality of the trained models, solver x NFE, through the experiment runner.

* digits: the Frechet distance (classifier features, test split) of 1438 unconditional
  samples of the U-Net of configs/train_digits.py for each solver and NFE of
  configs/sweep_digits.py, next to the floor (the 1438-image training split's FD), and
  the FD of classifier-free guided samples (class i mod 10) for a few scales.
* gmm2d: the MLP of configs/train_gmm2d.py next to the exact model under the same
  solver, grid, NFE and x_T: mean_l2 to the exact ODE solution, sw2 to exact samples
  (with its noise floor) and the exact mean log density -- how much of the error is the
  network and how much the solver.

    python -m experiments.train --config=configs/train_digits.py --workdir=runs/train_digits
    python -m experiments.train --config=configs/train_gmm2d.py --workdir=runs/train_gmm2d
    python -m benchmarks.trained_models --digits=runs/train_digits --gmm2d=runs/train_gmm2d

Writes docs/benchmarks/trained_models.md (or --out), a .json next to it, and
docs/images/digits_unconditional.png.  Sweeps run in --workdir (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.trained_models"
GMM_SOLVERS = ("ddim", "dpm_solver_pp", "unipc", "ipndm")
GMM_NFES = (5, 10, 20, 50)
GUIDANCE = (1.0, 2.0, 4.0)
GUIDED_SOLVER, GUIDED_NFE = "dpm_solver_pp", 20


def _train_info(workdir: str) -> dict:
    with open(os.path.join(workdir, "train_summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        cfg = json.load(f)["config"]
    return dict(steps=summary["steps"], final=summary["final"], config=cfg)


def _table(rows, metric, solvers_order=None):
    """solver label x NFE table of rows[...]['metrics'][metric]."""
    order = list(solvers_order or [])
    labels = sorted({r["label"] for r in rows}, key=lambda s: (order.index(s.split()[0]) if s.split()[0] in order
                                                              else len(order), s))
    nfes = sorted({r["nfe"] for r in rows})
    by = {(r["label"], r["nfe"]): r for r in rows}
    out = []
    for lab in labels:
        out.append([lab] + [C.fmt((by.get((lab, n)) or {}).get("metrics", {}).get(metric)) for n in nfes])
    return C.md_table(["solver"] + [f"NFE {n}" for n in nfes], out, ["l"] + ["r"] * len(nfes))


def digits_part(ckpt: str, workdir: str, log=print) -> dict:
    from configs import digits as digits_cfg
    from configs import sweep_digits
    from samplax.experiment import run_sample, run_sweep

    cfg = sweep_digits.get_config()
    cfg.model.checkpoint = ckpt
    log("digits: sweep", tuple(cfg.sweep.solvers), tuple(cfg.sweep.nfes))
    rows = run_sweep(cfg, os.path.join(workdir, "digits_sweep"))
    guided = []
    for w in GUIDANCE:
        s = digits_cfg.get_config()
        s.model.checkpoint = ckpt
        s.model.guidance = w
        s.solver.name = GUIDED_SOLVER
        s.nfe = GUIDED_NFE
        log(f"digits: guidance {w}")
        guided += run_sample(s, os.path.join(workdir, f"digits_guided_{w:g}"))
    return dict(rows=rows, guided=guided)


def gmm_part(ckpt: str, workdir: str, log=print) -> dict:
    from samplax.experiment import run_sweep, sweep_config

    out = {}
    for name, path in (("exact", None), ("trained", ckpt)):
        cfg = sweep_config()
        cfg.model.name = "gmm2d"
        cfg.model.checkpoint = path
        cfg.sweep.solvers = GMM_SOLVERS
        cfg.sweep.orders = (2,)
        cfg.sweep.grids = ("logsnr",)
        cfg.sweep.nfes = GMM_NFES
        cfg.n_samples = 4096
        log(f"gmm2d: {name} sweep")
        out[name] = run_sweep(cfg, os.path.join(workdir, f"gmm2d_{name}"))
    return out


def write_digits_grid(rows, workdir: str, path: str) -> str:
    """The saved samples of the best row at NFE 10 as a 10x10 image grid."""
    from samplax.experiment.trainer import image_grid

    at10 = [r for r in rows if r["nfe"] == 10 and r["metrics"].get("fd") is not None]
    best = min(at10, key=lambda r: r["metrics"]["fd"])
    x = np.load(os.path.join(workdir, "digits_sweep", best["samples_file"]))[:100]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5.3))
    ax.imshow(image_grid(x), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"unconditional digits: {best['label']}, NFE 10 (FD {best['metrics']['fd']:.2f})", fontsize=9)
    fig.tight_layout()
    C.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--digits", required=True, help="training workdir of configs/train_digits.py")
    p.add_argument("--gmm2d", required=True, help="training workdir of configs/train_gmm2d.py")
    p.add_argument("--workdir", default=os.path.join(C.REPO_ROOT, "runs", "bench_trained"))
    p.add_argument("--out", default=os.path.join(C.REPO_ROOT, "docs", "benchmarks", "trained_models.md"))
    p.add_argument("--image", default=os.path.join(C.REPO_ROOT, "docs", "images", "digits_unconditional.png"))
    args = p.parse_args(argv)
    info = C.machine_info()
    date = C.utc_now()
    dig = digits_part(os.path.abspath(args.digits), args.workdir)
    gmm = gmm_part(os.path.abspath(args.gmm2d), args.workdir)
    grid_png = write_digits_grid(dig["rows"], args.workdir, args.image)
    td, tg = _train_info(args.digits), _train_info(args.gmm2d)
    ref = dig["rows"][0]["reference"]

    lines = ["# Trained models: sample quality by solver and NFE", "", C.machine_md(info, C.command_line(MODULE), date),
             "", "## digits (U-Net, configs/train_digits.py)", "",
             f"Trained {td['steps']} steps (final training loss {C.fmt(td['final'].get('loss'))}, EMA eval loss "
             f"{C.fmt(td['final'].get('eval_loss_ema'))}). Fréchet distance of 1438 unconditional samples "
             f"(null label) against the 359-image test split, in the features of a CNN classifier trained here "
             f"(test accuracy {ref['classifier_test_accuracy']:.3f}). **Floor: the 1438-image training split "
             f"scores {ref['fd_floor']:.2f}** (same sample size; lower is better). Grid: logSNR, ending at σ = 0.",
             "", _table(dig["rows"], "fd", list(GMM_SOLVERS)), "",
             f"Classifier-free guidance (sample i of class i mod 10), {GUIDED_SOLVER}, NFE {GUIDED_NFE}:", "",
             C.md_table(["guidance scale", "FD"], [[f"{r['trained']['guidance']:g}", C.fmt(r["metrics"]["fd"])]
                                                   for r in dig["guided"]], ["l", "r"]),
             "", f"![digits]({os.path.relpath(grid_png, os.path.dirname(args.out))})", "",
             "## gmm2d: trained MLP vs the exact model (configs/train_gmm2d.py)", "",
             f"Trained {tg['steps']} steps (final loss {C.fmt(tg['final'].get('loss'))}). Same solver, grid (logSNR), "
             "NFE and x_T (4096 samples); each cell is exact / trained. mean_l2: distance to the exact PF-ODE "
             "solution (the trained model's error = network + solver); sw2: to exact samples.", ""]
    ex = {(r["label"], r["nfe"]): r for r in gmm["exact"]}
    rows = []
    for r in sorted(gmm["trained"], key=lambda r: (r["label"], r["nfe"])):
        e = ex[(r["label"], r["nfe"])]
        rows.append([r["label"], r["nfe"],
                     f"{C.fmt(e['metrics']['mean_l2'])} / {C.fmt(r['metrics']['mean_l2'])}",
                     f"{C.fmt(e['metrics']['sw2'])} / {C.fmt(r['metrics']['sw2'])}",
                     f"{C.fmt(e['metrics']['mean_log_density'])} / {C.fmt(r['metrics']['mean_log_density'])}"])
    floor = gmm["exact"][0]["reference"]
    lines += [C.md_table(["solver", "NFE", "mean_l2", "sw2", "mean log density"], rows, ["l", "r", "r", "r", "r"]),
              "", f"sw2 noise floor (two exact sample sets): {C.fmt(floor['sw2_floor'])}; exact mean log density of "
              f"exact samples: {C.fmt(floor['mean_log_density_exact'])}.", ""]
    md = "\n".join(lines)
    print(md)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    C.atomic_write_text(args.out, md)
    C.atomic_write_json(os.path.splitext(args.out)[0] + ".json", dict(
        machine=info, date=date, digits=dig, gmm2d=gmm, train=dict(digits=td, gmm2d=tg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
