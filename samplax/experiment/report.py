"""Reports of an experiment's results rows: a markdown table, a printed summary, plots, TensorBoard.

An experiment run appends one JSON row per (problem, solver setting, grid, end,
NFE, seed, ...) to ``WORKDIR/results.jsonl``; this module turns a list of such
rows (plain dicts) into derived, re-creatable files::

    WORKDIR/results.md                        results_markdown(): one table per problem (and model, end, dtype)
    WORKDIR/plots/error_vs_nfe.png            plot_error_vs_nfe(): error against NFE, one panel per grid
    WORKDIR/plots/error_vs_nfe_best_grid.png  the same, the best grid of each solver in one panel
    WORKDIR/plots/samples.png                 plot_samples(): 2-D points (over the exact density where
                                              there is one) or image grids
    WORKDIR/tb/                               write_tensorboard(): one run per solver setting and grid,
                                              a noise-floor run and an HParams session per cell

and :func:`summary_text` / :func:`print_summary` give the short table a single run
prints at its end.  :func:`write_report` writes all the files.  Every file goes
through :mod:`samplax.io` (atomic: a reader sees the old file or the new one), so a
``gs://`` workdir works; TensorBoard's event files are written to a local temporary
directory and then moved (local) or uploaded (object stores) into ``tb/``.  Each
report replaces the previous one, so a report can be re-made at any time from the rows.

Conventions:

* Rows are identified by ``(hash, seed)``; when the same pair occurs more than
  once (a re-run appended to the file) the last occurrence wins.
* A metric of ``None`` (or a non-finite float) means the value was non-finite; a
  metric the row does not have at all was not computed (``—``).  Several seeds of one
  setting are averaged; if any seed is non-finite the cell is non-finite.
* ``mean_l2``, ``fd`` and ``sw2`` are "lower is better"; ``mean_log_density`` is not
  ordered (over-concentrated samples score higher), so it is never marked best.
* Compile and run times belong to a compiled *program* that may have produced
  several rows; totals count each ``program`` once.
* A row of a trained network (``trained``, or a user model with a checkpoint) says
  so in its section titles, plot titles and TensorBoard tags; a row with a
  ``warning`` is marked ⚠; a row whose ``step_orders`` (the orders each solver step
  actually ran) never reach its nominal ``order`` shows them (``ran o1``).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
import textwrap
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from absl import logging

from samplax import io as sio

Row = Mapping[str, Any]

METRICS = ("mean_l2", "fd", "sw2", "mean_log_density")
LOWER_IS_BETTER = frozenset({"mean_l2", "fd", "sw2", "target_sw2", "target_tv"})
MISSING = "—"
WARN = "⚠"

RESULTS_MD = "results.md"
PLOTS_DIR = "plots"
ERROR_PLOT = "error_vs_nfe.png"
BEST_GRID_PLOT = "error_vs_nfe_best_grid.png"
SAMPLES_PLOT = "samples.png"
TB_DIR = "tb"
FLOOR_RUN = "noise_floor"
HPARAMS_RUN = "hparams"

# What each metric is, in words: axis labels and table headers.
METRIC_AXIS = {
    "mean_l2": "mean distance to the exact ODE solution",
    "sw2": "sliced Wasserstein-2 distance to the data",
    "fd": "Fréchet distance to held-out data",
    "mean_log_density": "mean log-density of the samples",
    "target_sw2": "sliced Wasserstein-2 distance to the sampler's exact target",
    "target_tv": "total variation of the mode frequencies from the exact target's",
    "target_chi2_p": "chi-square p-value of the mode counts under the exact target (small: rejected)",
}
# metric -> (reference key, what the reference is): drawn as a dashed line, its own TensorBoard run
FLOORS = {
    "sw2": ("sw2_floor", "noise floor (sw2 of two independent exact sample sets)"),
    "fd": ("fd_floor", "noise floor (fd of the training split)"),
    "mean_log_density": ("mean_log_density_exact", "exact samples"),
}
GRID_ORDER = ("time_uniform", "time_quadratic", "logsnr", "karras")


# --------------------------------------------------------------------------- helpers
def _finite(v: Any) -> Optional[float]:
    """``float(v)`` if it is a finite number, else None."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_value(v: Optional[float], digits: int = 4) -> str:
    """A number with ``digits`` significant digits (trailing zeros kept, so every cell
    shows the same precision); scientific notation outside [1e-3, 1e4)."""
    if v is None:
        return MISSING
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:#.{digits}g}".rstrip(".")


def _fmt_seconds(s: float) -> str:
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s"


def _md_escape(s: Any) -> str:
    return str(s).replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str]) -> str:
    sep = [{"l": "---", "r": "---:", "c": ":---:"}[a] for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _save_figure(fig: Any, path, dpi: int = 110) -> str:
    """Render a ``matplotlib.figure.Figure`` to a PNG at ``path`` (atomically, through
    samplax.io) with the Agg canvas; returns the path as a string."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")

    return os.fspath(sio.atomic_write(path, write, suffix=".png"))


def dedupe_rows(rows: Iterable[Row]) -> list[dict]:
    """The rows with one row per ``(hash, seed)``: the last occurrence wins, first-seen order kept.

    Rows without a ``hash`` are all kept."""
    out: "OrderedDict[Any, dict]" = OrderedDict()
    for i, r in enumerate(rows):
        h = r.get("hash")
        key = (h, r.get("seed")) if h is not None else ("__row__", i)
        if key in out:
            del out[key]  # move to the end: the newest occurrence
        out[key] = dict(r)
    return list(out.values())


def _metric(row: Row, metric: str) -> Optional[float]:
    return _finite((row.get("metrics") or {}).get(metric))


def _has_metric(row: Row, metric: str) -> bool:
    """The row computed ``metric`` (finite or not)."""
    return metric in (row.get("metrics") or {})


def _ref(row: Row, key: str) -> Optional[float]:
    return _finite((row.get("reference") or {}).get(key))


def model_text(row: Row) -> Optional[str]:
    """What model produced ``row``, in words, when it is not a built-in exact model:
    ``"trained network (checkpoint step 4000)"`` (with non-default params / guidance),
    ``"user model my_pkg.nets:make (plain params step 3)"``, ``"user schedule ..."``;
    None for a built-in analytic model."""
    tr = row.get("trained")
    if isinstance(tr, Mapping):
        extra = []
        if tr.get("params") not in (None, "ema"):
            extra.append(f"params {tr['params']}")
        if tr.get("guidance") is not None:
            extra.append(f"guidance {tr['guidance']}")
        return f"trained network (checkpoint step {tr.get('step')}{''.join(', ' + e for e in extra)})"
    um = row.get("user_model")
    if isinstance(um, Mapping) and um:
        if um.get("factory"):
            s = f"user model {um['factory']}"
            if um.get("checkpoint"):
                s = f"trained network {um['factory']} (checkpoint step {um.get('step')})"
            return s
        if um.get("schedule"):
            return f"user schedule {um['schedule']}"
        return "user model"
    return None


def _model_slug(row: Row) -> Optional[str]:
    """A TensorBoard tag part saying what model ran (None for a built-in exact model)."""
    tr = row.get("trained")
    if isinstance(tr, Mapping):
        return f"trained_step{tr.get('step')}"
    um = row.get("user_model")
    if isinstance(um, Mapping) and um:
        if um.get("factory") and um.get("checkpoint"):
            return f"trained_step{um.get('step')}"
        return "user_model"
    return None


def step_orders(row: Row) -> Optional[list[int]]:
    """The orders the solver steps of ``row`` actually ran (``step_orders``), or None."""
    so = row.get("step_orders")
    if not isinstance(so, (list, tuple)) or not so:
        return None
    try:
        return [int(v) for v in so]
    except (TypeError, ValueError):
        return None


def orders_short(row: Row) -> Optional[str]:
    """``"ran o1"`` (or ``"ran o1-2"``) when the steps of ``row`` never reached its
    nominal order (e.g. DPM-Solver++(2M) reduced to DDIM by its safeguard), else None."""
    so, order = step_orders(row), row.get("order")
    if so is None or not isinstance(order, int) or isinstance(order, bool) or max(so) >= order:
        return None
    lo, hi = min(so), max(so)
    return f"ran o{lo}" if lo == hi else f"ran o{lo}-{hi}"


def nfe_text(r: Row) -> str:
    """The NFE column: the row's NFE, or for an adaptive solve (whose ``nfe`` is a cap) the
    mean NFE it really spent and the cap, e.g. "125 (cap 500)"."""
    a = r.get("adaptive")
    if a:
        return f"{a['nfe_mean']:.0f} (cap {r.get('nfe')})"
    return str(r.get("nfe"))


def setting_text(row: Row) -> str:
    """The row's label with its effective orders when they fall short of the nominal
    one: ``"dpm_solver_pp o2 (ran 1,1,1,1,1)"``."""
    label = str(row.get("label"))
    so = step_orders(row)
    if so is not None and orders_short(row):
        label += f" (ran {','.join(str(v) for v in so)})"
    return label


def _warning(row: Row) -> Optional[str]:
    w = row.get("warning")
    return str(w) if w not in (None, "", False) else None


def _sections(rows: Sequence[Row]) -> "OrderedDict[tuple, list[Row]]":
    """Rows grouped by (problem, model, end, dtype), sorted; ``model`` is None for a
    built-in exact model, ``end``/``dtype`` are None when a problem has only one of them
    (so titles and tags mention them only when needed)."""
    by_problem: dict[str, list[Row]] = {}
    for r in rows:
        by_problem.setdefault(str(r.get("problem")), []).append(r)
    out: "OrderedDict[tuple, list[Row]]" = OrderedDict()
    for problem in sorted(by_problem):
        prows = by_problem[problem]
        ends = sorted({str(r.get("end")) for r in prows})
        dtypes = sorted({str(r.get("dtype")) for r in prows})
        for r in prows:
            key = (problem, model_text(r), str(r.get("end")) if len(ends) > 1 else None,
                   str(r.get("dtype")) if len(dtypes) > 1 else None)
            out.setdefault(key, []).append(r)
    return OrderedDict((k, out[k]) for k in sorted(out, key=lambda k: tuple("" if p is None else p for p in k)))


def _section_title(key: tuple) -> str:
    problem, model, end, dtype = key
    parts = [problem] + ([model] if model else []) + ([f"end={end}"] if end else []) + ([dtype] if dtype else [])
    return ", ".join(parts)


def _section_slug(key: tuple, rows: Sequence[Row]) -> str:
    """The TensorBoard tag prefix of a section: problem[/trained_stepN][/end=..][/dtype]."""
    problem, model, end, dtype = key
    parts = [_tag_part(problem)]
    slug = _model_slug(rows[0]) if model and rows else None
    if slug:
        parts.append(_tag_part(slug))
    if end:
        parts.append(f"end={_tag_part(end)}")
    if dtype:
        parts.append(_tag_part(dtype))
    return "/".join(parts)


class _Cell:
    """The seeds of one (setting, grid, NFE): their mean, or why it is not finite."""

    def __init__(self, rows: Sequence[Row], metric: str):
        self.rows = list(rows)
        self.computed = any(_has_metric(r, metric) for r in self.rows)
        vals = [_metric(r, metric) for r in self.rows]
        self.n = len(vals)
        self.n_finite = sum(v is not None for v in vals)
        self.value: Optional[float] = float(np.mean(vals)) if vals and self.n_finite == self.n else None
        steps = [r.get("first_nonfinite_step") for r in self.rows
                 if _metric(r, metric) is None and r.get("first_nonfinite_step") is not None]
        self.first_nonfinite_step: Optional[int] = min(int(s) for s in steps) if steps else None
        self.nfe_mismatch = any(r.get("nfe_actual") is not None and r.get("nfe") is not None and not r.get("adaptive")
                                and int(r["nfe_actual"]) != int(r["nfe"]) for r in self.rows)
        self.warnings = [(r, _warning(r)) for r in self.rows if _warning(r)]
        self.short = next((orders_short(r) for r in self.rows if orders_short(r)), None)

    def text(self) -> str:
        if not self.computed:
            return MISSING
        if self.value is not None:
            s = fmt_value(self.value)
        else:
            s = "nan"
            details = []
            if self.first_nonfinite_step is not None:
                details.append(f"step {self.first_nonfinite_step}")
            if self.n > 1:
                details.append(f"{self.n - self.n_finite} of {self.n} seeds")
            if details:
                s += " (" + "; ".join(details) + ")"
        s += "†" if self.nfe_mismatch else ""
        if self.short:
            s += f" ({self.short})"
        return (WARN + " " + s) if self.warnings else s


def _table_cells(rows: Sequence[Row], metric: str):
    """``(settings, nfes, cells)``: settings are sorted (label, grid) pairs, nfes ascending,
    cells[(label, grid, nfe)] a :class:`_Cell`."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((str(r.get("label")), str(r.get("grid")), int(r.get("nfe"))), []).append(r)
    settings = sorted({(k[0], k[1]) for k in groups}, key=lambda lg: (lg[0], _grid_rank(lg[1])))
    nfes = sorted({k[2] for k in groups})
    return settings, nfes, {k: _Cell(v, metric) for k, v in groups.items()}


def _grid_rank(grid: str) -> tuple:
    return (GRID_ORDER.index(grid), "") if grid in GRID_ORDER else (len(GRID_ORDER), grid)


def _check_metric(rows: Sequence[Row], metric: str) -> None:
    if rows and metric not in METRICS and not any(metric in (r.get("metrics") or {}) for r in rows):
        raise ValueError(f"metric: unknown metric {metric!r}; rows have "
                         f"{sorted({k for r in rows for k in (r.get('metrics') or {})})}")


def _range_text(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return fmt_value(lo, 3) if fmt_value(lo, 3) == fmt_value(hi, 3) else f"{fmt_value(lo, 3)} – {fmt_value(hi, 3)}"


def _unique_text(values: Iterable[Any]) -> str:
    vs = sorted({str(v) for v in values if v is not None})
    return ", ".join(vs) if vs else "?"


def _where(row: Row) -> str:
    return f"{row.get('label')} · {row.get('grid')} · NFE {row.get('nfe')} (seed {row.get('seed')})"


# --------------------------------------------------------------------------- markdown
METRIC_MEANING = {
    "mean_l2": "mean Euclidean distance of each sample to the exact probability-flow ODE solution from the same "
               "x_T (float64 reference, at sigma = 0)",
    "sw2": "sliced Wasserstein-2 distance between the samples and as many exact samples of the data distribution",
    "mean_log_density": "exact mean log-density of the samples under the data distribution",
    "fd": "Frechet distance between features (of a digits classifier trained here) of the samples and of the "
          "held-out test split; compare with fd_floor, the FD of the training split",
    "target_sw2": "particle samplers (samplax.smc) with a closed-form target: sliced Wasserstein-2 distance "
                  "between the samples and as many exact samples of that target (annealed, product, guided, "
                  "posterior); the row's 'target' record has the mean / covariance errors as well",
    "target_tv": "total variation between the samples' mode (label) frequencies and the exact target's",
    "target_chi2_p": "Pearson chi-square p-value of the mode counts under the exact target, from one sample per "
                     "SMC group (a group's resampled particles share ancestors: only one per group is an "
                     "independent draw); small values reject the sampler",
}
MAX_LISTED = 20  # warnings / short orders listed under a table


def results_markdown(rows: Sequence[Row], metric: str = "mean_l2") -> str:
    """A markdown document of ``metric`` for every row: tables, then a summary.

    One table per problem (split further by model, ``end`` and ``dtype`` when a problem
    has several; a trained network says so in the title), one line per solver setting
    (``label``) and ``grid``, one column per requested NFE (ascending).  A cell is the
    mean over the seeds of that setting; the lowest finite value of each NFE column is
    **bold** (for "lower is better" metrics only).  A non-finite cell reads ``nan (step
    k)`` with the first non-finite solver step, a missing or not computed one ``—``, a
    † marks cells whose actual number of model evaluations differs from the requested
    NFE, ⚠ a row with a ``warning`` (listed under the table) and ``(ran o1)`` a row whose
    solver steps never reached the nominal order (their orders are listed under the
    table).  The summary gives the number of rows, the compiled programs with their
    compile and run times (each program counted once), the devices, and the reference
    values (noise floors).
    """
    rows = dedupe_rows(rows)
    _check_metric(rows, metric)
    better = "lower is better" if metric in LOWER_IS_BETTER else "not ordered: never marked best"
    lines = ["# Results", ""]
    if not rows:
        lines += ["No results rows yet.", ""]
        return "\n".join(lines)
    lines += [f"Metric: `{metric}` ({better}): {METRIC_MEANING.get(metric, '')}. Columns: requested NFE "
              f"(model evaluations).", ""]

    seed_counts: set[int] = set()
    mismatch = warned = short = False
    for key, srows in _sections(rows).items():
        settings, nfes, cells = _table_cells(srows, metric)
        best: dict[int, Optional[float]] = {}
        for nfe in nfes:
            vals = [c.value for (l, g, n), c in cells.items() if n == nfe and c.value is not None]
            best[nfe] = min(vals) if vals and metric in LOWER_IS_BETTER else None
        body, warn_lines, order_lines = [], [], []
        for label, grid in settings:
            line = [_md_escape(label), _md_escape(grid)]
            for nfe in nfes:
                c = cells.get((label, grid, nfe))
                if c is None:
                    line.append(MISSING)
                    continue
                seed_counts.add(c.n)
                mismatch |= c.nfe_mismatch
                t = c.text()
                if c.value is not None and c.value == best[nfe]:
                    t = f"{WARN} **{t[len(WARN) + 1:]}**" if c.warnings else f"**{t}**"
                line.append(t)
                for r, w in c.warnings:
                    warn_lines.append(f"- {WARN} {_md_escape(_where(r))}: {_md_escape(w)}")
                if c.short:
                    r0 = next(r for r in c.rows if orders_short(r))
                    order_lines.append(f"- {_md_escape(label)} · {_md_escape(grid)} · NFE {nfe}: ran orders "
                                       f"{','.join(str(v) for v in step_orders(r0))} (nominal {r0.get('order')})")
            body.append(line)
        warned |= bool(warn_lines)
        short |= bool(order_lines)
        n_samples = _unique_text(r.get("n_samples") for r in srows)
        dtypes = _unique_text(r.get("dtype") for r in srows)
        model = key[1] or "exact model"
        lines += [f"## {_md_escape(_section_title(key))}", "",
                  f"{len(srows)} rows; {_md_escape(model)}; n_samples {n_samples}; {dtypes}.", "",
                  _md_table(["setting", "grid"] + [f"NFE {n}" for n in nfes], body, ["l", "l"] + ["r"] * len(nfes)),
                  ""]
        for title, items in (("Warnings", warn_lines), ("Orders actually run, where they never reach the nominal "
                                                        "order", order_lines)):
            if items:
                more = [f"- … and {len(items) - MAX_LISTED} more (see `results.jsonl`)"] if len(items) > MAX_LISTED \
                    else []
                lines += [f"{title}:", ""] + items[:MAX_LISTED] + more + [""]

    notes = []
    if seed_counts == {1}:
        notes.append("Each cell is one seed.")
    elif seed_counts:
        sc = sorted(seed_counts)
        notes.append(f"Each cell is the mean over {sc[0] if len(sc) == 1 else f'{sc[0]}–{sc[-1]}'} seeds "
                     "(non-finite if any seed is).")
    notes.append("`nan (step k)`: the samples became non-finite at solver step k; `—`: not run or not computed.")
    if mismatch:
        notes.append("†: the solver used a different number of model evaluations than requested (`nfe_actual`; "
                     "samplers that differentiate through the model, e.g. DPS and TDS, count each backward pass "
                     "as an evaluation there).")
    if warned:
        notes.append(f"{WARN}: the row has a warning (listed under its table).")
    if short:
        notes.append("`(ran oK)`: the solver steps never reached the nominal order (warm-up, lower-order final "
                     "steps or the safeguard); the orders run are listed under the table.")
    lines += [" ".join(notes), ""]
    lines += _summary_lines(rows)
    return "\n".join(lines)


def program_totals(rows: Sequence[Row]) -> dict[str, float]:
    """``{"programs", "compile_s", "wall_s"}`` with each ``program`` counted once
    (rows without a program id count as programs of their own)."""
    programs: dict[Any, tuple[float, float]] = {}
    for i, r in enumerate(rows):
        pid = r.get("program")
        key = ("program", pid) if pid is not None else ("row", i)
        if key not in programs:
            programs[key] = (_finite(r.get("compile_s")) or 0.0, _finite(r.get("wall_s")) or 0.0)
    return {"programs": len(programs), "compile_s": sum(c for c, _ in programs.values()),
            "wall_s": sum(w for _, w in programs.values())}


def _summary_lines(rows: Sequence[Row]) -> list[str]:
    tot = program_totals(rows)
    runs: dict[str, int] = {}
    for r in rows:
        runs[str(r.get("run"))] = runs.get(str(r.get("run")), 0) + 1
    devices = sorted({(r.get("n_devices"), r.get("device_kind")) for r in rows}, key=str)
    dev_text = ", ".join(f"{n} × {kind}" for n, kind in devices)
    n_warn = sum(1 for r in rows if _warning(r))
    lines = ["## Summary", "",
             f"- rows: {len(rows)} (" + ", ".join(f"{k}: {v}" for k, v in sorted(runs.items())) + ")",
             f"- compiled programs: {tot['programs']}; compile {_fmt_seconds(tot['compile_s'])}, "
             f"run {_fmt_seconds(tot['wall_s'])} (each program counted once)",
             f"- devices: {dev_text}"]
    if n_warn:
        lines.append(f"- {WARN} rows with a warning: {n_warn}")
    for problem in sorted({str(r.get("problem")) for r in rows}):
        prows = [r for r in rows if str(r.get("problem")) == problem]
        floors = [v for v in (_ref(r, "sw2_floor") for r in prows) if v is not None]
        exact = [v for v in (_ref(r, "mean_log_density_exact") for r in prows) if v is not None]
        fd_floors = [v for v in (_ref(r, "fd_floor") for r in prows) if v is not None]
        acc = [v for v in (_ref(r, "classifier_test_accuracy") for r in prows) if v is not None]
        parts = []
        if fd_floors:
            parts.append(f"fd floor (training split vs test split) {_range_text(fd_floors)}")
        if acc:
            parts.append(f"feature classifier test accuracy {_range_text(acc)}")
        if floors:
            parts.append(f"sw2 noise floor {_range_text(floors)}")
        if exact:
            parts.append(f"exact mean_log_density {_range_text(exact)}")
        if parts:
            lines.append(f"- {_md_escape(problem)}: " + "; ".join(parts))
    if any(_ref(r, "sw2_floor") is not None for r in rows):
        lines += ["", "The sw2 noise floor is the sw2 between two independent sets of exact samples of the same "
                      "size: a smaller sw2, or a smaller difference between two settings, is not resolved."]
    lines.append("")
    return lines


# --------------------------------------------------------------------------- printed summary
SUMMARY_MAX_ROWS = 12
FLOOR_HEADER = {"sw2": "sw2 floor", "fd": "fd floor", "mean_log_density": "exact samples"}


def _text_table(header: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()
    return [fmt(header)] + [fmt(r) for r in body]


def _metric_cell(row: Row, metric: str) -> str:
    if not _has_metric(row, metric):
        return MISSING
    v = _metric(row, metric)
    if v is not None:
        return fmt_value(v)
    step = row.get("first_nonfinite_step")
    return "nan" + (f" (step {step})" if step is not None else "")


def _summary_pick(rows: Sequence[Row], metric: str, max_rows: int) -> list[Row]:
    """At most ``max_rows`` rows: all when they fit, else the best row (``metric``) at each NFE."""
    if len(rows) <= max_rows:
        return list(rows)
    out = []
    for nfe in sorted({int(r.get("nfe")) for r in rows}):
        at = [r for r in rows if int(r.get("nfe")) == nfe]
        finite = [r for r in at if _metric(r, metric) is not None]
        if metric in LOWER_IS_BETTER and finite:
            out.append(min(finite, key=lambda r: _metric(r, metric)))
        else:
            out.append(at[0])
    return out[:max_rows]


def summary_text(rows: Sequence[Row], metric: Optional[str] = None, max_rows: int = SUMMARY_MAX_ROWS) -> str:
    """A short human table of ``rows``: what a run prints at its end.

    Per section (problem, model, end, dtype; see :func:`results_markdown`) a header line,
    then one line per row: the setting (⚠ when the row has a warning, and the orders
    actually run when they never reach the nominal order; other differences from the
    nominal order, e.g. warm-up steps, are a note under the table), grid, NFE, each metric with
    its noise floor next to it (``sw2 floor``, ``fd floor``, the exact samples' mean
    log-density), run and compile time of the row's program; then the warnings and the
    first non-finite solver step of each row that has one.  More than ``max_rows`` rows
    of a section are cut to the best row (by ``metric``, default :func:`default_metric`)
    at each NFE, and the header says so.
    """
    rows = dedupe_rows(rows)
    if not rows:
        return "No results rows."
    metric = metric or default_metric(rows)
    out: list[str] = []
    for key, srows in _sections(rows).items():
        srows = sorted(srows, key=lambda r: (str(r.get("label")), _grid_rank(str(r.get("grid"))), int(r.get("nfe")),
                                             str(r.get("seed"))))
        shown = _summary_pick(srows, metric, max_rows)
        metrics = [m for m in METRICS if any(_has_metric(r, m) for r in srows)]
        metrics += sorted({m for r in srows for m in (r.get("metrics") or {})} - set(metrics))
        seeds = len({r.get("seed") for r in srows}) > 1
        header, right = ["setting", "grid", "NFE"] + (["seed"] if seeds else []), [False, False, True] + (
            [True] if seeds else [])
        for m in metrics:
            header.append(m)
            right.append(True)
            if m in FLOORS and any(_ref(r, FLOORS[m][0]) is not None for r in srows):
                header.append(FLOOR_HEADER[m])
                right.append(True)
        header += ["run", "compile"]
        right += [True, True]
        body = []
        for r in shown:
            line = [(WARN + " " if _warning(r) else "") + setting_text(r), str(r.get("grid")), nfe_text(r)]
            if seeds:
                line.append(str(r.get("seed")))
            for m in metrics:
                line.append(_metric_cell(r, m))
                if FLOOR_HEADER.get(m) in header:
                    v = _ref(r, FLOORS[m][0])
                    line.append(fmt_value(v) if v is not None else MISSING)
            for t in ("wall_s", "compile_s"):
                v = _finite(r.get(t))
                line.append(_fmt_seconds(v) if v is not None else MISSING)
            body.append(line)
        n = _unique_text(r.get("n_samples") for r in srows)
        dt = _unique_text(r.get("dtype") for r in srows)
        title = _section_title(key) + ("" if key[1] else ", exact model")
        head = f"{title}; {n} samples; {dt}; {len(srows)} row{'s' if len(srows) != 1 else ''}"
        if len(shown) < len(srows):
            head += f" (the best setting at each NFE by {metric} shown; all rows in results.md)"
        out += [head] + ["  " + s for s in _text_table(header, body, right)]
        meaning = [f"{m}: {METRIC_AXIS[m]}" + (" (lower is better)" if m in LOWER_IS_BETTER else "")
                   for m in metrics if m in METRIC_AXIS]
        if meaning:
            out += textwrap.wrap("; ".join(meaning) + ". run/compile: the row's compiled program.", width=100,
                                 initial_indent="  ", subsequent_indent="  ")
        for r in shown:
            so = step_orders(r)
            if so is not None and not orders_short(r) and any(v != r.get("order") for v in so):
                out.append(f"  {_where(r)}: solver steps ran orders {','.join(str(v) for v in so)} "
                           f"(nominal {r.get('order')})")
            if _warning(r):
                out.append(f"  {WARN} {_where(r)}: {_warning(r)}")
            elif r.get("first_nonfinite_step") is not None:
                out.append(f"  {_where(r)}: samples non-finite from solver step {r['first_nonfinite_step']}"
                           + (f" ({r['n_nonfinite']} of {r.get('n_samples')})" if r.get("n_nonfinite") else ""))
        hidden = [r for r in srows if _warning(r) and all(r is not s for s in shown)]
        if hidden:
            out.append(f"  {WARN} {len(hidden)} more row(s) with a warning: see results.md")
        out.append("")
    return "\n".join(out).rstrip("\n")


def print_summary(rows: Sequence[Row], metric: Optional[str] = None, file=None) -> str:
    """Print :func:`summary_text` of ``rows`` (to stdout, or ``file``); returns the text."""
    text = summary_text(rows, metric)
    print(text, file=file if file is not None else sys.stdout, flush=True)
    return text


# --------------------------------------------------------------------------- plots
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
FACETS = ("grid", "best_grid")


def _floor(srows: Sequence[Row], metric: str) -> Optional[float]:
    if metric not in FLOORS:
        return None
    vals = [v for v in (_ref(r, FLOORS[metric][0]) for r in srows) if v is not None]
    return float(np.median(vals)) if vals else None


def best_grids(rows: Sequence[Row], metric: str) -> dict[str, str]:
    """label -> its best grid for ``metric`` (lower is better): the grid with the most
    finite NFEs, then the lowest mean log-metric over the NFEs every candidate grid has."""
    _, nfes, cells = _table_cells(rows, metric)
    out = {}
    for label in sorted({str(r.get("label")) for r in rows}):
        grids = sorted({g for (l, g, _) in cells if l == label}, key=_grid_rank)
        pts = {g: {n: cells[(label, g, n)].value for n in nfes if (label, g, n) in cells
                   and cells[(label, g, n)].value is not None and cells[(label, g, n)].value > 0} for g in grids}
        common = set.intersection(*(set(p) for p in pts.values())) if pts else set()

        def score(g):
            use = common or set(pts[g])
            logs = [math.log(pts[g][n]) for n in use if n in pts[g]]
            return (-len(pts[g]), float(np.mean(logs)) if logs else math.inf, _grid_rank(g))
        if grids:
            out[label] = min(grids, key=score)
    return out


def error_vs_nfe_figure(rows: Sequence[Row], metric: str = "mean_l2", facet: str = "grid"):
    """The ``matplotlib.figure.Figure`` of ``metric`` against NFE (log-log).

    ``facet="grid"``: one panel per grid spacing (panels of one problem share their y
    axis), one line per solver setting; ``facet="best_grid"``: one panel per problem
    with each solver setting on its best grid (:func:`best_grids`; lower-is-better
    metrics only).  A problem with several models, ends or dtypes gets a row of panels
    each, titled as in results.md (a trained network says so).  Points are means over
    seeds; a non-finite point is drawn as an ``x`` on the panel's top edge, a point of a
    row with a warning gets a red ring.  The noise floor (sw2, fd) or the exact samples'
    value (mean_log_density) is a dashed grey line.  Axis labels say what is plotted in
    words; the legend sits below the panels.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    if facet not in FACETS:
        raise ValueError(f"facet: {facet!r} is not a facet; allowed: {', '.join(FACETS)}")
    rows = dedupe_rows(rows)
    _check_metric(rows, metric)
    if facet == "best_grid" and metric not in LOWER_IS_BETTER:
        raise ValueError(f"facet: 'best_grid' needs a lower-is-better metric ({', '.join(sorted(LOWER_IS_BETTER))}),"
                         f" got {metric!r}")
    sections = _sections(rows)
    # panels: (section key, grid or None, {label: (grid, cells)})
    panels = []
    for key, srows in sections.items():
        settings, nfes, cells = _table_cells(srows, metric)
        if facet == "grid":
            for grid in sorted({g for _, g in settings}, key=_grid_rank):
                panels.append((key, grid, {l: g for l, g in settings if g == grid}, nfes, cells))
        else:
            panels.append((key, None, best_grids(srows, metric), nfes, cells))
    per_section = OrderedDict()
    for p in panels:
        per_section.setdefault(p[0], []).append(p)
    most = max((len(v) for v in per_section.values()), default=1)
    ncols = max(1, most if most <= 3 else (2 if most == 4 else 3))  # 4 grids: 2 x 2, readable in a README
    layout = []  # (figure row, col, panel)
    row_i = 0
    for ps in per_section.values():
        for j, p in enumerate(ps):
            layout.append((row_i + j // ncols, j % ncols, p))
        row_i += math.ceil(len(ps) / ncols)
    nrows = max(1, row_i)
    labels = sorted({str(r.get("label")) for r in rows})
    colors = {l: f"C{i % 10}" for i, l in enumerate(labels)}
    markers = {l: _MARKERS[i % len(_MARKERS)] for i, l in enumerate(labels)}
    pw, ph = (5.2, 3.9) if ncols == 1 and nrows == 1 else (3.9, 3.1)
    legend_cols = 2 if ncols == 1 else 4
    fig = Figure(figsize=(pw * ncols + 0.4, ph * nrows + 0.9 + 0.22 * math.ceil((len(labels) + 3) / legend_cols)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    used = set()
    handles: "OrderedDict[str, Any]" = OrderedDict()
    any_nan = any_warn = False
    floor_label = None
    ylims: dict[tuple, list[float]] = {}
    for fr, fc, (key, grid, chosen, nfes, cells) in layout:
        ax = axes[fr, fc]
        used.add((fr, fc))
        ys = []
        for label in labels:
            if label not in chosen:
                continue
            g = chosen[label]
            pts = [(n, cells[(label, g, n)]) for n in nfes if (label, g, n) in cells]
            fin = [(n, c.value) for n, c in pts if c.value is not None]
            name = label if facet == "grid" else f"{label} ({g})"
            if fin:  # a non-finite point breaks the line (nan), so no segment bridges it
                (h,) = ax.plot([n for n, _ in pts], [math.nan if c.value is None else c.value for _, c in pts],
                               color=colors[label],
                               marker=markers[label], markersize=4, linewidth=1.3)
                handles.setdefault(name, h)
                ys += [v for _, v in fin]
            bad = [n for n, c in pts if c.computed and c.value is None]
            if bad:
                any_nan = True
                ax.plot(bad, [0.97] * len(bad), linestyle="none", marker="x", color=colors[label], markersize=6,
                        transform=ax.get_xaxis_transform(), clip_on=False)
            warn = [(n, c.value) for n, c in pts if c.warnings and c.value is not None]
            if warn:
                any_warn = True
                ax.plot([p[0] for p in warn], [p[1] for p in warn], linestyle="none", marker="o", markersize=9,
                        markerfacecolor="none", markeredgecolor="red", markeredgewidth=1.2)
        fl = _floor(sections[key], metric)
        if fl is not None:
            floor_label = FLOORS[metric][1]
            ax.axhline(fl, color="0.45", linestyle="--", linewidth=1.1)
            ys.append(fl)
        ylims.setdefault(key, []).extend(ys)
        ax.set_xscale("log")
        shown_nfes = sorted({n for (l, g, n), c in cells.items() if l in chosen and chosen[l] == g})
        if shown_nfes:
            ax.xaxis.set_major_locator(FixedLocator(shown_nfes))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(v) for v in shown_nfes])
            if len(shown_nfes) > 1:
                ax.set_xlim(shown_nfes[0] / 1.12, shown_nfes[-1] * 1.12)
        if not ys:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center", color="0.4")
        title = _section_title(key) if len(per_section) > 1 or key[1] or facet == "best_grid" else ""
        sub = f"grid: {grid}" if grid is not None else "each solver on its best grid"
        ax.set_title(f"{title}\n{sub}" if title else sub, fontsize=9)
        ax.set_xlabel("model evaluations (NFE)", fontsize=8)
        if fc == 0:
            ax.set_ylabel(METRIC_AXIS.get(metric, metric), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    # panels of one section share their y range (log when everything is positive)
    for fr, fc, (key, *_rest) in layout:
        ax = axes[fr, fc]
        ys = ylims.get(key) or []
        if ys and min(ys) > 0:
            ax.set_yscale("log")
            lo, hi = min(ys), max(ys)
            ax.set_ylim(lo / 1.4, hi * 1.4)
        elif ys:
            lo, hi = min(ys), max(ys)
            pad = 0.08 * (hi - lo or abs(hi) or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
    for r in range(nrows):
        for c in range(ncols):
            if (r, c) not in used:
                axes[r, c].set_axis_off()
    if not layout:
        axes[0, 0].text(0.5, 0.5, "no results rows", transform=axes[0, 0].transAxes, ha="center", va="center")
        axes[0, 0].set_axis_off()
    if floor_label:
        handles[floor_label] = Line2D([], [], color="0.45", linestyle="--", linewidth=1.1)
    if any_nan:
        handles["non-finite (x on the top edge)"] = Line2D([], [], color="0.3", linestyle="none", marker="x")
    if any_warn:
        handles[f"{WARN} warning (see results.md)"] = Line2D([], [], linestyle="none", marker="o", markersize=9,
                                                            markerfacecolor="none", markeredgecolor="red")
    models = sorted({key[1] for key in sections if key[1]})
    if len(per_section) == 1 and facet == "grid":
        key = next(iter(sections))
        fig.suptitle(f"{_section_title(key)}: {METRIC_AXIS.get(metric, metric)} (lower is better)"
                     if metric in LOWER_IS_BETTER else f"{_section_title(key)}: {METRIC_AXIS.get(metric, metric)}",
                     fontsize=10)
    elif models:
        fig.suptitle("; ".join(models), fontsize=10)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncol=min(legend_cols, len(handles)), fontsize=8, frameon=False)
    return fig


def plot_error_vs_nfe(rows: Sequence[Row], path, metric: str = "mean_l2", facet: str = "grid") -> str:
    """Write :func:`error_vs_nfe_figure` as a PNG at ``path`` (atomically); returns ``path``."""
    return _save_figure(error_vs_nfe_figure(rows, metric, facet), path)


def _problem_cache() -> Callable[[str], Optional[tuple]]:
    cache: dict[str, Optional[tuple]] = {}

    def load(name: str) -> Optional[tuple]:
        if name not in cache:
            import samplax

            try:
                cache[name] = samplax.load_problem(name)
            except (ValueError, KeyError, OSError):  # not an analytic benchmark problem
                cache[name] = None
        return cache[name]

    return load


def _data_samples(name: str, n: int) -> Optional[np.ndarray]:
    """``n`` samples of samplax's data set ``name`` (None when there is no such data set)."""
    from samplax.data import make_dataset

    try:
        data = make_dataset(name)
        return np.asarray(data.batch(0, 0, n)[0], np.float64)
    except (ValueError, KeyError, OSError, TypeError):
        return None


def _load_samples(workdir, row: Row) -> Optional[np.ndarray]:
    rel = row.get("samples_file")
    if not rel:
        return None
    try:
        x = np.asarray(sio.load_npy(sio.as_path(workdir) / str(rel)), dtype=np.float64)
    except (OSError, ValueError, FileNotFoundError):
        return None
    return x if x.ndim >= 2 and x.shape[0] > 0 else None


def sample_kind(x: np.ndarray) -> Optional[str]:
    """"points" for (n, 2) samples, "images" for (n, H, W) or (n, H, W, C) with C in
    1, 3, 4, else None (vectors of another dimension are not drawn)."""
    if x.ndim == 2 and x.shape[1] == 2:
        return "points"
    if x.ndim == 3 and min(x.shape[1:]) >= 2:
        return "images"
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and min(x.shape[1:3]) >= 2:
        return "images"
    return None


def _pick_panels(rows: Sequence[Row], metric: str, n: int) -> list[Row]:
    """Up to ``n`` rows: the best at the smallest NFE, the worst finite at the smallest NFE,
    the best at the largest NFE, then the best at the other NFEs (ascending); no repeats.
    Without a finite metric (e.g. a user model without reference data): the first
    row at each NFE, largest NFE first."""
    finite = [r for r in rows if _metric(r, metric) is not None]
    if not finite:
        nfes = sorted({int(r["nfe"]) for r in rows}, reverse=True)
        return [next(r for r in rows if int(r["nfe"]) == v) for v in nfes][:n]
    nfes = sorted({int(r["nfe"]) for r in finite})

    def at(nfe: int) -> list[Row]:
        return sorted((r for r in finite if int(r["nfe"]) == nfe), key=lambda r: _metric(r, metric))

    picks = [at(nfes[0])[0], at(nfes[0])[-1], at(nfes[-1])[0]] + [at(v)[0] for v in nfes[1:-1]]
    out: list[Row] = []
    for r in picks:
        if all(r is not o for o in out):
            out.append(r)
    return out[:n]


def _image_tile(x: np.ndarray, n_max: int = 36) -> np.ndarray:
    """Up to ``n_max`` images (n, H, W[, C]) tiled into one (rows*H, cols*W[, C]) array in
    [0, 1]: data in about [-1, 1] is mapped with (x + 1) / 2, anything else min-max."""
    x = x[:n_max]
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    fin = x[np.isfinite(x)]
    lo, hi = (np.percentile(fin, 1), np.percentile(fin, 99)) if fin.size else (-1.0, 1.0)
    if lo >= -1.5 and hi <= 1.5:
        y = (x + 1.0) / 2.0
    else:
        y = (x - lo) / (hi - lo if hi > lo else 1.0)
    y = np.clip(np.nan_to_num(y, nan=0.0), 0.0, 1.0)
    n, h, w = y.shape[:3]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    pad = 1
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad) + y.shape[3:])
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = y[i]
    return out


def samples_figure(rows: Sequence[Row], workdir, max_panels: int = 4, metric: str = "mean_l2"):
    """The figure of the saved samples of some rows (2-D points or image grids), or None.

    For every section (problem, model, ...) whose rows have readable ``samples_file``\\ s
    (relative to ``workdir``) of 2-D points or images, one row of panels: reference
    samples first (the exact model's, or the data set's for samplax's data sets; none for
    a model without either), then up to ``max_panels - 1`` solver rows -- the best
    (lowest ``metric``) and worst finite row at the smallest NFE and the best row at the
    largest NFE (then the best at other NFEs if room is left).  When ``metric`` is not
    "lower is better" the choice uses ``mean_l2`` (or the row's other metric).  Points
    are drawn over contour lines of the exact density (its 50%, 90% and 99%
    highest-density regions) when the problem has one (gmm2d, also for a network
    trained on it); all point panels of a section share their axes limits, and a panel
    notes how many of its samples fall outside them.  Images are tiled (up to 36 per
    panel).  Returns None, and logs why (no sample files, only vectors of another
    dimension), when nothing can be drawn.
    """
    import jax
    import jax.numpy as jnp
    from matplotlib.figure import Figure

    if max_panels < 2:
        raise ValueError(f"max_panels: must be >= 2 (reference samples + one row), got {max_panels}")
    rows = dedupe_rows(rows)
    if metric in LOWER_IS_BETTER:
        pick_metric = metric
    else:
        pick_metric = next((m for m in ("mean_l2", "fd", "sw2") if any(_metric(r, m) is not None for r in rows)),
                           "mean_l2")
    load = _problem_cache()
    with_files = [r for r in rows if r.get("samples_file")]
    if not with_files:
        logging.info("samples plot: skipped: no row has a samples file (metrics.save_samples = 0?)")
        return None
    groups: "OrderedDict[tuple, list[tuple[Row, np.ndarray]]]" = OrderedDict()
    skipped: dict[str, str] = {}
    for key, srows in _sections(with_files).items():
        for r in srows:
            x = _load_samples(workdir, r)
            if x is None:
                skipped.setdefault(str(r.get("samples_file")), "unreadable")
                continue
            kind = sample_kind(x)
            if kind is None:
                skipped.setdefault(_section_title(key), f"samples of shape {x.shape[1:]} are neither 2-D points "
                                                        f"nor images")
                continue
            groups.setdefault(key + (kind, x.shape[1:]), []).append((r, x))
    for what, why in skipped.items():
        logging.info("samples plot: %s: %s", what, why)
    if not groups:
        logging.info("samples plot: skipped: nothing to draw (%s)", "; ".join(f"{k}: {v}" for k, v in
                                                                             skipped.items()) or "no samples")
        return None

    panels = []
    for gkey, cands in groups.items():
        chosen = _pick_panels([r for r, _ in cands], pick_metric, max_panels - 1)
        panels.append((gkey, [(r, x) for c in chosen for r, x in cands if r is c]))
    ncols = max(1 + len(p[1]) for p in panels)
    fig = Figure(figsize=(3.3 * ncols, 3.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), ncols, squeeze=False)

    def title_of(r: Row) -> str:
        v = _metric(r, pick_metric)
        val = f"{pick_metric} {fmt_value(v) if v is not None else 'nan'}" if _has_metric(r, pick_metric) else ""
        first = f"{WARN} " if _warning(r) else ""
        return (f"{first}{setting_text(r)} · {r.get('grid')} · NFE {r.get('nfe')}\n"
                f"{val}{' ' if val else ''}(seed {r.get('seed')})")

    for i, (gkey, chosen) in enumerate(panels):
        problem, model, kind = gkey[0], gkey[1], gkey[4]
        head = _section_title(gkey[:4])
        k = max(x.shape[0] for _, x in chosen)
        prob = load(problem) if kind == "points" else None
        gmm = prob[0] if prob is not None and prob[0].dim == 2 else None
        if gmm is not None:
            ref = np.asarray(gmm.sample(jax.random.PRNGKey(0), k), np.float64)
            ref_title = f"{head}\nexact samples ({k})"
        else:
            ref = _data_samples(problem, k)
            if ref is not None and ref.shape[1:] != chosen[0][1].shape[1:]:
                ref = None
            ref_title = f"{head}\ndata samples ({k})"
        j0 = 0
        if kind == "images":
            if ref is not None:
                axes[i, 0].imshow(_image_tile(ref), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                axes[i, 0].set_title(ref_title, fontsize=8)
                axes[i, 0].set_axis_off()
                j0 = 1
            for j, (r, x) in enumerate(chosen, start=j0):
                axes[i, j].imshow(_image_tile(x), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                axes[i, j].set_title(title_of(r), fontsize=8)
                axes[i, j].set_axis_off()
            for j in range(j0 + len(chosen), ncols):
                axes[i, j].set_axis_off()
            continue
        # points: limits from the reference (and the mixture's 4-sigma boxes), widened to the
        # bulk (2nd-98th percentile) of the shown samples but at most to 1.75 times the
        # reference half-width, so that a diverged row does not shrink the density to a dot
        base = [x[np.all(np.isfinite(x), axis=1)] for _, x in chosen]
        src = ref if ref is not None else np.concatenate([b for b in base if len(b)] or [np.zeros((1, 2))])
        lo, hi = np.percentile(src, 0.5, axis=0), np.percentile(src, 99.5, axis=0)
        if gmm is not None:
            means, stds = np.asarray(gmm.means, np.float64), np.asarray(gmm.stds, np.float64)
            lo = np.minimum(ref.min(0), (means - 4 * stds[:, None]).min(0))
            hi = np.maximum(ref.max(0), (means + 4 * stds[:, None]).max(0))
        mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-6)
        for xf in base:
            if len(xf):
                lo = np.minimum(lo, np.maximum(np.percentile(xf, 2, axis=0), mid - 1.75 * half))
                hi = np.maximum(hi, np.minimum(np.percentile(xf, 98, axis=0), mid + 1.75 * half))
        pad = 0.05 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        contour = None
        if gmm is not None:
            gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
            pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), gmm.means.dtype)
            logp = np.asarray(gmm.log_prob_ve(pts, 0.0), np.float64).reshape(gx.shape)
            # highest-density-region contours holding 50%, 90% and 99% of the exact mass
            lp_exact = np.asarray(gmm.log_prob_ve(jnp.asarray(ref, gmm.means.dtype), 0.0), np.float64)
            contour = (gx, gy, logp, np.unique(np.quantile(lp_exact, [0.01, 0.10, 0.50])))

        def panel(ax, x: np.ndarray, title: str, color: str) -> None:
            if contour is not None:
                gx, gy, logp, levels = contour
                ax.contour(gx, gy, logp, levels=levels, colors=["0.75", "0.55", "0.3"][-len(levels):],
                           linewidths=0.8)
            xf = x[np.all(np.isfinite(x), axis=1)]
            ax.scatter(xf[:, 0], xf[:, 1], s=3, alpha=0.4, color=color, linewidths=0, rasterized=True)
            outside = int(np.sum(np.any((xf < lo) | (xf > hi), axis=1)))
            if outside or len(xf) < len(x):
                notes = ([f"{outside} outside view"] if outside else []) + (
                    [f"{len(x) - len(xf)} non-finite"] if len(xf) < len(x) else [])
                ax.text(0.02, 0.02, ", ".join(notes), transform=ax.transAxes, fontsize=7, color="0.3")
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal", adjustable="box")
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=7)

        if ref is not None:
            panel(axes[i, 0], ref, ref_title, "C2")
            j0 = 1
        for j, (r, x) in enumerate(chosen, start=j0):
            panel(axes[i, j], x, (head + "\n" if j0 == 0 and j == 0 else "") + title_of(r), "C0")
        for j in range(j0 + len(chosen), ncols):
            axes[i, j].set_axis_off()
    return fig


def plot_samples(rows: Sequence[Row], workdir, path, max_panels: int = 4, metric: str = "mean_l2") -> Optional[str]:
    """Write :func:`samples_figure` as a PNG at ``path`` and return ``path``; None (and
    nothing written) when there is nothing to draw."""
    fig = samples_figure(rows, workdir, max_panels=max_panels, metric=metric)
    return None if fig is None else _save_figure(fig, path)


def plot_samples_2d(rows: Sequence[Row], workdir, path, max_panels: int = 4, metric: str = "mean_l2"):
    """:func:`plot_samples` (kept for callers of the earlier name)."""
    return plot_samples(rows, workdir, path, max_panels=max_panels, metric=metric)


# --------------------------------------------------------------------------- tensorboard
def _tag_part(s: Any) -> str:
    """A TensorBoard-safe tag / directory component (letters, digits, ``_-.=``; the rest becomes ``_``)."""
    return re.sub(r"[^\w.\-=]+", "_", str(s)).strip("_") or "_"


def run_name(label: str, grid: str) -> str:
    """The TensorBoard run (sub-directory of ``tb/``) of a solver setting and grid: ``unipc_o3/logsnr``."""
    return f"{_tag_part(label)}/{_tag_part(grid)}"


def _files_under(root) -> list:
    """Every file under the directory ``root`` (an epath.Path; no recursive glob, which
    object stores refuse)."""
    out, todo = [], [root]
    while todo:
        d = todo.pop()
        for p in d.iterdir():
            (todo if p.is_dir() else out).append(p)
    return sorted(out, key=os.fspath)


def clear_tensorboard(logdir) -> int:
    """Delete every ``events.out.tfevents.*`` file under ``logdir`` (and, locally, the
    directories left empty); returns how many files."""
    root = sio.as_path(logdir)
    if not root.is_dir():
        return 0
    files = [p for p in _files_under(root) if p.name.startswith("events.out.tfevents.")]
    for p in files:
        p.unlink()
    if sio.is_local(root):
        for d, _, _ in sorted(os.walk(os.fspath(root)), key=lambda t: -len(t[0])):
            if d != os.fspath(root) and not os.listdir(d):
                os.rmdir(d)
    return len(files)


def _hparam_value(v: Any) -> Any:
    if isinstance(v, (bool, str)) or v is None:
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return json.dumps(v, sort_keys=True, default=str)


def _hparams_cells(rows: Sequence[Row], metrics: Sequence[str]) -> list[tuple[str, dict, dict, int]]:
    """One HParams session per (section, setting, grid, NFE): ``(session dir, hparams,
    {metric tag: value}, nfe)``; metric values are means over seeds (finite only)."""
    out = []
    option_keys = sorted({k for r in rows for k in (r.get("options") or {})})
    for key, srows in _sections(rows).items():
        slug = _section_slug(key, srows)
        groups: "OrderedDict[tuple, list[Row]]" = OrderedDict()
        for r in srows:
            groups.setdefault((str(r.get("label")), str(r.get("grid")), int(r.get("nfe"))), []).append(r)
        for (label, grid, nfe), cell in groups.items():
            r0 = cell[0]
            options = r0.get("options") or {}
            so = step_orders(r0)
            hp = dict(problem=str(key[0]), model=key[1] or "exact", solver=str(r0.get("solver")),
                      order=r0.get("order"), label=label, grid=grid, nfe=nfe, afs=bool(r0.get("afs")),
                      options=json.dumps(options, sort_keys=True, default=str), end=str(r0.get("end")),
                      dtype=str(r0.get("dtype")), seeds=len(cell),
                      orders_run=",".join(str(v) for v in so) if so else "", warning=any(_warning(r) for r in cell))
            for k in option_keys:
                if k in options:
                    hp[f"options.{k}"] = _hparam_value(options[k])
            hp = {k: _hparam_value(v) for k, v in hp.items() if v is not None}
            vals = {}
            for m in metrics:
                c = _Cell(cell, m)
                if c.value is not None:
                    vals[f"hparams/{m}"] = c.value
            for t, name in (("wall_s", "run_s"), ("compile_s", "compile_s")):
                v = _finite(r0.get(t))
                if v is not None:
                    vals[f"hparams/{name}"] = v
            out.append((f"{HPARAMS_RUN}/{slug}/{run_name(label, grid)}/nfe_{nfe:04d}", hp, vals, nfe))
    return out


def _hparams_summaries(sessions: Sequence[tuple[str, dict, dict, int]]):
    """(experiment summary, [(session start summary, session end summary)]) protos of the
    HParams plugin (tensorboardX ships its protos)."""
    from google.protobuf import struct_pb2
    from tensorboardX.proto import api_pb2, plugin_hparams_pb2
    from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata

    def summary(tag: str, data) -> Any:
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="hparams", content=data.SerializeToString()))
        return Summary(value=[Summary.Value(tag=tag, metadata=meta)])

    names = OrderedDict()
    for _, hp, _, _ in sessions:
        for k, v in hp.items():
            names.setdefault(k, set()).add(v)
    infos, types = [], {}
    for k, values in names.items():
        kinds = {type(v) for v in values}
        if kinds == {bool}:
            typ = api_pb2.DATA_TYPE_BOOL
        elif kinds == {float}:
            typ = api_pb2.DATA_TYPE_FLOAT64
        else:
            typ = api_pb2.DATA_TYPE_STRING
            values = {str(v) for v in values}
        types[k] = typ
        info = api_pb2.HParamInfo(name=k, type=typ)
        if typ != api_pb2.DATA_TYPE_FLOAT64:
            lv = struct_pb2.ListValue()
            lv.extend(sorted(values, key=str))
            info.domain_discrete.CopyFrom(lv)
        infos.append(info)
    metric_tags = sorted({t for _, _, vals, _ in sessions for t in vals})
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t),
                                       display_name=METRIC_AXIS.get(t.split("/", 1)[1], t.split("/", 1)[1]))
                    for t in metric_tags]
    exp = summary("_hparams_/experiment", plugin_hparams_pb2.HParamsPluginData(
        version=0, experiment=api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos)))
    out = []
    for _, hp, _, _ in sessions:
        ssi = plugin_hparams_pb2.SessionStartInfo()
        for k, v in hp.items():
            if types[k] == api_pb2.DATA_TYPE_BOOL:
                ssi.hparams[k].bool_value = v
            elif types[k] == api_pb2.DATA_TYPE_FLOAT64:
                ssi.hparams[k].number_value = v
            else:
                ssi.hparams[k].string_value = str(v)
        sei = plugin_hparams_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
        out.append((summary("_hparams_/session_start_info", plugin_hparams_pb2.HParamsPluginData(
            version=0, session_start_info=ssi)), summary("_hparams_/session_end_info",
                                                         plugin_hparams_pb2.HParamsPluginData(
                                                             version=0, session_end_info=sei))))
    return exp, out


def _write_events(rows: Sequence[Row], local_dir: str) -> None:
    """All event files of ``rows`` under the local directory ``local_dir``."""
    from tensorboardX import SummaryWriter

    metrics = [m for m in METRICS if any(_has_metric(r, m) for r in rows)]
    metrics += sorted({m for r in rows for m in (r.get("metrics") or {})} - set(metrics))
    writers: dict[str, Any] = {}

    def writer(run: str):
        if run not in writers:
            writers[run] = SummaryWriter(logdir=os.path.join(local_dir, *run.split("/")), flush_secs=3600,
                                         max_queue=100000)
        return writers[run]

    try:
        for key, srows in _sections(rows).items():
            slug = _section_slug(key, srows)
            nfes = sorted({int(r.get("nfe")) for r in srows})
            for metric in metrics:
                settings, _, cells = _table_cells(srows, metric)
                for (label, grid, nfe), c in sorted(cells.items(), key=lambda kv: kv[0][2]):
                    if c.value is not None:
                        writer(run_name(label, grid)).add_scalar(f"{slug}/{metric}", c.value, global_step=nfe)
                fl = _floor(srows, metric)
                if fl is not None:
                    for nfe in nfes:
                        writer(FLOOR_RUN).add_scalar(f"{slug}/{metric}", fl, global_step=nfe)
            seen = set()
            for r in sorted(srows, key=lambda r: int(r.get("nfe"))):
                k = (str(r.get("label")), str(r.get("grid")), int(r.get("nfe")))
                if k in seen:
                    continue
                seen.add(k)
                for t, name in (("wall_s", "run_s"), ("compile_s", "compile_s")):
                    v = _finite(r.get(t))
                    if v is not None:
                        writer(run_name(k[0], k[1])).add_scalar(f"{slug}/time/{name}", v, global_step=k[2])
        sessions = _hparams_cells(rows, metrics)
        if sessions:
            exp, infos = _hparams_summaries(sessions)
            writer(HPARAMS_RUN).file_writer.add_summary(exp)
            for (run, _, vals, nfe), (ssi, sei) in zip(sessions, infos):
                w = writer(run)
                w.file_writer.add_summary(ssi)
                for tag, v in vals.items():
                    w.add_scalar(tag, v, global_step=nfe)
                w.file_writer.add_summary(sei)
    finally:
        for w in writers.values():
            w.close()


def write_tensorboard(rows: Sequence[Row], logdir) -> str:
    """Write the rows as TensorBoard event files under ``logdir`` (replacing what was there).

    * One run (sub-directory) per solver setting and grid, ``{label}/{grid}`` (e.g.
      ``unipc_o3/logsnr``), with the metric as the tag, ``{section}/{metric}``, step =
      NFE, so that the charts overlay solvers; ``{section}`` is the problem, then
      ``trained_step{N}`` for a trained network, ``end=...`` and the dtype when a problem
      has several.  Values are means over seeds; a non-finite point is left out.  The
      same runs hold ``{section}/time/run_s`` and ``{section}/time/compile_s``: the run
      and compile seconds of the row's compiled program (shared by all rows of it).
    * A run ``noise_floor`` with the same tags: ``sw2_floor`` under ``.../sw2``,
      ``fd_floor`` under ``.../fd``, the exact samples' ``mean_log_density``, at every
      NFE, so the floor is a flat line in each chart.
    * The HParams dashboard: an experiment summary in ``hparams/`` and one session per
      (section, setting, grid, NFE) in ``hparams/{section}/{label}/{grid}/nfe_NNNN`` with
      hparams problem, model, solver, order, label, grid, nfe, afs, options (JSON and one
      ``options.<name>`` per option), end, dtype, seeds, orders_run, warning, and metrics
      ``hparams/{metric}``, ``hparams/run_s``, ``hparams/compile_s``.

    The files are written to a local temporary directory first, then moved into
    place (local ``logdir``) or uploaded file by file through samplax.io (``gs://``
    and other object stores).  Returns ``logdir`` as a string.
    """
    rows = dedupe_rows(rows)
    target = sio.as_path(logdir)
    local = sio.is_local(target)
    parent = os.path.dirname(os.fspath(target)) if local else None
    if local:
        os.makedirs(parent, exist_ok=True)
        for name in os.listdir(parent):  # what a killed earlier report left behind
            if name.startswith(".tb.") and name.endswith((".tmp", ".old")):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=".tb.", suffix=".tmp", dir=parent)
    try:
        _write_events(rows, tmp)
        if local:
            old = None
            if os.path.exists(os.fspath(target)):
                old = tempfile.mkdtemp(prefix=".tb.", suffix=".old", dir=parent)
                os.replace(os.fspath(target), os.path.join(old, "tb"))
            os.replace(tmp, os.fspath(target))
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            sio.remove(target)
            for d, _, files in os.walk(tmp):
                for f in files:
                    rel = os.path.relpath(os.path.join(d, f), tmp)
                    with open(os.path.join(d, f), "rb") as fh:
                        sio.atomic_write_bytes(target / rel.replace(os.sep, "/"), fh.read())
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return os.fspath(target)


# --------------------------------------------------------------------------- all of it
def default_metric(rows: Sequence[Row]) -> str:
    """The first of mean_l2, fd, sw2 that some row has (mean_l2 for analytic problems,
    fd for digits, sw2 for other learned data)."""
    for m in ("mean_l2", "fd", "sw2"):
        if any((r.get("metrics") or {}).get(m) is not None for r in rows):
            return m
    return "mean_l2"


def write_report(workdir, rows: Sequence[Row], metric: Optional[str] = None) -> dict:
    """Write the whole report of ``rows`` under ``workdir`` (a local path or a URI).

    ``results.md`` (with links to the plots), ``plots/error_vs_nfe.png`` (one panel
    per grid), ``plots/error_vs_nfe_best_grid.png`` (when there are several grids and
    the metric is lower-is-better), ``plots/samples.png`` (when rows have 2-D or image
    samples) and ``tb/``.  Plot and event files of an earlier report that this one does
    not produce are removed, so the directory always describes the current rows.  With
    no rows only ``results.md`` (saying so) is written.  Returns
    ``{"results_md": path, "plots": [paths], "tensorboard": logdir or None}`` (strings).
    """
    rows = dedupe_rows(rows)
    metric = metric or default_metric(rows)
    root = sio.as_path(workdir)
    plots_dir = root / PLOTS_DIR
    error_png, best_png, samples_png = (plots_dir / ERROR_PLOT, plots_dir / BEST_GRID_PLOT,
                                        plots_dir / SAMPLES_PLOT)
    tb_dir = root / TB_DIR
    md = results_markdown(rows, metric)
    plots: list[str] = []
    tb: Optional[str] = None
    if rows:
        plots.append(plot_error_vs_nfe(rows, error_png, metric))
        if metric in LOWER_IS_BETTER and len({str(r.get("grid")) for r in rows}) > 1:
            plots.append(plot_error_vs_nfe(rows, best_png, metric, facet="best_grid"))
        s = plot_samples(rows, root, samples_png, metric=metric)
        if s is not None:
            plots.append(s)
        tb = write_tensorboard(rows, tb_dir)
    else:
        sio.remove(tb_dir)
    for stale in (error_png, best_png, samples_png):
        if os.fspath(stale) not in plots and stale.exists():
            stale.unlink()
    if plots:
        md = md.rstrip("\n") + "\n\n## Plots\n\n" + "\n\n".join(
            f"![{os.path.splitext(os.path.basename(p))[0]}]({PLOTS_DIR}/{os.path.basename(p)})" for p in plots) + "\n"
    md_path = sio.atomic_write_text(root / RESULTS_MD, md)
    return {"results_md": os.fspath(md_path), "plots": plots, "tensorboard": tb}


__all__ = [
    "METRICS", "LOWER_IS_BETTER", "METRIC_AXIS", "FLOORS", "results_markdown", "summary_text", "print_summary",
    "plot_error_vs_nfe", "error_vs_nfe_figure", "plot_samples", "samples_figure", "plot_samples_2d", "write_tensorboard", "write_report", "program_totals",
    "dedupe_rows", "fmt_value", "clear_tensorboard", "model_text", "setting_text", "step_orders", "orders_short",
    "best_grids", "run_name", "sample_kind", "default_metric",
]
