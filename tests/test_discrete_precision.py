"""Categorical sampling precision (Zheng et al. 2024, "Masked Diffusion Models are Secretly
Time-Agnostic Masked Models and Exploit Inaccurate Categorical Sampling", Sec. 4): the float32
Gumbel of jax.random.categorical is bounded (a lattice argument, checked exactly), so it can never
draw a token whose logit gap exceeds g_max - g_min, while "high" and "float64" reach beyond the
float32 supremum at the right rate (Poisson test at significance 1e-3, with float32 as the
mutation that must fail it).  benchmarks/discrete_precision.py measures the effect at scale.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from samplax.discrete.base import categorical, gumbel

ALPHA = 1e-3


def _float32_lattice():
    """Every value (sorted) of jax.random.gumbel(float32) ("low" mode: -log(-log(u)), u = k 2^-23 with u = 0
    replaced by the smallest normal), computed with jax's float32 log."""
    u = (np.arange(2 ** 23, dtype=np.float64) * 2.0 ** -23).astype(np.float32)
    u[0] = np.finfo(np.float32).tiny
    return np.sort(np.asarray(-jnp.log(-jnp.log(jnp.asarray(u)))))


def _rare_mass_float32(lattice, gap, k):
    """Exact P(a rare token wins) for float32 Gumbel-max: dominant token first at logit 0, k rare
    tokens at logit -gap (float32 sums; ties go to the first index, the dominant)."""
    sd = lattice  # sorted; adding a constant in float32 keeps it sorted (rounding is monotone)
    sr = (lattice + np.float32(-gap)).astype(np.float32)
    f = np.searchsorted(sr, sd, side="right") / lattice.size
    return 1.0 - np.mean(np.exp(k * np.log(np.maximum(f, 1e-300))))


def test_float32_gumbel_is_bounded_so_a_gap_beyond_the_bound_is_never_drawn():
    lat = _float32_lattice()
    g_max, g_min = float(lat.max()), float(lat.min())
    assert abs(g_max - (-math.log(-math.log1p(-2.0 ** -23)))) < 1e-5  # 15.942
    assert abs(g_min - (-math.log(-math.log(np.finfo(np.float32).tiny)))) < 1e-5  # -4.470
    # the sampler stays inside the lattice's range
    g = np.asarray(jax.random.gumbel(jax.random.PRNGKey(0), (2 ** 20,), jnp.float32))
    assert g.max() <= g_max and g.min() >= g_min
    # the exact law: zero beyond the bound (every rare score is below every dominant score) ...
    bound = g_max - g_min
    assert _rare_mass_float32(lat, bound + 0.01, 10 ** 6) == 0.0
    # ... positive just inside it, and equal to the exact categorical where truncation cannot act
    assert _rare_mass_float32(lat, bound - 0.5, 10 ** 6) > 0.0
    exact = 10 * math.exp(-3.0) / (1 + 10 * math.exp(-3.0))
    assert abs(_rare_mass_float32(lat, 3.0, 10) - exact) < 2e-3
    # the core's "float32" is that sampler: a token 21 below the rest is never drawn
    logp = jnp.array([0.0, -21.0, -21.0])
    x = categorical(jax.random.PRNGKey(1), jnp.broadcast_to(logp, (2 ** 16, 3)), "float32")
    assert int(jnp.sum(x > 0)) == 0


def _tail_count(precision, a, n, dtype=jnp.float32, chunk=2 ** 22):
    def body(c, i):
        g = gumbel(jax.random.fold_in(jax.random.PRNGKey(3), i), (chunk,), dtype, precision)
        return c + jnp.sum(g > a), None
    return int(jax.jit(lambda: jax.lax.scan(body, 0, jnp.arange(n // chunk))[0])())


def _poisson_ok(count, lam):
    """Two-sided Poisson test at ALPHA."""
    p = 2 * min(stats.poisson.cdf(count, lam), stats.poisson.sf(count - 1, lam))
    return min(p, 1.0) > ALPHA


def test_high_and_float64_reach_beyond_the_float32_supremum_at_the_right_rate():
    a = 15.95  # above the float32 supremum 15.942
    n = 20 * 2 ** 22
    lam = n * -math.expm1(-math.exp(-a))  # P(G > a) = 1 - exp(-e^-a): 9.9 expected (P(0) = 5e-5)
    assert _poisson_ok(_tail_count("high", a, n), lam)
    # mutation: the float32 sampler (0 draws beyond its supremum, provably) fails the same test
    assert not _poisson_ok(_tail_count("float32", a, n), lam)
    with jax.enable_x64(True):
        # float64's lattice reaches 36 (u <= 1 - 2^-52); its rate just below the float32 bound
        assert -math.log(-math.log1p(-2.0 ** -52)) > 36.0
        n64, a64 = 2 ** 22, 12.0
        assert _poisson_ok(_tail_count("float64", a64, n64, jnp.float64), n64 * -math.expm1(-math.exp(-a64)))
