"""Helpers shared by the benchmark scripts: machine description, atomic
writes, markdown tables, the on-disk cache of reference solutions and grids."""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Iterable, Sequence

import numpy as np

from samplax.io import atomic_write, atomic_write_text, json_clean  # noqa: F401 (re-used)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(REPO_ROOT, ".bench_cache")
JAX_CACHE_DIR = os.path.join(REPO_ROOT, ".jax_cache")

SPACINGS = ("time_uniform", "time_quadratic", "logsnr", "karras", "log_sigma")


def enable_compilation_cache(min_compile_secs: float = 0.0) -> None:
    """JAX's persistent compilation cache under the work tree (.jax_cache/, git-ignored)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", JAX_CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import jax
    import jaxlib

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (non-Linux)
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "platform": platform.platform(),
        "samplax": samplax_version(),
    }


def samplax_version() -> dict:
    """The git commit of the work tree, whether samplax/ has uncommitted changes, and a
    digest of the samplax sources actually imported."""
    import subprocess

    def git(*args):
        try:
            return subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "samplax_dirty": bool(git("status", "--porcelain", "--", "samplax")),
            "sources_digest": samplax_source_digest()}


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def command_line(module: str) -> str:
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"python -m {module}" + (f" {args}" if args else "")


def machine_md(info: dict, command: str, date: str) -> str:
    return "\n".join([
        f"* Date: {date}",
        f"* Machine: {info['cpu_model']}, {info['cpu_count']} CPU cores ({info['cpus_usable']} usable), "
        f"{info['platform']}",
        f"* Software: Python {info['python']}, jax {info['jax']} (jaxlib {info['jaxlib']}), "
        f"numpy {info['numpy']}; backend `{info['backend']}` ({', '.join(info['devices'])})",
        f"* Reproduce (from the repository root, in the venv): `{command}`",
    ] + ([f"* samplax: commit `{info['samplax']['commit']}`"
          f"{' with uncommitted changes under samplax/' if info['samplax']['samplax_dirty'] else ''} "
          f"(sources digest `{info['samplax']['sources_digest']}`)"] if "samplax" in info else []))


# One atomic-write mechanism and one JSON cleaner for the whole project (samplax.io).
_json_clean = json_clean


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(json_clean(obj), indent=1, allow_nan=False) + "\n")


def atomic_save_npz(path: str, **arrays) -> None:
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def rerender_from_json(json_path: str, out: str, render) -> str:
    """``--from-json``: the report ``render(results)`` of a benchmark's written .json, written
    atomically to ``out`` (no measurement); returns the text."""
    with open(json_path) as fh:
        text = render(json.load(fh))
    atomic_write_text(out, text)
    return text


def median_wall(fn, x, repeats: int) -> float:
    """Median wall time in seconds of ``fn(x)`` over ``repeats`` calls, after one warm-up call
    (compilation); every call waits for its result."""
    import jax

    jax.block_until_ready(fn(x))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def md_table(header: Sequence[str], rows: Iterable[Sequence], align: Sequence[str] | None = None) -> str:
    rows = [["" if c is None else str(c) for c in r] for r in rows]
    align = align or ["l"] * len(header)
    sep = [{"l": "---", "r": "---:", "c": ":---:"}[a] for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    v = float(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def digest(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def samplax_source_digest() -> str:
    """Digest of the samplax package sources (invalidates checkpoints when samplax changes)."""
    import samplax

    root = os.path.dirname(os.path.abspath(samplax.__file__))
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith((".py", ".json")):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------
# Exact references and grids, cached on disk under .bench_cache/ (git-ignored).
# ---------------------------------------------------------------------------------------
def reference_solution(problem: str, n_steps: int = 2000, log=print):
    """(x_T float64 (B, d), exact PF-ODE solution at sigma = 0 (B, d) float64, its
    argmax component (B,)), computed in float64 once and cached."""
    import jax
    import jax.numpy as jnp

    import samplax as sx

    _, _, info = sx.load_problem(problem)
    x_T = sx.problem_start_points(info)
    key = digest(problem, n_steps, {k: v for k, v in info.items() if k != "description"}, x_T)
    path = os.path.join(CACHE_DIR, f"ref_{problem}_n{n_steps}_{key}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return x_T, z["x0"], z["mode"]
    import time

    t0 = time.perf_counter()
    with jax.enable_x64(True):
        gmm, schedule, _ = sx.load_problem(problem, dtype=jnp.float64)
        x0 = gmm.ode_solution(jnp.asarray(x_T, jnp.float64), 1.0, None, schedule, n_steps=n_steps)
        mode = jnp.argmax(gmm.component_log_posterior(x0, 0.0), axis=-1)
        x0, mode = np.asarray(x0, np.float64), np.asarray(mode, np.int32)
    log(f"[ref] {problem}: exact PF-ODE solution ({n_steps} RK4 steps, float64) in "
        f"{time.perf_counter() - t0:.1f} s -> {os.path.relpath(path, REPO_ROOT)}")
    if not np.all(np.isfinite(x0)):
        raise RuntimeError(f"reference solution for {problem} is not finite")
    atomic_save_npz(path, x0=x0, mode=mode)
    return x_T, x0, mode


def denoise_floor(problem: str, t_min: float = 1e-3, n_steps: int = 2000, log=print) -> dict:
    """Error floor of every grid that reaches sigma = 0 by a denoising jump from t_min:
    the distance between x0_hat(x_exact(t_min), t_min) (exact ODE solve from t = 1 to
    t_min, then the exact data prediction) and the exact solution at sigma = 0.
    Returns {"mean_l2", "max_l2"}; float64, cached."""
    import jax
    import jax.numpy as jnp

    import samplax as sx

    x_T, ref, _ = reference_solution(problem, n_steps, log=log)
    _, _, info = sx.load_problem(problem)
    key = digest(problem, n_steps, t_min, {k: v for k, v in info.items() if k != "description"}, x_T)
    path = os.path.join(CACHE_DIR, f"floor_{problem}_n{n_steps}_{key}.npz")
    if not os.path.exists(path):
        import time

        t0 = time.perf_counter()
        with jax.enable_x64(True):
            gmm, schedule, _ = sx.load_problem(problem, dtype=jnp.float64)
            x_min = gmm.ode_solution(jnp.asarray(x_T, jnp.float64), 1.0, t_min, schedule, n_steps=n_steps)
            x0 = np.asarray(gmm.model(schedule).data(x_min, jnp.asarray(t_min, jnp.float64)), np.float64)
        err = np.linalg.norm(x0 - ref, axis=-1)
        atomic_save_npz(path, err=err)
        log(f"[ref] {problem}: denoising-jump floor from t_min={t_min:g} in {time.perf_counter() - t0:.1f} s")
    with np.load(path) as z:
        err = z["err"]
    return {"mean_l2": float(err.mean()), "max_l2": float(err.max())}


_GRID_MEMO: dict = {}


def stacked_grids(schedule, n_steps: int, end: str, dtype_name: str = "float32", spacings=SPACINGS):
    """The grids of ``spacings`` (same n_steps and end) stacked on a leading axis,
    as a samplax Grid pytree, cached in memory and on disk (building the logSNR /
    log-sigma grids of the discrete schedule takes ~0.2 s each)."""
    import jax.numpy as jnp

    import samplax as sx

    sched_key = digest(type(schedule).__name__, getattr(schedule, "log_alpha_table", None),
                       schedule.t_min, schedule.t_max)
    key = (sched_key, n_steps, end, dtype_name, tuple(spacings))
    if key in _GRID_MEMO:
        return _GRID_MEMO[key]
    path = os.path.join(CACHE_DIR, "grids", f"grid_{sched_key}_{dtype_name}_{end}_n{n_steps}_"
                        f"{digest(list(spacings))}.npz")
    dtype = jnp.dtype(dtype_name)
    arrays = None
    if os.path.exists(path):
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("t", "alpha", "sigma", "lam")}
        except Exception:  # a corrupt cache entry: rebuild it
            arrays = None
    if arrays is None:
        grids = [sx.time_grid(schedule, n_steps, sp, end=end, dtype=dtype) for sp in spacings]
        arrays = {k: np.stack([np.asarray(getattr(g, k)) for g in grids]) for k in ("t", "alpha", "sigma", "lam")}
        atomic_save_npz(path, **arrays)
    grid = sx.Grid(**{k: jnp.asarray(v, dtype) for k, v in arrays.items()}, end=end)
    _GRID_MEMO[key] = grid
    return grid


def run_flag_settings(module: str, settings: dict, worker_args: Sequence[str], log=print) -> dict:
    """Run ``python -m module --worker PATH *worker_args`` once per XLA flag setting
    ({name: XLA_FLAGS value or ""}), each in its own process (the flags are read when
    jax starts); returns {name: the JSON the worker wrote to PATH}."""
    import subprocess
    import tempfile

    raw = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flag in settings.items():
            env = dict(os.environ)
            env.pop("XLA_FLAGS", None)
            if flag:
                env["XLA_FLAGS"] = flag
            path = os.path.join(tmp, name + ".json")
            log(f"setting {name}: XLA_FLAGS={flag or '(unset)'}")
            subprocess.run([sys.executable, "-m", module, "--worker", path, *map(str, worker_args)], env=env,
                           check=True)
            with open(path) as f:
                raw[name] = json.load(f)
    return raw
