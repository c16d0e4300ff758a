"""The solver type and the one function that runs every solver: :func:`sample`.

A solver is built by a factory from plain arguments and consists of

* ``init(model, grid, x) -> state``: the state at t_0, including the model
  output there (or its analytic large-noise limit when AFS is on);
* ``step(model, grid, state, i, keys, last) -> state``: one interval
  t_i -> t_{i+1}.  It ends with the model evaluation at the new point that the
  next step needs, except when ``last`` (a Python bool) is set;
* ``nfe(n_steps, end) -> int``: the exact number of model evaluations.

:func:`sample` runs steps 0..n-2 with ``jax.lax.scan``, the last step outside
it (so no model call is wasted at the end), then the optional final denoising
evaluation.  No Python loop over steps, no host sync.
"""
from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable, Literal, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from samplax.timesteps import Grid

Array = jnp.ndarray


class Solver(NamedTuple):
    name: str
    init: Callable
    step: Callable
    nfe: Callable
    order: int
    stochastic: bool = False
    min_steps: int = 1
    view: str = "data"  # the model view kept in the state ("data", "noise" or "both")
    # step_orders(grid, i) -> (nominal, actual) order of step i (traceable in i): nominal from
    # warm-up and lower-order-final, actual after the safeguard (see effective_orders).
    step_orders: Optional[Callable] = None
    # stability(grid, sigma_data=..., max_gain=...) -> Optional[str]: a warning when the grid is
    # outside the solver's stable regime (see samplax.solvers.stability_warning).
    stability: Optional[Callable] = None
    # table(grid, schedule) -> samplax.solvers.unified.Table: the per-step coefficients of a
    # linear multistep method; :func:`sample` then runs the one table-driven program.
    table: Optional[Callable] = None
    # Model-dependent solvers (DPM-Solver-v3's empirical model statistics, teleportation's Gaussian
    # fit of the data): prepare(model, data: ModelData) -> stats, a dict of numpy arrays (expensive:
    # the experiment layer caches it per model identity and solver options), and bind(stats) ->
    # the runnable Solver (prepare and bind None).  sample() refuses a solver that still needs
    # preparing; prepare_solver() does both steps.
    prepare: Optional[Callable] = None
    bind: Optional[Callable] = None
    # The first grid node a bound solver wants (teleportation: the switch time, reached from x_T
    # analytically by its init), or None.  The experiment layer builds the run's grid from it
    # (grid.t_max = t_start) while x_T stays at the prior time; library users do the same:
    # time_grid(schedule, n, t_max=solver.t_start).
    t_start: Optional[float] = None
    # Particle samplers (samplax.smc.samplers): an :class:`SMCSpec`; sample() hands the whole batch
    # to ``smc.run`` (groups of ``smc.num_particles`` consecutive samples are coupled by resampling),
    # and init / step are unused.
    smc: Optional["SMCSpec"] = None
    # Guidance run as a solver option (samplax.solvers.guided.with_model): the model wrapper, which
    # sample() also applies to the final denoising evaluation of an end="denoise" grid.
    model_wrap: Optional[Callable] = None


class SMCSpec(NamedTuple):
    """How a particle sampler runs (built by :func:`samplax.smc.samplers.smc_solver`).

    run(model, x_T, grid, key, index_offset, conditional) -> (x_0, SampleInfo, DiffusionSMCInfo):
        ``conditional(model, label) -> DiffusionModel`` gives the model conditioned on a label
        (None when the model has no labels); the batch must be a whole number of groups.
    num_particles: samples per group (the unit of independence: batch sizes, offsets and device
        shards must be multiples of it).
    exact_target(gmm, schedule) -> an exact target (samplax.smc.targets protocol) for an analytic
        mixture, or None when the method has no closed-form target.
    needs_conditional: the method needs ``conditional`` (classifier-free-guidance targets).
    """
    run: Callable
    num_particles: int
    exact_target: Optional[Callable] = None
    needs_conditional: bool = False
    resampling: str = "systematic"
    ess_threshold: float = 0.5


class ModelData(NamedTuple):
    """The data side of a model, for :attr:`Solver.prepare`.

    ``samples(n, seed)``: ``n`` data samples x_0 (numpy, float64, shape (n, *sample_shape)),
    the same for the same (n, seed).  ``moments()``: the exact (mean (d,), covariance (d, d)) of
    the flattened data when known (analytic models), else None: callers then estimate them
    from samples.  ``shape``: one sample's shape."""

    samples: Callable
    shape: tuple
    moments: Optional[Callable] = None


def model_data(x0=None, gmm=None) -> ModelData:
    """A :class:`ModelData` from an array of data samples ``x0`` (n, ...) (``samples(n, seed)``
    takes a seeded random subset without replacement, or all of them in order when n equals
    their number) or from an analytic mixture ``gmm`` (exact samples and exact moments)."""
    if gmm is not None:
        def samples(n, seed):
            with jax.enable_x64(True):
                g = gmm.astype(jnp.float64)
                return np.asarray(g.sample(jax.random.PRNGKey(seed), n, dtype=jnp.float64))

        def moments():
            with jax.enable_x64(True):
                g = gmm.astype(jnp.float64)
                return np.asarray(g.mean()), np.asarray(g.covariance())
        return ModelData(samples=samples, shape=(int(gmm.dim),), moments=moments)
    if x0 is None:
        raise ValueError("model_data: give data samples x0 (n, ...) or an analytic mixture gmm")
    x0 = np.asarray(x0, np.float64)

    def samples(n, seed):
        if n > len(x0):
            raise ValueError(f"model_data: {n} samples asked for, only {len(x0)} data points given")
        if n == len(x0):
            return x0
        return x0[np.random.default_rng(seed).choice(len(x0), n, replace=False)]
    return ModelData(samples=samples, shape=tuple(x0.shape[1:]))


def prepare_solver(solver: Solver, model, data: Optional[ModelData] = None) -> Solver:
    """The runnable form of a model-dependent solver: ``solver.bind(solver.prepare(model, data))``.
    Solvers that need no preparation are returned unchanged.  ``data`` may also be an array of
    data samples (see :func:`model_data`)."""
    if solver.prepare is None:
        return solver
    if data is not None and not isinstance(data, ModelData):
        data = model_data(x0=data)
    return solver.bind(solver.prepare(model, data))


class SampleInfo(NamedTuple):
    """Per-run diagnostics.  ``first_nonfinite_step``: index (0-based) of the
    first step after which some sample was non-finite, or -1; ``n_nonfinite``:
    count of non-finite samples after each step; ``trajectory``: x after each
    step (n, B, ...) when requested, else None."""

    first_nonfinite_step: Array
    n_nonfinite: Array
    trajectory: Optional[Array]


class SolverOptionError(ValueError, TypeError):
    """A solver option of the wrong type or outside its choices (a ValueError, so
    callers that catch ValueError for bad options keep working, and a TypeError)."""


@functools.lru_cache(maxsize=None)
def _option_specs(factory: Callable) -> dict:
    """{option: (allowed types as a tuple of 'bool' / 'int' / 'float' / 'str' / choices, None allowed)}
    from the factory's signature annotations (one place for every solver)."""
    hints = typing.get_type_hints(factory)
    specs = {}
    for name in inspect.signature(factory).parameters:
        tp, optional = hints.get(name), False
        if typing.get_origin(tp) is Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = len(args) < len(typing.get_args(tp))
            tp = args[0] if len(args) == 1 else None
        if typing.get_origin(tp) is Literal:
            specs[name] = (tuple(typing.get_args(tp)), optional)
        elif tp in (bool, int, float, str):
            specs[name] = (tp.__name__, optional)
    return specs


def _option_ok(kind, v) -> bool:
    if isinstance(kind, tuple):
        return isinstance(v, str) and v in kind
    if kind == "bool":
        return isinstance(v, (bool, np.bool_))
    if isinstance(v, (bool, np.bool_)):
        return False
    if kind == "int":
        return isinstance(v, (int, np.integer))
    if kind == "float":
        return isinstance(v, (int, float, np.integer, np.floating))
    return isinstance(v, str)


_KIND_WORDS = {"bool": "a bool (True or False)", "int": "an integer (int)", "float": "a real number (int or float)",
               "str": "a string"}


def check_options(factory: Callable, values: Mapping[str, Any]) -> None:
    """Check a solver factory's arguments against its signature's annotations: bool
    options must be bools (numpy bools too), int options integers, float options real
    numbers (ints too), ``Literal[...]`` options one of the choices, ``Optional`` ones
    may be None.  A string such as "no" or "2.0" is never taken for a bool or a number.
    Raises :class:`SolverOptionError` whose message starts with the option's name."""
    for name, (kind, optional) in _option_specs(factory).items():
        if name not in values:
            continue
        v = values[name]
        if (v is None and optional) or _option_ok(kind, v):
            continue
        if isinstance(kind, tuple):
            allowed, what = f"one of {list(kind)}", "not one of the choices"
        else:
            allowed, what = _KIND_WORDS[kind], f"not {_KIND_WORDS[kind].split(' (')[0]}"
        if optional:
            allowed += " or None"
        raise SolverOptionError(f"{name}: {v!r} ({type(v).__name__}) is {what} (solver factory "
                                f"{factory.__name__}); allowed: {allowed}")


def fixed_orders(order: int) -> Callable:
    """``Solver.step_orders`` of a one-step method of fixed ``order`` whose step into
    sigma = 0 is the first-order denoising jump."""
    def step_orders(grid: Grid, i):
        p = jnp.where(jnp.asarray(grid.ends_at_zero) & (i == grid.n_steps - 1), 1, order).astype(jnp.int32)
        return p, p
    return step_orders


def bcast(a, x):
    """Reshape a scalar or per-sample array to broadcast against x (B, ...)."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def afs_noise(grid: Grid, x):
    """Analytic first step: the large-noise limit of the noise prediction,
    eps_hat = x / sqrt(alpha^2 + sigma^2) (= x for VP schedules), i.e. the
    prediction of a model whose data have zero mean and negligible spread."""
    a, s = grid.alpha[0], grid.sigma[0]
    return x / jnp.sqrt(a * a + s * s)


def evaluate(model, view: str, x, t):
    """Model output at (x, t) in ``view`` ("noise", "data", or "both": the stacked
    pair (x0_hat, eps_hat)), in the dtype of x."""
    if view == "both":
        return jnp.stack(model.data_noise(x, t)).astype(x.dtype)
    return model.view(view)(x, t).astype(x.dtype)


def initial_output(model, grid: Grid, x, view: str, afs: bool):
    """Model output at (x, t_0) in ``view`` (see :func:`evaluate`), or its AFS limit."""
    if not afs:
        return evaluate(model, view, x, grid.t[0])
    eps = afs_noise(grid, x)
    x0 = (x - grid.sigma[0] * eps) / grid.alpha[0]
    out = {"noise": eps, "data": x0}.get(view)
    return (jnp.stack([x0, eps]) if out is None else out).astype(x.dtype)


def _count_nonfinite(x):
    return jnp.sum(~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1))


def sample_keys(key, batch: int, index_offset=0):
    """Per-sample keys fold_in(key, global_index): a sample's randomness does
    not depend on the batch size or on how the batch is split across devices."""
    idx = jnp.arange(batch) + index_offset
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def cpu_compiler_options(backend: Optional[str] = None) -> dict:
    """XLA compiler options samplax uses for its sampling programs on CPU: XLA's
    YNNPACK fusions off.  In jax 0.10 they are on by default and make the multistep
    sampling loops 2-4x slower at large batches and the vmapped schedule scorer ~10x
    slower (docs/benchmarks/solver_overhead.md, search_throughput.md).  Empty on other
    backends.  Use as ``jax.jit(f).lower(*args).compile(compiler_options=...)`` or
    :func:`jit_cpu_fast`."""
    backend = backend or jax.default_backend()
    return {"xla_cpu_experimental_ynn_fusion_type": ""} if backend == "cpu" else {}


def jit_cpu_fast(fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn)`` compiled with :func:`cpu_compiler_options` (one compilation per
    argument shapes / dtypes / static structure, cached)."""
    jitted = jax.jit(fn, **jit_kwargs)
    cache = {}

    def call(*args):
        leaves, tree = jax.tree.flatten(args)
        if any(isinstance(v, jax.core.Tracer) for v in leaves):  # inside another trace: inlined there
            return jitted(*args)
        key = (tree, tuple((getattr(v, "shape", None), str(getattr(v, "dtype", type(v)))) for v in leaves))
        if key not in cache:
            cache[key] = jitted.lower(*args).compile(compiler_options=cpu_compiler_options())
        return cache[key](*args)

    call.jitted = jitted
    return call


def _concrete(a):
    """``a`` as a numpy array, or None when it is traced (under jit / vmap)."""
    return None if isinstance(a, jax.core.Tracer) else np.asarray(a)


def check_grid(grid: Grid, name: str = "grid") -> None:
    """A concrete grid must run from high to low noise: strictly decreasing times,
    finite alpha > 0 and sigma >= 0, lambda not NaN (+inf only at a sigma = 0 end).
    A traced grid (built or batched under jit / vmap) is not checked."""
    t, alpha, sigma, lam = (_concrete(a) for a in (grid.t, grid.alpha, grid.sigma, grid.lam))
    if any(a is None for a in (t, alpha, sigma, lam)) or t.ndim != 1:
        return
    if t.size < 2:
        raise ValueError(f"{name}: needs at least 2 nodes (1 step), got {t.size}; allowed: a grid from time_grid")
    if np.any(np.isnan(t)) or np.any(np.diff(t) >= 0):
        raise ValueError(f"{name}: times must be strictly decreasing (from high noise to low), got t = "
                         f"{np.array2string(t, precision=4, threshold=12)}; allowed: t_0 > t_1 > ... > t_n "
                         f"(time_grid builds them)")
    bad = ~(np.isfinite(alpha) & (alpha > 0) & np.isfinite(sigma) & (sigma >= 0) & ~np.isnan(lam))
    if np.any(bad):
        k = int(np.argmax(bad))
        raise ValueError(f"{name}: node {k} (t = {t[k]}) has alpha = {alpha[k]}, sigma = {sigma[k]}, lambda = "
                         f"{lam[k]}; allowed: finite alpha > 0, sigma >= 0 (t within the schedule's range)")


def check_sample_inputs(solver: Solver, x_T, grid: Grid) -> None:
    """The checks :func:`sample` makes before it traces anything (see its docstring)."""
    dt = np.dtype(jax.dtypes.canonicalize_dtype(x_T.dtype))  # numpy float64 is float32 without x64
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"x_T: dtype {dt.name} is not a floating-point dtype (the solve runs in x_T's dtype: its "
                        f"coefficients would be cast to {dt.name}); allowed: {', '.join(FLOAT_DTYPES)}")
    if x_T.ndim < 2:
        raise ValueError(f"x_T: must have a leading batch axis, shape (B, ...); got shape {tuple(x_T.shape)}")
    if x_T.shape[0] == 0 or 0 in x_T.shape:
        raise ValueError(f"x_T: empty batch, shape {tuple(x_T.shape)}; allowed: at least one sample of at least "
                         f"one element (B >= 1)")
    g_dt = np.dtype(grid.t.dtype)
    if jnp.issubdtype(g_dt, jnp.floating) and dt.itemsize > g_dt.itemsize:
        raise TypeError(f"x_T: dtype {dt.name} is wider than the grid's {g_dt.name}: the solve would run in "
                        f"{dt.name} with {g_dt.name}-accurate step coefficients; allowed: x_T of dtype "
                        f"{g_dt.name} or narrower, or a grid built with dtype={dt.name} "
                        f"(time_grid(..., dtype=jnp.{dt.name}))")
    check_grid(grid)
    n = grid.n_steps
    if n < solver.min_steps:
        raise ValueError(f"grid: solver {solver.name} needs at least {solver.min_steps} steps "
                         f"(its order), the grid has {n}")


def sample(solver: Solver, model, x_T: Array, grid: Grid, key: Optional[Array] = None,
           return_trajectory: bool = False, index_offset: Any = 0, stepwise: bool = False):
    """Run ``solver`` on ``model`` from x_T (shape (B, ...)) along ``grid``.

    Returns ``(x_0, SampleInfo)``.  Stochastic solvers need ``key``; the noise
    of sample b at step i is drawn from fold_in(fold_in(key, index_offset + b), i).

    Checked before anything is traced (one error naming the argument): x_T must be
    floating point (TypeError otherwise), of shape (B, ...) with B >= 1, and no wider
    than the grid's dtype (a float64 x_T on a float32 grid would silently get
    float32-accurate coefficients: TypeError); a concrete grid must be strictly
    decreasing in t with finite alpha and sigma; the grid must have at least
    ``solver.min_steps`` steps.

    Linear multistep solvers (those with ``solver.table``) run the one table-driven
    program of :mod:`samplax.solvers.unified`: their coefficients for all steps are
    computed first, outside the loop.  ``stepwise=True`` runs the solver's own
    ``init`` / ``step`` instead (the reference the tables are tested against).
    """
    x_T = x_T if hasattr(x_T, "dtype") and hasattr(x_T, "shape") else jnp.asarray(x_T)
    if solver.prepare is not None:
        raise ValueError(f"solver: {solver.name} depends on the model (statistics of its outputs or of its data) "
                         f"and has not been prepared; allowed: samplax.solvers.prepare_solver(solver, model, data) "
                         f"first (the experiment runner does this and caches the result)")
    check_sample_inputs(solver, x_T, grid)
    if solver.smc is not None:  # a particle sampler runs its own program over the whole batch
        x, info, _ = solver.smc.run(model, x_T, grid, key, index_offset, None)
        return x, info
    if solver.table is not None and not stepwise:
        from samplax.solvers.unified import run_table
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(grid)):
            tab = solver.table(grid, model.schedule)  # a traced (learned, searched, vmapped) grid
        else:
            # a concrete grid: its table is computed once at trace time and becomes a constant
            # of the compiled program (not recomputed on every call)
            with jax.ensure_compile_time_eval():
                tab = solver.table(grid, model.schedule)
        return run_table(model, x_T, tab, return_trajectory=return_trajectory)
    n = grid.n_steps
    keys = None
    if solver.stochastic:
        if key is None:
            raise ValueError(f"key: solver {solver.name} is stochastic and needs a PRNG key; allowed: a jax.random key")
        keys = sample_keys(key, x_T.shape[0], index_offset)

    def step_keys(i):
        if keys is None:
            return None
        return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)

    state = solver.init(model, grid, x_T)

    def body(st, i):
        st = solver.step(model, grid, st, i, step_keys(i), False)
        out = (st.x if return_trajectory else None, _count_nonfinite(st.x))
        return st, out

    if n > 1:
        state, (traj, bad) = jax.lax.scan(body, state, jnp.arange(n - 1))
    else:
        traj, bad = (x_T[None][:0] if return_trajectory else None), jnp.zeros((0,), jnp.int32)
    state = solver.step(model, grid, state, jnp.asarray(n - 1), step_keys(n - 1), True)
    x = state.x
    if grid.denoise:
        x = (model if solver.model_wrap is None else solver.model_wrap(model)).data(x, grid.t[-1])
    bad = jnp.concatenate([bad.astype(jnp.int32), _count_nonfinite(x)[None].astype(jnp.int32)])
    first = jnp.where(jnp.any(bad > 0), jnp.argmax(bad > 0), -1)
    if return_trajectory:
        traj = jnp.concatenate([traj, x[None]], 0)
    return x, SampleInfo(first_nonfinite_step=first, n_nonfinite=bad, trajectory=traj if return_trajectory else None)


def generate(solver: Solver, model, grid: Grid, key: Array, n: int, shape, dtype=None,
             index_offset: Any = 0, prior_std: float = 1.0, return_trajectory: bool = False):
    """Draw x_T ~ N(0, prior_std^2 I) per sample from fold_in(fold_in(key, 0), index) and
    sample.  Samples are identical whatever the batch size or the offset split.

    ``n`` must be an integer >= 1, ``shape`` a tuple of integers >= 1, ``dtype`` a
    floating dtype, ``prior_std`` a finite number > 0 (a ValueError / TypeError
    naming the argument); then :func:`sample`'s checks apply."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: must be a positive integer (the number of samples), got {n!r}; allowed: integers >= 1")
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 1 for d in shape):
        raise ValueError(f"shape: must be a tuple of integers >= 1 (one sample's shape), got {shape!r}")
    dtype = dtype or jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype: {np.dtype(dtype).name} is not a floating-point dtype; allowed: "
                        f"{', '.join(FLOAT_DTYPES)}")
    if not isinstance(prior_std, jax.core.Tracer):
        ok = not isinstance(prior_std, (bool, np.bool_, str)) and np.ndim(prior_std) == 0
        if not (ok and np.isfinite(float(prior_std)) and float(prior_std) > 0):
            raise ValueError(f"prior_std: must be a finite number > 0, got {prior_std!r}")
    k_prior, k_solver = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    pkeys = sample_keys(k_prior, n, index_offset)
    x_T = prior_std * jax.vmap(lambda k: jax.random.normal(k, tuple(shape), dtype))(pkeys)
    return sample(solver, model, x_T, grid, k_solver, return_trajectory, index_offset)
