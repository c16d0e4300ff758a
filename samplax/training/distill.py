"""Distillation of a trained diffusion model in steps, in size, or both (FastLightGen).

FastLightGen (Shao, Gu & Xie, "FastLightGen: Fast and Light Video Generation with Fewer Steps
and Parameters", arXiv:2603.01685, CVPR 2026) distils a large multi-step video DiT into a
student that is both *light* (about 30 % of the parameters pruned) and *fast* (4 sampling
steps).  Its pipeline has three stages (Sec. 3; we could read the abstract and secondary
summaries of the method, not the full equations, so the details below marked *guess* are ours):

* Stage I -- find the unimportant blocks (skip each block, measure the ELBO / Tweedie denoising
  loss; the first and last blocks matter most) and prune ~30 % of them;
* Stage II -- "dynamic probabilistic pruning": train the pruned network with a distillation loss
  towards the original model (weight alpha = 1) while the pruned blocks are dropped with a
  growing probability -- the *size* distillation, at the teacher's number of steps;
* Stage III -- fine-grained distribution matching (DMD-style) into a 4-step generator, against an
  **optimal teacher**: not the original model itself but a teacher "engineered to maximise the
  student's performance", obtained by "well-guided teacher guidance" (two guidance weights
  beta_1, beta_2).  The point of the construction: the light student cannot represent the
  original model exactly, so the teacher it is distilled from is the original model *guided
  away from the errors that the light model makes*.

What this module implements (our scale: the 8x8 digits U-Net on CPU, see docs/fastlightgen.md):

* **Size** (Stage II without block dropping): the student is the same U-Net with *narrower
  channels* (:func:`narrow_channels` picks the widths, multiples of the GroupNorm groups, whose
  parameter count is nearest ``1 - prune_fraction`` of the teacher's), either freshly initialised
  or (``init="inherit"``) initialised by structured channel pruning of the teacher with weight
  inheritance, :func:`inherit_unet_params` (leading channels; the paper inherits whole blocks,
  ranked in Stage I) -- and trained by output matching, :func:`size_distillation_loss`:
  ``E ||eps_S(x_t, t) - eps_T(x_t, t)||^2`` at x_t = alpha_t x0 + sigma_t eps, t ~ U[t_min, t_max]
  (plus ``data_weight`` times the ordinary denoising loss; the paper's alpha = 1 weighting of its
  two terms is not recoverable from what we read: *guess*, default 0).
* **Steps** (Stage III, replaced by trajectory distillation -- *deviation*: DMD needs an online
  "fake score" network and is too slow for a CPU budget): the student samples with DDIM on the
  ``nfe``-step log-SNR grid t_0 > ... > t_{n-1} > 0 (:func:`student_grid`).  For every interval
  [t_i, t_{i+1}] the teacher solves the probability-flow ODE with ``K`` steps of a samplax
  lax.scan solver (:func:`segment_grids`, :func:`teacher_segment`) from x = alpha_i x0 + sigma_i
  eps; the student's single DDIM step must land on the teacher's endpoint.  DDIM from (x, t_i)
  with data prediction D lands at (sigma_{i+1}/sigma_i) x + (alpha_{i+1} - alpha_i
  sigma_{i+1}/sigma_i) D, so the target is the data prediction :func:`ddim_target` (Salimans &
  Ho 2022, progressive distillation, Alg. 2's inverted-DDIM target, here over K teacher steps
  at once), and :func:`step_distillation_loss` is ``mean_i w_i ||D_S(x, t_i) - D*_i||^2``.  Its
  minimiser reproduces the teacher's ODE flow on the student's grid exactly
  (tests/test_distill.py checks this on a Gaussian, where the flow is known in closed form).
* **Optimal teacher** (Stage III's teacher, *guess* at the paper's construction):
  :func:`optimal_teacher` = autoguidance (Karras et al. 2024) of the original teacher T by the
  size-distilled light model W: ``D_opt = D_W + (1 + beta) (D_T - D_W)`` = ``D_T + beta (D_T -
  D_W)`` (beta = 0: the teacher itself).  We keep one guidance weight (beta, our reading of
  beta_2); the class-conditional weight (beta_1, classifier-free guidance) is left out because
  we distil the unconditional model.
* **Both** (FastLightGen): ``size_fraction`` of the steps run the size stage (Stage II); its
  result W is frozen as the guide and is also the initialisation of the 4-step student, which
  then runs the steps stage against the optimal teacher (Stage III).

Everything is written on :class:`samplax.models.base.DiffusionModel` (any prediction type), so
the analytic Gaussian of :mod:`samplax.models.analytic` serves as an exact teacher in tests.
"""
from __future__ import annotations

import itertools
from typing import Callable, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from samplax.models.base import DiffusionModel
from samplax.timesteps import Grid, time_grid

MODES = ("step", "size", "both")
STUDENT_SOLVER = "ddim"


def param_count(params) -> int:
    """The number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))


def unet_param_count(channels: Sequence[int], num_res_blocks: int, attention: bool, embed_dim: int,
                     num_classes: int, in_channels: int) -> int:
    """The parameter count of :class:`samplax.models.unet.UNet` in closed form (its layout, layer
    by layer; tests/test_distill.py checks it against the initialised network), so that
    :func:`narrow_channels` can search widths without building networks."""
    E = embed_dim

    def conv(i, o, k=3):
        return k * k * i * o + o

    def res(i, o):   # GN(i), conv3x3 i->o, Dense(E->o), GN(o), conv3x3 o->o, 1x1 skip when i != o
        return 2 * i + conv(i, o) + E * o + o + 2 * o + conv(o, o) + (conv(i, o, 1) if i != o else 0)

    c = [int(v) for v in channels]
    n = 2 * (E * E + E) + ((num_classes + 1) * E if num_classes else 0) + conv(in_channels, c[0])
    h, skips = c[0], [c[0]]
    for i, ch in enumerate(c):
        for _ in range(num_res_blocks):
            n, h = n + res(h, ch), ch
            skips.append(h)
        if i < len(c) - 1:
            n += conv(ch, ch)
            skips.append(ch)
    n += 2 * res(c[-1], c[-1]) + ((2 * c[-1] + 4 * (c[-1] ** 2 + c[-1])) if attention else 0)
    for i in reversed(range(len(c))):
        for _ in range(num_res_blocks + 1):
            n, h = n + res(h + skips.pop(), c[i]), c[i]
        if i > 0:
            n += conv(c[i], c[i])
    return n + 2 * c[0] + conv(c[0], in_channels)


def _up_concat_parts(channels: Sequence[int], num_res_blocks: int) -> list:
    """(running features, skip) channel counts of the inputs of the U-Net's up-path ResBlocks, in the
    order they are created (:class:`samplax.models.unet.UNet`)."""
    c = [int(v) for v in channels]
    h, skips = c[0], [c[0]]
    for i, ch in enumerate(c):
        for _ in range(num_res_blocks):
            h = ch
            skips.append(h)
        if i < len(c) - 1:
            skips.append(ch)
    parts = []
    for i in reversed(range(len(c))):
        for _ in range(num_res_blocks + 1):
            parts.append((h, skips.pop()))
            h = c[i]
    return parts


def inherit_unet_params(teacher_params, student_params, teacher_channels: Sequence[int],
                        student_channels: Sequence[int], num_res_blocks: int):
    """Structured channel pruning with weight inheritance for :class:`samplax.models.unet.UNet`: the
    student (narrower ``student_channels``; ``student_params`` gives the structure and shapes) keeps
    the *leading* channels of every teacher layer at each level.  The up path's ResBlocks read the
    concatenation [running features, skip]: their first GroupNorm, 3x3 and 1x1 convolutions keep the
    leading channels of each part (not of the concatenation).  A plain rule -- no importance scores
    (the paper's Stage I ranks whole blocks by ELBO, which a U-Net's channel widths do not map onto)
    -- and not function-preserving (GroupNorm's groups change): an initialisation close to the
    teacher, not a copy of it.  Equal channels return the teacher's parameters."""
    from flax.core import unfreeze
    from flax.traverse_util import flatten_dict, unflatten_dict

    first_up = len(teacher_channels) * num_res_blocks + 2
    pt, ps = _up_concat_parts(teacher_channels, num_res_blocks), _up_concat_parts(student_channels, num_res_blocks)
    flat_t = flatten_dict(unfreeze(teacher_params))
    out = {}
    for k, v in flatten_dict(unfreeze(student_params)).items():
        w = np.asarray(flat_t[k])
        idx = [np.arange(n) for n in v.shape]
        block = next((name for name in k if name.startswith("ResBlock_")), None)
        j = int(block.split("_")[1]) - first_up if block else -1
        if j >= 0 and (k[-2] == "GroupNorm_0" or (k[-2] in ("Conv_0", "Conv_2") and k[-1] == "kernel")):
            (a, _), (a2, b2) = pt[j], ps[j]
            idx[0 if k[-2] == "GroupNorm_0" else 2] = np.concatenate([np.arange(a2), a + np.arange(b2)])
        out[k] = jnp.asarray(w[np.ix_(*idx)], v.dtype)
    return unflatten_dict(out)


def narrow_channels(channels: Sequence[int], groups: int, prune_fraction: float,
                    count: Callable[[tuple], int]) -> tuple:
    """The channel widths of the pruned student: every level ``c_i' <= c_i`` a positive multiple of
    ``groups``, chosen to bring ``count(c') / count(c)`` nearest to ``1 - prune_fraction`` (ties:
    the wider).  ``count(channels) -> parameter count`` (e.g. of the U-Net built with them).
    ``prune_fraction = 0`` returns ``channels``.  ValueError on a fraction outside [0, 1)."""
    if not 0.0 <= float(prune_fraction) < 1.0:
        raise ValueError(f"prune_fraction: must be in [0, 1), got {prune_fraction!r}")
    channels = tuple(int(c) for c in channels)
    if prune_fraction == 0:
        return channels
    full = count(channels)
    target = 1.0 - float(prune_fraction)
    options = [range(groups, c + 1, groups) for c in channels]
    best = min(itertools.product(*options), key=lambda ch: (abs(count(ch) / full - target), -sum(ch)))
    return tuple(int(c) for c in best)


# ---------------------------------------------------------------------------------------
# Grids: the student's few-step grid and the teacher's sub-grids of each of its intervals
# ---------------------------------------------------------------------------------------
def student_grid(schedule, nfe: int) -> Grid:
    """The student's DDIM grid: ``nfe`` log-SNR-uniform nodes from t_max to t_min, then sigma = 0
    (what :func:`samplax.experiment.trainer.draw_samples` builds for solver "ddim" at ``nfe``)."""
    return time_grid(schedule, int(nfe), "logsnr", end="zero")


def segment_grids(schedule, nfe: int, teacher_steps: int) -> List[Optional[Grid]]:
    """For each student interval [t_i, t_{i+1}] the teacher's ``teacher_steps``-step log-SNR grid
    (end "t_min" at t_{i+1}; the last interval, into sigma = 0, ends "zero": K steps down to t_min
    then the teacher's data prediction), or None when that interval starts at t_min (the teacher's
    target is then its data prediction at t_min, one evaluation)."""
    g = student_grid(schedule, nfe)
    t = np.asarray(g.t, np.float64)
    out = []
    for i in range(int(nfe)):
        if i < nfe - 1:
            out.append(time_grid(schedule, teacher_steps, "logsnr", end="t_min", t_max=float(t[i]),
                                 t_min=float(t[i + 1])))
        elif t[i] > schedule.t_min * (1 + 1e-6):
            out.append(time_grid(schedule, teacher_steps, "logsnr", end="zero", t_max=float(t[i])))
        else:
            out.append(None)
    return out


def teacher_segment(solver, teacher: DiffusionModel, x, sub_grid: Optional[Grid], t_i):
    """The teacher's ODE solution from (x, t_i) over ``sub_grid`` (:func:`segment_grids`) with a
    samplax lax.scan ``solver``; its data prediction at t_i when ``sub_grid`` is None."""
    from samplax.solvers import sample

    if sub_grid is None:
        return teacher.data(x, jnp.asarray(t_i, x.dtype))
    return sample(solver, teacher, x, sub_grid)[0]


def ddim_target(x, x_next, alpha, sigma, alpha_next, sigma_next):
    """The data prediction D* with which one DDIM step from (x, alpha, sigma) lands on ``x_next`` at
    (alpha_next, sigma_next): x_next = r x + (alpha_next - alpha r) D*, r = sigma_next / sigma."""
    r = sigma_next / sigma
    return (x_next - r * x) / (alpha_next - alpha * r)


def ddim_step(x, d, alpha, sigma, alpha_next, sigma_next):
    """One DDIM step with data prediction ``d`` (the inverse of :func:`ddim_target`)."""
    r = sigma_next / sigma
    return r * x + (alpha_next - alpha * r) * d


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------
def step_distillation_loss(student: DiffusionModel, teacher: DiffusionModel, grid: Grid,
                           sub_grids: Sequence[Optional[Grid]], solver, x0, eps):
    """Trajectory (step) distillation: ``mean_i w_i mean ||D_S(x_i, t_i) - D*_i||^2`` with x_i =
    alpha_i x0[i] + sigma_i eps[i] and D*_i the :func:`ddim_target` of the teacher's K-step ODE
    solution over the student's interval i (module docstring).  ``x0``, ``eps``: (n, b, ...)
    -- one slice of the batch per interval of the n-interval student ``grid``.  The teacher's
    targets carry no gradient.  w_i = alpha_i^2 / (alpha_i^2 + sigma_i^2) is the "SNR+1" weighting
    of progressive distillation (Salimans & Ho 2022, Sec. 4): an eps-prediction student's data
    error at t ~ t_max is its eps error times sigma/alpha ~ 100, which unweighted swamps the loss;
    the weights do not move the per-interval minimiser.  Returns (loss, per-interval losses (n,))."""
    n = grid.n_steps
    if x0.shape[0] != n or eps.shape != x0.shape:
        raise ValueError(f"x0, eps: must be (n_intervals={n}, b, ...) alike, got {x0.shape} and {eps.shape}")
    per = []
    for i in range(n):
        a, s, a1, s1 = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        x = a * x0[i] + s * eps[i]
        target = ddim_target(x, teacher_segment(solver, teacher, x, sub_grids[i], grid.t[i]), a, s, a1, s1)
        d = student.data(x, jnp.broadcast_to(grid.t[i], (x.shape[0],)).astype(x.dtype))
        w = a**2 / (a**2 + s**2)   # "SNR+1" weighting: sigma^2 ||eps error||^2 at high noise, not (sigma/alpha)^2
        per.append(w * jnp.mean(jnp.square(d - jax.lax.stop_gradient(target))))
    per = jnp.stack(per)
    return jnp.mean(per), per


def size_distillation_loss(student: DiffusionModel, teacher: DiffusionModel, x0, t, eps,
                           data_weight: float = 0.0):
    """Output-matching (size) distillation at the teacher's own noise levels:
    ``mean ||eps_S(x_t, t) - eps_T(x_t, t)||^2 + data_weight mean ||eps_S(x_t, t) - eps||^2`` with
    x_t = alpha_t x0 + sigma_t eps; ``t`` per example.  Returns (loss, distillation term)."""
    sched = student.schedule
    shape = (-1,) + (1,) * (x0.ndim - 1)
    xt = sched.alpha(t).reshape(shape) * x0 + sched.sigma(t).reshape(shape) * eps
    e_s = student.noise(xt, t)
    kd = jnp.mean(jnp.square(e_s - jax.lax.stop_gradient(teacher.noise(xt, t))))
    loss = kd if data_weight == 0 else kd + data_weight * jnp.mean(jnp.square(e_s - eps))
    return loss, kd


def optimal_teacher(teacher: DiffusionModel, weak: Optional[DiffusionModel], beta) -> DiffusionModel:
    """FastLightGen's optimal teacher (our reading, module docstring): the teacher guided away
    from the light model ``weak``, D_opt = D_T + beta (D_T - D_W) -- autoguidance
    (:func:`samplax.models.guidance.autoguidance`) at scale 1 + beta.  ``beta = 0`` (or no
    ``weak``) returns ``teacher`` itself (one evaluation per call, not two)."""
    if weak is None or (not isinstance(beta, jax.core.Tracer) and float(beta) == 0.0):
        return teacher
    from samplax.models.guidance import autoguidance

    return autoguidance(teacher, weak, 1.0 + beta)


class SampleSpec(NamedTuple):
    """How a distilled student samples: solver name and NFE."""

    solver: str
    nfe: int


__all__ = ["MODES", "STUDENT_SOLVER", "param_count", "unet_param_count", "inherit_unet_params", "narrow_channels", "student_grid", "segment_grids",
           "teacher_segment", "ddim_target", "ddim_step", "step_distillation_loss", "size_distillation_loss",
           "optimal_teacher", "SampleSpec"]
