"""Training data for the Flax models: nothing is downloaded at run time.

* Generated 2-D toys, pure JAX functions ``key -> (n, 2) float32``:
  :func:`two_moons`, :func:`checkerboard`, :func:`swiss_roll`, :func:`rings`.
  Each is drawn in its own "native" coordinates and mapped to the returned
  coordinates by a *fixed* affine map (documented per function, never
  data-dependent), so that the data lie roughly in [-1.5, 1.5]^2 with a
  per-coordinate standard deviation of order 1.  The ``noise`` argument is
  always the standard deviation of isotropic Gaussian noise in the *returned*
  coordinates.  ``n`` and the shape parameters (``squares``, ``n_rings``) are
  Python integers: under :func:`jax.jit` they must be static.
* Exact samples of the benchmark Gaussian mixtures (``gmm2d``, ``gmm64d`` from
  ``samplax/problems``) with their component labels: :func:`gmm_samples`.
* scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; the file ships
  inside scikit-learn) scaled to [-1, 1], with a deterministic stratified
  train/test split: :func:`load_digits_dataset`.
* Token sequences for masked diffusion (``Dataset.vocab_size`` V > 0, x int32 (B, L)):
  ``digits_tokens`` (the digits' raw intensities 0..16 as 64 tokens, V = 17) and
  ``<problem>_tokens`` (exact samples of the discrete problems of
  ``samplax.discrete.exact``, e.g. ``markov4x8_tokens``) and ``<lm>_lm`` (ancestral
  samples of the exact language models ``samplax.decoding.exact.load_lm(lm)``, for causal
  language-model training, e.g. ``markov4x8_lm``).

A :class:`Dataset` (from :func:`make_dataset`) has a *stateless* batch
function: ``dataset.batch(seed, step, batch_size)`` is a pure function of its
arguments, so a run resumed at step k sees exactly the batches an
uninterrupted run would have seen.

* Generators (the toys and the mixtures) sample the batch at step k from
  ``jax.random.fold_in(jax.random.PRNGKey(seed), k)``.
* Finite datasets (digits) walk through an infinite stream of examples made by
  concatenating one permutation per epoch (epoch e is shuffled by
  :func:`epoch_permutation`, a numpy ``Generator`` seeded with ``(seed, e)``);
  the batch at step k holds stream positions ``[k B, (k + 1) B)`` and may
  straddle epochs.  Every example is seen exactly once per epoch.
"""
from __future__ import annotations

import functools
import inspect
import math
import operator
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from samplax.models import load_problem

Array = jax.Array

# --- fixed coordinate maps of the toys (returned = (native - offset) / scale) ---------
#: two moons: native moons are the unit upper half-circle centred at (0, 0) and the
#: unit lower half-circle centred at (1, 0.5); only shifted to centre the picture.
TWO_MOONS_OFFSET = (0.5, 0.25)
TWO_MOONS_SCALE = 1.0
#: checkerboard: the board [-L, L]^2 with L = sqrt(3), so that for an even number of
#: squares each coordinate is exactly uniform on [-sqrt(3), sqrt(3)] (std 1).
CHECKERBOARD_HALF_WIDTH = math.sqrt(3.0)
#: swiss roll: native (t cos t, t sin t), t ~ U(1.5 pi, 4.5 pi), divided by 10
#: (radius in [0.47, 1.41]); not centred, the roll's centre stays at the origin.
SWISS_ROLL_T_RANGE = (1.5 * math.pi, 4.5 * math.pi)
SWISS_ROLL_SCALE = 10.0
#: rings: ring k = 1..n_rings has radius RINGS_OUTER_RADIUS * k / n_rings.
RINGS_OUTER_RADIUS = 1.5

#: number of images in scikit-learn's digits data set
DIGITS_SIZE = 1797
DIGITS_SPLITS = ("train", "test", "all")


# --- small validators --------------------------------------------------------------
def _int(name: str, value: Any, minimum: int) -> int:
    """``value`` as a Python int >= minimum, else ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def _noise(name: str, noise: Any) -> Any:
    """Check a concrete noise level is a finite non-negative number (traced values pass)."""
    if isinstance(noise, (int, float, np.floating, np.integer)) and not isinstance(noise, bool):
        if not (math.isfinite(float(noise)) and float(noise) >= 0):
            raise ValueError(f"{name}: noise must be a finite number >= 0, got {noise!r}")
    return noise


def _add_noise(key: Array, x: Array, noise: Any) -> Array:
    return x + jnp.asarray(noise, jnp.float32) * jax.random.normal(key, x.shape, jnp.float32)


# --- 2-D toys ------------------------------------------------------------------------
def two_moons(key: Array, n: int, noise: float = 0.05) -> Array:
    """Two interleaved half-circles, ``(n, 2)`` float32.

    Native coordinates: each point picks a moon with probability 1/2 and an angle
    t ~ U(0, pi); the upper moon is (cos t, sin t) (unit circle centred at (0, 0)),
    the lower moon is (1 - cos t, 0.5 - sin t) (unit circle centred at (1, 0.5)).
    Returned: native - :data:`TWO_MOONS_OFFSET` (scale 1), i.e. noise-free points
    lie in [-1.5, 1.5] x [-0.75, 0.75], coordinate stds about (0.87, 0.49); then
    isotropic Gaussian noise of std ``noise``.
    """
    n = _int("two_moons: n", n, 0)
    _noise("two_moons", noise)
    k_moon, k_t, k_eps = jax.random.split(key, 3)
    lower = jax.random.bernoulli(k_moon, 0.5, (n,))
    t = jax.random.uniform(k_t, (n,), jnp.float32, 0.0, math.pi)
    c, s = jnp.cos(t), jnp.sin(t)
    x = jnp.where(lower, 1.0 - c, c)
    y = jnp.where(lower, 0.5 - s, s)
    pts = jnp.stack([x, y], -1) - jnp.asarray(TWO_MOONS_OFFSET, jnp.float32)
    return _add_noise(k_eps, pts / TWO_MOONS_SCALE, noise)


def _black_cells(squares: int) -> np.ndarray:
    """(i, j) of the cells of a ``squares`` x ``squares`` board with i + j even."""
    ij = np.stack(np.meshgrid(np.arange(squares), np.arange(squares), indexing="ij"), -1).reshape(-1, 2)
    return ij[(ij.sum(-1) % 2) == 0]


def checkerboard(key: Array, n: int, squares: int = 4, noise: float = 0.0) -> Array:
    """Uniform samples on the "black" squares of a checkerboard, ``(n, 2)`` float32.

    Native coordinates: the board [0, squares)^2 of unit cells; cell (i, j) (the
    cell [i, i+1) x [j, j+1)) is black when i + j is even.  A point picks one of
    the black cells uniformly and a uniform position inside it.  Returned:
    (native - squares / 2) * (2 L / squares) with L = :data:`CHECKERBOARD_HALF_WIDTH`
    = sqrt(3), i.e. the board is [-sqrt(3), sqrt(3)]^2 and (for an even number of
    squares) each coordinate is exactly uniform with std 1; then isotropic
    Gaussian noise of std ``noise`` (default 0: exactly on the black squares).
    """
    n = _int("checkerboard: n", n, 0)
    squares = _int("checkerboard: squares", squares, 1)
    _noise("checkerboard", noise)
    cells = jnp.asarray(_black_cells(squares), jnp.float32)
    k_cell, k_u, k_eps = jax.random.split(key, 3)
    idx = jax.random.randint(k_cell, (n,), 0, cells.shape[0])
    native = cells[idx] + jax.random.uniform(k_u, (n, 2), jnp.float32)
    pts = (native - 0.5 * squares) * (2.0 * CHECKERBOARD_HALF_WIDTH / squares)
    return _add_noise(k_eps, pts, noise)


def swiss_roll(key: Array, n: int, noise: float = 0.05) -> Array:
    """A 2-D swiss roll (an Archimedean spiral), ``(n, 2)`` float32.

    Native coordinates: t ~ U(1.5 pi, 4.5 pi) (:data:`SWISS_ROLL_T_RANGE`, one and a
    half turns), point (t cos t, t sin t), so the radius equals the unwrapped angle.
    Returned: native / :data:`SWISS_ROLL_SCALE` (= 10; radius in [0.47, 1.41], the
    roll's centre at the origin, mean (0.2, 0.02)); then isotropic Gaussian noise
    of std ``noise``.
    """
    n = _int("swiss_roll: n", n, 0)
    _noise("swiss_roll", noise)
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, (n,), jnp.float32, *SWISS_ROLL_T_RANGE)
    pts = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) / SWISS_ROLL_SCALE
    return _add_noise(k_eps, pts, noise)


def ring_radii(n_rings: int = 2) -> np.ndarray:
    """The radii of :func:`rings`: RINGS_OUTER_RADIUS * k / n_rings, k = 1..n_rings."""
    n_rings = _int("rings: n_rings", n_rings, 1)
    return RINGS_OUTER_RADIUS * np.arange(1, n_rings + 1) / n_rings


def rings(key: Array, n: int, n_rings: int = 2, noise: float = 0.03) -> Array:
    """Concentric circles, ``(n, 2)`` float32.

    Each point picks one of ``n_rings`` rings with equal probability and a
    uniform angle; ring k = 1..n_rings has radius 1.5 k / n_rings
    (:func:`ring_radii`; e.g. 0.75 and 1.5 for two rings, 0.5, 1 and 1.5 for
    three); then isotropic Gaussian noise of std ``noise``.
    """
    n = _int("rings: n", n, 0)
    radii = jnp.asarray(ring_radii(n_rings), jnp.float32)
    _noise("rings", noise)
    k_ring, k_a, k_eps = jax.random.split(key, 3)
    r = radii[jax.random.randint(k_ring, (n,), 0, radii.shape[0])]
    a = jax.random.uniform(k_a, (n,), jnp.float32, 0.0, 2.0 * math.pi)
    pts = jnp.stack([r * jnp.cos(a), r * jnp.sin(a)], -1)
    return _add_noise(k_eps, pts, noise)


# --- exact Gaussian-mixture samples -------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _problem_gmm(problem: str):
    gmm, _, _ = load_problem(problem, dtype=jnp.float32)
    return gmm


def gmm_samples(key: Array, n: int, problem: str = "gmm2d") -> Tuple[Array, Array]:
    """Exact samples of a benchmark problem's mixture p0: ``(x (n, d) float32, labels (n,) int32)``.

    ``labels`` are the mixture component indices (0..K-1) the samples were drawn
    from.  The mixture is loaded once per problem (``samplax.load_problem``, float32)
    and cached."""
    n = _int("gmm_samples: n", n, 0)
    gmm = _problem_gmm(problem)
    x, comp = gmm.sample_with_components(key, n, dtype=jnp.float32)
    return x.astype(jnp.float32), comp.astype(jnp.int32)


# --- scikit-learn digits --------------------------------------------------------------------
class Digits(NamedTuple):
    """A split of the digits: ``images`` float32 (N, 8, 8, 1) in [-1, 1], ``labels``
    int32 (N,), ``indices`` int64 (N,) -- the rows of ``sklearn.datasets.load_digits()``
    (increasing)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


@functools.lru_cache(maxsize=1)
def _digits_all() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = (np.asarray(raw.data, np.float32) / 8.0 - 1.0).reshape(-1, 8, 8, 1)
    labels = np.asarray(raw.target, np.int32)
    if images.shape[0] != DIGITS_SIZE:
        raise RuntimeError(f"scikit-learn's digits have {images.shape[0]} images, expected {DIGITS_SIZE}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=None)
def _digits_split(holdout_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), each sorted: per class, a permutation from
    ``numpy.random.default_rng(seed)`` and the first round(f * n_class) go to test."""
    _, labels = _digits_all()
    rng = np.random.default_rng(seed)
    test = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        k = int(math.floor(holdout_fraction * members.size + 0.5))
        test.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(labels.size), test_idx)
    for a in (train_idx, test_idx):
        a.setflags(write=False)
    return train_idx, test_idx


@functools.lru_cache(maxsize=None)
def _load_digits_cached(split: str, holdout_fraction: float, seed: int) -> Digits:
    images, labels = _digits_all()
    if split == "all":
        idx = np.arange(labels.size)
    else:
        idx = _digits_split(holdout_fraction, seed)[0 if split == "train" else 1]
    out = Digits(images[idx], labels[idx], np.asarray(idx, np.int64))
    for a in out:
        a.setflags(write=False)
    return out


def load_digits_dataset(split: str = "train", holdout_fraction: float = 0.2, seed: int = 0) -> Digits:
    """scikit-learn's 8x8 digits scaled to [-1, 1]: pixel p in 0..16 -> p / 8 - 1.

    ``split``: "train", "test" or "all" (all 1,797 images in scikit-learn's order).
    The split is stratified and deterministic: for each class c (in order 0..9)
    its rows are shuffled by one ``numpy.random.default_rng(seed)`` and the first
    round(holdout_fraction * n_c) go to "test", the rest to "train" (with the
    default 0.2: 359 test and 1,438 train images).  Within a split, examples keep
    scikit-learn's order (shuffling is the batch function's job).  Results are
    cached in memory and returned as read-only numpy arrays.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"load_digits_dataset: unknown split {split!r}; allowed: {list(DIGITS_SPLITS)}")
    try:
        f = float(holdout_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"load_digits_dataset: holdout_fraction must be a number in (0, 1), "
                         f"got {holdout_fraction!r}") from None
    if not 0.0 < f < 1.0:
        raise ValueError(f"load_digits_dataset: holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    seed = _int("load_digits_dataset: seed", seed, 0)
    return _load_digits_cached(split, f, seed)


# --- deterministic, resumable data order ----------------------------------------------------
@functools.lru_cache(maxsize=16)
def _epoch_permutation_cached(seed: int, epoch: int, size: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(size)
    perm.setflags(write=False)
    return perm


def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of a finite dataset's examples in ``epoch``: a permutation of
    ``range(size)`` from ``numpy.random.default_rng([seed, epoch])`` (read-only)."""
    return _epoch_permutation_cached(_int("seed", seed, 0), _int("epoch", epoch, 0), _int("size", size, 1))


def batch_indices(seed: int, step: int, batch_size: int, size: int) -> np.ndarray:
    """Example indices of the batch at ``step`` of a finite dataset of ``size`` examples.

    The data order is the concatenation of ``epoch_permutation(seed, e, size)`` for
    e = 0, 1, ...; the batch holds positions [step * batch_size, (step + 1) * batch_size)
    of it, possibly straddling two (or, when batch_size > size, more) epochs.
    A pure function of its arguments."""
    seed = _int("seed", seed, 0)
    step = _int("step", step, 0)
    batch_size = _int("batch_size", batch_size, 1)
    size = _int("size", size, 1)
    start = step * batch_size
    stop = start + batch_size
    first, last = start // size, (stop - 1) // size
    order = np.concatenate([_epoch_permutation_cached(seed, e, size) for e in range(first, last + 1)])
    return order[start - first * size: stop - first * size]


class Dataset(NamedTuple):
    """A training data set with a stateless batch function.

    * ``name``: registry name; ``shape``: per-example shape; ``num_classes``: number
      of labels (0: unconditional, labels are None); ``size``: number of examples
      (None for infinite generators).
    * ``batch(seed, step, batch_size) -> (x, labels or None)``: a pure function of
      its arguments (jax arrays; x float32 of shape (batch_size,) + shape, labels int32).
    * ``indices(seed, step, batch_size)``: for finite data sets, the example indices
      of that batch (:func:`batch_indices`); None for generators.
    * ``vocab_size``: 0 for real-valued data; V for token data (x int32 in 0..V-1,
      shape (L,); masked diffusion uses V as the mask id).
    * ``arrays``: for finite data sets held in memory, ``(x, labels or None)`` (numpy, all
      ``size`` examples, in index order): what a data sampler (:mod:`samplax.data_sampling`)
      gathers its batches from; None for generators.
    * ``eval_arrays``: a held-out split ``(x, labels or None)`` (e.g. digits' test split when
      ``split="train"``), or None: the classifier objective reports its accuracy there.
    """

    name: str
    shape: Tuple[int, ...]
    num_classes: int
    size: Optional[int]
    batch: Callable[[int, int, int], Tuple[Array, Optional[Array]]]
    indices: Optional[Callable[[int, int, int], np.ndarray]] = None
    vocab_size: int = 0
    arrays: Optional[Tuple[np.ndarray, Optional[np.ndarray]]] = None
    eval_arrays: Optional[Tuple[np.ndarray, Optional[np.ndarray]]] = None


def _check_kwargs(name: str, fn: Callable, kwargs: Dict[str, Any], skip: int) -> None:
    """ValueError unless ``kwargs`` are keyword parameters of ``fn`` (after its first ``skip``)."""
    params = list(inspect.signature(fn).parameters)[skip:]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"make_dataset({name!r}): unknown keyword argument(s) {unknown}; allowed: {params}")


def _check_step(seed: Any, step: Any, batch_size: Any) -> int:
    """Validate concrete seed/step (traced values pass) and return batch_size as an int."""
    for nm, v in (("seed", seed), ("step", step)):
        if isinstance(v, (int, np.integer)):  # bool is an int: rejected by _int
            _int(nm, v, 0)
    return _int("batch_size", batch_size, 1)


def _generator_dataset(name: str, sampler: Callable, num_classes: int = 0, **kwargs: Any) -> Dataset:
    """A :class:`Dataset` drawing each batch from ``fold_in(PRNGKey(seed), step)``."""
    _check_kwargs(name, sampler, kwargs, skip=2)
    draw = jax.jit(functools.partial(sampler, **kwargs), static_argnums=1)
    shape = jax.eval_shape(lambda k: draw(k, 1), jax.random.PRNGKey(0))  # also validates kwargs' values
    x_shape = (shape[0] if isinstance(shape, tuple) else shape).shape[1:]

    def batch(seed: int, step: int, batch_size: int) -> Tuple[Array, Optional[Array]]:
        batch_size = _check_step(seed, step, batch_size)
        out = draw(jax.random.fold_in(jax.random.PRNGKey(seed), step), batch_size)
        return out if isinstance(out, tuple) else (out, None)

    return Dataset(name, tuple(x_shape), num_classes, None, batch, None)


def _gmm_dataset(problem: str) -> Dataset:
    gmm = _problem_gmm(problem)
    return _generator_dataset(problem, functools.partial(gmm_samples, problem=problem),
                              num_classes=int(gmm.weights.shape[0]))


def _digits_dataset(**kwargs: Any) -> Dataset:
    _check_kwargs("digits", load_digits_dataset, kwargs, skip=0)
    data = load_digits_dataset(**kwargs)
    size = int(data.labels.shape[0])
    if size == 0:
        raise ValueError(f"make_dataset('digits'): the split {kwargs} is empty")

    def indices(seed: int, step: int, batch_size: int) -> np.ndarray:
        return batch_indices(seed, step, batch_size, size)

    def batch(seed: int, step: int, batch_size: int) -> Tuple[Array, Optional[Array]]:
        idx = indices(seed, step, batch_size)
        return jnp.asarray(data.images[idx]), jnp.asarray(data.labels[idx])

    return Dataset("digits", tuple(data.images.shape[1:]), 10, size, batch, indices,
                   arrays=(data.images, data.labels), eval_arrays=_digits_heldout(kwargs))


def _digits_heldout(kwargs: Dict[str, Any]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The test split of the same holdout/seed when the training split is "train", else None."""
    if kwargs.get("split", "train") != "train":
        return None
    test = load_digits_dataset(**{**kwargs, "split": "test"})
    return (test.images, test.labels) if len(test.labels) else None


def _clusters_mix_dataset(clean: int = 4, noisy: int = 2, redundant: int = 2, cluster_size: int = 256,
                          dim: int = 16, num_classes: int = 4, spread: float = 1.0, prototypes: int = 4,
                          eval_size: int = 2048, seed: int = 0) -> Dataset:
    """A classification mixture whose per-cluster utility is known by construction (for data
    selection, e.g. LEAD).  Labels follow a fixed random linear teacher, y = argmax(W x)
    (W ~ N(0, 1)^(num_classes x dim)); cluster k is a Gaussian blob N(c_k, spread^2 I) around
    c_k ~ N(0, I) (so the teacher's boundaries cut through every blob).  Clusters are stored
    contiguously -- example i is in cluster ``i // cluster_size`` -- in the order: ``clean``
    clusters (teacher labels), ``noisy`` clusters (labels uniformly random: uninformative),
    ``redundant`` clusters (``prototypes`` points of the blob, each repeated with noise
    0.01 * spread: near-duplicates, teacher labels).  ``eval_arrays``: ``eval_size`` fresh
    points from every cluster's blob (equally often) with teacher labels.  All from
    ``numpy.random.default_rng(seed)``."""
    counts = dict(clean=_int("clean", clean, 0), noisy=_int("noisy", noisy, 0),
                  redundant=_int("redundant", redundant, 0))
    n_clusters = sum(counts.values())
    m, d, c = _int("cluster_size", cluster_size, 1), _int("dim", dim, 1), _int("num_classes", num_classes, 2)
    reps, n_eval = _int("prototypes", prototypes, 1), _int("eval_size", eval_size, 1)
    if n_clusters < 1 or m % reps or not float(spread) > 0:
        raise ValueError(f"make_dataset('clusters_mix'): need clean + noisy + redundant >= 1 (got {counts}), "
                         f"prototypes dividing cluster_size (got {reps}, {m}) and spread > 0 (got {spread!r})")
    rng = np.random.default_rng(_int("seed", seed, 0))
    teacher = rng.normal(size=(c, d))
    centres = rng.normal(size=(n_clusters, d))
    xs, ys = [], []
    for k in range(n_clusters):
        if k < counts["clean"] + counts["noisy"]:
            x = centres[k] + spread * rng.normal(size=(m, d))
        else:
            x = np.repeat(centres[k] + spread * rng.normal(size=(reps, d)), m // reps, axis=0)
            x = x + 0.01 * spread * rng.normal(size=(m, d))
        noisy_k = counts["clean"] <= k < counts["clean"] + counts["noisy"]
        xs.append(x)
        ys.append(rng.integers(0, c, m) if noisy_k else np.argmax(x @ teacher.T, axis=1))
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int32)
    xe = (centres[rng.integers(0, n_clusters, n_eval)] + spread * rng.normal(size=(n_eval, d))).astype(np.float32)
    ye = np.argmax(xe @ teacher.T, axis=1).astype(np.int32)
    size = int(y.shape[0])

    def indices(seed: int, step: int, batch_size: int) -> np.ndarray:
        return batch_indices(seed, step, batch_size, size)

    def batch(seed: int, step: int, batch_size: int) -> Tuple[Array, Optional[Array]]:
        idx = indices(seed, step, batch_size)
        return jnp.asarray(x[idx]), jnp.asarray(y[idx])

    return Dataset("clusters_mix", (d,), c, size, batch, indices, arrays=(x, y), eval_arrays=(xe, ye))


# --- token sequences (masked diffusion) -----------------------------------------------------
#: scikit-learn's digits as tokens: the raw pixel intensity 0..16 of each of the 64 pixels
DIGITS_TOKEN_VOCAB = 17


def digits_tokens(images) -> np.ndarray:
    """Digits images in [-1, 1] (N, 8, 8, 1) (:func:`load_digits_dataset`) -> int32 tokens
    (N, 64): the intensities 0..16, row-major (exactly p / 8 - 1 inverted)."""
    x = np.rint((np.asarray(images, np.float64).reshape(len(images), -1) + 1.0) * 8.0)
    return np.clip(x, 0, DIGITS_TOKEN_VOCAB - 1).astype(np.int32)


def tokens_to_digits(tokens) -> np.ndarray:
    """Inverse of :func:`digits_tokens`: int tokens (N, 64) in 0..16 -> images (N, 8, 8, 1) in [-1, 1]."""
    t = np.asarray(tokens)
    return (t.astype(np.float32) / 8.0 - 1.0).reshape(len(t), 8, 8, 1)


def _digits_tokens_dataset(**kwargs: Any) -> Dataset:
    base = _digits_dataset(**kwargs)
    data = load_digits_dataset(**kwargs)
    tokens = digits_tokens(data.images)
    tokens.setflags(write=False)

    def batch(seed: int, step: int, batch_size: int) -> Tuple[Array, Optional[Array]]:
        idx = base.indices(seed, step, batch_size)
        return jnp.asarray(tokens[idx]), jnp.asarray(data.labels[idx])

    held = base.eval_arrays
    return Dataset("digits_tokens", (tokens.shape[1],), 10, base.size, batch, base.indices, DIGITS_TOKEN_VOCAB,
                   arrays=(tokens, data.labels),
                   eval_arrays=None if held is None else (digits_tokens(held[0]), held[1]))


def _chain_tokens_dataset(problem: str) -> Dataset:
    """Exact samples of a discrete problem (samplax.discrete.exact, an HMM / Markov chain):
    the batch at step k is ``true_samples(hmm, fold_in(PRNGKey(seed), k), batch_size)``."""
    from samplax.discrete.exact import load_problem as load_discrete_problem, true_samples

    hmm = load_discrete_problem(problem)
    draw = jax.jit(functools.partial(true_samples, hmm), static_argnums=1)

    def batch(seed: int, step: int, batch_size: int) -> Tuple[Array, Optional[Array]]:
        batch_size = _check_step(seed, step, batch_size)
        return draw(jax.random.fold_in(jax.random.PRNGKey(seed), step), batch_size).astype(jnp.int32), None

    return Dataset(problem + "_tokens", (int(hmm.length),), 0, None, batch, None, int(hmm.vocab_size))


def _lm_tokens_dataset(lm_name: str) -> Dataset:
    """Exact samples of the exact language model ``samplax.decoding.exact.load_lm(lm_name)``
    drawn by ancestral decoding (``samplax.decoding.sample``, untransformed): the batch at step
    k is ``sample(lm, sample_keys(fold_in(PRNGKey(seed), k), batch_size))``.  (Imported when
    built: the decoding layer sits above this module.)"""
    from samplax.decoding.base import sample
    from samplax.decoding.exact import load_lm
    from samplax.discrete.base import sample_keys

    lm = load_lm(lm_name)
    draw = jax.jit(lambda key, n: sample(lm, sample_keys(key, n))[0], static_argnums=1)

    def batch(seed: int, step: int, batch_size: int) -> Tuple[Array, Optional[Array]]:
        batch_size = _check_step(seed, step, batch_size)
        return draw(jax.random.fold_in(jax.random.PRNGKey(seed), step), batch_size).astype(jnp.int32), None

    return Dataset(lm_name + "_lm", (int(lm.length),), 0, None, batch, None, int(lm.vocab_size))


#: the exact language models of samplax.decoding.exact whose samples are token data sets "<name>_lm"
LM_TOKEN_NAMES = ("markov4x8", "hmm8x5", "markov16x4")

#: name -> builder(**kwargs) -> Dataset.  Keyword arguments: the sampler's (e.g.
#: ``noise``, ``squares``, ``n_rings``) for the toys, none for the mixtures, and
#: :func:`load_digits_dataset`'s (``split``, ``holdout_fraction``, ``seed`` -- the
#: split's seed, not the data-order seed) for "digits".
DATASETS: Dict[str, Callable[..., Dataset]] = {
    "two_moons": functools.partial(_generator_dataset, "two_moons", two_moons),
    "checkerboard": functools.partial(_generator_dataset, "checkerboard", checkerboard),
    "swiss_roll": functools.partial(_generator_dataset, "swiss_roll", swiss_roll),
    "rings": functools.partial(_generator_dataset, "rings", rings),
    "gmm2d": functools.partial(_gmm_dataset, "gmm2d"),
    "gmm64d": functools.partial(_gmm_dataset, "gmm64d"),
    "digits": _digits_dataset,
    "clusters_mix": _clusters_mix_dataset,
}
#: the token data sets, name -> builder(**kwargs) -> Dataset (int32 sequences, vocab_size > 0; trained with
#: loss.objective="masked"); kept apart from the real-valued DATASETS, which the continuous runs list
TOKEN_DATASETS: Dict[str, Callable[..., Dataset]] = {
    "digits_tokens": _digits_tokens_dataset,
    "markov4x8_tokens": functools.partial(_chain_tokens_dataset, "markov4x8"),
    "hmm8x5_tokens": functools.partial(_chain_tokens_dataset, "hmm8x5"),
    "markov16x4_tokens": functools.partial(_chain_tokens_dataset, "markov16x4"),
    **{f"{n}_lm": functools.partial(_lm_tokens_dataset, n) for n in LM_TOKEN_NAMES},
}


def make_dataset(name: str, **kwargs: Any) -> Dataset:
    """The :class:`Dataset` registered as ``name`` in :data:`DATASETS` or :data:`TOKEN_DATASETS`,
    built with ``kwargs``."""
    registry = DATASETS if name in DATASETS else TOKEN_DATASETS
    if name not in registry:
        raise ValueError(f"make_dataset: unknown dataset {name!r}; allowed: {list(DATASETS) + list(TOKEN_DATASETS)}")
    if name in ("gmm2d", "gmm64d") + tuple(TOKEN_DATASETS)[1:] and kwargs:
        raise ValueError(f"make_dataset({name!r}): takes no keyword arguments, got {sorted(kwargs)}")
    return registry[name](**kwargs)


__all__ = [
    "two_moons", "checkerboard", "swiss_roll", "rings", "ring_radii", "gmm_samples",
    "Digits", "load_digits_dataset", "epoch_permutation", "batch_indices",
    "Dataset", "DATASETS", "make_dataset", "TOKEN_DATASETS", "LM_TOKEN_NAMES", "DIGITS_TOKEN_VOCAB", "digits_tokens",
    "tokens_to_digits",
    "TWO_MOONS_OFFSET", "TWO_MOONS_SCALE", "CHECKERBOARD_HALF_WIDTH", "SWISS_ROLL_T_RANGE",
    "SWISS_ROLL_SCALE", "RINGS_OUTER_RADIUS", "DIGITS_SIZE", "DIGITS_SPLITS",
]
