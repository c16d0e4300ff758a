"""Reports of an experiment's results rows: a markdown table, plots, TensorBoard scalars.

An experiment run appends one JSON row per (problem, solver setting, grid, end,
NFE, seed, ...) to ``WORKDIR/results.jsonl``; this module turns a list of such
rows (plain dicts) into derived, re-creatable files::

    WORKDIR/results.md              results_markdown(): one table per problem (and end)
    WORKDIR/plots/error_vs_nfe.png  plot_error_vs_nfe(): log-log error against NFE
    WORKDIR/plots/samples.png       plot_samples_2d(): 2-D samples over the exact density
    WORKDIR/tb/                     write_tensorboard(): scalars, step = NFE

:func:`write_report` writes all of them.  Every file is written atomically (a
temporary file in the same directory, then ``os.replace``), and each report
replaces the previous one, so a report can be re-made at any time from the rows.

Conventions:

* Rows are identified by ``(hash, seed)``; when the same pair occurs more than
  once (a re-run appended to the file) the last occurrence wins.
* A metric of ``None`` (or a non-finite float) means the value was non-finite.
  Several seeds of one setting are averaged; if any seed is non-finite the cell
  is non-finite.
* ``mean_l2`` and ``sw2`` are "lower is better"; ``mean_log_density`` is not
  ordered (over-concentrated samples score higher), so it is never marked best.
* Compile and run times belong to a compiled *program* that may have produced
  several rows; totals count each ``program`` once.
"""
from __future__ import annotations

import glob
import math
import os
import re
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from samplax.experiment.results import atomic_write, atomic_write_text

Row = Mapping[str, Any]

METRICS = ("mean_l2", "fd", "sw2", "mean_log_density")
LOWER_IS_BETTER = frozenset({"mean_l2", "fd", "sw2"})
MISSING = "—"

RESULTS_MD = "results.md"
PLOTS_DIR = "plots"
ERROR_PLOT = "error_vs_nfe.png"
SAMPLES_PLOT = "samples.png"
TB_DIR = "tb"


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


def _save_figure(fig: Any, path: str, dpi: int = 110) -> str:
    """Render a ``matplotlib.figure.Figure`` to a PNG at ``path`` (atomically) with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")

    return atomic_write(path, write, suffix=".png")


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


def _ref(row: Row, key: str) -> Optional[float]:
    return _finite((row.get("reference") or {}).get(key))


def _sections(rows: Sequence[Row]) -> "OrderedDict[tuple, list[Row]]":
    """Rows grouped by (problem, end, dtype), sorted; ``end``/``dtype`` are None when a
    problem has only one of them (so titles and tags mention them only when needed)."""
    by_problem: dict[str, list[Row]] = {}
    for r in rows:
        by_problem.setdefault(str(r.get("problem")), []).append(r)
    out: "OrderedDict[tuple, list[Row]]" = OrderedDict()
    for problem in sorted(by_problem):
        prows = by_problem[problem]
        ends = sorted({str(r.get("end")) for r in prows})
        dtypes = sorted({str(r.get("dtype")) for r in prows})
        for r in prows:
            key = (problem, str(r.get("end")) if len(ends) > 1 else None,
                   str(r.get("dtype")) if len(dtypes) > 1 else None)
            out.setdefault(key, []).append(r)
    return OrderedDict((k, out[k]) for k in sorted(out, key=lambda k: tuple("" if p is None else p for p in k)))


def _section_title(key: tuple) -> str:
    problem, end, dtype = key
    parts = [problem] + ([f"end={end}"] if end else []) + ([dtype] if dtype else [])
    return ", ".join(parts)


class _Cell:
    """The seeds of one (setting, grid, NFE): their mean, or why it is not finite."""

    def __init__(self, rows: Sequence[Row], metric: str):
        self.rows = list(rows)
        vals = [_metric(r, metric) for r in self.rows]
        self.n = len(vals)
        self.n_finite = sum(v is not None for v in vals)
        self.value: Optional[float] = float(np.mean(vals)) if vals and self.n_finite == self.n else None
        steps = [r.get("first_nonfinite_step") for r in self.rows
                 if _metric(r, metric) is None and r.get("first_nonfinite_step") is not None]
        self.first_nonfinite_step: Optional[int] = min(int(s) for s in steps) if steps else None
        self.nfe_mismatch = any(r.get("nfe_actual") is not None and r.get("nfe") is not None
                                and int(r["nfe_actual"]) != int(r["nfe"]) for r in self.rows)

    def text(self) -> str:
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
        return s + ("†" if self.nfe_mismatch else "")


def _table_cells(rows: Sequence[Row], metric: str):
    """``(settings, nfes, cells)``: settings are sorted (label, grid) pairs, nfes ascending,
    cells[(label, grid, nfe)] a :class:`_Cell`."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((str(r.get("label")), str(r.get("grid")), int(r.get("nfe"))), []).append(r)
    settings = sorted({(k[0], k[1]) for k in groups})
    nfes = sorted({k[2] for k in groups})
    return settings, nfes, {k: _Cell(v, metric) for k, v in groups.items()}


def _check_metric(rows: Sequence[Row], metric: str) -> None:
    if rows and metric not in METRICS and not any(metric in (r.get("metrics") or {}) for r in rows):
        raise ValueError(f"unknown metric {metric!r}; rows have {sorted({k for r in rows for k in (r.get('metrics') or {})})}")


def _range_text(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return fmt_value(lo, 3) if fmt_value(lo, 3) == fmt_value(hi, 3) else f"{fmt_value(lo, 3)} – {fmt_value(hi, 3)}"


def _unique_text(values: Iterable[Any]) -> str:
    vs = sorted({str(v) for v in values if v is not None})
    return ", ".join(vs) if vs else "?"


# --------------------------------------------------------------------------- markdown
METRIC_MEANING = {
    "mean_l2": "mean Euclidean distance of each sample to the exact probability-flow ODE solution from the same "
               "x_T (float64 reference, at sigma = 0)",
    "sw2": "sliced Wasserstein-2 distance between the samples and as many exact samples of the data distribution",
    "mean_log_density": "exact mean log-density of the samples under the data distribution",
    "fd": "Frechet distance between features (of a digits classifier trained here) of the samples and of the "
          "held-out test split; compare with fd_floor, the FD of the training split",
}


def results_markdown(rows: Sequence[Row], metric: str = "mean_l2") -> str:
    """A markdown document of ``metric`` for every row: tables, then a summary.

    One table per problem (split further by ``end`` and ``dtype`` when a problem has
    several), one line per solver setting (``label``) and ``grid``, one column per
    requested NFE (ascending).  A cell is the mean over the seeds of that setting; the
    lowest finite value of each NFE column is **bold** (for "lower is better" metrics
    only).  A non-finite cell reads ``nan (step k)`` with the first non-finite solver
    step, a missing one ``—``, and a † marks cells whose actual number of model
    evaluations differs from the requested NFE.  The summary gives the number of rows,
    the compiled programs with their compile and run times (each program counted once),
    the devices, and the reference values of exact samples (the sw2 noise floor).
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
    mismatch = False
    for key, srows in _sections(rows).items():
        settings, nfes, cells = _table_cells(srows, metric)
        best: dict[int, Optional[float]] = {}
        for nfe in nfes:
            vals = [c.value for (l, g, n), c in cells.items() if n == nfe and c.value is not None]
            best[nfe] = min(vals) if vals and metric in LOWER_IS_BETTER else None
        body = []
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
                line.append(f"**{t}**" if c.value is not None and c.value == best[nfe] else t)
            body.append(line)
        n_samples = _unique_text(r.get("n_samples") for r in srows)
        dtypes = _unique_text(r.get("dtype") for r in srows)
        lines += [f"## {_md_escape(_section_title(key))}", "",
                  f"{len(srows)} rows; n_samples {n_samples}; {dtypes}.", "",
                  _md_table(["setting", "grid"] + [f"NFE {n}" for n in nfes], body, ["l", "l"] + ["r"] * len(nfes)),
                  ""]

    notes = []
    if seed_counts == {1}:
        notes.append("Each cell is one seed.")
    else:
        sc = sorted(seed_counts)
        notes.append(f"Each cell is the mean over {sc[0] if len(sc) == 1 else f'{sc[0]}–{sc[-1]}'} seeds "
                     "(non-finite if any seed is).")
    notes.append("`nan (step k)`: the samples became non-finite at solver step k; `—`: not run.")
    if mismatch:
        notes.append("†: the solver used a different number of model evaluations than requested (`nfe_actual`).")
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
    lines = ["## Summary", "",
             f"- rows: {len(rows)} (" + ", ".join(f"{k}: {v}" for k, v in sorted(runs.items())) + ")",
             f"- compiled programs: {tot['programs']}; compile {_fmt_seconds(tot['compile_s'])}, "
             f"run {_fmt_seconds(tot['wall_s'])} (each program counted once)",
             f"- devices: {dev_text}"]
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


# --------------------------------------------------------------------------- plots
def _series(rows: Sequence[Row], metric: str) -> "OrderedDict[tuple, OrderedDict[tuple, list[tuple[int, float]]]]":
    """Per section, per (label, grid): the finite (nfe, mean over seeds) points, NFE ascending."""
    out: "OrderedDict[tuple, OrderedDict[tuple, list[tuple[int, float]]]]" = OrderedDict()
    for key, srows in _sections(rows).items():
        settings, nfes, cells = _table_cells(srows, metric)
        lines: "OrderedDict[tuple, list[tuple[int, float]]]" = OrderedDict()
        for label, grid in settings:
            lines[(label, grid)] = [(n, cells[(label, grid, n)].value) for n in nfes
                                    if (label, grid, n) in cells and cells[(label, grid, n)].value is not None]
        out[key] = lines
    return out


_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_error_vs_nfe(rows: Sequence[Row], path: str, metric: str = "mean_l2") -> str:
    """Plot ``metric`` against NFE (log-log), one line per (label, grid), one subplot per
    problem (and end/dtype when a problem has several); writes a PNG at ``path``.

    Points are means over seeds; non-finite points are left out.  Colour encodes the
    solver setting and line style/marker the grid.  The y axis is logarithmic when all
    values are positive (linear otherwise, e.g. for log densities); for ``sw2`` the
    noise floor of exact samples is drawn as a grey dashed line.  Returns ``path``.
    """
    from matplotlib.figure import Figure

    rows = dedupe_rows(rows)
    _check_metric(rows, metric)
    series = _series(rows, metric)
    n = max(1, len(series))
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    labels = sorted({lg[0] for s in series.values() for lg in s})
    grids = sorted({lg[1] for s in series.values() for lg in s})
    colors = {l: f"C{i % 10}" for i, l in enumerate(labels)}
    styles = {g: (_LINESTYLES[i % len(_LINESTYLES)], _MARKERS[i % len(_MARKERS)]) for i, g in enumerate(grids)}
    handles: "OrderedDict[str, Any]" = OrderedDict()
    for ax, (key, lines) in zip(axes, series.items()):
        all_y = [y for pts in lines.values() for _, y in pts]
        for (label, grid), pts in lines.items():
            if not pts:
                continue
            ls, marker = styles[grid]
            (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[label], linestyle=ls,
                           marker=marker, markersize=4, linewidth=1.3)
            handles.setdefault(f"{label} · {grid}", h)
        ax.set_xscale("log")
        nfes = sorted({p[0] for pts in lines.values() for p in pts})
        if nfes:
            from matplotlib.ticker import FixedLocator, NullLocator

            ax.xaxis.set_major_locator(FixedLocator(nfes))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(v) for v in nfes])
        if all_y and min(all_y) > 0:
            ax.set_yscale("log")
        if metric == "sw2":
            floors = [v for v in (_ref(r, "sw2_floor") for r in _sections(rows)[key]) if v is not None]
            if floors:
                ax.axhline(float(np.median(floors)), color="0.5", linestyle="--", linewidth=1)
                ax.annotate("exact-sample floor", (0.02, float(np.median(floors))), xycoords=("axes fraction", "data"),
                            fontsize=7, color="0.4", va="bottom")
        if not all_y:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_title(_section_title(key), fontsize=10)
        ax.set_xlabel("NFE")
        ax.set_ylabel(metric)
        ax.grid(True, which="both", alpha=0.3)
    if not series:
        axes[0].text(0.5, 0.5, "no results rows", transform=axes[0].transAxes, ha="center", va="center")
        axes[0].set_axis_off()
    for ax in axes[len(series):]:
        ax.set_axis_off()
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", fontsize=7,
                   frameon=False)
    return _save_figure(fig, path)


def _problem_cache() -> Callable[[str], Optional[tuple]]:
    cache: dict[str, Optional[tuple]] = {}

    def load(name: str) -> Optional[tuple]:
        if name not in cache:
            import samplax

            try:
                cache[name] = samplax.load_problem(name)
            except ValueError:  # not an analytic benchmark problem
                cache[name] = None
        return cache[name]

    return load


def _load_samples(workdir: str, row: Row) -> Optional[np.ndarray]:
    rel = row.get("samples_file")
    if not rel:
        return None
    p = os.path.join(workdir, rel)
    try:
        x = np.asarray(np.load(p), dtype=np.float64)
    except (OSError, ValueError):
        return None
    return x if x.ndim == 2 and x.shape[1] == 2 and x.shape[0] > 0 else None


def _pick_panels(rows: Sequence[Row], metric: str, n: int) -> list[Row]:
    """Up to ``n`` rows: the best at the smallest NFE, the worst finite at the smallest NFE,
    the best at the largest NFE, then the best at the other NFEs (ascending); no repeats."""
    finite = [r for r in rows if _metric(r, metric) is not None]
    if not finite:
        return list(rows[:1]) if n > 0 else []
    nfes = sorted({int(r["nfe"]) for r in finite})

    def at(nfe: int) -> list[Row]:
        return sorted((r for r in finite if int(r["nfe"]) == nfe), key=lambda r: _metric(r, metric))

    picks = [at(nfes[0])[0], at(nfes[0])[-1], at(nfes[-1])[0]] + [at(v)[0] for v in nfes[1:-1]]
    out: list[Row] = []
    for r in picks:
        if all(r is not o for o in out):
            out.append(r)
    return out[:n]


def plot_samples_2d(rows: Sequence[Row], workdir: str, path: str, max_panels: int = 4,
                    metric: str = "mean_l2") -> Optional[str]:
    """Scatter 2-D samples over contour lines of the exact data log density.

    For every 2-D problem among ``rows`` whose rows have a readable ``samples_file``
    (relative to ``workdir``), one row of panels: exact samples first, then up to
    ``max_panels - 1`` solver rows — the best (lowest ``metric``) and worst finite row
    at the smallest NFE and the best row at the largest NFE (then the best at other
    NFEs if room is left).  When ``metric`` is not "lower is better" the choice uses
    ``mean_l2``.  The contours are the exact density's 50%, 90% and 99% highest-density
    regions (darkest innermost); all panels of a problem share their axes limits, and
    a panel notes how many of its samples fall outside them.  Writes a PNG at
    ``path`` and returns it, or returns None and writes nothing when no 2-D row has
    samples.
    """
    import jax
    import jax.numpy as jnp
    from matplotlib.figure import Figure

    if max_panels < 2:
        raise ValueError(f"plot_samples_2d: max_panels must be >= 2 (exact samples + one row), got {max_panels}")
    pick_metric = metric if metric in LOWER_IS_BETTER else "mean_l2"
    load = _problem_cache()
    rows = dedupe_rows(rows)
    # problem -> [(row, samples)] for 2-D problems with samples on disk
    by_problem: "OrderedDict[str, list[tuple[Row, np.ndarray]]]" = OrderedDict()
    for r in rows:
        if not r.get("samples_file"):
            continue
        prob = load(str(r.get("problem")))
        if prob is None or prob[0].dim != 2:
            continue
        x = _load_samples(workdir, r)
        if x is not None:
            by_problem.setdefault(str(r["problem"]), []).append((r, x))
    if not by_problem:
        return None

    problems = sorted(by_problem)
    panels: list[tuple[str, list[tuple[Row, np.ndarray]]]] = []
    for problem in problems:
        cands = by_problem[problem]
        chosen = _pick_panels([r for r, _ in cands], pick_metric, max_panels - 1)
        panels.append((problem, [(r, x) for c in chosen for r, x in cands if r is c]))
    ncols = max(1 + len(p[1]) for p in panels)
    fig = Figure(figsize=(3.3 * ncols, 3.5 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), ncols, squeeze=False)
    for i, (problem, chosen) in enumerate(panels):
        gmm = load(problem)[0]
        k = max(x.shape[0] for _, x in chosen)
        exact = np.asarray(gmm.sample(jax.random.PRNGKey(0), k), np.float64)
        means, stds = np.asarray(gmm.means, np.float64), np.asarray(gmm.stds, np.float64)
        # limits: the exact samples and the components' 4-sigma boxes, widened to the bulk
        # (2nd-98th percentile) of the shown samples but at most to 1.75 times the exact
        # half-width, so that a diverged row does not shrink the density to a dot
        lo = np.minimum(exact.min(0), (means - 4 * stds[:, None]).min(0))
        hi = np.maximum(exact.max(0), (means + 4 * stds[:, None]).max(0))
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        for _, x in chosen:
            xf = x[np.all(np.isfinite(x), axis=1)]
            if len(xf):
                lo = np.minimum(lo, np.maximum(np.percentile(xf, 2, axis=0), mid - 1.75 * half))
                hi = np.maximum(hi, np.minimum(np.percentile(xf, 98, axis=0), mid + 1.75 * half))
        pad = 0.05 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), gmm.means.dtype)
        logp = np.asarray(gmm.log_prob_ve(pts, 0.0), np.float64).reshape(gx.shape)
        # highest-density-region contours holding 50%, 90% and 99% of the exact mass: the
        # log density exceeded by that fraction of exact samples
        lp_exact = np.asarray(gmm.log_prob_ve(jnp.asarray(exact, gmm.means.dtype), 0.0), np.float64)
        levels = np.unique(np.quantile(lp_exact, [0.01, 0.10, 0.50]))

        def panel(ax, x: np.ndarray, title: str, color: str) -> None:
            ax.contour(gx, gy, logp, levels=levels, colors=["0.75", "0.55", "0.3"][-len(levels):], linewidths=0.8)
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

        panel(axes[i, 0], exact, f"{problem}: exact samples ({k})", "C2")
        for j, (r, x) in enumerate(chosen, start=1):
            v = _metric(r, pick_metric)
            title = (f"{r.get('label')} · {r.get('grid')} · NFE {r.get('nfe')}\n"
                     f"{pick_metric} {fmt_value(v) if v is not None else 'nan'} (seed {r.get('seed')})")
            panel(axes[i, j], x, title, "C0")
        for j in range(1 + len(chosen), ncols):
            axes[i, j].set_axis_off()
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- tensorboard
def _tag_part(s: Any) -> str:
    """A TensorBoard-safe tag component (letters, digits, ``_-.``; the rest becomes ``_``)."""
    return re.sub(r"[^\w.\-]+", "_", str(s)).strip("_") or "_"


def clear_tensorboard(logdir: str) -> int:
    """Delete the ``events.out.tfevents.*`` files directly in ``logdir``; returns how many."""
    files = glob.glob(os.path.join(glob.escape(logdir), "events.out.tfevents.*"))
    for f in files:
        os.remove(f)
    return len(files)


def write_tensorboard(rows: Sequence[Row], logdir: str) -> str:
    """Write every finite metric as a TensorBoard scalar, ``global_step`` = NFE.

    Tags are ``{problem}/{metric}/{label}/{grid}`` (spaces and other characters
    TensorBoard does not accept become ``_``; ``/end=...`` and ``/{dtype}`` are appended
    when a problem has several ends or dtypes).  Values are means over seeds; a point is
    left out when any seed is non-finite.  The previous event files in ``logdir`` are
    deleted first, so re-writing gives the same single event file.  Returns ``logdir``.
    """
    from tensorboardX import SummaryWriter

    rows = dedupe_rows(rows)
    os.makedirs(logdir, exist_ok=True)
    clear_tensorboard(logdir)
    metrics = [m for m in METRICS if any(m in (r.get("metrics") or {}) for r in rows)]
    metrics += sorted({m for r in rows for m in (r.get("metrics") or {})} - set(metrics))
    writer = SummaryWriter(logdir=logdir, flush_secs=3600)
    try:
        for metric in metrics:
            for (problem, end, dtype), lines in _series(rows, metric).items():
                suffix = (f"/end={_tag_part(end)}" if end else "") + (f"/{_tag_part(dtype)}" if dtype else "")
                for (label, grid), pts in lines.items():
                    tag = f"{_tag_part(problem)}/{metric}/{_tag_part(label)}/{_tag_part(grid)}{suffix}"
                    for nfe, v in pts:
                        writer.add_scalar(tag, v, global_step=nfe)
    finally:
        writer.close()
    return logdir


# --------------------------------------------------------------------------- all of it
def default_metric(rows: Sequence[Row]) -> str:
    """The first of mean_l2, fd, sw2 that some row has (mean_l2 for analytic problems,
    fd for digits, sw2 for other learned data)."""
    for m in ("mean_l2", "fd", "sw2"):
        if any((r.get("metrics") or {}).get(m) is not None for r in rows):
            return m
    return "mean_l2"


def write_report(workdir: str, rows: Sequence[Row], metric: Optional[str] = None) -> dict:
    """Write the whole report of ``rows`` under ``workdir``.

    ``results.md`` (with links to the plots), ``plots/error_vs_nfe.png``,
    ``plots/samples.png`` (when a 2-D problem has sample files) and ``tb/``.  Plot and
    event files of an earlier report that this one does not produce are removed, so
    the directory always describes the current rows.  With no rows only
    ``results.md`` (saying so) is written.  Returns
    ``{"results_md": path, "plots": [paths], "tensorboard": logdir or None}``.
    """
    rows = dedupe_rows(rows)
    metric = metric or default_metric(rows)
    plots_dir = os.path.join(workdir, PLOTS_DIR)
    error_png = os.path.join(plots_dir, ERROR_PLOT)
    samples_png = os.path.join(plots_dir, SAMPLES_PLOT)
    tb_dir = os.path.join(workdir, TB_DIR)
    md = results_markdown(rows, metric)
    plots: list[str] = []
    tb: Optional[str] = None
    if rows:
        plots.append(plot_error_vs_nfe(rows, error_png, metric))
        s = plot_samples_2d(rows, workdir, samples_png, metric=metric)
        if s is not None:
            plots.append(s)
        tb = write_tensorboard(rows, tb_dir)
    else:
        if os.path.isdir(tb_dir):
            clear_tensorboard(tb_dir)
    for stale in (error_png, samples_png):
        if stale not in plots and os.path.exists(stale):
            os.remove(stale)
    if plots:
        md = md.rstrip("\n") + "\n\n## Plots\n\n" + "\n\n".join(
            f"![{os.path.splitext(os.path.basename(p))[0]}]({PLOTS_DIR}/{os.path.basename(p)})" for p in plots) + "\n"
    md_path = atomic_write_text(os.path.join(workdir, RESULTS_MD), md)
    return {"results_md": md_path, "plots": plots, "tensorboard": tb}


__all__ = [
    "METRICS", "LOWER_IS_BETTER", "results_markdown", "plot_error_vs_nfe", "plot_samples_2d", "write_tensorboard",
    "write_report", "program_totals", "dedupe_rows", "fmt_value", "clear_tensorboard",
]
