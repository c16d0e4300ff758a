"""samplax.experiment.report: the markdown table, plots and TensorBoard scalars of results rows.

Rows are synthetic (known metric values), so every assertion checks a number or a
file content that the test chose."""
import io
import os
import struct
import sys

import numpy as np
import pytest

from samplax.experiment import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ("unipc o3", "ddim")
GRIDS = ("logsnr", "time_uniform")
NFES = (5, 10, 20)
NAN_KEY = ("unipc o3", "logsnr", 10)  # the setting whose samples go non-finite (at step 3)


def known_value(label: str, grid: str, nfe: int) -> float:
    """mean_l2 of a synthetic row: falls with NFE; the best setting changes with NFE."""
    base = {("unipc o3", "logsnr"): 0.5, ("unipc o3", "time_uniform"): 0.8,
            ("ddim", "logsnr"): 0.3, ("ddim", "time_uniform"): 3.0}[(label, grid)]
    power = {"unipc o3": 3.0, "ddim": 1.0}[label]
    return base * (5.0 / nfe) ** power + (0.0123 if label == "ddim" else 0.0)


def make_row(label="unipc o3", grid="logsnr", nfe=5, seed=0, problem="gmm2d", value=None, **over):
    i = make_row.counter = getattr(make_row, "counter", 0) + 1
    row = {
        "hash": f"{i:012x}", "run": "sweep", "problem": problem, "model": problem,
        "solver": label.split()[0], "order": 3 if "o3" in label else 1, "label": label, "grid": grid,
        "end": "zero", "nfe": nfe, "nfe_actual": nfe, "seed": seed, "n_samples": 256, "dtype": "float64",
        "metrics": {"mean_l2": known_value(label, grid, nfe) if value is None else value,
                    "sw2": 1e-3 / nfe, "mean_log_density": -1.0 + 0.01 * nfe},
        "reference": {"sw2_floor": 2.5e-4, "mean_log_density_exact": -0.75},
        "first_nonfinite_step": None, "wall_s": 1.0, "compile_s": 10.0, "program": f"prog{i}",
        "n_devices": 1, "device_kind": "cpu", "samples_file": None,
    }
    row.update(over)
    return row


def make_rows(workdir=None, problem="gmm2d"):
    """2 solvers x 2 grids x 3 NFEs, one seed; NAN_KEY non-finite.  With ``workdir``,
    each row gets a small .npy sample file (float32, (64, d)) under workdir/samples/."""
    rng = np.random.default_rng(0)
    rows = []
    for label in LABELS:
        for grid in GRIDS:
            for nfe in NFES:
                r = make_row(label, grid, nfe, problem=problem)
                if (label, grid, nfe) == NAN_KEY:
                    r["metrics"] = {"mean_l2": None, "sw2": None, "mean_log_density": None}
                    r["first_nonfinite_step"] = 3
                if workdir is not None:
                    d = 2 if problem == "gmm2d" else 64
                    rel = os.path.join("samples", f"{r['hash']}.npy")
                    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
                    np.save(os.path.join(workdir, rel), (0.8 * rng.standard_normal((64, d))).astype(np.float32))
                    r["samples_file"] = rel
                rows.append(r)
    return rows


def parse_tables(md: str) -> dict:
    """{section title: {(setting, grid): {column header: cell text}}} of a markdown document."""
    tables, title, header = {}, None, None
    for line in md.splitlines():
        if line.startswith("## "):
            title, header = line[3:].strip(), None
        elif line.startswith("|") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                tables.setdefault(title, {})[(cells[0], cells[1])] = dict(zip(header[2:], cells[2:]))
    return tables


def bold_cells(table: dict, column: str) -> list:
    return [k for k, row in table.items() if row[column].startswith("**")]


def _records(data: bytes):
    """The payloads of a TFRecord file: length (8), crc (4), payload, crc (4)."""
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        yield data[pos + 12:pos + 12 + n]
        pos += 12 + n + 4


def read_events(logdir) -> dict:
    """{run: {"scalars": {tag: {step: value}}, "hparams": [HParamsPluginData], "files": n}} of
    every event file under ``logdir`` (a local path or an epath), parsed by hand with the
    protos tensorboardX ships; the run is the directory relative to ``logdir`` ("." for the root)."""
    from etils import epath
    from tensorboardX.proto import event_pb2, plugin_hparams_pb2

    root = epath.Path(logdir)
    out = {}
    todo = [root]
    while todo:
        d = todo.pop()
        for p in d.iterdir():
            if p.is_dir():
                todo.append(p)
                continue
            if not p.name.startswith("events.out.tfevents."):
                continue
            run = os.path.relpath(os.fspath(p.parent), os.fspath(root)) if os.fspath(p.parent) != os.fspath(root) \
                else "."
            entry = out.setdefault(run, {"scalars": {}, "hparams": [], "files": 0})
            entry["files"] += 1
            for payload in _records(p.read_bytes()):
                event = event_pb2.Event.FromString(payload)
                for v in event.summary.value:
                    if v.metadata.plugin_data.plugin_name == "hparams":
                        entry["hparams"].append(
                            plugin_hparams_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content))
                    else:
                        entry["scalars"].setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def scalars_of(events: dict) -> dict:
    """{(run, tag): {step: value}} of :func:`read_events`, hparams sessions left out."""
    return {(run, tag): pts for run, e in events.items() if not run.startswith("hparams")
            for tag, pts in e["scalars"].items()}


def assert_png(path: str) -> None:
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(np.std(img[..., :3])) > 0.01, "blank image"


# ------------------------------------------------------------------ markdown
def test_markdown_bold_is_column_minimum_and_nan_shows_step():
    md = report.results_markdown(make_rows())
    table = parse_tables(md)["gmm2d"]
    assert set(table) == {(l, g) for l in LABELS for g in GRIDS}
    for nfe in NFES:
        col = f"NFE {nfe}"
        finite = {(l, g): known_value(l, g, nfe) for l in LABELS for g in GRIDS if (l, g, nfe) != NAN_KEY}
        best = min(finite, key=finite.get)
        assert bold_cells(table, col) == [best]
        assert table[best][col] == f"**{report.fmt_value(finite[best])}**"
        for k, v in finite.items():
            assert table[k][col].strip("*") == report.fmt_value(v)
    assert table[NAN_KEY[:2]][f"NFE {NAN_KEY[2]}"] == "nan (step 3)"
    # the best setting differs in every column (so the check above is not trivially one row)
    assert len({bold_cells(table, f"NFE {nfe}")[0] for nfe in NFES}) == 3
    assert "Each cell is one seed." in md


def test_markdown_sorted_nfe_columns_and_missing_cell():
    rows = [r for r in make_rows() if not (r["label"] == "ddim" and r["grid"] == "logsnr" and r["nfe"] == 20)]
    md = report.results_markdown(list(reversed(rows)))
    header = next(l for l in md.splitlines() if l.startswith("| setting"))
    assert header == "| setting | grid | NFE 5 | NFE 10 | NFE 20 |"
    table = parse_tables(md)["gmm2d"]
    assert table[("ddim", "logsnr")]["NFE 20"] == "—"


def test_markdown_mean_over_seeds():
    rows = [make_row("ddim", "logsnr", 10, seed=0, value=0.2), make_row("ddim", "logsnr", 10, seed=1, value=0.4),
            make_row("ddim", "karras", 10, seed=0, value=0.5), make_row("ddim", "karras", 10, seed=1, value=0.7)]
    md = report.results_markdown(rows)
    table = parse_tables(md)["gmm2d"]
    assert table[("ddim", "logsnr")]["NFE 10"] == "**0.3000**"
    assert table[("ddim", "karras")]["NFE 10"] == "0.6000"
    assert "mean over 2 seeds" in md
    # one non-finite seed makes the cell non-finite, and the note says how many seeds
    rows[1]["metrics"]["mean_l2"], rows[1]["first_nonfinite_step"] = None, 7
    table = parse_tables(report.results_markdown(rows))["gmm2d"]
    assert table[("ddim", "logsnr")]["NFE 10"] == "nan (step 7; 1 of 2 seeds)"
    assert table[("ddim", "karras")]["NFE 10"] == "**0.6000**"


def test_markdown_program_times_counted_once_and_floor():
    rows = [make_row("ddim", "logsnr", 5, compile_s=3.0, wall_s=0.5, program="A"),
            make_row("ddim", "logsnr", 10, compile_s=3.0, wall_s=0.5, program="A"),
            make_row("ddim", "logsnr", 20, compile_s=4.0, wall_s=1.25, program="B")]
    assert report.program_totals(rows) == {"programs": 2, "compile_s": 7.0, "wall_s": 1.75}
    md = report.results_markdown(rows)
    assert "- rows: 3 (sweep: 3)" in md
    assert "compiled programs: 2; compile 7 s, run 1.75 s" in md
    assert "1 × cpu" in md
    assert "sw2 noise floor 2.50e-04" in md


def test_markdown_log_density_never_bold_and_sw2_bold():
    rows = make_rows()
    md = report.results_markdown(rows, metric="mean_log_density")
    assert "**" not in md.split("## Summary")[0]
    table = parse_tables(md)["gmm2d"]
    assert table[("ddim", "logsnr")]["NFE 20"] == report.fmt_value(-1.0 + 0.2)
    # sw2 = 1e-3 / nfe for every finite row: all tied rows of a column are bold
    table = parse_tables(report.results_markdown(rows, metric="sw2"))["gmm2d"]
    assert len(bold_cells(table, "NFE 5")) == 4 and len(bold_cells(table, "NFE 10")) == 3
    with pytest.raises(ValueError, match="unknown metric"):
        report.results_markdown(rows, metric="fid")


def test_markdown_dedupes_rows_by_hash_and_seed():
    a = make_row("ddim", "logsnr", 5, value=0.9)
    b = dict(a, metrics={**a["metrics"], "mean_l2": 0.1})  # the same row, re-run later
    md = report.results_markdown([a, b])
    assert parse_tables(md)["gmm2d"][("ddim", "logsnr")]["NFE 5"] == "**0.1000**"
    assert "- rows: 1 " in md


def test_markdown_splits_ends_and_no_rows():
    rows = [make_row("ddim", "logsnr", 5), make_row("ddim", "logsnr", 5, end="denoise", value=0.25)]
    tables = parse_tables(report.results_markdown(rows))
    assert set(tables) >= {"gmm2d, end=denoise", "gmm2d, end=zero"}
    assert tables["gmm2d, end=denoise"][("ddim", "logsnr")]["NFE 5"] == "**0.2500**"
    md = report.results_markdown([])
    assert "No results rows" in md and "|" not in md


# ------------------------------------------------------------------ panels, plots, tensorboard
def test_pick_panels_best_worst_and_largest_nfe():
    rows = make_rows()
    picks = report._pick_panels(rows, "mean_l2", 3)
    keys = [(r["label"], r["grid"], r["nfe"]) for r in picks]
    at5 = {(l, g): known_value(l, g, 5) for l in LABELS for g in GRIDS}
    at20 = {(l, g): known_value(l, g, 20) for l in LABELS for g in GRIDS}
    assert keys == [min(at5, key=at5.get) + (5,), max(at5, key=at5.get) + (5,), min(at20, key=at20.get) + (20,)]
    assert len(report._pick_panels(rows[:1], "mean_l2", 3)) == 1


def test_write_report_files(tmp_path):
    rows = make_rows(str(tmp_path))
    out = report.write_report(str(tmp_path), rows)
    plots = tmp_path / "plots"
    assert out["results_md"] == str(tmp_path / "results.md")
    assert out["plots"] == [str(plots / "error_vs_nfe.png"), str(plots / "error_vs_nfe_best_grid.png"),
                            str(plots / "samples.png")]
    assert out["tensorboard"] == str(tmp_path / "tb")
    for p in out["plots"]:
        assert_png(p)
    md = (tmp_path / "results.md").read_text()
    assert parse_tables(md)["gmm2d"][NAN_KEY[:2]][f"NFE {NAN_KEY[2]}"] == "nan (step 3)"
    assert "](plots/samples.png)" in md and "](plots/error_vs_nfe_best_grid.png)" in md
    # atomic writes leave no temporary files behind
    assert sorted(os.listdir(plots)) == ["error_vs_nfe.png", "error_vs_nfe_best_grid.png", "samples.png"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp") or n.startswith(".tb.")]

    # tensorboard: one run per (setting, grid), the metric as the tag, step = NFE
    events = read_events(out["tensorboard"])
    sc = scalars_of(events)
    assert sc[("ddim/time_uniform", "gmm2d/mean_l2")][10] == pytest.approx(known_value("ddim", "time_uniform", 10),
                                                                          rel=1e-6)
    assert set(sc[("ddim/time_uniform", "gmm2d/mean_l2")]) == set(NFES)
    assert set(sc[("unipc_o3/logsnr", "gmm2d/mean_l2")]) == {5, 20}  # the non-finite point is left out
    runs = {run for run, _ in sc}
    assert runs == {f"{l.replace(' ', '_')}/{g}" for l in LABELS for g in GRIDS} | {"noise_floor"}
    # the noise floor and the exact samples' log density: their own run, flat over the NFEs
    assert sc[("noise_floor", "gmm2d/sw2")] == {n: pytest.approx(2.5e-4, rel=1e-6) for n in NFES}
    assert sc[("noise_floor", "gmm2d/mean_log_density")] == {n: pytest.approx(-0.75) for n in NFES}
    assert ("noise_floor", "gmm2d/mean_l2") not in sc  # mean_l2 has no floor
    # the program's run and compile seconds
    assert sc[("ddim/logsnr", "gmm2d/time/compile_s")] == {n: pytest.approx(10.0) for n in NFES}
    assert sc[("ddim/logsnr", "gmm2d/time/run_s")][20] == pytest.approx(1.0)

    # a second report replaces everything: one events file per run with the same points
    report.write_report(str(tmp_path), rows)
    again = read_events(out["tensorboard"])
    assert all(e["files"] == 1 for e in again.values())
    assert scalars_of(again) == sc
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tb.")]


def test_tensorboard_hparams_sessions(tmp_path):
    rows = make_rows()
    rows[0]["options"] = {"variant": "bh2"}
    rows[0]["warning"] = "sample RMS is 9x the data's"
    rows[0]["step_orders"] = [1, 2, 3, 3, 2]
    events = read_events(report.write_tensorboard(rows, str(tmp_path / "tb")))
    # the experiment summary: every hparam with its values, every metric tag
    (exp,) = [h.experiment for h in events["hparams"]["hparams"]]
    infos = {i.name: i for i in exp.hparam_infos}
    assert {"problem", "model", "solver", "order", "label", "grid", "nfe", "afs", "options", "options.variant",
            "end", "dtype", "seeds", "orders_run", "warning"} <= set(infos)
    assert sorted(v.string_value for v in infos["grid"].domain_discrete.values) == sorted(GRIDS)
    assert {m.name.tag for m in exp.metric_infos} == {"hparams/mean_l2", "hparams/sw2", "hparams/mean_log_density",
                                                       "hparams/run_s", "hparams/compile_s"}
    # one session per (setting, grid, NFE) with its hparams and metric values
    sessions = {run: e for run, e in events.items() if run.startswith("hparams/")}
    assert len(sessions) == len(LABELS) * len(GRIDS) * len(NFES)
    s = sessions["hparams/gmm2d/ddim/time_uniform/nfe_0010"]
    start = next(h.session_start_info for h in s["hparams"] if h.HasField("session_start_info"))
    assert any(h.HasField("session_end_info") for h in s["hparams"])
    hp = start.hparams
    assert (hp["solver"].string_value, hp["grid"].string_value, hp["nfe"].number_value) == ("ddim", "time_uniform", 10)
    assert hp["model"].string_value == "exact" and hp["warning"].bool_value is False
    assert s["scalars"]["hparams/mean_l2"][10] == pytest.approx(known_value("ddim", "time_uniform", 10), rel=1e-6)
    first = sessions["hparams/gmm2d/unipc_o3/logsnr/nfe_0005"]
    hp0 = next(h.session_start_info for h in first["hparams"] if h.HasField("session_start_info")).hparams
    assert hp0["options.variant"].string_value == "bh2" and hp0["warning"].bool_value is True
    assert hp0["orders_run"].string_value == "1,2,3,3,2"
    # the non-finite cell has no metric value, but still its times
    nan_s = sessions["hparams/gmm2d/unipc_o3/logsnr/nfe_0010"]["scalars"]
    assert "hparams/mean_l2" not in nan_s and nan_s["hparams/compile_s"][10] == pytest.approx(10.0)


def test_write_tensorboard_idempotent(tmp_path):
    rows = make_rows()
    logdir = str(tmp_path / "tb")
    report.write_tensorboard(rows, logdir)
    os.makedirs(tmp_path / ".tb.abc.tmp" / "ddim")  # left by a report killed while writing
    report.write_tensorboard(rows, logdir)
    assert os.listdir(tmp_path) == ["tb"]
    events = read_events(logdir)
    assert all(e["files"] == 1 for e in events.values())
    sc = scalars_of(events)
    assert sc[("ddim/logsnr", "gmm2d/sw2")][20] == pytest.approx(1e-3 / 20, rel=1e-6)
    assert report.clear_tensorboard(logdir) == len(events)
    assert not os.path.exists(logdir) or read_events(logdir) == {}


def test_plot_error_vs_nfe_png(tmp_path):
    rows = make_rows() + make_rows(problem="gmm64d")
    path = str(tmp_path / "sub" / "err.png")
    assert report.plot_error_vs_nfe(rows, path, metric="sw2") == path
    assert_png(path)
    assert os.listdir(tmp_path / "sub") == ["err.png"]


def _legend_texts(fig) -> list:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_error_figure_faceted_by_grid_with_floor_and_legend_below():
    rows = make_rows()
    fig = report.error_vs_nfe_figure(rows, "sw2")
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in axes] == ["grid: time_uniform", "grid: logsnr"]  # GRID_ORDER
    assert all(ax.get_xlabel() == "model evaluations (NFE)" for ax in axes)
    assert axes[0].get_ylabel() == "sliced Wasserstein-2 distance to the data"
    assert "gmm2d" in fig.get_suptitle()
    for ax in axes:  # the noise floor: a dashed line at sw2_floor in every panel
        dashed = [l for l in ax.get_lines() if l.get_linestyle() == "--"]
        assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [2.5e-4, 2.5e-4]
        assert ax.get_yscale() == "log"
    # one line per solver in each panel, with the known values; the non-finite point breaks
    # its line (nan) and is marked on the top edge
    logsnr = axes[1]
    solid = [l for l in logsnr.get_lines() if l.get_linestyle() == "-"]
    ys = sorted([list(l.get_ydata()) for l in solid], key=lambda y: str(y))
    assert [1e-3 / n for n in NFES] in [pytest.approx(y, rel=1e-6) for y in ys]
    assert any(np.isnan(y[1]) for y in ys)
    assert any(l.get_marker() == "x" for l in logsnr.get_lines())
    assert _legend_texts(fig) == ["ddim", "unipc o3", report.FLOORS["sw2"][1], "non-finite (x on the top edge)"]
    # the legend sits below every panel (it covers no line)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    r = fig.canvas.get_renderer()
    leg_top = fig.legends[0].get_window_extent(r).y1
    assert leg_top <= min(ax.get_window_extent(r).y0 for ax in axes) + 1


def test_error_figure_best_grid():
    rows = make_rows()
    # ddim: logsnr is better at every NFE; unipc o3: time_uniform (logsnr has a non-finite NFE)
    assert report.best_grids(rows, "mean_l2") == {"ddim": "logsnr", "unipc o3": "time_uniform"}
    fig = report.error_vs_nfe_figure(rows, "mean_l2", facet="best_grid")
    (ax,) = [a for a in fig.axes if a.axison]
    assert ax.get_title() == "gmm2d\neach solver on its best grid"
    assert _legend_texts(fig) == ["ddim (logsnr)", "unipc o3 (time_uniform)"]
    with pytest.raises(ValueError, match="^facet: 'best_grid' needs a lower-is-better metric"):
        report.error_vs_nfe_figure(rows, "mean_log_density", facet="best_grid")
    with pytest.raises(ValueError, match="^facet: 'solver' is not a facet; allowed: grid, best_grid"):
        report.error_vs_nfe_figure(rows, "mean_l2", facet="solver")


def test_samples_plot_skips_vectors_with_a_reason(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(report.logging, "info", lambda msg, *a: logged.append(msg % a if a else msg))
    rows = make_rows(str(tmp_path), problem="gmm64d")
    assert report.plot_samples_2d(rows, str(tmp_path), str(tmp_path / "s.png")) is None
    assert not (tmp_path / "s.png").exists()
    assert any("samples plot: skipped" in m and "(64,) are neither 2-D points nor images" in m for m in logged)
    out = report.write_report(str(tmp_path), rows)
    assert out["plots"] == [str(tmp_path / "plots" / "error_vs_nfe.png"),
                            str(tmp_path / "plots" / "error_vs_nfe_best_grid.png")]
    assert not (tmp_path / "plots" / "samples.png").exists()
    # 2-D rows without sample files: nothing to draw either, and the log says why
    logged.clear()
    assert report.plot_samples(make_rows(), str(tmp_path), str(tmp_path / "s.png")) is None
    assert logged == ["samples plot: skipped: no row has a samples file (metrics.save_samples = 0?)"]


def _contours(ax) -> int:
    from matplotlib.contour import ContourSet

    return sum(isinstance(c, ContourSet) for c in ax.collections)


def test_samples_figure_points_without_density_and_images(tmp_path):
    rng = np.random.default_rng(1)
    os.makedirs(tmp_path / "samples")
    rows = []
    for i, (problem, shape) in enumerate([("gmm2d", (64, 2)), ("two_moons", (64, 2)), ("digits", (64, 8, 8, 1)),
                                          ("my_data", (64, 2))]):
        rel = f"samples/{i}.npy"
        np.save(tmp_path / rel, rng.uniform(-1, 1, shape).astype(np.float32))
        rows.append(make_row("ddim", "logsnr", 10, problem=problem, samples_file=rel,
                             trained=None if problem == "gmm2d" else {"checkpoint": "/ck", "step": 4000,
                                                                      "params": "ema", "guidance": None}))
    fig = report.samples_figure(rows, str(tmp_path))
    grid = np.asarray(fig.axes).reshape(4, -1)  # one row of panels per problem, sections sorted
    titles = [[ax.get_title() for ax in r] for r in grid]
    # digits: data images, then the row's image grid
    assert titles[0][0] == "digits, trained network (checkpoint step 4000)\ndata samples (64)"
    assert grid[0][0].images and grid[0][1].images and titles[0][1].startswith("ddim · logsnr · NFE 10")
    # gmm2d: exact samples over the exact density's contours
    assert titles[1][0] == "gmm2d\nexact samples (64)" and _contours(grid[1][0]) == 1 and _contours(grid[1][1]) == 1
    # a user's own data without a reference: no reference panel, no contours, still drawn
    assert titles[2][0].startswith("my_data, trained network (checkpoint step 4000)\nddim · logsnr · NFE 10")
    assert _contours(grid[2][0]) == 0 and len(grid[2][0].collections) == 1
    # two_moons (a trained network's data, no exact density): data samples, no contours
    assert titles[3][0] == "two_moons, trained network (checkpoint step 4000)\ndata samples (64)"
    assert _contours(grid[3][0]) == 0 and _contours(grid[3][1]) == 0
    path = report.plot_samples(rows, str(tmp_path), str(tmp_path / "s.png"))
    assert_png(path)


def test_write_report_no_rows(tmp_path):
    report.write_report(str(tmp_path), make_rows(str(tmp_path)))
    out = report.write_report(str(tmp_path), [])  # stale plots and events of the earlier report go
    assert out["plots"] == [] and out["tensorboard"] is None
    assert "No results rows" in (tmp_path / "results.md").read_text()
    assert os.listdir(tmp_path / "plots") == []
    assert not (tmp_path / "tb").exists()


# ------------------------------------------------------------------ what ran: warnings, orders, models
def test_warning_and_short_orders_are_marked():
    rows = make_rows()
    warned = next(r for r in rows if (r["label"], r["grid"], r["nfe"]) == ("ddim", "logsnr", 5))
    warned["warning"] = "sample RMS is 23.4x the data's (allowed 0.33-3x)"
    short = next(r for r in rows if (r["label"], r["grid"], r["nfe"]) == ("unipc o3", "time_uniform", 5))
    short["step_orders"] = [1, 1, 1, 1, 1]
    full = next(r for r in rows if (r["label"], r["grid"], r["nfe"]) == ("unipc o3", "time_uniform", 20))
    full["step_orders"] = [1, 2] + [3] * 18  # warm-up, then the nominal order: nothing to say
    md = report.results_markdown(rows)
    table = parse_tables(md)["gmm2d"]
    assert table[("ddim", "logsnr")]["NFE 5"] == "⚠ **0.3123**"  # still the best of its column
    assert table[("unipc o3", "time_uniform")]["NFE 5"] == "0.8000 (ran o1)"
    assert table[("unipc o3", "time_uniform")]["NFE 20"] == "0.01250"
    assert ("- ⚠ ddim · logsnr · NFE 5 (seed 0): sample RMS is 23.4x the data's (allowed 0.33-3x)") in md
    assert "- unipc o3 · time_uniform · NFE 5: ran orders 1,1,1,1,1 (nominal 3)" in md
    assert "- ⚠ rows with a warning: 1" in md
    assert report.setting_text(short) == "unipc o3 (ran 1,1,1,1,1)"
    assert report.setting_text(full) == "unipc o3"
    # the plot rings the warned point in red and says so in the legend
    fig = report.error_vs_nfe_figure(rows, "mean_l2")
    logsnr = next(ax for ax in fig.axes if ax.get_title() == "grid: logsnr")
    (ring,) = [l for l in logsnr.get_lines() if l.get_markeredgecolor() == "red"]
    assert list(ring.get_xdata()) == [5] and list(ring.get_ydata()) == [pytest.approx(known_value("ddim", "logsnr", 5))]
    assert "⚠ warning (see results.md)" in _legend_texts(fig)
    text = report.summary_text([short, warned, full])
    assert "unipc o3 (ran 1,1,1,1,1)" in text
    # the warm-up reaches the nominal order: a note, not a mark
    assert ("  unipc o3 · time_uniform · NFE 20 (seed 0): solver steps ran orders 1,2," + "3," * 17 + "3 (nominal 3)"
            ) in text.splitlines()
    assert "⚠ ddim" in text and "⚠ ddim · logsnr · NFE 5 (seed 0): sample RMS is 23.4x" in text


def test_missing_metric_is_not_computed_not_nan(tmp_path):
    # a user's model without reference data: no metrics at all, only timings
    rows = [make_row("ddim", "logsnr", n, metrics={}, reference={}, user_model={"factory": "my_pkg.nets:make"})
            for n in (5, 10)]
    md = report.results_markdown(rows)
    (title,) = parse_tables(md)
    assert title == "gmm2d, user model my_pkg.nets:make"
    assert parse_tables(md)[title][("ddim", "logsnr")] == {"NFE 5": "—", "NFE 10": "—"}
    assert "| nan" not in md
    out = report.write_report(str(tmp_path), rows)
    sc = scalars_of(read_events(out["tensorboard"]))
    assert set(sc) == {("ddim/logsnr", "gmm2d/user_model/time/run_s"),
                       ("ddim/logsnr", "gmm2d/user_model/time/compile_s")}


def test_trained_rows_say_so_in_tables_plots_and_tags(tmp_path):
    trained = {"checkpoint": "/runs/train", "step": 4000, "params": "ema", "guidance": None}
    rows = [dict(r, trained=trained) for r in make_rows()]
    assert report.model_text(rows[0]) == "trained network (checkpoint step 4000)"
    md = report.results_markdown(rows)
    assert "## gmm2d, trained network (checkpoint step 4000)" in md
    assert "12 rows; trained network (checkpoint step 4000); n_samples 256; float64." in md
    fig = report.error_vs_nfe_figure(rows, "mean_l2")
    assert fig.axes[0].get_title() == "gmm2d, trained network (checkpoint step 4000)\ngrid: time_uniform"
    assert "trained network (checkpoint step 4000)" in fig.get_suptitle()
    sc = scalars_of(read_events(report.write_tensorboard(rows, str(tmp_path / "tb"))))
    assert sc[("ddim/logsnr", "gmm2d/trained_step4000/mean_l2")][5] == pytest.approx(
        known_value("ddim", "logsnr", 5), rel=1e-6)
    assert report.summary_text(rows[:1]).splitlines()[0] == (
        "gmm2d, trained network (checkpoint step 4000); 256 samples; float64; 1 row")
    # guidance and non-EMA parameters are named too; an exact row of the same problem is its own section
    g = dict(trained, guidance=2.0, params="params")
    assert report.model_text({"trained": g}) == "trained network (checkpoint step 4000, params params, guidance 2.0)"
    tables = parse_tables(report.results_markdown(rows + make_rows()))
    assert set(tables) == {"gmm2d", "gmm2d, trained network (checkpoint step 4000)"}


# ------------------------------------------------------------------ the printed summary
def test_summary_text_of_one_row():
    row = make_row("unipc o3", "logsnr", 8, value=0.01234, wall_s=0.41, compile_s=3.2)
    lines = report.summary_text([row]).splitlines()
    assert lines[0] == "gmm2d, exact model; 256 samples; float64; 1 row"
    header, values = lines[1].split(), lines[2].split()
    assert header == ["setting", "grid", "NFE", "mean_l2", "sw2", "sw2", "floor", "mean_log_density", "exact",
                      "samples", "run", "compile"]
    assert values == ["unipc", "o3", "logsnr", "8", "0.01234", "1.250e-04", "2.500e-04", "-0.9200", "-0.7500",
                      "0.41", "s", "3.2", "s"]
    assert lines[3].startswith("  mean_l2: mean distance to the exact ODE solution (lower is better)")
    assert lines[-1].endswith("run/compile: the row's compiled program.")
    assert max(len(l) for l in lines[3:]) <= 100 and len(lines) == 6  # no warning, nothing non-finite

    bad = make_row("heun", "time_uniform", 11, value=1.0, first_nonfinite_step=4, n_nonfinite=12)
    bad["metrics"] = {"mean_l2": None, "sw2": None, "mean_log_density": None}
    text = report.summary_text([bad])
    assert "nan (step 4)" in text
    assert text.splitlines()[-1] == "  heun · time_uniform · NFE 11 (seed 0): samples non-finite from solver step 4 " \
                                    "(12 of 256)"
    buf = io.StringIO()
    assert report.print_summary([row], file=buf) == buf.getvalue().rstrip("\n")
    assert report.summary_text([]) == "No results rows."


def test_summary_text_cuts_a_sweep_to_the_best_per_nfe():
    rows = make_rows()
    text = report.summary_text(rows, max_rows=5)
    lines = text.splitlines()
    assert lines[0].endswith("12 rows (the best setting at each NFE by mean_l2 shown; all rows in results.md)")
    body = [l.split() for l in lines[2:5]]
    best = {nfe: min(((l, g) for l in LABELS for g in GRIDS if (l, g, nfe) != NAN_KEY),
                     key=lambda lg: known_value(*lg, nfe)) for nfe in NFES}
    for nfe, cells in zip(NFES, sorted(body, key=lambda c: int(c[-10]))):
        label, grid = best[nfe]
        assert " ".join(cells[:len(label.split())]) == label and cells[len(label.split())] == grid


# ------------------------------------------------------------------ a workdir in an object store
@pytest.fixture
def fake_gcs(monkeypatch):
    """gs:// served by fsspec's in-memory filesystem (what gcsfs would do, without a network)."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        root_marker = ""
        store: dict = {}
        pseudo_dirs = [""]

    for name in ("gs", "gcs"):
        fsspec.register_implementation(name, FakeGCS, clobber=True)
    yield FakeGCS.store
    FakeGCS.store.clear()
    for name in ("gs", "gcs"):
        sys.modules["fsspec.registry"]._registry.pop(name, None)  # undo the registration


def test_write_report_to_an_object_store(tmp_path, monkeypatch, fake_gcs):
    from etils import epath

    monkeypatch.chdir(tmp_path)  # a wrong os.path.abspath would write under ./gs:
    rows = make_rows()
    for i, r in enumerate(rows[:3]):
        rel = f"samples/{r['hash']}.npy"
        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(i).standard_normal((32, 2)).astype(np.float32))
        epath.Path(f"gs://bucket/run/{rel}").parent.mkdir(parents=True, exist_ok=True)
        epath.Path(f"gs://bucket/run/{rel}").write_bytes(buf.getvalue())
        r["samples_file"] = rel
    out = report.write_report("gs://bucket/run", rows)
    assert out["results_md"] == "gs://bucket/run/results.md"
    assert out["plots"][-1] == "gs://bucket/run/plots/samples.png"
    assert epath.Path(out["results_md"]).read_text().startswith("# Results")
    for p in out["plots"]:
        assert epath.Path(p).read_bytes()[:8] == PNG_MAGIC
    sc = scalars_of(read_events(out["tensorboard"]))
    assert sc[("ddim/time_uniform", "gmm2d/mean_l2")][10] == pytest.approx(known_value("ddim", "time_uniform", 10),
                                                                          rel=1e-6)
    assert os.listdir(tmp_path) == []  # nothing local
    # a second report replaces the event files instead of adding to them
    report.write_report("gs://bucket/run", rows)
    assert all(e["files"] == 1 for e in read_events(out["tensorboard"]).values())


def test_summary_text_shows_seeds_when_there_are_several():
    rows = [make_row("ddim", "logsnr", 10, seed=0, value=0.2), make_row("ddim", "logsnr", 10, seed=1, value=0.4)]
    lines = report.summary_text(rows).splitlines()
    assert lines[1].split()[:4] == ["setting", "grid", "NFE", "seed"]
    assert [l.split()[:5] for l in lines[2:4]] == [["ddim", "logsnr", "10", "0", "0.2000"],
                                                   ["ddim", "logsnr", "10", "1", "0.4000"]]
