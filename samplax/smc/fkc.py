"""Feynman–Kac correctors (FKC) for diffusion models: weighted reverse SDEs whose weighted
particles follow annealed, product and classifier-free-guidance targets.

Skreta, Akhound-Sadegh, Ohanesian, Bondesan, Aspuru-Guzik, Doucet, Brekelmans, Tong and
Neklyudov, "Feynman-Kac Correctors in Diffusion: Annealing, Guidance, and Product of
Experts", ICML 2025 (arXiv 2503.02819), Sec. 3: the weighted-SDE propositions for the
annealed density q_t^beta (target-score SDE and tempered-noise SDE), the product
q^1_t q^2_t, and the geometric average q^1_t^(1-w) q^2_t^w (classifier-free guidance).
(Equation numbers of the paper could not be checked against its full text here; we cite the
propositions by name and re-derive every formula in our variables, docs/fkc.md.)

All three targets are geometric products p_t ∝ prod_i q^i_t(x)^{b_i} of model marginals
(anneal: one model, b = (beta,); product: b = (1, 1); CFG: b = (1 - w, w) on
(unconditional, conditional)).  Write eps_i = eps_hat_i(x, t) (the models' noise
predictions, score_i = -eps_i / sigma), E = sum_i b_i eps_i, B = sum_i b_i, d = the number of
elements of one particle.  Forward SDE dx = f x dt + g dW with f = d log alpha / dt,
g^2 = -2 sigma^2 d lambda / dt (our schedules).

Target-score SDE (reverse time, dtau = -dt, the FKC paper's choice):
    dx = [-f x + g^2 sum_i b_i score_i] dtau + g dW.
Feynman–Kac weight (the FK PDE's potential for this drift; the Laplacian terms cancel):
    d log w = (B - 1) d f dtau + (g^2 / 2) (|sum_i b_i score_i|^2 - sum_i b_i |score_i|^2) dtau
            = (B - 1) d (-d log alpha) + (|E|^2 - sum_i b_i |eps_i|^2) d lambda,
which is beta (beta - 1) |eps|^2 d lambda for annealing, 2 <eps_1, eps_2> d lambda for the
product and -w (1 - w) |eps_c - eps_u|^2 d lambda for CFG (the paper's
sigma_t^2 / 2 * beta (beta - 1) |grad log q_t|^2, sigma_t^2 <grad log q^1, grad log q^2> and
sigma_t^2 / 2 * w (w - 1) |grad log q^c - grad log q^u|^2 in their notation).  Only the
models' scores (noise predictions) are needed, no log-densities and no divergences.

Tempered-noise SDE (annealing only, option ``sde='tempered_noise'``):
    dx = [-f x + g^2 score] dtau + (g / sqrt(beta)) dW,
    d log w = (beta - 1) [d f - (g^2 / 2) Laplacian log q_t] dtau
            = (beta - 1) [d (-d log alpha) + sigma (div eps_hat) d lambda].
It needs the divergence of the noise prediction (d forward-mode JVPs per step, exact).

Discretisation on a Grid t_0 > ... > t_n (step i -> i + 1, h = lambda_{i+1} - lambda_i):
* weights: d lambda is integrated as (1 - e^{-2h}) / 2, the exact integral of d lambda
  weighted by sigma_tilde^2 / sigma_tilde_i^2 (|eps|^2 ~ sigma_tilde^2 near the data), so the
  increment stays finite on a step into sigma = 0 (h = inf, factor 1/2); the integrand is the
  trapezoidal mean of its values at (x_i, t_i) and (x_{i+1}, t_{i+1}) (``rule='trapezoid'``,
  default: the model outputs at x_{i+1} are the ones the next step needs, carried in ``aux``,
  so this costs no extra NFE) or its value at (x_i, t_i) (``rule='left'``); into sigma = 0
  only the left value is used.
* move: Euler–Maruyama with the coefficients integrated on the grid's nodes,
  int f dtau = log(alpha_i / alpha_{i+1}) and int g^2 dtau ~ 2 sigma_i^2 h (Euler–Maruyama in
  lambda; samplax.solvers.sde does the same in t), or with ``integrator='exponential'`` the
  exact solution of the linear SDE with the target's data prediction
  x0_hat = (x - sigma E) / alpha frozen (the first-order SDE-DPM-Solver++ / DDPM step).
* a step into sigma = 0 (grid end "zero") is the target's denoising jump x <- x0_hat; a grid
  with end "t_min" stops at t_min; end "denoise" is refused (use "zero").
NFE per particle: n_models per step (init evaluates node 0, each step node i + 1, none at
sigma = 0), i.e. n_models * n_steps on an end-"zero" grid, n_models * (n_steps + 1) on "t_min".

Initial weights: q_T is taken to be the prior N(0, s^2 I), s^2 = alpha_0^2 + sigma_0^2 (exact
up to alpha_0^2 Var(data), ~4e-5 for the VP schedules at t = 1), so that x_T ~ N(0, s^2 I)
weighted by exp((B - 1) log N(x_T; 0, s^2 I)) is the target p_T ∝ prod_i q_T^{b_i}.  With the
constant (B - 1) d f terms kept, ``info.log_Z`` estimates log ∫ prod_i q^i_0(x)^{b_i} dx.

``correct=False`` runs the same SDE with zero weights and no initial weights: the plain
score-scaling / product-of-scores / CFG sampler (the uncorrected heuristic).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.smc.diffusion import Kernel

__all__ = ["fkc", "fkc_kernel", "geometric_kernel", "fkc_nfe", "FKC_TARGETS", "FKC_SDES", "FKC_INTEGRATORS", "FKC_RULES"]

FKC_TARGETS = ("anneal", "product", "cfg")
FKC_SDES = ("target_score", "tempered_noise")
FKC_INTEGRATORS = ("euler_maruyama", "exponential")
FKC_RULES = ("trapezoid", "left")


def _sum_sq(v):
    return jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=1)


def _divergence(fn, x):
    """sum_k d fn(x)_k / d x_k per particle, exactly, with one JVP per element (x: (P, ...))."""
    d = int(np.prod(x.shape[1:]))
    basis = jnp.eye(d, dtype=x.dtype).reshape((d,) + x.shape[1:])

    def one(e):
        _, tangent = jax.jvp(fn, (x,), (jnp.broadcast_to(e, x.shape),))
        return jnp.sum((tangent * e).reshape(x.shape[0], -1), axis=1)

    return jnp.sum(jax.lax.map(one, basis), axis=0)


def _models_tuple(models, n: int, name: str):
    if n == 1 and not isinstance(models, (tuple, list)):
        models = (models,)
    if not isinstance(models, (tuple, list)) or len(models) != n:
        raise ValueError(f"{name}: models must be a tuple of {n} DiffusionModel(s), got {type(models).__name__}"
                         + (f" of length {len(models)}" if isinstance(models, (tuple, list)) else ""))
    return tuple(models)


def geometric_kernel(exponents: Sequence[float], correct: bool = True, sde: str = "target_score",
                     integrator: str = "euler_maruyama", rule: str = "trapezoid",
                     name: str = "fkc_geometric") -> Kernel:
    """FKC kernel for p_t ∝ prod_i q^i_t(x)^{exponents[i]} (see the module docstring);
    ``models`` passed to the kernel is a tuple of len(exponents) DiffusionModels on one schedule
    (a bare model when there is one exponent).  NFE per step = len(exponents) model calls
    (+ d JVPs with sde='tempered_noise'); the step into sigma = 0 calls the models once more
    at the last positive node (no call at sigma = 0)."""
    b = tuple(float(v) for v in exponents)
    if not b or not all(math.isfinite(v) for v in b):
        raise ValueError(f"exponents: must be a non-empty sequence of finite numbers, got {exponents!r}")
    if sde not in FKC_SDES:
        raise ValueError(f"sde: {sde!r} is not one of {list(FKC_SDES)}")
    if integrator not in FKC_INTEGRATORS:
        raise ValueError(f"integrator: {integrator!r} is not one of {list(FKC_INTEGRATORS)}")
    if rule not in FKC_RULES:
        raise ValueError(f"rule: {rule!r} is not one of {list(FKC_RULES)}")
    if sde == "tempered_noise" and (len(b) != 1 or not b[0] > 0):
        raise ValueError("sde: 'tempered_noise' is for annealing one model with beta > 0; "
                         f"allowed for {len(b)} exponent(s) {b}: 'target_score'")
    if sde == "tempered_noise" and integrator != "euler_maruyama":
        raise ValueError(f"integrator: {integrator!r} is not available with sde='tempered_noise'; "
                         "allowed: 'euler_maruyama'")
    B = sum(b)
    n = len(b)

    def stats(ms, x, t):
        """Model outputs at (x, t): the noise predictions and, for the tempered-noise SDE, div eps."""
        eps = tuple(m.noise(x, t) for m in ms)
        div = _divergence(lambda y: ms[0].noise(y, t), x) if sde == "tempered_noise" and correct \
            else jnp.zeros((x.shape[0],), x.dtype)
        return eps, div

    def potential(eps, div, s):
        """The weight's integrand per unit (1 - e^{-2h}) / 2 of lambda (module docstring)."""
        if sde == "tempered_noise":
            return (b[0] - 1.0) * s * div
        E = sum(bi * e for bi, e in zip(b, eps))
        return _sum_sq(E) - sum(bi * _sum_sq(e) for bi, e in zip(b, eps))

    def init(models, grid, x):
        ms = _models_tuple(models, n, name)
        if grid.end == "denoise":
            raise ValueError("grid: end='denoise' is not supported by the FKC kernels; allowed: 'zero' (the "
                             "last step is the denoising jump) or 't_min'")
        P = x.shape[0]
        aux = stats(ms, x, grid.t[0])
        if not correct or B == 1.0:
            return aux, jnp.zeros((P,), x.dtype)
        s2 = (grid.alpha[0] ** 2 + grid.sigma[0] ** 2).astype(x.dtype)
        d = int(np.prod(x.shape[1:]))
        log_prior = -0.5 * _sum_sq(x) / s2 - 0.5 * d * jnp.log(2 * jnp.pi * s2)
        return aux, (B - 1.0) * log_prior

    def step(models, grid, i, x, aux, key):
        ms = _models_tuple(models, n, name)
        P, d = x.shape[0], int(np.prod(x.shape[1:]))
        t, t_next = grid.t[i], grid.t[i + 1]
        a_s, s_s, a_t, s_t = (v.astype(x.dtype) for v in (grid.alpha[i], grid.sigma[i],
                                                            grid.alpha[i + 1], grid.sigma[i + 1]))
        h = grid.lam[i + 1] - grid.lam[i]
        one_m = (-jnp.expm1(-2.0 * h)).astype(x.dtype)           # 1 - e^{-2h}; 1 into sigma = 0
        to_zero = jnp.asarray(grid.ends_at_zero) & (i == grid.t.shape[-1] - 2)
        dlog_a = (jnp.log(grid.alpha[i]) - jnp.log(grid.alpha[i + 1])).astype(x.dtype)   # int f dtau
        eps, div = aux                                            # model outputs at (x_i, t_i)
        E = sum(bi * e for bi, e in zip(b, eps))
        x0 = (x - s_s * E) / a_s                                  # the target's data prediction
        z = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(jax.random.split(key, P))
        if integrator == "exponential":
            x_new = (s_t / s_s * jnp.exp(-h)).astype(x.dtype) * x + a_t * one_m * x0 \
                + s_t * jnp.sqrt(one_m) * z
        else:
            # Euler–Maruyama with the coefficients integrated over the step on the grid's own
            # nodes: int f dtau = log(alpha_i / alpha_{i+1}), int g^2 dtau ~ 2 sigma_i^2 h
            # (g^2 dtau = 2 sigma^2 d lambda), which is Euler–Maruyama in lambda.
            g2dt = jnp.where(to_zero, 0.0, 2.0 * s_s**2 * jnp.where(to_zero, 0.0, h)).astype(x.dtype)
            fdt = jnp.where(to_zero, 0.0, dlog_a)
            if sde == "tempered_noise":
                drift, noise_var = g2dt * (-eps[0] / s_s), g2dt / b[0]
            else:
                drift, noise_var = g2dt * (-E / s_s), g2dt
            x_em = x - fdt * x + drift + jnp.sqrt(noise_var) * z
            x_new = jnp.where(to_zero, x0, x_em)
        # Model outputs at (x_{i+1}, t_{i+1}) for the next step and the trapezoidal weight; none
        # at sigma = 0 (lax.cond on the step index, which is the same for every particle/group).
        aux_next = jax.lax.cond(to_zero, lambda: (eps, div), lambda: stats(ms, x_new, t_next))
        if not correct:
            return x_new, aux_next, jnp.zeros((P,), x.dtype)
        v0 = potential(eps, div, s_s)
        if rule == "trapezoid":
            # into sigma = 0 the right end is the left value (eps ~ sigma_tilde there, see above)
            v1 = jnp.where(to_zero, v0, potential(aux_next[0], aux_next[1], s_t))
            v = 0.5 * (v0 + v1)
        else:
            v = v0
        inc = (B - 1.0) * d * dlog_a + 0.5 * v * one_m
        return x_new, aux_next, inc

    return Kernel(init=init, step=step, name=name)


def fkc_kernel(target: Literal["anneal", "product", "cfg"], beta: float = 2.0, w: float = 2.0,
               correct: bool = True, sde: Literal["target_score", "tempered_noise"] = "target_score",
               integrator: Literal["euler_maruyama", "exponential"] = "euler_maruyama",
               rule: Literal["trapezoid", "left"] = "trapezoid") -> Kernel:
    """The FKC kernel for one of three targets (Skreta et al. 2025, Sec. 3):

    * ``'anneal'``: p_t ∝ q_t^beta, beta > 0; models = one DiffusionModel (or a 1-tuple).
    * ``'product'``: p_t ∝ q^1_t q^2_t; models = (m1, m2).
    * ``'cfg'``: p_t ∝ q_t(x)^(1 - w) q_t(x | c)^w, the target of classifier-free guidance with
      scale w (w = 1: the conditional model; the plain CFG SDE is ``correct=False``);
      models = (unconditional, conditional).

    ``correct``: FK weights (True) or the same SDE with zero weights (the heuristic).
    ``sde``: 'target_score' (all targets) or 'tempered_noise' (anneal only).
    ``integrator``: 'euler_maruyama' or 'exponential' (target_score only).
    NFE per step: 1 (anneal), 2 (product, cfg); :func:`fkc_nfe` counts a whole run."""
    if target not in FKC_TARGETS:
        raise ValueError(f"target: {target!r} is not one of {list(FKC_TARGETS)}")
    if not isinstance(correct, (bool, np.bool_)):
        raise ValueError(f"correct: must be a bool, got {correct!r}")
    for nm, v in (("beta", beta), ("w", w)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(v)):
            raise ValueError(f"{nm}: must be a finite number, got {v!r}")
    if target == "anneal":
        if not float(beta) > 0:
            raise ValueError(f"beta: must be > 0 for target='anneal', got {beta!r}")
        exps: Tuple[float, ...] = (float(beta),)
    elif target == "product":
        exps = (1.0, 1.0)
    else:
        exps = (1.0 - float(w), float(w))
    label = {"anneal": f"beta{float(beta):g}", "product": "", "cfg": f"w{float(w):g}"}[target]
    name = f"fkc_{target}{label}" + ("" if correct else "_uncorrected") \
        + ("" if sde == "target_score" else "_tempered") + ("" if integrator == "euler_maruyama" else "_exp")
    name += "" if rule == "trapezoid" else "_left"
    return geometric_kernel(exps, correct=bool(correct), sde=sde, integrator=integrator, rule=rule, name=name)


def fkc_nfe(target: str, n_steps: int, dim: int = 1, sde: str = "target_score") -> int:
    """Model evaluations per particle for an ``n_steps`` grid: n_models * n_steps, plus
    dim JVPs per step with sde='tempered_noise' (each ~ one forward evaluation)."""
    if target not in FKC_TARGETS:
        raise ValueError(f"target: {target!r} is not one of {list(FKC_TARGETS)}")
    k = 1 if target == "anneal" else 2
    extra = dim if sde == "tempered_noise" else 0
    return (k + extra) * int(n_steps)


def fkc(target: Literal["anneal", "product", "cfg"] = "anneal", beta: float = 2.0, w: float = 2.0,
        label: int = 0, correct: bool = True, sde: Literal["target_score", "tempered_noise"] = "target_score",
        integrator: Literal["euler_maruyama", "exponential"] = "euler_maruyama",
        rule: Literal["trapezoid", "left"] = "trapezoid", particles: int = 64,
        resampling: Literal["systematic", "stratified", "multinomial", "residual"] = "systematic",
        ess_threshold: float = 0.5):
    """FKC as a registered particle sampler (:func:`samplax.smc.samplers.smc_solver`), for configs
    and the runner.  The models it runs on, from the runner's ``model`` and ``conditional``:

    * anneal: ``model`` (target q^beta);
    * product: ``(model, conditional(model, label))`` (target q(x) q(x | label));
    * cfg: ``(model, conditional(model, label))`` (target q(x)^(1 - w) q(x | label)^w).

    Exact targets on an analytic mixture (``exact_target(gmm, schedule)``): anneal in 2-D by
    quadrature (a one-component mixture in any dimension in closed form), product in closed
    form, cfg in 2-D by quadrature; None otherwise.  NFE = (1 or 2) x steps per particle."""
    from samplax.smc.samplers import smc_solver
    from samplax.smc.targets import (annealed_gaussian_target, cfg_mixture_target, conditional_mixture,
                                     product_target, tempered_mixture_target)

    kernel = fkc_kernel(target, beta=beta, w=w, correct=correct, sde=sde, integrator=integrator, rule=rule)
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or label < 0:
        raise ValueError(f"label: must be an int >= 0 (the class of the conditional model), got {label!r}")
    two = target != "anneal"

    def models(model, conditional):
        return (model, conditional(model, int(label))) if two else model

    def exact(gmm, schedule):
        if target == "anneal":
            if int(gmm.weights.shape[0]) == 1:
                return annealed_gaussian_target(np.asarray(gmm.means[0]), float(gmm.stds[0]), float(beta))
            return tempered_mixture_target(gmm, float(beta)) if gmm.dim == 2 else None
        if target == "product":
            return product_target(gmm, conditional_mixture(gmm, int(label)))
        return cfg_mixture_target(gmm, int(label), float(w)) if gmm.dim == 2 else None

    return smc_solver(kernel.name, lambda: kernel, num_particles=particles, resampling=resampling,
                      ess_threshold=ess_threshold, nfe_per_step=2 if two else 1, models=models,
                      exact_target=exact, needs_conditional=two)
