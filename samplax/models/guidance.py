"""Guidance wrappers that take and return a :class:`DiffusionModel`, so every solver samples
with them unchanged: minority guidance and autoguidance.

Minority guidance (Um, Lee & Ye, "Don't Play Favorites: Minority Guidance for Diffusion
Models", ICLR 2024, arXiv 2301.12334)
--------------------------------------------------------------------------------------
* :func:`minority_score` -- the paper's minority score (Eq. 7): the expected discrepancy
  between a clean sample x0 and its one-shot Tweedie reconstruction from a noised copy at a
  fixed time t, ``l(x0) = E_eps d(x0, x0_hat(alpha_t x0 + sigma_t eps, t))``.  The paper
  uses LPIPS for ``d`` (images); we use the squared Euclidean distance summed over all
  coordinates, ``d(a, b) = ||a - b||^2`` (no perceptual network here), estimated with
  ``num_draws`` noise draws per sample (the official code uses 5).  For x0 ~ N(mu, s^2 I)
  in d dimensions Tweedie is linear and ``l(x0) = c^2 ||x0 - mu||^2 + k^2 sigma^2 d`` with
  ``k = alpha s^2 / (alpha^2 s^2 + sigma^2)`` and ``c = 1 - k alpha``: the score grows with the
  distance from the mode, i.e. it ranks samples by (negative) likelihood.
* :func:`minority_levels` / :func:`quantize_scores` -- the paper's quantile scheme: L
  equal-frequency levels, thresholds q_i = quantile(scores, (i+1)/L), level j when
  q_{j-1} < l <= q_j (level L-1 = the most unique samples).
* :func:`train_minority_classifier` -- a small time-conditioned MLP classifier
  p(level | x_t, t) (optax, cross entropy on noised data, t uniform on the schedule's
  interval), the paper's "minority classifier".
* :func:`minority_guidance` -- classifier guidance towards a level (the paper's guided score,
  Sec. 3.3, the classifier guidance of Dhariwal & Nichol 2021):
  ``score_w(x, t) = score(x, t) + w grad_x log p(level | x, t)``.  As eps = -sigma score,
  ``eps_w = eps - w sigma g`` and ``x0_w = (x - sigma eps_w) / alpha = x0 + w (sigma^2 / alpha) g``
  (g the classifier gradient).  Cost per model call: one base model evaluation plus one
  classifier forward and backward pass (NFE unchanged).
* :func:`mixture_level_classifier` -- an exact classifier for levels that are unions of the
  components of an analytic :class:`~samplax.models.analytic.GaussianMixture`:
  p(level | x_t) = sum_{k in level} p(k | x_t).  With it, minority guidance at w = 1 is
  *exactly* the conditional model of that level (Bayes: grad log p_t(x | l) =
  grad log p_t(x) + grad log p(l | x_t)).

Autoguidance (Karras, Aittala, Kynkaanniemi, Lehtinen, Aila & Laine, "Guiding a diffusion
model with a bad version of itself", NeurIPS 2024, arXiv 2406.02507)
--------------------------------------------------------------------------------------
* :func:`autoguidance` -- ``D_w(x; sigma) = D_bad + w (D_good - D_bad)`` (the paper's guided
  denoiser, Sec. 3, with the guiding model D_0 the bad one).  w = 1 is the good model, w = 0
  the bad one.  The combination is affine with weights summing to 1, so guiding the denoiser, the
  noise or the score is the same thing and the pair (x0, eps) stays consistent with
  x = alpha x0 + sigma eps.  **NFE: 2 model calls per solver evaluation** (one of each).
  Two Gaussians N(mu, s1^2) (good) and N(mu, s0^2) (bad): the guided probability-flow ODE
  from noise level S maps u - mu to m (u - mu) with
  m^2 = (s1^2 / (s1^2 + S^2))^w (s0^2 / (s0^2 + S^2))^(1-w); started from the exact
  marginal (variance s1^2 + S^2) the sample variance is (s1^2 + S^2) m^2 -> s1^(2w) s0^(2(1-w))
  as S -> infinity (a geometric interpolation: a too-wide bad model, w > 1, narrows the
  samples).  :func:`autoguidance_gaussian_gain` returns m (between any two noise levels).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from samplax.models.base import DiffusionModel, _bcast

__all__ = [
    "minority_score", "minority_levels", "quantize_scores", "MinorityClassifier", "minority_classifier_apply",
    "train_minority_classifier", "minority_guidance", "mixture_level_classifier", "autoguidance",
    "autoguidance_gaussian_gain",
]


def _is_concrete(v) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(v))


def _check_model(fn: str, name: str, m) -> None:
    if not isinstance(m, DiffusionModel):
        raise ValueError(f"{fn}: {name} must be a samplax DiffusionModel, got {type(m).__name__}")


# ---------------------------------------------------------------------------------------
# Minority score (Eq. 7) and its quantisation
# ---------------------------------------------------------------------------------------
def minority_score(model: DiffusionModel, x0, t: float, key, num_draws: int = 5, noise=None):
    """Minority score of clean samples x0 (B, ...): the mean over ``num_draws`` noise draws of
    ``||x0 - x0_hat(alpha_t x0 + sigma_t eps, t)||^2`` (sum over all coordinates), Eq. 7 of
    Um et al. with squared L2 in place of LPIPS.  ``noise`` (num_draws, B, ...) replaces the
    draws from ``key`` (for exact checks).  Returns (B,)."""
    if not (isinstance(num_draws, int) and num_draws >= 1):
        raise ValueError(f"minority_score: num_draws must be an integer >= 1, got {num_draws!r}")
    x0 = jnp.asarray(x0)
    if _is_concrete(t):
        lo, hi = float(model.schedule.t_min), float(model.schedule.t_max)
        if not (math.isfinite(float(t)) and lo <= float(t) <= hi):
            raise ValueError(f"minority_score: t must be in the schedule's interval [{lo}, {hi}], got {t!r}")
    t = jnp.asarray(t, x0.dtype)
    if noise is None:
        noise = jax.random.normal(key, (num_draws,) + x0.shape, x0.dtype)
    elif jnp.shape(noise) != (num_draws,) + x0.shape:
        raise ValueError(f"minority_score: noise must have shape {(num_draws,) + x0.shape}, got {jnp.shape(noise)}")
    a, s = model.schedule.alpha(t), model.schedule.sigma(t)

    def one(eps):
        x0_hat = model.data(a * x0 + s * eps, t)
        return jnp.sum((x0 - x0_hat).reshape(x0.shape[0], -1) ** 2, axis=1)

    return jnp.mean(jax.lax.map(one, noise), axis=0)


def minority_levels(scores, num_levels: int) -> np.ndarray:
    """The paper's quantile thresholds: q_i = quantile(scores, (i + 1) / L), i = 0..L-1
    (so q_{L-1} = max).  Returns (L,) float64."""
    if not (isinstance(num_levels, (int, np.integer)) and num_levels >= 2):
        raise ValueError(f"minority_levels: num_levels must be an integer >= 2, got {num_levels!r}")
    s = np.asarray(scores, np.float64).ravel()
    if s.size < num_levels or not np.all(np.isfinite(s)):
        raise ValueError(f"minority_levels: scores must be finite and at least num_levels={num_levels} many, "
                         f"got {s.size} (finite: {bool(np.all(np.isfinite(s)))})")
    return np.quantile(s, (np.arange(num_levels) + 1) / num_levels)


def quantize_scores(scores, thresholds) -> np.ndarray:
    """Level of each score: j with q_{j-1} < score <= q_j (level 0 up to q_0; anything above
    q_{L-2} is level L-1).  Returns int32 of the scores' shape."""
    q = np.asarray(thresholds, np.float64)
    return np.searchsorted(q[:-1], np.asarray(scores, np.float64), side="left").astype(np.int32)


# ---------------------------------------------------------------------------------------
# A small time-conditioned minority classifier
# ---------------------------------------------------------------------------------------
class MinorityClassifier(nn.Module):
    """MLP on [flatten(x_t), sinusoidal embedding of the log-SNR lambda(t)] -> L logits."""

    num_levels: int
    hidden: Sequence[int] = (128, 128)
    embed_dim: int = 32

    @nn.compact
    def __call__(self, x, lam):
        from samplax.models.networks import sinusoidal_embedding

        b = x.shape[0]
        lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (b,))
        emb = sinusoidal_embedding(lam, self.embed_dim, 100.0)
        h = jnp.concatenate([x.reshape(b, -1).astype(jnp.float32), emb], -1)
        for width in self.hidden:
            h = nn.silu(nn.Dense(width)(h))
        return nn.Dense(self.num_levels)(h)


def minority_classifier_apply(module: MinorityClassifier, schedule) -> Callable:
    """``apply(params, x, t) -> logits (B, L)`` for :func:`minority_guidance` (t scalar or (B,))."""
    def apply(params, x, t):
        return module.apply(params, x, schedule.lambda_(jnp.asarray(t, jnp.float32)))
    return apply


def train_minority_classifier(key, model: DiffusionModel, x0, num_levels: int = 8, *, score_t: float = 0.06,
                              num_draws: int = 5, hidden: Sequence[int] = (128, 128), embed_dim: int = 32,
                              steps: int = 2000, batch_size: int = 256, learning_rate: float = 2e-3,
                              score_batch: int = 512) -> Tuple[Callable, Any, Dict[str, Any]]:
    """Minority scores of the data x0 (N, ...) under ``model`` at ``score_t`` (the paper's fixed
    perturbation time; its code uses step 60 of 1000), quantised into ``num_levels`` levels, and
    a :class:`MinorityClassifier` trained on noised copies (Adam, cross entropy, t uniform on
    the schedule's [t_min, t_max]).  Returns ``(apply, params, info)``: apply(params, x, t) ->
    logits; info holds the thresholds, levels, scores and the final training loss/accuracy."""
    import optax

    x0 = jnp.asarray(x0, jnp.float32)
    n = x0.shape[0]
    for name, v in (("steps", steps), ("batch_size", batch_size), ("num_draws", num_draws)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"train_minority_classifier: {name} must be an integer >= 1, got {v!r}")
    k_score, k_init, k_train = jax.random.split(key, 3)
    score_fn = jax.jit(lambda xb, kb: minority_score(model, xb, score_t, kb, num_draws))
    scores = np.concatenate([np.asarray(score_fn(x0[i:i + score_batch], jax.random.fold_in(k_score, i)))
                             for i in range(0, n, score_batch)])
    thresholds = minority_levels(scores, num_levels)
    levels = quantize_scores(scores, thresholds)
    sched = model.schedule
    module = MinorityClassifier(num_levels, tuple(hidden), embed_dim)
    apply = minority_classifier_apply(module, sched)
    params = module.init(k_init, x0[:1], jnp.zeros((1,), jnp.float32))
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, 0.05))
    opt_state = opt.init(params)
    y_all = jnp.asarray(levels)
    t_lo, t_hi = float(sched.t_min), float(sched.t_max)

    @jax.jit
    def step(params, opt_state, k):
        ki, kt, ke = jax.random.split(k, 3)
        idx = jax.random.randint(ki, (batch_size,), 0, n)
        xb, yb = x0[idx], y_all[idx]
        t = jax.random.uniform(kt, (batch_size,), jnp.float32, t_lo, t_hi)
        a = _bcast(sched.alpha(t), xb)
        s = _bcast(sched.sigma(t), xb)
        xt = a * xb + s * jax.random.normal(ke, xb.shape, xb.dtype)

        def loss_fn(p):
            logits = apply(p, xt, t)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return loss, jnp.mean(jnp.argmax(logits, -1) == yb)

        (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss, acc

    losses, accs = [], []
    for i in range(steps):
        params, opt_state, loss, acc = step(params, opt_state, jax.random.fold_in(k_train, i))
        if i >= steps - 100:
            losses.append(float(loss)), accs.append(float(acc))
    info = dict(thresholds=thresholds, levels=levels, scores=scores, score_t=float(score_t), num_draws=num_draws,
                final_loss=float(np.mean(losses)), final_accuracy=float(np.mean(accs)), steps=steps,
                num_levels=num_levels)
    return apply, params, info


# ---------------------------------------------------------------------------------------
# Minority guidance (classifier guidance towards a level)
# ---------------------------------------------------------------------------------------
def minority_guidance(model: DiffusionModel, classifier_apply: Callable, classifier_params: Any, strength,
                      target_level: Optional[int] = None) -> DiffusionModel:
    """Model guided towards ``target_level`` (default: the last, most-minority level L-1) of a
    time-conditioned classifier ``classifier_apply(params, x, t) -> logits (B, L)``:
    score_w = score + strength * grad_x log p(target | x, t) (Um et al., Sec. 3.3).

    Returns a ``data_noise`` model (x0 + w sigma^2/alpha g, eps - w sigma g); strength = 0 is
    the base model's (x0, eps) exactly.  ``strength`` (>= 0) lives in params (vmappable).
    NFE per call: one base-model call plus one classifier forward/backward pass."""
    _check_model("minority_guidance", "model", model)
    if not callable(classifier_apply):
        raise ValueError("minority_guidance: classifier_apply must be callable as (params, x, t) -> logits")
    if _is_concrete(strength):
        w = np.asarray(strength, np.float64)
        if w.ndim != 0 or not np.isfinite(w) or w < 0:
            raise ValueError(f"minority_guidance: strength must be a finite scalar >= 0, got {strength!r}")
    if target_level is not None and not (isinstance(target_level, (int, np.integer)) and not isinstance(
            target_level, bool) and target_level >= 0):
        raise ValueError(f"minority_guidance: target_level must be None (the last level) or an integer >= 0, "
                         f"got {target_level!r}")
    base_apply, schedule, base_pred = model.apply, model.schedule, model.prediction
    target = -1 if target_level is None else int(target_level)

    def apply(p, x, t):
        inner, cparams, w = p
        base = DiffusionModel(apply=base_apply, params=inner, schedule=schedule, prediction=base_pred)
        x0, eps = base.data_noise(x, t)

        def log_p(xx):
            logits = classifier_apply(cparams, xx, t)
            if target >= logits.shape[-1]:
                raise ValueError(f"minority_guidance: target_level {target} is out of range for a classifier "
                                 f"with {logits.shape[-1]} levels; allowed: 0..{logits.shape[-1] - 1}")
            return jnp.sum(jax.nn.log_softmax(logits, axis=-1)[:, target])

        g = jax.grad(log_p)(x).astype(x.dtype)
        a, s = _bcast(schedule.alpha(t), x), _bcast(schedule.sigma(t), x)
        w = jnp.asarray(w, x.dtype)
        return x0 + w * (s * s / a) * g, eps - w * s * g

    params = (model.params, classifier_params, jnp.asarray(strength))
    return DiffusionModel(apply=apply, params=params, schedule=schedule, prediction="data_noise")


def mixture_level_classifier(gmm, schedule, component_levels) -> Tuple[Callable, Any]:
    """The exact classifier p(level | x_t) = sum_{k: component_levels[k] = level} p(k | x_t) of
    an analytic mixture whose levels are unions of components.  Returns (apply, params) for
    :func:`minority_guidance`; apply(params, x, t) -> log p(level | x_t) (B, L), L =
    max(component_levels) + 1 (log-probabilities are valid logits)."""
    lev = np.asarray(component_levels)
    if lev.shape != (int(gmm.weights.shape[0]),) or not np.issubdtype(lev.dtype, np.integer) or lev.min() < 0:
        raise ValueError(f"mixture_level_classifier: component_levels must be {int(gmm.weights.shape[0])} "
                         f"integers >= 0 (one per component), got {component_levels!r}")
    num = int(lev.max()) + 1
    onehot = np.where(lev[:, None] == np.arange(num)[None], 0.0, -np.inf)  # (K, L) log-indicator

    def apply(params, x, t):
        g, oh = params
        a, s = _bcast(schedule.alpha(t), x), _bcast(schedule.sigma(t), x)
        lp = g.component_log_posterior(x / a, (s / a).reshape(jnp.shape(t)))  # (B, K)
        return jax.scipy.special.logsumexp(lp[:, :, None] + oh.astype(lp.dtype)[None], axis=1)

    return apply, (gmm, jnp.asarray(onehot))


# ---------------------------------------------------------------------------------------
# Autoguidance
# ---------------------------------------------------------------------------------------
def autoguidance(good: DiffusionModel, bad: DiffusionModel, scale) -> DiffusionModel:
    """D_w = D_bad + scale (D_good - D_bad) (Karras et al. 2024): a good model guided by a
    worse version of itself (smaller / less trained / wider).  scale = 1 is ``good``.

    When both models share a prediction type the native outputs are combined (the model keeps
    that type, like :func:`~samplax.models.wrappers.classifier_free_guidance`); otherwise their
    (x0, eps) pairs are (prediction ``data_noise``).  Both must use the same schedule (the good
    model's is used).  NFE: 2 model calls per evaluation.  ``scale`` lives in params."""
    _check_model("autoguidance", "good", good)
    _check_model("autoguidance", "bad", bad)
    if type(good.schedule) is not type(bad.schedule):
        raise ValueError(f"autoguidance: good and bad must share a schedule, got {type(good.schedule).__name__} "
                         f"and {type(bad.schedule).__name__}")
    if _is_concrete(scale):
        w = np.asarray(scale, np.float64)
        if w.ndim != 0 or not np.isfinite(w):
            raise ValueError(f"autoguidance: scale must be a finite scalar, got {scale!r}")
    schedule = good.schedule
    same = good.prediction == bad.prediction
    pred = good.prediction if same else "data_noise"
    ga, gp, ba, bp = good.apply, good.prediction, bad.apply, bad.prediction

    def apply(p, x, t):
        pg, pb, w = p
        if same:
            og, ob = ga(pg, x, t), ba(pb, x, t)
        else:
            og = DiffusionModel(apply=ga, params=pg, schedule=schedule, prediction=gp).data_noise(x, t)
            ob = DiffusionModel(apply=ba, params=pb, schedule=schedule, prediction=bp).data_noise(x, t)
        return jax.tree_util.tree_map(lambda g, b: b + jnp.asarray(w, g.dtype) * (g - b), og, ob)

    return DiffusionModel(apply=apply, params=(good.params, bad.params, jnp.asarray(scale)), schedule=schedule,
                          prediction=pred)


def autoguidance_gaussian_gain(s_good, s_bad, scale, S_from, S_to=0.0):
    """Closed-form gain m of the autoguided PF-ODE between two Gaussians with the same mean mu
    and stds s_good, s_bad (per coordinate), integrated in VE variables u = x / alpha from noise
    level S_from = sigma/alpha down to S_to: u_to - mu = m (u_from - mu),
    m = ((s_good^2+S_to^2)/(s_good^2+S_from^2))^(w/2) ((s_bad^2+S_to^2)/(s_bad^2+S_from^2))^((1-w)/2).
    Derivation: D_w(u; s) - mu = c(s) (u - mu) with c = w s_good^2/(s_good^2+s^2) + (1-w)
    s_bad^2/(s_bad^2+s^2); du/ds = (u - D_w)/s = (1 - c(s)) (u - mu)/s and
    int (1 - c)/s ds = (w/2) log(s_good^2 + s^2) + ((1-w)/2) log(s_bad^2 + s^2)."""
    s1, s0, a, b = (np.asarray(v, np.float64) for v in (s_good, s_bad, S_from, S_to))
    return ((s1**2 + b**2) / (s1**2 + a**2)) ** (scale / 2) * ((s0**2 + b**2) / (s0**2 + a**2)) ** ((1 - scale) / 2)
