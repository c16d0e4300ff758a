"""Posterior sampling for linear inverse problems y = A x0 + noise, noise ~ N(0, s_y^2 I), with a
diffusion prior: measurement operators, the exact posterior of an isotropic Gaussian-mixture prior,
DPS guidance and the Twisted Diffusion Sampler (TDS) as kernels of
:func:`samplax.smc.diffusion.diffusion_smc`.  Formulas and choices: docs/posterior_sampling.md.

Sources (read for the formulas; the code is ours):

* DPS -- Chung, Kim, Mccann, Klasky, Ye, "Diffusion Posterior Sampling for General Noisy Inverse
  Problems", ICLR 2023: the approximation p(y | x_t) ~ p(y | x0_hat(x_t)) (their Theorem 1 and the
  Gaussian-noise likelihood that follows it) and Algorithm 1 (DPS, Gaussian noise): after each
  ancestral DDPM step, x_{i-1} <- x'_{i-1} - zeta_i grad_{x_i} ||y - A x0_hat(x_i)||^2 with
  zeta_i = zeta' / ||y - A x0_hat(x_i)||.
* TDS -- Wu, Trippe, Naesseth, Blei, Cunningham, "Practical and Asymptotically Exact Conditional
  Sampling in Diffusion Models", NeurIPS 2023 (arXiv 2306.17775): twisting functions
  p~_t(y | x_t) = p(y | x0_hat(x_t)) (a Gaussian of inflated variance is their inpainting-style
  variant, the released code's "x0 variance" option), the twisted proposal (the reverse kernel
  with the score replaced by s + grad log p~_t), the incremental weights
  w_t = p(x_t | x_{t+1}) p~_t(y | x_t) / (q(x_t | x_{t+1}, y) p~_{t+1}(y | x_{t+1})), the initial
  weight p~_T(y | x_T) and the final weight with the exact likelihood p(y | x_0) (their Algorithm 1).
  Equation numbers of the two papers could not be checked against the text in this session, so
  we cite the algorithm and the named quantities, not numbers.

The reverse kernel on a samplax :class:`~samplax.timesteps.Grid` (nodes i -> i + 1, less noise) is
the DDPM posterior q(x_{i+1} | x_i, x0 = x0_hat(x_i)) = DDIM with eta = 1:
    mean = a_{i+1} x0_hat + s_{i+1} e^{-h} eps_hat,  var = s_{i+1}^2 (1 - e^{-2h}),
    eps_hat = (x_i - a_i x0_hat) / s_i,  h = lambda_{i+1} - lambda_i,
whose step into sigma = 0 is the deterministic denoising jump x0_hat(x_i).  Adding g to the score
at x_i moves x0_hat by s_i^2 / a_i g (Tweedie), hence the mean by (a_{i+1} / a_i) s_i^2 (1 - e^{-2h}) g.
"""
from __future__ import annotations

from typing import Literal, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from samplax.smc.diffusion import Kernel, one_per_group  # noqa: F401  (re-exported: post.one_per_group)

__all__ = ["LinearMeasurement", "measurement", "inpainting_matrix", "random_projection_matrix",
           "simulate_measurement", "log_likelihood", "PosteriorMixture", "posterior_mixture",
           "dps_kernel", "tds_kernel", "reverse_coefficients", "one_per_group", "TWISTS", "DPS_STEPS",
           "OPERATORS", "option_measurement", "dps", "tds"]

TWISTS = ("plain", "noise")
DPS_STEPS = ("likelihood", "dps")


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
@flax.struct.dataclass
class LinearMeasurement:
    """y = A x0 + noise_std * z: A (m, d), y (m,), noise_std a positive scalar (x flattened to d)."""
    A: jnp.ndarray
    y: jnp.ndarray
    noise_std: jnp.ndarray

    @property
    def dim(self) -> int:
        return int(self.A.shape[1])

    @property
    def m(self) -> int:
        return int(self.A.shape[0])


def _check_A(A, dim=None) -> np.ndarray:
    a = np.asarray(A)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1 or not np.issubdtype(a.dtype, np.floating) \
            and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"A: the measurement operator must be a real matrix of shape (m, d), got "
                         f"{a.dtype} {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"A: has {a.shape[1]} columns but the signal x has dimension {dim}; allowed: "
                         f"A of shape (m, {dim})")
    if not np.all(np.isfinite(a)):
        raise ValueError("A: has non-finite entries")
    return a


def _check_noise(noise_std) -> float:
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float, np.integer, np.floating)) \
            and not (hasattr(noise_std, "shape") and np.shape(noise_std) == ()):
        raise ValueError(f"noise_std: must be a positive real number (the measurement noise s_y), got "
                         f"{noise_std!r}")
    v = float(noise_std)
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"noise_std: must be a finite number > 0 (the measurement noise s_y), got {v}")
    return v


def measurement(A, y, noise_std, dim: Optional[int] = None, dtype=None) -> LinearMeasurement:
    """A validated :class:`LinearMeasurement`.  ValueError naming ``A`` (not (m, d), or d != ``dim``),
    ``y`` (not of shape (m,)) or ``noise_std`` (not a finite number > 0)."""
    a = _check_A(A, dim)
    yy = np.asarray(y)
    if yy.shape != (a.shape[0],):
        raise ValueError(f"y: must have shape (m,) = ({a.shape[0]},) to match A {a.shape}, got {yy.shape}")
    if not np.all(np.isfinite(yy)):
        raise ValueError("y: has non-finite entries")
    s = _check_noise(noise_std)
    dtype = dtype or jnp.result_type(float)
    return LinearMeasurement(jnp.asarray(a, dtype), jnp.asarray(yy, dtype), jnp.asarray(s, dtype))


def inpainting_matrix(dim: int, keep) -> np.ndarray:
    """The (m, dim) 0/1 matrix that keeps the coordinates ``keep`` (indices or a boolean mask of
    length dim) of a flattened signal: inpainting / masking."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim: must be a positive int, got {dim!r}")
    k = np.asarray(keep)
    if k.dtype == bool:
        if k.shape != (dim,):
            raise ValueError(f"keep: a boolean mask must have shape ({dim},), got {k.shape}")
        k = np.nonzero(k)[0]
    k = k.astype(np.int64).reshape(-1)
    if k.size < 1 or np.any(k < 0) or np.any(k >= dim) or np.unique(k).size != k.size:
        raise ValueError(f"keep: need distinct coordinate indices in [0, {dim}), got {k.tolist()[:10]}")
    A = np.zeros((k.size, dim))
    A[np.arange(k.size), k] = 1.0
    return A


def random_projection_matrix(key, m: int, dim: int) -> np.ndarray:
    """A (m, dim) Gaussian matrix with i.i.d. N(0, 1 / m) entries (so E ||A x||^2 = ||x||^2)."""
    for name, v in (("m", m), ("dim", dim)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be a positive int, got {v!r}")
    with jax.enable_x64(True):
        A = jax.random.normal(key, (m, dim), jnp.float64) / np.sqrt(m)
        return np.asarray(A)


def simulate_measurement(key, A, x0, noise_std, dtype=None) -> LinearMeasurement:
    """y = A x0 + noise_std z for one signal x0 (any shape with d elements)."""
    x = np.asarray(x0, np.float64).reshape(-1)
    a = _check_A(A, x.size)
    s = _check_noise(noise_std)
    with jax.enable_x64(True):
        z = np.asarray(jax.random.normal(key, (a.shape[0],), jnp.float64))
    return measurement(a, a @ x + s * z, s, dtype=dtype)


def _flat(x):
    return x.reshape(x.shape[0], -1)


def log_likelihood(meas: LinearMeasurement, x) -> jnp.ndarray:
    """log N(y; A x, s_y^2 I) for x (n, ...) with d elements per row: (n,)."""
    return _log_gauss(meas.y, _flat(x) @ meas.A.T.astype(x.dtype), meas.noise_std.astype(x.dtype) ** 2)


def _log_gauss(y, mean, var):
    """log N(y; mean, var I) row-wise; var scalar or (n,)."""
    m = y.shape[-1]
    var = jnp.asarray(var)
    v = var[..., None] if var.ndim else var
    return -0.5 * jnp.sum((y - mean) ** 2 / v, -1) - 0.5 * m * jnp.log(2 * jnp.pi * var)


# --------------------------------------------------------------------------------------------
# the exact posterior of an isotropic Gaussian mixture prior
# --------------------------------------------------------------------------------------------
class PosteriorMixture:
    """p(x0 | y) for the prior p0 = sum_k w_k N(mu_k, tau_k^2 I) and y = A x0 + N(0, s_y^2 I):
    a full-covariance mixture (Kalman update of each component)

        G_k = tau_k^2 A A^T + s_y^2 I,  K_k = tau_k^2 A^T G_k^{-1},
        mu'_k = mu_k + K_k (y - A mu_k),  S'_k = tau_k^2 (I - K_k A),
        w'_k  proportional to  w_k N(y; A mu_k, G_k),   p(y) = sum_k w_k N(y; A mu_k, G_k).

    Exact target (samplax.smc.targets protocol).  label(x) = argmax_k of the posterior
    responsibility w'_k N(x; mu'_k, S'_k) / p(x | y).  label_probs(): ``assignment='monte_carlo'``
    (default) integrates the label regions by stratified Monte Carlo, ``n_per_component`` exact
    draws from each posterior component (numpy.random.default_rng(20251205); components of weight
    < 1e-12 skipped): standard error of each probability at most
    0.5 / sqrt(n_per_component) (1.1e-3 at the default 2e5); ``'weights'`` returns w'_k (exact in
    the limit of disjoint components).  Parameters are computed in float64 (numpy)."""

    def __init__(self, gmm, meas: LinearMeasurement, assignment: str = "monte_carlo",
                 n_per_component: int = 200_000):
        if assignment not in ("monte_carlo", "weights"):
            raise ValueError(f"assignment: must be 'monte_carlo' or 'weights', got {assignment!r}")
        w = np.asarray(gmm.weights, np.float64)
        mu = np.asarray(gmm.means, np.float64)
        tau2 = np.asarray(gmm.stds, np.float64) ** 2
        A = _check_A(meas.A, mu.shape[1]).astype(np.float64)
        y = np.asarray(meas.y, np.float64)
        s2 = float(meas.noise_std) ** 2
        K, d = mu.shape
        m = A.shape[0]
        AAt = A @ A.T
        means, covs, logw = np.zeros((K, d)), np.zeros((K, d, d)), np.zeros(K)
        for k in range(K):
            G = tau2[k] * AAt + s2 * np.eye(m)
            Lg = np.linalg.cholesky(G)
            r = y - A @ mu[k]
            Gi_r = np.linalg.solve(G, r)
            Gi_A = np.linalg.solve(G, A)
            means[k] = mu[k] + tau2[k] * A.T @ Gi_r
            C = tau2[k] * np.eye(d) - tau2[k] ** 2 * A.T @ Gi_A
            covs[k] = 0.5 * (C + C.T)
            logw[k] = np.log(w[k]) - 0.5 * r @ Gi_r - np.sum(np.log(np.diag(Lg))) - 0.5 * m * np.log(2 * np.pi)
        self.log_evidence = float(np.logaddexp.reduce(logw))
        self.weights = np.exp(logw - self.log_evidence)
        self.means, self.covs = means, covs
        self.chols = np.linalg.cholesky(covs)
        self._white = np.linalg.inv(self.chols)  # L_k^{-1}: z = L_k^{-1} (x - mu'_k) ~ N(0, I)
        self._logc = (np.log(self.weights) - np.sum(np.log(np.diagonal(self.chols, axis1=1, axis2=2)), -1)
                      - 0.5 * d * np.log(2 * np.pi))
        self.dim, self.num_labels = d, K
        self._assignment, self._n = assignment, int(n_per_component)
        self._probs = None

    # --- protocol ------------------------------------------------------------------------------
    def sample_with_components(self, key, n: int):
        with jax.enable_x64(True):
            kc, kz = jax.random.split(key)
            comp = jax.random.categorical(kc, jnp.log(jnp.asarray(self.weights)), shape=(n,))
            z = jax.random.normal(kz, (n, self.dim), jnp.float64)
            x = jnp.asarray(self.means)[comp] + jnp.einsum("nij,nj->ni", jnp.asarray(self.chols)[comp], z)
            return np.asarray(x), np.asarray(comp)

    def sample(self, key, n: int):
        return self.sample_with_components(key, n)[0]

    def _comp_logpdf(self, x):
        """(n, K) log w'_k + log N(x; mu'_k, S'_k), float64 (numpy, one whitening per component)."""
        x = np.asarray(x, np.float64).reshape(np.shape(x)[0], -1)
        out = np.empty((x.shape[0], self.num_labels))
        for k in range(self.num_labels):
            diff = x - self.means[k]
            # small d: einsum without BLAS (a BLAS gemm with a tiny inner dimension is slow on a busy machine)
            z = np.einsum("ni,ji->nj", diff, self._white[k]) if self.dim <= 16 else diff @ self._white[k].T
            out[:, k] = self._logc[k] - 0.5 * np.einsum("ni,ni->n", z, z)
        return out

    def log_prob(self, x):
        lp = self._comp_logpdf(x)
        return np.logaddexp.reduce(lp, axis=1)

    def mean(self):
        return self.weights @ self.means

    def covariance(self):
        mu = self.mean()
        dm = self.means - mu
        return np.einsum("k,kij->ij", self.weights, self.covs) + np.einsum("k,ki,kj->ij", self.weights, dm, dm)

    def label(self, x):
        n = np.shape(x)[0]
        out = np.empty(n, np.int32)
        for s in range(0, n, 200_000):  # chunks keep the (n, K, d) whitening small
            out[s:s + 200_000] = np.argmax(self._comp_logpdf(np.asarray(x)[s:s + 200_000]), axis=1)
        return out

    def label_probs(self):
        if self._probs is None:
            if self._assignment == "weights":
                self._probs = self.weights.copy()
            else:
                rng = np.random.default_rng(20251205)
                probs = np.zeros(self.num_labels)
                for k in range(self.num_labels):
                    if self.weights[k] < 1e-12:  # contributes < 1e-12 to every probability
                        continue
                    x = self.means[k] + rng.standard_normal((self._n, self.dim)) @ self.chols[k].T
                    probs += self.weights[k] * np.bincount(self.label(x), minlength=self.num_labels) / self._n
                self._probs = probs / probs.sum()
        return self._probs


def posterior_mixture(gmm, meas: LinearMeasurement, **kw) -> PosteriorMixture:
    """The exact posterior target (see :class:`PosteriorMixture`)."""
    return PosteriorMixture(gmm, meas, **kw)


# --------------------------------------------------------------------------------------------
# the reverse kernel and the two samplers
# --------------------------------------------------------------------------------------------
def reverse_coefficients(grid, i):
    """(a_i, s_i, a_{i+1}, s_{i+1}, e^{-h}, step variance, score-shift factor) of the ancestral
    step i -> i + 1 (module docstring); all finite at a sigma = 0 end (e^{-h} = 0, var = 0)."""
    a0, s0, a1, s1 = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
    h = grid.lam[i + 1] - grid.lam[i]
    e = jnp.exp(-h)
    one_m = -jnp.expm1(-2.0 * h)
    var = s1 ** 2 * one_m
    shift = (a1 / a0) * s0 ** 2 * one_m
    return a0, s0, a1, s1, e, var, shift


def _unpack(models, x):
    """(model, meas) from the driver's ``models``; ValueError naming ``models`` / ``A`` otherwise."""
    if not (isinstance(models, (tuple, list)) and len(models) == 2 and isinstance(models[1], LinearMeasurement)):
        raise ValueError("models: the posterior kernels take models = (model, meas) with meas a "
                         "samplax.smc.posterior.LinearMeasurement (see measurement(A, y, noise_std)), got "
                         f"{type(models).__name__}")
    model, meas = models
    d = int(np.prod(x.shape[1:]))
    if meas.A.shape[1] != d:
        raise ValueError(f"A: has {meas.A.shape[1]} columns but the particles have {d} elements "
                         f"(shape {tuple(x.shape[1:])}); allowed: A of shape (m, {d})")
    return model, meas


def _guide_fn(model, meas):
    """x (P, ...), t, r2 -> (sum_p log N(y; A x0_hat, s_y^2 I + r2 A A^T), (per-particle values, x0_hat,
    per-particle ||y - A x0_hat||^2)).  The covariance is what Cov[x0 | x_t] ~ r2 I gives in y-space
    (s_y^2 I + r2 I for inpainting, where A A^T = I); evaluated in the eigenbasis of A A^T."""
    def f(x, t, r2):
        x0 = model.data(x, t)
        A = meas.A.astype(x.dtype)
        res = meas.y.astype(x.dtype) - _flat(x0) @ A.T                       # (P, m)
        e, U = jnp.linalg.eigh(A @ A.T)                                      # A A^T = U diag(e) U^T
        var = meas.noise_std.astype(x.dtype) ** 2 + r2 * jnp.maximum(e, 0.0)  # (m,)
        rot = res @ U
        lp = -0.5 * jnp.sum(rot ** 2 / var, -1) - 0.5 * jnp.sum(jnp.log(2 * jnp.pi * var))
        return jnp.sum(lp), (lp, x0, jnp.sum(res ** 2, -1))
    return f


def dps_kernel(scale: float = 1.0, step: str = "likelihood") -> Kernel:
    """DPS as a kernel with zero log-weights (the uncorrected guided sampler); the driver's
    ``models`` is the pair (model, meas: :class:`LinearMeasurement`), so one compiled program serves
    every measurement of the same shapes.

    Each step: x0_hat = D(x_i), the ancestral move to node i + 1 from x0_hat and x_i, then a guidance
    move from the gradient through the denoiser (one vjp per step):

    * ``step='likelihood'``: the score gets ``scale * grad_{x_i} log N(y; A x0_hat(x_i), s_y^2 I)``
      (DPS's p(y | x_t) ~ p(y | x0_hat) taken literally, scale 1 = that approximate posterior score);
      the mean moves by scale * (a_{i+1}/a_i) s_i^2 (1 - e^{-2h}) * grad.
    * ``step='dps'``: DPS Algorithm 1: x_{i+1} -= zeta_i grad_{x_i} ||y - A x0_hat(x_i)||^2 with
      zeta_i = ``scale`` / ||y - A x0_hat(x_i)|| (the paper's zeta').

    NFE = n_steps (each with one backward pass).  The step into sigma = 0 is the denoising jump plus
    the guidance move."""
    if step not in DPS_STEPS:
        raise ValueError(f"step: must be one of {list(DPS_STEPS)}, got {step!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale: must be a finite number >= 0 (guidance scale), got {scale!r}")

    def init(models, grid, x):
        _unpack(models, x)
        return (), jnp.zeros(x.shape[0], x.dtype)

    def step_fn(models, grid, i, x, aux, key):
        model, meas = _unpack(models, x)
        a0, s0, a1, s1, e, var, shift = (v.astype(x.dtype) for v in reverse_coefficients(grid, i))
        f = _guide_fn(model, meas)
        (_, (lp, x0, rr)), g = jax.value_and_grad(f, has_aux=True)(x, grid.t[i], jnp.zeros((), x.dtype))
        eps = (x - a0 * x0) / s0
        z = jax.random.normal(key, x.shape, x.dtype)
        x_next = a1 * x0 + s1 * e * eps + jnp.sqrt(var) * z
        if step == "likelihood":
            x_next = x_next + scale * shift * g
        else:
            # grad ||r||^2 = -2 s_y^2 grad log N(y; A x0_hat, s_y^2);  ||r|| from the log density
            s2 = meas.noise_std.astype(x.dtype) ** 2
            norm = jnp.sqrt(rr).reshape((-1,) + (1,) * (x.ndim - 1))
            x_next = x_next - scale / jnp.maximum(norm, 1e-30) * (-2.0 * s2) * g
        return x_next, aux, jnp.zeros(x.shape[0], x.dtype)

    return Kernel(init, step_fn, f"dps_{step}{scale:g}")


def tds_kernel(twist: str = "noise", data_var: Optional[float] = None, correct: bool = True,
               mutation: Optional[str] = None) -> Kernel:
    """The Twisted Diffusion Sampler as a kernel; the driver's ``models`` is the pair
    (model, meas: :class:`LinearMeasurement`).

    Twist at node i: p~_i(y | x_i) = N(y; A x0_hat(x_i), s_y^2 I + r_i^2 A A^T) (Cov[x0 | x_i] ~ r_i^2 I
    mapped through A; (s_y^2 + r_i^2) I for inpainting) with
    ``twist='plain'``: r_i = 0 (TDS's p(y | x0_hat(x_t))), ``'noise'``: r_i^2 = sigma_tilde_i^2 =
    (s_i / a_i)^2, or, with ``data_var`` tau^2 given, r_i^2 = sigma_tilde_i^2 tau^2 /
    (sigma_tilde_i^2 + tau^2) (the posterior variance of x0 given x_i under an N(., tau^2 I) prior; the
    released TDS code's x0-variance choices).  Proposal q(x_{i+1} | x_i, y): the ancestral kernel with
    its mean moved by (a_{i+1}/a_i) s_i^2 (1 - e^{-2h}) grad_{x_i} log p~_i(y | x_i) (same variance).
    log-weights: init log p~_0(y | x_T); step log p(x_{i+1} | x_i) - log q(x_{i+1} | x_i, y)
    + log p~_{i+1}(y | x_{i+1}) - log p~_i(y | x_i), where on the last step p~ is replaced by the
    exact likelihood N(y; A x_N, s_y^2 I).  A grid ending at sigma = 0: the last step is the
    model's deterministic denoising jump x_N = x0_hat(x_{N-1}) without the twist (a point mass has no
    density ratio), so its increment is log p(y | x_N) - log p~_{N-1}(y | x_{N-1}).

    The SMC targets the model chain's p_theta(x_0) p(y | x_0) / Z (exact posterior up to the model's
    and the grid's error); Z_hat (info.log_Z) estimates p_theta(y) without bias.
    NFE: one denoiser call with a backward pass at x_T and after each step (n_steps + 1 per particle;
    on a sigma = 0 grid the last one is computed at the previous node and discarded).
    ``correct=False``: the same proposal with zero weights (uncorrected twisted guidance).
    ``mutation='no_proposal_ratio'`` drops log p - log q (for the tests only)."""
    if twist not in TWISTS:
        raise ValueError(f"twist: must be one of {list(TWISTS)}, got {twist!r}")
    if data_var is not None and (isinstance(data_var, bool) or not isinstance(data_var, (int, float))
                                 or not np.isfinite(data_var) or data_var <= 0):
        raise ValueError(f"data_var: must be None or a finite number > 0 (the prior variance tau^2 in the "
                         f"twist's r_t^2), got {data_var!r}")
    if mutation not in (None, "no_proposal_ratio"):
        raise ValueError(f"mutation: must be None or 'no_proposal_ratio', got {mutation!r}")

    def r2_at(grid, i, dtype):
        if twist == "plain":
            return jnp.zeros((), dtype)
        st2 = (grid.sigma[i] / grid.alpha[i]).astype(dtype) ** 2
        if data_var is None:
            return st2
        return st2 * data_var / (st2 + data_var)

    def twist_eval(model, meas, grid, i, x):
        f = _guide_fn(model, meas)
        (_, (lp, x0, _)), g = jax.value_and_grad(f, has_aux=True)(x, grid.t[i], r2_at(grid, i, x.dtype))
        return lp, x0, g

    def init(models, grid, x):
        model, meas = _unpack(models, x)
        lp, x0, g = twist_eval(model, meas, grid, 0, x)
        return (lp, x0, g), (lp if correct else jnp.zeros_like(lp))

    def step_fn(models, grid, i, x, aux, key):
        model, meas = _unpack(models, x)
        lp, x0, g = aux
        n_steps = grid.t.shape[-1] - 1
        last = i == n_steps - 1
        a0, s0, a1, s1, e, var, shift = (v.astype(x.dtype) for v in reverse_coefficients(grid, i))
        eps = (x - a0 * x0) / s0
        mean = a1 * x0 + s1 * e * eps
        z = jax.random.normal(key, x.shape, x.dtype)
        std = jnp.sqrt(var)
        move = shift * g
        if grid.ends_at_zero:
            move = jnp.where(last, jnp.zeros_like(move), move)
        x_next = mean + move + std * z
        # log p(x'|x) - log q(x'|x, y) with x' = mean + move + std z: -(z . d) - |d|^2 / 2, d = move / std
        d = _flat(move) / jnp.where(std > 0, std, 1.0)
        log_pq = -jnp.sum(_flat(z) * d, -1) - 0.5 * jnp.sum(d ** 2, -1)
        if grid.ends_at_zero:
            log_pq = jnp.where(last, 0.0, log_pq)
        # next twist: at node i + 1 (a sigma = 0 node is evaluated at node i's time and discarded)
        j = jnp.where(last & grid.ends_at_zero, i, i + 1)
        lp_next, x0_next, g_next = twist_eval(model, meas, grid, j, x_next)
        lp_next = jnp.where(last, log_likelihood(meas, x_next), lp_next)
        if mutation == "no_proposal_ratio":
            log_pq = jnp.zeros_like(log_pq)
        inc = log_pq + lp_next - lp
        if not correct:
            inc = jnp.zeros_like(inc)
        return x_next, (lp_next, x0_next, g_next), inc

    return Kernel(init, step_fn, f"tds_{twist}" + ("" if correct else "_uncorrected"))


# --------------------------------------------------------------------------------------------
# registered solvers (samplax.smc.samplers.smc_solver): the measurement is given by options
# --------------------------------------------------------------------------------------------
OPERATORS = ("inpaint", "projection")


def option_measurement(operator: str, m: int, noise_std: float, y_value: float, measurement_seed: int,
                       dim: int, dtype=None) -> LinearMeasurement:
    """The measurement a config names: ``operator='inpaint'`` keeps coordinates 0..m-1 of the flattened
    signal, ``'projection'`` is an (m, dim) N(0, 1/m) matrix from numpy.random.default_rng(measurement_seed);
    y = y_value * ones(m), noise s_y = noise_std.  Built with numpy (also inside a trace)."""
    if operator not in OPERATORS:
        raise ValueError(f"operator: must be one of {list(OPERATORS)}, got {operator!r}")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= dim:
        raise ValueError(f"m: the number of measurements must be an int in [1, {dim}] (the signal's dimension), "
                         f"got {m!r}")
    if operator == "inpaint":
        A = inpainting_matrix(dim, np.arange(m))
    else:
        A = np.random.default_rng(int(measurement_seed)).standard_normal((m, dim)) / np.sqrt(m)
    return measurement(A, np.full(m, float(y_value)), noise_std, dtype=dtype)


def _with_options_measurement(kernel: Kernel, spec: tuple) -> Kernel:
    """The kernel with models = the run's model; the measurement is built from ``spec`` at trace time."""
    def both(model, x):
        return model, option_measurement(*spec, dim=int(np.prod(x.shape[1:])), dtype=x.dtype)

    return Kernel(lambda model, grid, x: kernel.init(both(model, x), grid, x),
                  lambda model, grid, i, x, aux, key: kernel.step(both(model, x), grid, i, x, aux, key),
                  kernel.name)


def _common_checks(factory, values):
    from samplax.solvers.base import check_options
    check_options(factory, values)
    if values.get("afs"):
        raise ValueError(f"afs: {factory.__name__} starts from x_T with a model evaluation (no analytic first "
                         f"step); allowed: False")
    _check_noise(values["noise_std"])
    if isinstance(values["m"], bool) or not isinstance(values["m"], int) or values["m"] < 1:
        raise ValueError(f"m: must be an int >= 1 (number of measurements), got {values['m']!r}")


def dps(scale: float = 1.0, step: Literal["likelihood", "dps"] = "likelihood",
        operator: Literal["inpaint", "projection"] = "inpaint", m: int = 1, noise_std: float = 0.1,
        y_value: float = 0.3, measurement_seed: int = 0, afs: bool = False):
    """DPS (:func:`dps_kernel`) as a registered particle sampler (groups of one, zero weights) for the
    measurement the options name (:func:`option_measurement`); exact target on an analytic mixture:
    :class:`PosteriorMixture`.  NFE = n_steps (each with a backward pass)."""
    _common_checks(dps, dict(locals()))
    from samplax.smc.samplers import smc_solver
    spec = (operator, m, noise_std, y_value, measurement_seed)
    kern = _with_options_measurement(dps_kernel(float(scale), step), spec)
    return smc_solver(f"dps_{step}{scale:g}", lambda: kern, num_particles=1, resampling="systematic",
                      ess_threshold=0.0,
                      exact_target=lambda gmm, schedule: PosteriorMixture(
                          gmm, option_measurement(*spec, dim=int(gmm.dim), dtype=jnp.float64)))


def tds(twist: Literal["plain", "noise"] = "noise", data_var: Optional[float] = None, particles: int = 16,
        resampling: str = "systematic", ess_threshold: float = 0.5, correct: bool = True,
        operator: Literal["inpaint", "projection"] = "inpaint", m: int = 1, noise_std: float = 0.1,
        y_value: float = 0.3, measurement_seed: int = 0, afs: bool = False):
    """TDS (:func:`tds_kernel`) as a registered particle sampler for the measurement the options name
    (:func:`option_measurement`); exact target on an analytic mixture: :class:`PosteriorMixture`.
    NFE = n_steps + 1 per particle (the runner counts n_steps: the evaluation at x_T is extra)."""
    _common_checks(tds, dict(locals()))
    from samplax.smc.samplers import smc_solver
    spec = (operator, m, noise_std, y_value, measurement_seed)
    kern = _with_options_measurement(tds_kernel(twist, None if data_var is None else float(data_var),
                                                correct=bool(correct)), spec)
    return smc_solver(f"tds_{twist}" + ("" if correct else "_uncorrected"), lambda: kern,
                      num_particles=particles, resampling=resampling, ess_threshold=ess_threshold,
                      exact_target=lambda gmm, schedule: PosteriorMixture(
                          gmm, option_measurement(*spec, dim=int(gmm.dim), dtype=jnp.float64)))
