"""The search space of solver schedules: genotypes and their decoding.

A *genotype* is a dict of arrays (the same structure for every candidate, so a
population is one stacked pytree and every operation here is ``vmap``-able):

* ``logits`` (m - 1,) float: the time points.  ``softmax(logits)`` are the
  fractions of the logSNR interval [lambda(t_max), lambda(t_min)] taken by the
  m - 1 intervals between the m nodes from t_max to t_min, so the decoded times
  are strictly decreasing by construction with exact endpoints (m = n nodes with
  ``end="zero"``, where sigma = 0 is appended, else n + 1).  Logits are kept in
  [-LOGIT_BOUND, LOGIT_BOUND] (a largest / smallest interval ratio of at most
  e^(2 LOGIT_BOUND), which keeps nodes distinct in float32).
* ``order`` (n,) int32 in 1..max_order (clipped to the available history, i + 1
  model outputs at step i, when decoded);
* ``prediction`` (n,) int32: 0 = data, 1 = noise;
* ``derivative`` (n,) int32 in 0..3 (see :data:`samplax.solvers.schedule.DERIVATIVES`);
* ``corrector`` (n,) bool.

Fields not in ``searchable`` are frozen: :meth:`SearchSpace.init` sets them to the
default (DPM-Solver++(2M) on a logSNR-uniform grid: order 2 with warm-up and
lower-order-final, data prediction, "dpmsolver" differences, no corrector) and
:meth:`SearchSpace.mutate` leaves them alone (a genotype made by
:meth:`SearchSpace.from_schedule` keeps the schedule's values).  This is the
search space of the unified sampling framework (Liu et al. 2023, "A Unified
Sampling Framework for Solver Searching of Diffusion Probabilistic Models",
Sec. 3-4: per-step time point, order, prediction type, corrector and
derivative estimation).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.solvers.schedule import DERIVATIVES, MAX_ORDER, SolverSchedule
from samplax.timesteps import ENDS

FIELDS = ("times", "order", "prediction", "derivative", "corrector")
LOGIT_BOUND = 4.0
Genotype = dict


def _n_steps(nfe: int, end: str, afs: bool) -> int:
    return nfe - (1 if end == "denoise" else 0) + (1 if afs else 0)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Schedules of ``nfe`` model evaluations on ``noise_schedule`` (see the module doc).

    Hashable (a static argument of ``jax.jit``) when the noise schedule is."""

    noise_schedule: Any
    nfe: int
    end: str = "zero"
    afs: bool = False
    max_order: int = 3
    searchable: Tuple[str, ...] = FIELDS

    def __post_init__(self):
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, (int, np.integer)):
            raise ValueError(f"SearchSpace.nfe: must be an integer >= 1, got {self.nfe!r}")
        if self.end not in ENDS:
            raise ValueError(f"SearchSpace.end: unknown end {self.end!r}; allowed: {list(ENDS)}")
        if not isinstance(self.afs, (bool, np.bool_)):
            raise ValueError(f"SearchSpace.afs: must be True or False, got {self.afs!r}")
        if _n_steps(int(self.nfe), self.end, bool(self.afs)) < 1:
            raise ValueError(f"SearchSpace.nfe: {self.nfe} evaluations make no step with end={self.end!r}, "
                             f"afs={self.afs}; allowed: nfe >= {2 if self.end == 'denoise' else 1}")
        if isinstance(self.max_order, bool) or self.max_order not in range(1, MAX_ORDER + 1):
            raise ValueError(f"SearchSpace.max_order: must be an integer in 1..{MAX_ORDER}, got {self.max_order!r}")
        if isinstance(self.searchable, str):
            object.__setattr__(self, "searchable", (self.searchable,))
        object.__setattr__(self, "searchable", tuple(self.searchable))
        bad = [f for f in self.searchable if f not in FIELDS]
        if bad:
            raise ValueError(f"SearchSpace.searchable: unknown field(s) {bad}; allowed: {list(FIELDS)}")
        for name in ("t_min", "t_max", "lambda_", "t_from_lambda"):
            if not hasattr(self.noise_schedule, name):
                raise ValueError(f"SearchSpace.noise_schedule: needs {name} (a samplax NoiseSchedule), got "
                                 f"{type(self.noise_schedule).__name__}")

    # ------------------------------------------------------------------ sizes
    @property
    def n_steps(self) -> int:
        return _n_steps(int(self.nfe), self.end, bool(self.afs))

    @property
    def n_nodes(self) -> int:
        """Time points from t_max to t_min (sigma = 0 not counted)."""
        return self.n_steps if self.end == "zero" else self.n_steps + 1

    @property
    def n_features(self) -> int:
        return (self.n_nodes - 1) + self.n_steps * (3 + len(DERIVATIVES))

    # ------------------------------------------------------------------ defaults
    def _lam_range(self, dtype):
        ns = self.noise_schedule
        lam_hi = ns.lambda_(jnp.asarray(ns.t_max, dtype))  # lambda at t_max (lowest)
        lam_lo = ns.lambda_(jnp.asarray(ns.t_min, dtype))
        return lam_hi, lam_lo

    def default(self, dtype=jnp.float32) -> Genotype:
        """The frozen-field values: DPM-Solver++(2M) on the logSNR-uniform grid."""
        n = self.n_steps
        # constant_schedule's orders (warm-up, lower-order-final), in numpy (static under jit)
        i = np.arange(n)
        p = np.minimum(min(2, self.max_order), i + 1)
        p = np.minimum(p, np.maximum((n - 1 if self.end == "zero" and n > 1 else n) - i, 1))
        if self.end == "zero" and n > 1:
            p[-1] = 1
        return dict(logits=jnp.zeros((self.n_nodes - 1,), dtype), order=jnp.asarray(p, jnp.int32),
                    prediction=jnp.zeros((n,), jnp.int32), derivative=jnp.zeros((n,), jnp.int32),
                    corrector=jnp.zeros((n,), bool))

    # ------------------------------------------------------------------ random candidates
    def _fields_from_uniform(self, u, dtype) -> Genotype:
        """Random fields from uniforms u in [0, 1) of length m - 1 + 4 n (one PRNG call
        per candidate: threefry compiles slowly on CPU, so draws are batched)."""
        n, m1 = self.n_steps, self.n_nodes - 1
        uo, up, ud, uc = (u[m1 + j * n: m1 + (j + 1) * n] for j in range(4))
        level = lambda v, k: jnp.minimum(jnp.floor(v * k), k - 1).astype(jnp.int32)  # noqa: E731
        return dict(logits=(3.0 * u[:m1] - 1.5).astype(dtype), order=level(uo, self.max_order) + 1,
                    prediction=level(up, 2), derivative=level(ud, len(DERIVATIVES)), corrector=uc < 0.5)

    def _random_fields(self, key, dtype) -> Genotype:
        return self._fields_from_uniform(jax.random.uniform(key, (self.n_nodes - 1 + 4 * self.n_steps,)), dtype)

    def _merge(self, searched: Genotype, frozen: Genotype) -> Genotype:
        name = {"logits": "times"}
        return {k: (searched[k] if name.get(k, k) in self.searchable else frozen[k]) for k in frozen}

    def init(self, key, dtype=jnp.float32) -> Genotype:
        """A random candidate (searchable fields uniform; logits uniform in [-1.5, 1.5])."""
        return self._merge(self._random_fields(key, dtype), self.default(dtype))

    # ------------------------------------------------------------------ decoding
    def decode(self, g: Genotype, dtype=None) -> SolverSchedule:
        """The schedule of a genotype (traceable, vmappable).  Times: strictly decreasing
        from t_max to t_min exactly (the logSNR increments are softmax(logits))."""
        logits = jnp.clip(jnp.asarray(g["logits"]), -LOGIT_BOUND, LOGIT_BOUND)
        dtype = dtype or logits.dtype
        logits = logits.astype(dtype)
        ns = self.noise_schedule
        t_max = jnp.asarray(ns.t_max, dtype)
        t_min = jnp.asarray(ns.t_min, dtype)
        if self.n_nodes == 1:
            times = t_max[None]
        else:
            lam_hi, lam_lo = self._lam_range(dtype)
            w = jax.nn.softmax(logits)
            frac = jnp.cumsum(w)[:-1]
            lam = lam_hi + (lam_lo - lam_hi) * frac
            inner = ns.t_from_lambda(lam).astype(dtype)
            times = jnp.concatenate([t_max[None], inner, t_min[None]])
        n = self.n_steps
        order = jnp.clip(jnp.asarray(g["order"], jnp.int32), 1, self.max_order)
        order = jnp.minimum(order, jnp.arange(1, n + 1, dtype=jnp.int32))
        return SolverSchedule(times=times, order=order,
                              prediction=jnp.clip(jnp.asarray(g["prediction"], jnp.int32), 0, 1),
                              derivative=jnp.clip(jnp.asarray(g["derivative"], jnp.int32), 0, len(DERIVATIVES) - 1),
                              corrector=jnp.asarray(g["corrector"], bool), end=self.end, afs=self.afs)

    def from_schedule(self, sched: SolverSchedule, dtype=None) -> Genotype:
        """The genotype of a schedule (times: log of the logSNR increments, centred;
        so ``decode(from_schedule(s)).times`` equals ``s.times`` up to rounding
        when the increments' ratio is within e^(2 LOGIT_BOUND))."""
        if sched.end != self.end or bool(sched.afs) != bool(self.afs):
            raise ValueError(f"SearchSpace.from_schedule: schedule has end={sched.end!r}, afs={sched.afs}; this "
                             f"space has end={self.end!r}, afs={self.afs}")
        if sched.n_steps != self.n_steps:
            raise ValueError(f"SearchSpace.from_schedule: schedule has {sched.n_steps} steps; this space has "
                             f"{self.n_steps} (nfe={self.nfe}, end={self.end!r}, afs={self.afs})")
        times = jnp.asarray(sched.times)
        dtype = dtype or (times.dtype if jnp.issubdtype(times.dtype, jnp.floating) else jnp.float32)
        times = times.astype(dtype)
        if self.n_nodes > 1:
            lam = self.noise_schedule.lambda_(times[: self.n_nodes])
            logits = jnp.log(jnp.maximum(jnp.diff(lam), jnp.finfo(dtype).tiny))
            logits = jnp.clip(logits - jnp.mean(logits), -LOGIT_BOUND, LOGIT_BOUND)
        else:
            logits = jnp.zeros((0,), dtype)
        return dict(logits=logits, order=jnp.asarray(sched.order, jnp.int32),
                    prediction=jnp.asarray(sched.prediction, jnp.int32),
                    derivative=jnp.asarray(sched.derivative, jnp.int32),
                    corrector=jnp.asarray(sched.corrector, bool))

    # ------------------------------------------------------------------ variation
    def mutate(self, key, g: Genotype, rate) -> Genotype:
        """Gaussian noise (std ``rate``) on the logits; each discrete choice of a
        searchable field is redrawn uniformly with probability ``rate``."""
        n, m1 = self.n_steps, self.n_nodes - 1
        dtype = g["logits"].dtype
        u = jax.random.uniform(key, (2 * m1 + 8 * n,), jnp.float32)
        fresh = self._fields_from_uniform(u[: m1 + 4 * n], dtype)
        rest = u[m1 + 4 * n:]
        out = dict(g)
        if "times" in self.searchable:
            v = jnp.clip(rest[:m1], 1e-7, 1 - 1e-7)
            noise = (jnp.sqrt(2.0) * jax.scipy.special.erfinv(2 * v - 1)).astype(dtype)  # standard normal
            out["logits"] = jnp.clip(g["logits"] + rate * noise, -LOGIT_BOUND, LOGIT_BOUND)
        for j, field in enumerate(("order", "prediction", "derivative", "corrector")):
            if field in self.searchable:
                redraw = rest[m1 + j * n: m1 + (j + 1) * n] < rate
                out[field] = jnp.where(redraw, fresh[field], g[field])
        return out

    def crossover(self, key, a: Genotype, b: Genotype) -> Genotype:
        """Uniform crossover: every entry from ``a`` or ``b`` with probability 1/2."""
        names = sorted(a)
        sizes = [a[k].size for k in names]
        u = jax.random.uniform(key, (sum(sizes),))
        out, o = {}, 0
        for k, sz in zip(names, sizes):
            out[k] = jnp.where(u[o:o + sz].reshape(a[k].shape) < 0.5, a[k], b[k])
            o += sz
        return out

    # ------------------------------------------------------------------ features
    def features(self, g: Genotype) -> jnp.ndarray:
        """(F,) float32 features for a predictor: the logSNR fractions of the
        intervals (softmax of the logits, times the number of intervals), then per
        step the effective order scaled to [0, 1], the prediction type, the
        corrector flag and a one-hot derivative choice (F = m - 1 + 7 n)."""
        n = self.n_steps
        logits = jnp.clip(jnp.asarray(g["logits"], jnp.float32), -LOGIT_BOUND, LOGIT_BOUND)
        w = jax.nn.softmax(logits) * max(self.n_nodes - 1, 1) if self.n_nodes > 1 else logits
        order = jnp.minimum(jnp.clip(jnp.asarray(g["order"], jnp.int32), 1, self.max_order),
                            jnp.arange(1, n + 1, dtype=jnp.int32))
        per = [(order.astype(jnp.float32) - 1) / max(self.max_order - 1, 1),
               jnp.asarray(g["prediction"], jnp.float32), jnp.asarray(g["corrector"], jnp.float32)]
        onehot = jax.nn.one_hot(jnp.asarray(g["derivative"], jnp.int32), len(DERIVATIVES), dtype=jnp.float32)
        return jnp.concatenate([w] + per + [onehot.reshape(-1)])


def stack(genotypes) -> Genotype:
    """A batch (stacked pytree) from a list of genotypes."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *genotypes)


def take(batch: Genotype, idx) -> Genotype:
    """Rows ``idx`` of a batch of genotypes (an int for one genotype)."""
    return jax.tree.map(lambda a: a[idx], batch)
