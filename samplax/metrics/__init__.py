"""Sample-quality metrics with known answers (tested in tests/test_metrics.py).

Sliced Wasserstein-2, kernel two-sample statistics (MMD, energy distance), mean
log-likelihood, the GMM component chi-square test, and the Frechet distance between
Gaussians fitted to features (:func:`gaussian_statistics`, :func:`frechet_distance`,
:func:`frechet_distance_features`; float64 numpy on the host, used with the digits
classifier's features in ``samplax.models.classifier``)."""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp


def projections(key, dim: int, n_projections: int, dtype=jnp.float32):
    """``n_projections`` fixed unit directions in R^dim (columns), drawn from ``key``."""
    p = jax.random.normal(key, (dim, n_projections), dtype)
    return p / jnp.linalg.norm(p, axis=0, keepdims=True)


def sliced_wasserstein2(x, y, proj):
    """Sliced Wasserstein-2 distance between the empirical measures of x and y
    (both (n, d), the same n), over the unit directions ``proj`` (d, L):
    sqrt(mean_l W2^2(x . p_l, y . p_l)), each 1-D W2 from sorted projections.
    For N(0, I) vs N(m, I) and uniform directions it tends to |m| / sqrt(d)."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"sliced_wasserstein2: x and y must both be (n, d) with the same shape, "
                         f"got {x.shape} and {y.shape}")
    px = jnp.sort(x @ proj, axis=0)
    py = jnp.sort(y @ proj, axis=0)
    return jnp.sqrt(jnp.mean((px - py) ** 2))


def sliced_wasserstein2_host(x, y, proj) -> float:
    """:func:`sliced_wasserstein2` in float64 numpy on the host: the same quantity,
    about 10x faster than XLA's CPU sort for a few thousand points (used by the
    experiment runner on samples it already holds on the host)."""
    import numpy as np

    x, y, proj = (np.asarray(a, np.float64) for a in (x, y, proj))
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"sliced_wasserstein2: x and y must both be (n, d) with the same shape, "
                         f"got {x.shape} and {y.shape}")
    px = np.sort(x @ proj, axis=0)
    py = np.sort(y @ proj, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


# --------------------------------------------------------------------------------------
# Kernel two-sample statistics (MMD, energy distance), log-likelihood, GMM component test
# --------------------------------------------------------------------------------------
Array = jax.Array
Bandwidths = Union[Sequence[float], Array]

#: Default RBF bandwidths of :func:`mmd2_unbiased`: a geometric ladder suited to data of
#: unit scale (the benchmark problems live in [-1.5, 1.5]^d with component stds ~0.05-0.25).
DEFAULT_MMD_BANDWIDTHS: Tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)


def _check_pair(name: str, x: Array, y: Array, min_rows: int) -> None:
    """Static shape checks shared by the two-sample statistics."""
    if jnp.ndim(x) != 2 or jnp.ndim(y) != 2:
        raise ValueError(f"{name}: x and y must be 2-D (n, d) and (m, d), got shapes "
                         f"{jnp.shape(x)} and {jnp.shape(y)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{name}: x and y must have the same dimension d, got shapes "
                         f"{x.shape} and {y.shape}")
    if x.shape[0] < min_rows or y.shape[0] < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} samples in each of x and y, got "
                         f"{x.shape[0]} and {y.shape[0]}")


def _sq_dists(a: Array, b: Array) -> Array:
    """Pairwise squared distances |a_i - b_j|^2, (n, m), via the Gram identity
    |a|^2 + |b|^2 - 2 a.b (O(nm) memory instead of O(nmd)), clipped at 0 against
    round-off.  Callers centre a and b by a common point first (less cancellation);
    the dot runs at HIGHEST precision (no TF32/bf16 passes on accelerators)."""
    ab = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * ab
    return jnp.maximum(d2, 0.0)


def _centred(x: Array, y: Array) -> Tuple[Array, Array]:
    dtype = jnp.result_type(x, y, jnp.float32)
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    c = (jnp.sum(x, 0) + jnp.sum(y, 0)) / (x.shape[0] + y.shape[0])
    return x - c, y - c


def _offdiag_mean(k: Array) -> Array:
    """(1 / (n (n - 1))) sum_{i != j} k_ij for a square (n, n) matrix (diagonal masked,
    not subtracted, so round-off in k_ii never enters)."""
    n = k.shape[0]
    return jnp.sum(jnp.where(jnp.eye(n, dtype=bool), 0.0, k)) / (n * (n - 1))


def _rbf_sum(d2: Array, inv_two_l2: Array) -> Array:
    """sum_s exp(-d2 / (2 l_s^2)) elementwise, for the vector inv_two_l2 = 1 / (2 l_s^2)."""
    return jnp.sum(jnp.exp(-d2[..., None] * inv_two_l2), -1)


@jax.jit
def mmd2_unbiased(x: Array, y: Array, bandwidths: Optional[Bandwidths] = DEFAULT_MMD_BANDWIDTHS) -> Array:
    r"""Unbiased (U-statistic) estimate of the squared maximum mean discrepancy.

    Kernel: the multi-scale RBF k(a, b) = sum_s exp(-|a - b|^2 / (2 l_s^2)) over the
    bandwidths l_s (a sum of positive-definite kernels, so characteristic).  For
    x = (x_1..x_n) ~ P and y = (y_1..y_m) ~ Q (n, m >= 2, possibly different)

        MMD^2_u = 1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
                  - 2/(n m) sum_{i, j} k(x_i, y_j),

    whose expectation is exactly the population value
    MMD^2(P, Q) = E k(X, X') + E k(Y, Y') - 2 E k(X, Y).  Unlike the biased
    V-statistic (diagonal terms kept, always >= 0) it is negative for more than half
    of the draws when P = Q (~60% for Gaussians; its null distribution is right-skewed).

    Args:
      x: (n, d) samples of P.  y: (m, d) samples of Q.
      bandwidths: the l_s, a sequence or 1-D array of positive floats (traced, so
        jit recompiles only when their number changes).  ``None`` uses
        :func:`mmd_bandwidths_median` of the pooled data, which makes the kernel
        data-dependent and the estimate no longer exactly unbiased; for an unbiased
        estimate with a data-adapted scale, compute the bandwidths once on
        independent reference data and pass them in.

    Returns a scalar in the dtype of x and y (at least float32).  Cost O(n m S)
    time and O((n + m)^2) memory: subsample for n beyond a few thousand.
    """
    _check_pair("mmd2_unbiased", x, y, 2)
    x, y = _centred(x, y)
    if bandwidths is None:
        bandwidths = mmd_bandwidths_median(x, y)
    l = jnp.atleast_1d(jnp.asarray(bandwidths, x.dtype))
    if l.ndim != 1:
        raise ValueError(f"mmd2_unbiased: bandwidths must be a scalar or 1-D, got shape {l.shape}")
    inv = 1.0 / (2.0 * l * l)
    kxx = _offdiag_mean(_rbf_sum(_sq_dists(x, x), inv))
    kyy = _offdiag_mean(_rbf_sum(_sq_dists(y, y), inv))
    kxy = jnp.mean(_rbf_sum(_sq_dists(x, y), inv))
    return kxx + kyy - 2.0 * kxy


@functools.partial(jax.jit, static_argnames=("max_points",))
def mmd_bandwidths_median(x: Array, y: Array, scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
                          max_points: int = 2000) -> Array:
    r"""Median-heuristic RBF bandwidths: scales * median_{i < j} |z_i - z_j| over the pooled
    points z = (x, y) (the first ``max_points`` of them, to bound the O(N^2) memory;
    pass shuffled data if the order is not random).  Returns a (len(scales),) array.

    For z ~ N(mu, s^2 I_d), |z_i - z_j|^2 ~ 2 s^2 chi^2_d, so the median distance
    tends to s sqrt(2 F^{-1}_{chi^2_d}(1/2)).
    """
    _check_pair("mmd_bandwidths_median", x, y, 1)
    z = jnp.concatenate(_centred(x, y), 0)[:max_points]
    n = z.shape[0]
    if n < 2:
        raise ValueError("mmd_bandwidths_median: need at least 2 points in total")
    iu = jnp.triu_indices(n, 1)
    med = jnp.median(jnp.sqrt(_sq_dists(z, z)[iu]))
    return med * jnp.asarray(scales, z.dtype)


@jax.jit
def energy_distance(x: Array, y: Array) -> Array:
    r"""Unbiased estimate of the (squared) energy distance
    D^2(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|  (Euclidean norms; = 0 iff P = Q
    for P, Q with finite first moments; in 1-D it equals 2 int (F - G)^2):

        2/(n m) sum_{i,j} |x_i - y_j| - 1/(n(n-1)) sum_{i != j} |x_i - x_j|
                                      - 1/(m(m-1)) sum_{i != j} |y_i - y_j|.

    Every term is an unbiased U-statistic, so the estimate has mean D^2 (and is
    negative for some draws when P = Q).  x (n, d), y (m, d), n, m >= 2.  Note: this
    is the *squared* energy distance (Szekely & Rizzo's E-statistic divided by
    nm/(n+m)); take sqrt(max(., 0)) for a metric.  Memory O((n + m)^2).
    """
    _check_pair("energy_distance", x, y, 2)
    x, y = _centred(x, y)
    exy = jnp.mean(_safe_sqrt(_sq_dists(x, y)))
    exx = _offdiag_mean(_safe_sqrt(_sq_dists(x, x)))
    eyy = _offdiag_mean(_safe_sqrt(_sq_dists(y, y)))
    return 2.0 * exy - exx - eyy


def _safe_sqrt(d2: Array) -> Array:
    """sqrt with a zero (not NaN) gradient at d2 = 0 (coincident points, the masked diagonal)."""
    pos = d2 > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0)


def mean_log_likelihood(log_prob_fn: Callable[[Array], Array], x: Array) -> Array:
    r"""(1/n) sum_i log p(x_i) under an analytic model's log-density ``log_prob_fn``
    (mapping (n, ...) -> (n,)), e.g. ``lambda u: gmm.log_prob_ve(u, 0.0)``.

    For x_i ~ p this estimates the negative entropy -H(p) = int p log p; for x_i ~ q
    it estimates -H(q) - KL(q || p) (the cross-entropy, negated).

    Convention for non-finite input (chosen so the function stays pure and jit-able,
    where a value-dependent exception is impossible): if any coordinate of any sample
    is NaN or +-inf the result is NaN -- a diverged sampler reports NaN, never a
    misleading finite mean over the surviving samples.  Finite samples at which the
    model's density is 0 give -inf honestly.  Shape problems (x not at least 1-D with
    n >= 1, or log_prob_fn not returning shape (n,)) raise ValueError at trace time.
    """
    if jnp.ndim(x) < 1 or jnp.shape(x)[0] < 1:
        raise ValueError(f"mean_log_likelihood: x must be (n, ...) with n >= 1, got shape {jnp.shape(x)}")
    lp = log_prob_fn(x)
    if jnp.shape(lp) != jnp.shape(x)[:1]:
        raise ValueError(f"mean_log_likelihood: log_prob_fn must map x of shape {jnp.shape(x)} to shape "
                         f"{jnp.shape(x)[:1]}, got {jnp.shape(lp)}")
    finite = jnp.all(jnp.isfinite(x))
    return jnp.where(finite, jnp.mean(lp), jnp.nan)


@jax.jit
def gmm_assign_components(x: Array, gmm) -> Array:
    """argmax_k p(k | x) under the data distribution (noise level 0) of the mixture, (n,) int."""
    if jnp.ndim(x) != 2 or x.shape[1] != gmm.dim:
        raise ValueError(f"gmm_assign_components: x must be (n, {gmm.dim}) for this mixture, "
                         f"got shape {jnp.shape(x)}")
    return jnp.argmax(gmm.component_log_posterior(x, 0.0), axis=-1)


@functools.partial(jax.jit, static_argnames=("n_per_component", "chunk"))
def gmm_assignment_probs(gmm, key: Array, n_per_component: int = 100_000, chunk: int = 8192) -> Array:
    r"""Exact-variant expected assignment frequencies q (K,), by Monte Carlo.

    q_k = P(argmax_j p(j | X) = k) for X ~ p0, i.e. q = sum_j w_j A_jk with the confusion
    matrix A_jk = P(assigned k | X ~ N(mu_j, tau_j^2 I)), estimated from exact draws of
    *each* component (stratified, so small components are resolved as well as large
    ones): n_per_component rounded up to a multiple of ``chunk`` (the draws are made
    ``chunk`` at a time to bound memory at O(chunk K d)).  The standard error of q_k is
    at most sqrt(sum_j w_j^2 A_jk (1 - A_jk) / n_per_component); keep n_per_component
    much larger than the sample size tested, so that this error does not inflate the
    chi^2.  A fixed ``key`` makes q a deterministic reference.
    """
    K, d = gmm.weights.shape[0], gmm.dim
    chunk = max(1, min(int(chunk), int(n_per_component)))
    n_chunks = -(-int(n_per_component) // chunk)
    comp = jnp.repeat(jnp.arange(K), n_chunks)                       # (K * n_chunks,)
    keys = jax.random.split(key, K * n_chunks)

    def counts(args):
        j, k = args
        xs = gmm.means[j] + gmm.stds[j] * jax.random.normal(k, (chunk, d), gmm.means.dtype)
        a = jnp.argmax(gmm.component_log_posterior(xs, 0.0), axis=-1)
        return jnp.bincount(a, length=K)

    c = jax.lax.map(counts, (comp, keys)).reshape(K, n_chunks, K).sum(1)   # (K, K) counts
    conf = c.astype(gmm.weights.dtype) / (n_chunks * chunk)                 # A_jk
    return gmm.weights @ conf


def gmm_component_chi2(x: Array, gmm, probs: Optional[Array] = None) -> Tuple[Array, int, Array]:
    r"""Pearson chi-square test of the component populations of samples x (n, d).

    Each sample is assigned to its most likely component (:func:`gmm_assign_components`)
    giving counts N_k; with expected frequencies q_k,

        X^2 = sum_k (N_k - n q_k)^2 / (n q_k),   dof = K - 1,
        p-value = P(chi^2_dof >= X^2) = Q(dof / 2, X^2 / 2)  (regularised upper gamma).

    ``probs=None`` uses q = gmm.weights: an APPROXIMATION that ignores
    misassignment, valid for well-separated components.  Using w instead of the true
    q adds n sum_k (q_k - w_k)^2 / w_k to E[X^2]: for gmm2d ~0.1% of exact samples land
    in a neighbour's region but the net flows nearly cancel (|q_k - w_k| < 5e-5, bias
    ~3e-8 n, negligible for n up to ~10^6); for gmm64d no sample is misassigned in
    1.6e7 draws.  For the exact null pass ``probs=gmm_assignment_probs(gmm, key)``
    (see :func:`gmm_component_chi2_exact`).  Under the null E[X^2] = K - 1 exactly (for
    any n); the chi^2 p-value is the usual large-sample approximation (reliable when
    every n q_k >= ~5).  If x is 'too good' (counts matching n q_k more closely than
    multinomial noise) the p-value is near 1; only small p-values signal an error.

    Returns (statistic, dof, p_value); dof is a Python int.  Non-finite rows of x are
    assigned to component 0 by argmax (check finiteness separately).
    """
    K = gmm.weights.shape[0]
    q = gmm.weights if probs is None else jnp.asarray(probs)
    if q.shape != (K,):
        raise ValueError(f"gmm_component_chi2: probs must have shape ({K},), got {q.shape}")
    stat, pvalue = _chi2_counts(x, gmm, q)
    return stat, K - 1, pvalue


@jax.jit
def _chi2_counts(x: Array, gmm, q: Array) -> Tuple[Array, Array]:
    """(Pearson X^2, chi^2_{K-1} survival p-value) of the assignment counts of x against n q."""
    a = gmm_assign_components(x, gmm)
    K = q.shape[0]
    dtype = jnp.result_type(x, jnp.float32)
    counts = jnp.bincount(a, length=K).astype(dtype)
    expected = x.shape[0] * q.astype(dtype)
    stat = jnp.sum((counts - expected) ** 2 / expected)
    pvalue = jax.scipy.special.gammaincc(jnp.asarray((K - 1) / 2, dtype), stat / 2)
    return stat, pvalue


def gmm_component_chi2_exact(x: Array, gmm, key: Array, n_per_component: int = 100_000
                             ) -> Tuple[Array, int, Array]:
    """:func:`gmm_component_chi2` against the Monte Carlo assignment frequencies of
    :func:`gmm_assignment_probs` (fixed ``key``) instead of the raw weights."""
    return gmm_component_chi2(x, gmm, gmm_assignment_probs(gmm, key, n_per_component))


# --------------------------------------------------------------------------------------
# Frechet distance between Gaussians fitted to features (FID-style, float64 on the host)
# --------------------------------------------------------------------------------------
def gaussian_statistics(features) -> Tuple["np.ndarray", "np.ndarray"]:
    """(mean (d,), covariance (d, d)) of ``features`` (n, d), n >= 2, in float64 numpy.

    The covariance is the unbiased one (divisor n - 1), computed from the centred
    features and symmetrised exactly.  Non-finite features propagate (NaN statistics),
    so that :func:`frechet_distance` reports NaN for a diverged sampler."""
    import numpy as np

    f = np.asarray(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"gaussian_statistics: features must be 2-D (n, d), got shape {f.shape}")
    if f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"gaussian_statistics: need n >= 2 samples of dimension d >= 1, got shape {f.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        mu = f.mean(axis=0)
        c = f - mu
        cov = (c.T @ c) / (f.shape[0] - 1)
    return mu, 0.5 * (cov + cov.T)


def _psd_sqrt(name: str, cov):
    """The symmetric PSD square root V diag(sqrt(max(l, 0))) V^T of a symmetric matrix
    (eigh; eigenvalues below 0 -- round-off of a PSD matrix -- are clipped to 0)."""
    import numpy as np

    lam, v = np.linalg.eigh(0.5 * (cov + cov.T))
    if lam.size and lam[0] < -1e-6 * max(abs(lam[-1]), np.finfo(np.float64).tiny):
        raise ValueError(f"frechet_distance: {name} is not positive semi-definite "
                         f"(smallest eigenvalue {lam[0]:.3g}, largest {lam[-1]:.3g})")
    return (v * np.sqrt(np.maximum(lam, 0.0))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    r"""Squared Frechet (2-Wasserstein) distance between N(mu1, C1) and N(mu2, C2):

        |mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr (C1^{1/2} C2 C1^{1/2})^{1/2},

    the quantity reported as FID when the statistics are those of Inception features.
    Float64 numpy on the host, no scipy: C1^{1/2} and C2^{1/2} are symmetric PSD square
    roots from symmetric eigendecompositions (numpy.linalg.eigh, tiny negative
    eigenvalues clipped to 0), and the cross term uses
    tr (C1^{1/2} C2 C1^{1/2})^{1/2} = sum of the singular values of C1^{1/2} C2^{1/2}
    (since C1^{1/2} C2 C1^{1/2} = A A^T with A = C1^{1/2} C2^{1/2}).  The singular values
    are accurate to eps |A| even for (nearly) singular covariances, where taking square
    roots of the round-off-level eigenvalues of C1^{1/2} C2 C1^{1/2} would add errors of
    order sqrt(eps) |C|; this form is exact for non-commuting C1, C2 and symmetric in
    its arguments up to round-off.

    Returns a Python float >= 0 (a round-off-negative result is clipped to 0).  NaN or
    inf in any input gives NaN.  Shapes are validated: mu1, mu2 (d,), cov1, cov2 (d, d);
    a covariance with an eigenvalue below -1e-6 times its largest is rejected
    (ValueError) as not PSD.
    """
    import numpy as np

    mu1, mu2, cov1, cov2 = (np.asarray(a, np.float64) for a in (mu1, mu2, cov1, cov2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: mu1 and mu2 must be 1-D (d,) of the same length, "
                         f"got shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if d < 1:
        raise ValueError("frechet_distance: the dimension d must be >= 1")
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if c.shape != (d, d):
            raise ValueError(f"frechet_distance: {name} must be ({d}, {d}) to match the means, got shape {c.shape}")
    if not all(np.all(np.isfinite(a)) for a in (mu1, mu2, cov1, cov2)):
        return float("nan")
    s1, s2 = _psd_sqrt("cov1", cov1), _psd_sqrt("cov2", cov2)
    cross = np.linalg.svd(s1 @ s2, compute_uv=False).sum()
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)
    return max(fd, 0.0)


def frechet_distance_features(a, b) -> float:
    """:func:`frechet_distance` between the Gaussians fitted (:func:`gaussian_statistics`)
    to two feature sets a (n, d) and b (m, d), n, m >= 2."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance_features: a and b must be 2-D (n, d) and (m, d) with the same "
                         f"dimension d, got shapes {a.shape} and {b.shape}")
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


# --------------------------------------------------------------------------------------
# Evaluation by sampling: variability (Stochastic CHAOS), pass@k, distribution-free bounds
# --------------------------------------------------------------------------------------
# The evaluation of a generative model by its output *distribution* rather than one greedy
# output.  Variability metrics follow "Stochastic CHAOS: Why Deterministic Inference Kills, and
# Distributional Variability Is the Heartbeat of Artificial Cognition" (Joshi et al. 2026): the
# entropy of the outputs, the entropy of the answer clusters, pass@k against greedy accuracy.
# pass@k is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained
# on Code", eq. 1).  The high-probability bounds follow "A Probabilistic Perspective on Unlearning
# and Alignment for Large Language Models" (Scholten, Guennemann, Schwinn 2025): a binomial bound for
# the probability of a binary event (Clopper-Pearson) and a DKW band for the CDF of a scalar metric
# of the output, from which bounds on its mean, quantiles and tail probabilities follow.  All
# host-side float64 numpy (they read samples the caller already holds).

class CDFBand(NamedTuple):
    """The empirical CDF of n samples at its jump points ``x`` with a simultaneous band
    ``[lower, upper]`` that holds for every x with probability >= 1 - delta (DKW)."""
    x: "np.ndarray"
    cdf: "np.ndarray"
    lower: "np.ndarray"
    upper: "np.ndarray"
    epsilon: float
    n: int
    delta: float


def _np():
    import numpy as np
    return np


def _check_delta(delta) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta: must be a number in (0, 1), got {delta!r}")
    return float(delta)


def _values_1d(name: str, values):
    np = _np()
    v = np.asarray(values, np.float64).ravel()
    if v.size < 1 or not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: need at least one finite value, got {v.size} values "
                         f"({int(np.sum(~np.isfinite(v)))} non-finite)")
    return v


def pass_at_k(n, c, k: int):
    """The unbiased estimator of pass@k from n samples of which c are correct (Chen et al. 2021,
    eq. 1): ``1 - C(n - c, k) / C(n, k)``, computed as the product ``prod_{i=n-c+1}^{n} (1 - k / i)``
    (no large binomials).  ``n``, ``c`` broadcast; needs ``n >= k``.  Its expectation over c ~
    Binomial(n, p) is exactly ``1 - (1 - p)^k`` (:func:`pass_at_k_exact`)."""
    np = _np()
    n = np.asarray(n, np.int64)
    c = np.asarray(c, np.int64)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"pass_at_k: k must be an integer >= 1, got {k!r}")
    if np.any(n < k) or np.any(c < 0) or np.any(c > n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and n >= k = {k}")
    n, c = np.broadcast_arrays(n, c)
    out = np.empty(n.shape, np.float64)
    for idx in np.ndindex(n.shape):
        nn, cc = int(n[idx]), int(c[idx])
        if nn - cc < k:
            out[idx] = 1.0
        else:
            i = np.arange(nn - cc + 1, nn + 1, dtype=np.float64)
            out[idx] = 1.0 - float(np.prod(1.0 - k / i))
    return out if out.shape else float(out)


def pass_at_k_exact(p, k: int):
    """pass@k of a model whose samples are right with probability p: ``1 - (1 - p)^k``."""
    np = _np()
    return 1.0 - (1.0 - np.asarray(p, np.float64)) ** k


def empirical_entropy(labels) -> float:
    """Plug-in Shannon entropy (nats) of the empirical distribution of ``labels``: 1-D values, or
    the rows of a 2-D array (a sequence = one label).  Biased low by about (K - 1) / (2n) for K
    observed labels (Miller-Madow); compare with :func:`exact_entropy` at the same n only."""
    np = _np()
    a = np.asarray(labels)
    if a.ndim == 0 or a.shape[0] < 1:
        raise ValueError(f"labels: need a non-empty 1-D or 2-D array, got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    _, counts = np.unique(a, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def output_entropy(samples) -> float:
    """Entropy (nats) of the distinct outputs among samples ``int[N, L]`` (Stochastic CHAOS's output
    variability; 0 for deterministic decoding)."""
    return empirical_entropy(samples)


def answer_entropy(answers) -> float:
    """Entropy (nats) of the answer clusters (samples grouped by their extracted answer, int[N])."""
    return empirical_entropy(answers)


def exact_entropy(log_probs) -> float:
    """Entropy (nats) of a distribution given by (unnormalised-free) log-probabilities; -inf
    entries are impossible outcomes."""
    np = _np()
    lp = np.asarray(log_probs, np.float64).ravel()
    p = np.exp(lp)
    good = p > 0
    return float(-np.sum(p[good] * lp[good]))


def dkw_epsilon(n: int, delta: float) -> float:
    """The half-width of the two-sided DKW band with Massart's constant: ``P(sup_x |F_n(x) - F(x)| >
    eps) <= 2 exp(-2 n eps^2) = delta``, i.e. ``eps = sqrt(log(2 / delta) / (2 n))`` (Dvoretzky,
    Kiefer, Wolfowitz 1956; Massart 1990).  Distribution-free, including discrete F."""
    import math
    if isinstance(n, bool) or not hasattr(n, "__index__") or int(n) < 1:
        raise ValueError(f"n: must be an integer >= 1, got {n!r}")
    return math.sqrt(math.log(2.0 / _check_delta(delta)) / (2.0 * int(n)))


def dkw_band(values, delta: float = 0.05, epsilon: Optional[float] = None) -> CDFBand:
    """The empirical CDF of scalar ``values`` (e.g. a metric of each sampled output) at its jump
    points, with the simultaneous DKW band of level 1 - delta (``epsilon`` overrides the half-width,
    only to study a band that is too narrow)."""
    np = _np()
    v = np.sort(_values_1d("values", values))
    n = v.size
    x, counts = np.unique(v, return_counts=True)
    cdf = np.cumsum(counts) / n
    eps = dkw_epsilon(n, delta) if epsilon is None else float(epsilon)
    return CDFBand(x, cdf, np.clip(cdf - eps, 0.0, 1.0), np.clip(cdf + eps, 0.0, 1.0), eps, n, float(delta))


def band_covers(band: CDFBand, support, probs) -> bool:
    """Whether the exact CDF of the distribution ``probs`` on ``support`` lies inside the band
    everywhere: both CDFs are right-continuous steps that jump only on the union of the two supports,
    so the supremum is a maximum over those points."""
    np = _np()
    s = np.asarray(support, np.float64).ravel()
    p = np.asarray(probs, np.float64).ravel()
    if s.shape != p.shape:
        raise ValueError(f"support and probs must have the same shape, got {s.shape} and {p.shape}")
    grid = np.union1d(band.x, s[p > 0])
    order = np.argsort(s)
    F = np.concatenate([[0.0], np.cumsum(p[order])])[np.searchsorted(s[order], grid, side="right")]
    Fn = np.concatenate([[0.0], band.cdf])[np.searchsorted(band.x, grid, side="right")]
    return bool(np.max(np.abs(Fn - F)) <= band.epsilon + 1e-12)


def dkw_mean_bounds(values, low: float, high: float, delta: float = 0.05):
    """Bounds ``(lower, upper)`` on ``E[X]`` for ``X in [low, high]`` that hold with probability >=
    1 - delta: the means of the extreme CDFs inside the DKW band (Anderson 1969): ``E[X] = low +
    int_low^high (1 - F(x)) dx`` is largest for the lowest CDF ``max(F_n - eps, 0)`` and smallest for
    the highest ``min(F_n + eps, 1)``."""
    np = _np()
    v = _values_1d("values", values)
    if not low < high or v.min() < low or v.max() > high:
        raise ValueError(f"dkw_mean_bounds: need low < high and every value in [low, high] = [{low}, {high}]")
    b = dkw_band(v, delta)
    edges = np.concatenate([b.x, [high]])
    widths = np.diff(edges)                      # F is constant on [x_i, x_{i+1})

    # below x_0 the empirical CDF is 0: the lowest CDF there is 0, the highest min(eps, 1)
    upper_cdf_below = min(b.epsilon, 1.0)
    lo = float(low + (b.x[0] - low) * (1.0 - upper_cdf_below) + np.sum((1.0 - b.upper) * widths))
    hi = float(low + (b.x[0] - low) * 1.0 + np.sum((1.0 - b.lower) * widths))
    return lo, hi


def dkw_tail_bound(values, threshold: float, delta: float = 0.05) -> float:
    """An upper bound on ``P(X > threshold)`` holding with probability >= 1 - delta (from the DKW band:
    ``1 - F_n(threshold) + eps``, clipped to 1); with a union over every threshold at once."""
    np = _np()
    b = dkw_band(values, delta)
    Fn = np.concatenate([[0.0], b.cdf])[np.searchsorted(b.x, threshold, side="right")]
    return float(min(1.0 - Fn + b.epsilon, 1.0))


def dkw_quantile_bounds(values, q: float, delta: float = 0.05):
    """Bounds ``(lower, upper)`` on the q-quantile ``inf{x: F(x) >= q}`` from the DKW band (simultaneous
    over q); -inf / +inf where the band leaves the data's range."""
    np = _np()
    if not 0 < q < 1:
        raise ValueError(f"q: must be in (0, 1), got {q!r}")
    b = dkw_band(values, delta)
    i_lo = np.searchsorted(b.upper, q, side="left")   # first x where the highest CDF reaches q
    i_hi = np.searchsorted(b.lower, q, side="left")   # first x where the lowest CDF reaches q
    lo = float(b.x[i_lo]) if i_lo < b.x.size else float("inf")
    hi = float(b.x[i_hi]) if i_hi < b.x.size else float("inf")
    if q <= b.epsilon:
        lo = -float("inf")
    return lo, hi


def clopper_pearson(k, n, delta: float = 0.05, side: str = "two-sided"):
    """The Clopper-Pearson (exact binomial) confidence bounds ``(lower, upper)`` for a probability from
    k successes in n trials, level 1 - delta; ``side="upper"`` gives the one-sided upper bound
    (lower = 0), the binary bound of Scholten et al. (e.g. the probability that a sampled answer is
    wrong or leaks), ``"lower"`` the one-sided lower bound."""
    np = _np()
    from scipy.stats import beta
    delta = _check_delta(delta)
    if side not in ("two-sided", "upper", "lower"):
        raise ValueError(f"side: must be 'two-sided', 'upper' or 'lower', got {side!r}")
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    if np.any(k < 0) or np.any(k > n) or np.any(n < 1):
        raise ValueError("clopper_pearson: need 0 <= k <= n and n >= 1")
    a = delta / 2 if side == "two-sided" else delta
    lower = np.where(k > 0, beta.ppf(a, np.maximum(k, 1e-300), n - k + 1), 0.0)
    upper = np.where(k < n, beta.ppf(1 - a, k + 1, np.maximum(n - k, 1e-300)), 1.0)
    if side == "upper":
        lower = np.zeros_like(lower)
    elif side == "lower":
        upper = np.ones_like(upper)
    return (float(lower), float(upper)) if lower.ndim == 0 else (lower, upper)


def hoeffding_interval(mean, n: int, delta: float = 0.05, low: float = 0.0, high: float = 1.0):
    """Two-sided Hoeffding interval for the mean of n i.i.d. values in [low, high]: ``mean +/- (high -
    low) sqrt(log(2 / delta) / (2 n))``, clipped to [low, high]."""
    import math
    w = (high - low) * math.sqrt(math.log(2.0 / _check_delta(delta)) / (2.0 * n))
    return max(float(mean) - w, low), min(float(mean) + w, high)
