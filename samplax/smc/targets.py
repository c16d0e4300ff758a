"""Exact targets for the samplers that do not sample the model's own distribution, and the
metrics that compare samples with them.

An exact target is any object with (duck-typed, numpy or jax arrays)::

    dim: int
    num_labels: int
    sample(key, n) -> (n, d)          exact samples (quadrature-exact for grid targets)
    log_prob(x) -> (n,)               normalised log density
    mean() -> (d,); covariance() -> (d, d)
    label(x) -> (n,) int32            a deterministic partition of space into num_labels regions
    label_probs() -> (num_labels,)    the exact target probability of each region

The label partition turns "are the modes populated in the right proportions" into a
chi-square test with an exact null: counts of ``label(x)`` over n samples are
Multinomial(n, label_probs()) exactly when x ~ target.  :func:`target_metrics` computes that
test, the total-variation distance of the label frequencies, the mean and covariance errors
(with the mean's z-scores under the target's own covariance) and the sliced 2-Wasserstein
distance to as many exact samples.

:class:`MixtureTarget` wraps an isotropic :class:`~samplax.models.analytic.GaussianMixture`
(the model's own data distribution, a product of two mixtures, ...).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.metrics import gmm_assignment_probs, projections, sliced_wasserstein2_host

__all__ = ["MixtureTarget", "target_metrics", "label_chi_square"]


class MixtureTarget:
    """An isotropic Gaussian mixture as an exact target; labels = the component of highest
    responsibility at noise level 0.  ``label_probs`` are the exact-variant assignment
    frequencies (:func:`samplax.metrics.gmm_assignment_probs`, stratified Monte Carlo with
    ``n_per_component`` draws per component and a fixed key: standard error below
    0.5 / sqrt(n_per_component)); ``assignment='weights'`` uses the mixture weights instead
    (exact for well-separated components, see :func:`samplax.metrics.gmm_component_chi2`)."""

    def __init__(self, gmm, assignment: str = "monte_carlo", n_per_component: int = 200_000):
        if assignment not in ("monte_carlo", "weights"):
            raise ValueError(f"assignment must be 'monte_carlo' or 'weights', got {assignment!r}")
        self.gmm = gmm
        self.dim = int(gmm.dim)
        self.num_labels = int(gmm.weights.shape[0])
        self._assignment = assignment
        self._n_per_component = int(n_per_component)
        self._probs = None

    def sample(self, key, n: int):
        return self.gmm.sample(key, n)

    def log_prob(self, x):
        return self.gmm.log_prob_ve(jnp.asarray(x, self.gmm.means.dtype), 0.0)

    def mean(self):
        return self.gmm.mean()

    def covariance(self):
        return self.gmm.covariance()

    def label(self, x):
        x = jnp.asarray(x, self.gmm.means.dtype)
        return jnp.argmax(self.gmm.component_log_posterior(x, 0.0), axis=-1).astype(jnp.int32)

    def label_probs(self):
        if self._probs is None:
            if self._assignment == "weights":
                self._probs = np.asarray(self.gmm.weights, np.float64)
            else:
                self._probs = np.asarray(gmm_assignment_probs(self.gmm, jax.random.PRNGKey(20251205),
                                                              self._n_per_component), np.float64)
        return self._probs


def label_chi_square(target, x) -> Dict[str, Any]:
    """Pearson chi-square test of the label counts of x against n * target.label_probs().

    Labels with zero exact probability are merged into the statistic as follows: a sample
    there makes the statistic infinite (p = 0); otherwise they drop out (dof counts only the
    labels with positive probability).  Returns statistic, dof, p_value (the large-sample
    chi-square approximation: reliable when every n q_k >= ~5) and the counts."""
    x = np.asarray(x)
    q = np.asarray(target.label_probs(), np.float64)
    n = x.shape[0]
    counts = np.bincount(np.asarray(target.label(x)), minlength=q.shape[0]).astype(np.float64)
    pos = q > 0
    if np.any(counts[~pos] > 0):
        return dict(statistic=float("inf"), dof=int(pos.sum()) - 1, p_value=0.0, counts=counts)
    expected = n * q[pos]
    stat = float(np.sum((counts[pos] - expected) ** 2 / expected))
    dof = int(pos.sum()) - 1
    p = float(jax.scipy.special.gammaincc(dof / 2.0, stat / 2.0)) if dof > 0 else 1.0  # chi^2_dof survival
    return dict(statistic=stat, dof=dof, p_value=p, counts=counts)


def target_metrics(target, x, key: Optional[jax.Array] = None, n_projections: int = 64) -> Dict[str, Any]:
    """Compare samples x (n, d) with an exact target.

    Returns a dict of floats: ``chi2``, ``chi2_dof``, ``chi2_p`` (label test), ``label_tv``
    (total variation between label frequencies and label_probs), ``mean_err`` (L2 norm),
    ``mean_z_max`` (max_j |mean_j - m_j| / sqrt(C_jj / n): ~N(0,1) per coordinate under the
    target), ``cov_err`` (Frobenius norm of the sample covariance minus the exact one),
    ``cov_rel`` (that over ||C||_F), ``sw2`` (sliced W2 against n exact samples drawn with
    ``key``; includes the finite-sample floor of two samples of size n from the same law) and
    ``n_nonfinite`` (rows dropped before all of these).
    """
    x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
    finite = np.all(np.isfinite(x), axis=1)
    n_bad = int((~finite).sum())
    x = x[finite]
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"target_metrics: need at least 2 finite samples, got {n} ({n_bad} non-finite)")
    if x.shape[1] != target.dim:
        raise ValueError(f"target_metrics: samples have dimension {x.shape[1]}, the target {target.dim}")
    chi = label_chi_square(target, x)
    q = np.asarray(target.label_probs(), np.float64)
    freq = chi["counts"] / n
    mu = np.asarray(target.mean(), np.float64)
    cov = np.asarray(target.covariance(), np.float64)
    m_hat = x.mean(0)
    c_hat = np.cov(x, rowvar=False).reshape(target.dim, target.dim)
    z = np.abs(m_hat - mu) / np.sqrt(np.maximum(np.diag(cov), 1e-300) / n)
    key = jax.random.PRNGKey(0) if key is None else key
    k_ref, k_proj = jax.random.split(key)
    ref = np.asarray(target.sample(k_ref, n), np.float64).reshape(n, -1)
    proj = np.asarray(projections(k_proj, target.dim, n_projections, jnp.float32), np.float64)
    sw2 = float(sliced_wasserstein2_host(x, ref, proj))
    return dict(chi2=chi["statistic"], chi2_dof=chi["dof"], chi2_p=chi["p_value"],
                label_tv=float(0.5 * np.abs(freq - q).sum()),
                mean_err=float(np.linalg.norm(m_hat - mu)), mean_z_max=float(z.max()),
                cov_err=float(np.linalg.norm(c_hat - cov)), cov_rel=float(np.linalg.norm(c_hat - cov) / np.linalg.norm(cov)),
                sw2=sw2, n=n, n_nonfinite=n_bad)
