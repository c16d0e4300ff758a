"""samplax.experiment.report: the markdown table, plots and TensorBoard scalars of results rows.

Rows are synthetic (known metric values), so every assertion checks a number or a
file content that the test chose."""
import os
import struct

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


def read_scalars(logdir: str) -> dict:
    """{tag: {step: value}} from the TFRecord event files in ``logdir`` (parsed by hand)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for name in os.listdir(logdir):
        if not name.startswith("events.out.tfevents."):
            continue
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4  # length, crc(length), payload, crc(payload)
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


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
    assert out["plots"] == [str(plots / "error_vs_nfe.png"), str(plots / "samples.png")]
    assert out["tensorboard"] == str(tmp_path / "tb")
    for p in out["plots"]:
        assert_png(p)
    md = (tmp_path / "results.md").read_text()
    assert parse_tables(md)["gmm2d"][NAN_KEY[:2]][f"NFE {NAN_KEY[2]}"] == "nan (step 3)"
    assert "](plots/samples.png)" in md
    # atomic writes leave no temporary files behind
    assert sorted(os.listdir(plots)) == ["error_vs_nfe.png", "samples.png"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]

    # tensorboard: one scalar per finite (setting, grid, nfe, metric), step = NFE
    scalars = read_scalars(out["tensorboard"])
    tag = "gmm2d/mean_l2/ddim/time_uniform"
    assert set(scalars[tag]) == set(NFES)
    assert scalars[tag][10] == pytest.approx(known_value("ddim", "time_uniform", 10), rel=1e-6)
    assert set(scalars["gmm2d/mean_l2/unipc_o3/logsnr"]) == {5, 20}  # the non-finite point is left out
    assert len([t for t in scalars if "/mean_l2/" in t]) == 4 and len(scalars) == 12

    # a second report replaces everything: still one events file with the same points
    report.write_report(str(tmp_path), rows)
    assert len([n for n in os.listdir(tmp_path / "tb") if n.startswith("events.out.tfevents.")]) == 1
    assert read_scalars(out["tensorboard"]) == scalars


def test_write_tensorboard_idempotent(tmp_path):
    rows = make_rows()
    logdir = str(tmp_path / "tb")
    report.write_tensorboard(rows, logdir)
    report.write_tensorboard(rows, logdir)
    files = [n for n in os.listdir(logdir) if n.startswith("events.out.tfevents.")]
    assert len(files) == 1
    scalars = read_scalars(logdir)
    assert all(len(v) in (2, 3) for v in scalars.values())
    assert scalars["gmm2d/sw2/ddim/logsnr"][20] == pytest.approx(1e-3 / 20, rel=1e-6)


def test_plot_error_vs_nfe_png(tmp_path):
    rows = make_rows() + make_rows(problem="gmm64d")
    path = str(tmp_path / "sub" / "err.png")
    assert report.plot_error_vs_nfe(rows, path, metric="sw2") == path
    assert_png(path)
    assert os.listdir(tmp_path / "sub") == ["err.png"]


def test_samples_plot_only_for_2d(tmp_path):
    rows = make_rows(str(tmp_path), problem="gmm64d")
    assert report.plot_samples_2d(rows, str(tmp_path), str(tmp_path / "s.png")) is None
    assert not (tmp_path / "s.png").exists()
    out = report.write_report(str(tmp_path), rows)
    assert out["plots"] == [str(tmp_path / "plots" / "error_vs_nfe.png")]
    assert not (tmp_path / "plots" / "samples.png").exists()
    # 2-D rows without sample files: nothing to draw either
    assert report.plot_samples_2d(make_rows(), str(tmp_path), str(tmp_path / "s.png")) is None


def test_write_report_no_rows(tmp_path):
    report.write_report(str(tmp_path), make_rows(str(tmp_path)))
    out = report.write_report(str(tmp_path), [])  # stale plots and events of the earlier report go
    assert out["plots"] == [] and out["tensorboard"] is None
    assert "No results rows" in (tmp_path / "results.md").read_text()
    assert os.listdir(tmp_path / "plots") == []
    assert not [n for n in os.listdir(tmp_path / "tb") if n.startswith("events.out")]
