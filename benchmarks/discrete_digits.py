"""Every applicable masked-diffusion sampler on the trained digits transformer: FD vs model calls and
a sample grid per sampler.

The model: ``configs/train_discrete_digits.py`` trained into ``--checkpoint`` (default
/work/runs/train_discrete_digits; docs/discrete_learned.md). Each setting is one run of the
experiment layer (``run_sample`` into one workdir, so the rows are the runner's own, resumable):
N sequences of 64 tokens (pixel intensities 0..16), keys ``fold_in(PRNGKey(0), i)``; FD: the digits
feature classifier's Frechet distance to the held-out test split, beside the floor (training split
vs test split). The bitstream sampler needs an exact problem and LSD coefficients learned on one,
so neither runs here.

    nice -n 10 python -m benchmarks.discrete_digits            # ~15 min on 2 shared cores
    python -m benchmarks.discrete_digits --quick               # two settings, 200 sequences

Writes docs/benchmarks/discrete_digits.md, .json and docs/images/discrete_digits_samplers.png.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.discrete_digits"
OUT = os.path.join("docs", "benchmarks", "discrete_digits.md")
GRID = os.path.join("docs", "images", "discrete_digits_samplers.png")

SETTINGS = [
    ("first_hitting", {}),
    ("ancestral", dict(steps=8)), ("ancestral", dict(steps=16)), ("ancestral", dict(steps=32)),
    ("confidence_threshold", dict(threshold=0.7)), ("confidence_threshold", dict(threshold=0.9)),
    ("topk", dict(k=4)), ("topk", dict(k=8)),
    ("llada", dict(steps=16, block_length=16)), ("llada", dict(steps=16, block_length=16, remasking="random")),
    ("fast_dllm", dict(threshold=0.9)), ("fast_dllm", dict(threshold=None, factor=1.0, kind="max_prob")),
    # Saber's backtracking re-checks every committed draft with extra model rows: over 8 minutes for this
    # table on 2 CPU cores, so it runs without backtracking here (its backtracking: docs/benchmarks/discrete.md)
    ("sched", dict(steps=64)), ("saber", dict(kind="max_prob", backtrack=False)),
    ("dparallel", dict(threshold=0.5)),
    ("info_gain", dict(candidates=4)),
]


def run(checkpoint: str, n: int, settings, workdir: str) -> list:
    from samplax.experiment import run_sample
    from samplax.experiment.discrete import discrete_config
    from samplax.discrete.registry import SAMPLERS

    rows = []
    for name, options in settings:
        if name not in SAMPLERS:
            print(f"skip {name}: not registered", flush=True)
            continue
        c = discrete_config()
        c.model.name = "digits"
        c.model.checkpoint = checkpoint
        c.sampler.name = name
        for k, v in options.items():
            c.sampler.options[k] = v
        c.n_samples = n
        c.chunk_size = 500
        c.metrics.save_samples = 20
        (row,) = run_sample(c, workdir)
        rows.append(row)
        print(f"{row['label']}: nfe {row['nfe']:.1f} fd {row['metrics'].get('fd')}", flush=True)
    return rows


def sample_grid(rows: list, workdir: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = 10
    fig, axes = plt.subplots(len(rows), 1, figsize=(per * 0.55 + 3.2, len(rows) * 0.62 + 0.3), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        x = np.load(os.path.join(workdir, "samples", r["hash"] + ".npy"))[:per]
        tiles = [np.pad(t.reshape(8, 8), 1, constant_values=0) for t in x]
        ax.imshow(np.concatenate(tiles, axis=1), cmap="gray", vmin=0, vmax=16)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{r['label']}\nNFE {r['nfe']:.0f}, FD {r['metrics']['fd']:.1f}", rotation=0, ha="right",
                      va="center", fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(res: dict) -> str:
    lines = ["# Masked diffusion on the trained digits transformer: FD vs model calls", "",
             C.machine_md(res["machine"], res["command"], res["date"]), "",
             f"Model: `{res['checkpoint']}` (configs/train_discrete_digits.py; docs/discrete_learned.md). "
             f"N = {res['n']} sequences per row. FD: the digits feature classifier's Frechet distance to the "
             "held-out test split; FD floor: the training split against it. NFE: mean model calls per sequence "
             "(L = 64).", "",
             "| sampler | setting | NFE/sample | FD | FD floor | time (s) |", "|---|---|---|---|---|---|"]
    for r in sorted(res["rows"], key=lambda r: r["nfe"]):
        setting = r["label"][len(r["sampler"]):].strip() or "-"
        m = r["metrics"]
        lines.append(f"| {r['sampler']} | {setting} | {r['nfe']:.1f} | {m.get('fd', float('nan')):.1f} | "
                     f"{m.get('fd_floor', float('nan')):.2f} | {r['time_s']:.1f} |")
    lines += ["", f"![samples per sampler](../images/{os.path.basename(GRID)})", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--checkpoint", default="/work/runs/train_discrete_digits")
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--from-json", default=None)
    args = ap.parse_args()
    if args.from_json:
        return C.rerender_from_json(args.from_json, OUT, render)
    C.enable_compilation_cache()
    n = 200 if args.quick else 1000
    workdir = args.workdir or tempfile.mkdtemp(prefix="discrete_digits_")
    settings = SETTINGS[:2] if args.quick else SETTINGS
    rows = run(args.checkpoint, n, settings, workdir)
    res = dict(machine=C.machine_info(), command=C.command_line(MODULE), date=C.utc_now(), n=n,
               checkpoint=args.checkpoint, rows=rows)
    md = render(res)
    print(md)
    if not args.quick:
        sample_grid(rows, workdir, GRID)
        C.atomic_write_text(OUT, md)
        C.atomic_write_json(OUT[:-3] + ".json", res)
    return OUT


if __name__ == "__main__":
    main()
