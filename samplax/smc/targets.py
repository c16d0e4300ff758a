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

import math
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from samplax.metrics import gmm_assign_components, gmm_assignment_probs, projections, sliced_wasserstein2_host

__all__ = ["MixtureTarget", "target_metrics", "label_chi_square", "LabelledMixtureTarget", "GridTarget",
           "product_mixture", "product_target", "annealed_gaussian_target", "tempered_mixture_target",
           "conditional_mixture", "cfg_mixture_target", "group_metrics"]


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
        return gmm_assign_components(jnp.asarray(x, self.gmm.means.dtype), self.gmm).astype(jnp.int32)

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


def target_metrics(target, x, key: Optional[jax.Array] = None, n_projections: int = 64,
                   independent_every: int = 1) -> Dict[str, Any]:
    """Compare samples x (n, d) with an exact target.

    ``independent_every = P`` for the equally weighted output of grouped SMC (groups of P
    consecutive samples share ancestors, so they are not independent draws): the chi-square
    test and ``mean_z_max`` then use one sample per group (``x[::P]``: independent draws, so
    the test is calibrated up to the finite-P bias it is meant to detect) and report that count
    as ``chi2_n``; the TV, moments and sliced W2 use every sample.

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
    k = int(independent_every)
    if k < 1:
        raise ValueError(f"target_metrics: independent_every must be an int >= 1, got {independent_every!r}")
    x_ind = x[::k]
    chi = label_chi_square(target, x_ind)
    q = np.asarray(target.label_probs(), np.float64)
    freq = np.bincount(np.asarray(target.label(x)), minlength=q.shape[0]) / n
    mu = np.asarray(target.mean(), np.float64)
    cov = np.asarray(target.covariance(), np.float64)
    m_hat = x.mean(0)
    c_hat = np.cov(x, rowvar=False).reshape(target.dim, target.dim)
    z = np.abs(x_ind.mean(0) - mu) / np.sqrt(np.maximum(np.diag(cov), 1e-300) / len(x_ind))
    key = jax.random.PRNGKey(0) if key is None else key
    k_ref, k_proj = jax.random.split(key)
    ref = np.asarray(target.sample(k_ref, n), np.float64).reshape(n, -1)
    proj = np.asarray(projections(k_proj, target.dim, n_projections, jnp.float32), np.float64)
    sw2 = float(sliced_wasserstein2_host(x, ref, proj))
    return dict(chi2=chi["statistic"], chi2_dof=chi["dof"], chi2_p=chi["p_value"], chi2_n=len(x_ind),
                label_tv=float(0.5 * np.abs(freq - q).sum()),
                mean_err=float(np.linalg.norm(m_hat - mu)), mean_z_max=float(z.max()),
                cov_err=float(np.linalg.norm(c_hat - cov)), cov_rel=float(np.linalg.norm(c_hat - cov) / np.linalg.norm(cov)),
                sw2=sw2, n=n, n_nonfinite=n_bad)


# ---------------------------------------------------------------------------------------
# Exact targets for the Feynman–Kac correctors (samplax.smc.fkc): product and annealed
# Gaussians in closed form, tempered and classifier-free-guidance mixtures by quadrature.
# ---------------------------------------------------------------------------------------

def product_mixture(g1, g2):
    """The normalised product of two isotropic mixtures, an isotropic mixture exactly:
    N(x; m1, s1^2 I) N(x; m2, s2^2 I) = N(m1 - m2; 0, (s1^2 + s2^2) I) N(x; m, s^2 I) with
    s^2 = s1^2 s2^2 / (s1^2 + s2^2), m = (s2^2 m1 + s1^2 m2) / (s1^2 + s2^2), so component (j, k)
    has weight ∝ w1_j w2_k N(m1_j - m2_k; 0, (s1_j^2 + s2_k^2) I).  Labels: j * K2 + k.
    Returns (GaussianMixture, log Z) with Z = ∫ p1 p2 dx."""
    from samplax.models.analytic import GaussianMixture
    w1, m1, s1 = (np.asarray(v, np.float64) for v in (g1.weights, g1.means, g1.stds))
    w2, m2, s2 = (np.asarray(v, np.float64) for v in (g2.weights, g2.means, g2.stds))
    d = m1.shape[1]
    v = s1[:, None] ** 2 + s2[None, :] ** 2                                   # (K1, K2)
    diff = m1[:, None, :] - m2[None, :, :]
    log_c = np.log(w1)[:, None] + np.log(w2)[None, :] - 0.5 * d * np.log(2 * np.pi * v) \
        - 0.5 * np.sum(diff ** 2, -1) / v
    log_z = float(np.logaddexp.reduce(log_c.ravel()))
    var = (s1[:, None] ** 2 * s2[None, :] ** 2) / v
    mean = (s2[None, :, None] ** 2 * m1[:, None, :] + s1[:, None, None] ** 2 * m2[None, :, :]) / v[..., None]
    gmm = GaussianMixture.create(np.exp(log_c - log_z).ravel(), mean.reshape(-1, d), np.sqrt(var).ravel(),
                                 dtype=g1.means.dtype)
    return gmm, log_z


class LabelledMixtureTarget(MixtureTarget):
    """A mixture target whose label is a coarser partition: ``groups[k]`` is the label of
    component k (label(x) = groups[argmax_k responsibility_k(x)]); label_probs sums the
    exact-variant assignment probabilities of :class:`MixtureTarget` over each group."""

    def __init__(self, gmm, groups, assignment: str = "monte_carlo", n_per_component: int = 200_000):
        super().__init__(gmm, assignment, n_per_component)
        self.groups = np.asarray(groups, np.int64)
        if self.groups.shape != (int(gmm.weights.shape[0]),) or self.groups.min() < 0:
            raise ValueError(f"groups must be (K,) non-negative ints, got shape {self.groups.shape}")
        self.num_labels = int(self.groups.max()) + 1

    def label(self, x):
        return jnp.asarray(self.groups, jnp.int32)[super().label(x)]

    def label_probs(self):
        q = super().label_probs()
        return np.bincount(self.groups, weights=q, minlength=self.num_labels)


def product_target(g1, g2, **kwargs) -> LabelledMixtureTarget:
    """Exact target p1 p2 / Z of two isotropic mixtures (:func:`product_mixture`); labels = the
    component of ``g1`` of the product component with the highest responsibility."""
    gmm, log_z = product_mixture(g1, g2)
    k2 = int(g2.weights.shape[0])
    target = LabelledMixtureTarget(gmm, np.arange(gmm.weights.shape[0]) // k2, **kwargs)
    target.log_Z = log_z
    return target


def annealed_gaussian_target(mean, std, beta: float) -> MixtureTarget:
    """N(mean, std^2 I)^beta normalised = N(mean, std^2 / beta I), as a one-component mixture;
    ``log_Z`` = log ∫ N(x; mean, std^2 I)^beta dx = d (1 - beta) / 2 log(2 pi std^2) - d / 2 log beta."""
    from samplax.models.analytic import GaussianMixture
    mean = np.atleast_1d(np.asarray(mean, np.float64))
    d = mean.shape[0]
    gmm = GaussianMixture.create([1.0], mean[None], [float(std) / math.sqrt(beta)])
    target = MixtureTarget(gmm, assignment="weights")
    target.log_Z = 0.5 * d * (1 - beta) * math.log(2 * math.pi * float(std) ** 2) - 0.5 * d * math.log(beta)
    return target


class GridTarget:
    """An exact target in 2-D by quadrature: the unnormalised log density is evaluated at the
    centres of an n x n grid of cells on [lo, hi]; the target *is* the piecewise-constant
    density with those cell masses (sample: a cell ~ Categorical(masses), then uniform in it),
    and its moments are the midpoint-rule sums (for smooth densities that decay inside the
    box these converge faster than any power of the cell width h, so the moments are those of
    the continuous density to round-off; the sampler's covariance exceeds them by h^2 / 12 per
    coordinate).  Labels: ``label_fn`` (x (n, 2) -> int labels); ``label_probs`` sums the
    masses of the cells whose four corners share a label, and splits the others by the
    labels of an 8 x 8 sub-grid of points.  Mass outside [lo, hi] is dropped (choose the box
    so that it is negligible); ``quadrature_check`` compares with a grid of half the cells."""

    def __init__(self, log_density, lo, hi, label_fn, num_labels: int, n: int = 1024, sub: int = 8):
        self.dim, self.num_labels = 2, int(num_labels)
        self._lo, self._hi, self._n = np.asarray(lo, np.float64), np.asarray(hi, np.float64), int(n)
        self._h = (self._hi - self._lo) / self._n
        self._log_density, self._label_fn, self._sub = log_density, label_fn, int(sub)
        ax = [self._lo[j] + (np.arange(self._n) + 0.5) * self._h[j] for j in range(2)]
        xx, yy = np.meshgrid(ax[0], ax[1], indexing="ij")
        self._centres = np.stack([xx.ravel(), yy.ravel()], -1)
        logp = self._eval(log_density, self._centres)
        m = logp.max()
        p = np.exp(logp - m)
        self._log_norm = float(m + np.log(p.sum()) + np.log(self._h.prod()))   # log ∫ unnormalised density
        self._mass = p / p.sum()
        self._mean = self._mass @ self._centres
        c = self._centres - self._mean
        self._cov = (self._mass[:, None] * c).T @ c
        self._probs = None

    @staticmethod
    def _eval(fn, x, chunk=1 << 16):
        """fn on x in fixed-size chunks (the last one padded), so one compiled program serves all."""
        f = jax.jit(fn)
        out = []
        for i in range(0, x.shape[0], chunk):
            part = x[i:i + chunk]
            pad = chunk - part.shape[0]
            if pad:
                part = np.concatenate([part, np.repeat(part[-1:], pad, 0)])
            out.append(np.asarray(f(jnp.asarray(part)), np.float64)[:chunk - pad])
        return np.concatenate(out)

    @property
    def log_normaliser(self) -> float:
        """log of the integral of exp(log_density) over the box (midpoint rule)."""
        return self._log_norm

    def sample(self, key, n: int):
        kc, ku = jax.random.split(key)
        cells = np.asarray(jax.random.choice(kc, self._mass.shape[0], (n,), p=jnp.asarray(self._mass)))
        u = np.asarray(jax.random.uniform(ku, (n, 2), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32))
        return self._centres[cells] + (u - 0.5) * self._h

    def log_prob(self, x):
        x = np.asarray(x, np.float64).reshape(-1, 2)
        idx = np.floor((x - self._lo) / self._h).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < self._n), axis=1)
        idx = np.clip(idx, 0, self._n - 1)
        m = self._mass[idx[:, 0] * self._n + idx[:, 1]]
        with np.errstate(divide="ignore"):
            return np.where(inside, np.log(m) - np.log(self._h.prod()), -np.inf)

    def mean(self):
        return self._mean

    def covariance(self):
        return self._cov

    def label(self, x):
        return np.asarray(self._label_fn(jnp.asarray(x)), np.int32)

    def label_probs(self):
        if self._probs is None:
            n, h = self._n, self._h
            cx = [self._lo[j] + np.arange(n + 1) * h[j] for j in range(2)]
            gx, gy = np.meshgrid(cx[0], cx[1], indexing="ij")
            corner = self._eval(self._label_fn, np.stack([gx.ravel(), gy.ravel()], -1)).astype(np.int64)
            corner = corner.reshape(n + 1, n + 1)
            c00 = corner[:-1, :-1]
            pure = (c00 == corner[1:, :-1]) & (c00 == corner[:-1, 1:]) & (c00 == corner[1:, 1:])
            pure = pure.ravel()
            probs = np.bincount(c00.ravel()[pure], weights=self._mass[pure], minlength=self.num_labels)
            mixed = np.nonzero(~pure)[0]
            if mixed.size:
                s = self._sub
                off = (np.arange(s) + 0.5) / s - 0.5
                ox, oy = np.meshgrid(off * h[0], off * h[1], indexing="ij")
                pts = (self._centres[mixed][:, None, :] + np.stack([ox.ravel(), oy.ravel()], -1)[None]).reshape(-1, 2)
                lab = self._eval(self._label_fn, pts).astype(np.int64).reshape(mixed.size, s * s)
                w = np.repeat(self._mass[mixed] / (s * s), s * s)
                probs += np.bincount(lab.ravel(), weights=w, minlength=self.num_labels)
            self._probs = probs
        return self._probs

    def quadrature_check(self) -> Dict[str, float]:
        """Max differences of mean, covariance and label_probs to the same target on n / 2 cells
        (an estimate of the quadrature error; the mass at the box edge is also reported)."""
        half = GridTarget(self._log_density, self._lo, self._hi, self._label_fn, self.num_labels, self._n // 2,
                          self._sub)
        m = self._mass.reshape(self._n, self._n)
        edge = float(m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum())
        return dict(mean=float(np.abs(half.mean() - self.mean()).max()),
                    cov=float(np.abs(half.covariance() - self.covariance()).max()),
                    label_probs=float(np.abs(half.label_probs() - self.label_probs()).max()),
                    log_normaliser=abs(half.log_normaliser - self.log_normaliser), edge_mass=edge)


def _gmm_box(gmm, pad: float = 7.0):
    m, s = np.asarray(gmm.means, np.float64), float(np.max(np.asarray(gmm.stds)))
    return m.min(0) - pad * s, m.max(0) + pad * s


def _component_label_fn(gmm):
    def fn(x):
        return gmm_assign_components(x.astype(gmm.means.dtype), gmm)
    return fn


def tempered_mixture_target(gmm, beta: float, n: int = 1024) -> GridTarget:
    """p(x)^beta / Z for a 2-D mixture p, by quadrature (:class:`GridTarget`); labels = the
    component of p with the highest responsibility."""
    if gmm.dim != 2:
        raise ValueError(f"tempered_mixture_target: the quadrature is 2-D, got dim {gmm.dim}")
    lo, hi = _gmm_box(gmm)
    return GridTarget(lambda x: beta * gmm.log_prob_ve(x.astype(gmm.means.dtype), 0.0), lo, hi,
                      _component_label_fn(gmm), int(gmm.weights.shape[0]), n)


def conditional_mixture(gmm, label: int):
    """p(x | c): the components of ``gmm`` whose label is ``label``, weights renormalised."""
    from samplax.models.analytic import GaussianMixture
    keep = np.asarray(gmm.labels) == int(label)
    if not keep.any():
        raise ValueError(f"label: no component of the mixture has label {label}; "
                         f"allowed: {sorted(set(np.asarray(gmm.labels).tolist()))}")
    return GaussianMixture.create(np.asarray(gmm.weights)[keep], np.asarray(gmm.means)[keep],
                                  np.asarray(gmm.stds)[keep], np.asarray(gmm.labels)[keep], dtype=gmm.means.dtype)


def cfg_mixture_target(gmm, label: int, w: float, n: int = 1024) -> GridTarget:
    """p(x)^(1 - w) p(x | c)^w / Z for a 2-D labelled mixture (the target of classifier-free
    guidance with scale w), by quadrature; labels = the component of p with the highest
    responsibility."""
    if gmm.dim != 2:
        raise ValueError(f"cfg_mixture_target: the quadrature is 2-D, got dim {gmm.dim}")
    cond = conditional_mixture(gmm, label)
    lo, hi = _gmm_box(gmm)

    def log_density(x):
        x = x.astype(gmm.means.dtype)
        return (1.0 - w) * gmm.log_prob_ve(x, 0.0) + w * cond.log_prob_ve(x, 0.0)

    return GridTarget(log_density, lo, hi, _component_label_fn(gmm), int(gmm.weights.shape[0]), n)


def _f_survival(f, d1: int, d2: int) -> float:
    """P(F(d1, d2) > f) = I_{d2 / (d2 + d1 f)}(d2 / 2, d1 / 2)."""
    if not np.isfinite(f):
        return 0.0
    return float(jax.scipy.special.betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * max(f, 0.0))))


def _hotelling(est, ref) -> Dict[str, float]:
    """One-sample Hotelling T^2 of G iid vector estimates est (G, k) against ref (k,), with the
    exact F reference for Gaussian estimates: T^2 (G - k) / (k (G - 1)) ~ F(k, G - k)."""
    G, k = est.shape
    if G <= k + 1:
        raise ValueError(f"need more groups than {k + 1} for a {k}-dimensional Hotelling test, got {G}")
    diff = est.mean(0) - ref
    S = np.cov(est, rowvar=False).reshape(k, k) / G
    t2 = float(diff @ np.linalg.lstsq(S, diff, rcond=None)[0])
    f = t2 * (G - k) / (k * (G - 1))
    return dict(statistic=t2, dof=k, groups=G, p_value=_f_survival(f, k, G - k))


def group_metrics(target, x, log_weights, min_prob: float = 0.01) -> Dict[str, Any]:
    """Tests of G independent SMC groups against an exact target, for dependent particles.

    The particles of one SMC group are not independent (they share ancestors), so a
    chi-square on all particles' labels is not calibrated.  Here each group g contributes
    its weighted label frequencies f_g = sum_p W_gp 1[label(x_gp) = k] and its weighted mean
    m_g; the G groups are iid, and the Hotelling T^2 of (f_g) against label_probs (labels with
    probability < ``min_prob`` merged into one bin, the last bin dropped) and of (m_g)
    against the target mean are referred to F(k, G - k) (exact for Gaussian group estimates,
    asymptotically valid by the CLT over groups).  The self-normalised group estimates carry
    an O(1 / ESS) bias, so the tests also measure that bias.
    x: (G * P, d) or (G, P, d); log_weights: (G, P) normalised (info.log_weights of
    diffusion_smc with final_resample=False).  Returns label_T2 / label_dof / label_p,
    mean_T2 / mean_p, label_tv (of the pooled weighted label frequencies), label_freq."""
    lw = np.asarray(log_weights, np.float64)
    G, P = lw.shape
    x = np.asarray(x, np.float64).reshape(G, P, -1)
    W = np.exp(lw - lw.max(1, keepdims=True))
    W /= W.sum(1, keepdims=True)
    q = np.asarray(target.label_probs(), np.float64)
    lab = np.asarray(target.label(x.reshape(G * P, -1))).reshape(G, P)
    freq = np.stack([np.sum(W * (lab == j), 1) for j in range(q.shape[0])], 1)     # (G, K)
    big = q >= min_prob
    bins_f = np.concatenate([freq[:, big], freq[:, ~big].sum(1, keepdims=True)], 1)
    bins_q = np.concatenate([q[big], [q[~big].sum()]])
    if not (~big).any():
        bins_f, bins_q = bins_f[:, :-1], bins_q[:-1]
    lab_test = _hotelling(bins_f[:, :-1], bins_q[:-1])
    means = np.einsum("gp,gpd->gd", W, x)
    mean_test = _hotelling(means, np.asarray(target.mean(), np.float64))
    pooled = freq.mean(0)
    return dict(label_T2=lab_test["statistic"], label_dof=lab_test["dof"], label_p=lab_test["p_value"],
                mean_T2=mean_test["statistic"], mean_p=mean_test["p_value"], groups=G,
                label_tv=float(0.5 * np.abs(pooled - q).sum()), label_freq=pooled)
