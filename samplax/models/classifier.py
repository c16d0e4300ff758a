"""A small CNN classifier of the 8x8 digits, whose penultimate layer gives the
features of an FID-style Frechet distance for digits samples.

* :class:`DigitsClassifier`: conv3x3(32)-relu-conv3x3(64)-relu-avgpool2 -> flatten ->
  Dense(features)-relu (the *feature layer*) -> Dense(10) logits, for (B, 8, 8, 1)
  images in [-1, 1] (:func:`samplax.data.load_digits_dataset`).
* :func:`train_digits_classifier`: optax AdamW with a cosine-decayed learning rate on
  the "train" split, the data order from :func:`samplax.data.batch_indices` and a
  noise augmentation from ``PRNGKey(seed)`` (so a run is a pure function of its
  arguments), evaluated on the held-out "test" split.
* :func:`load_or_train_digits_classifier`: the same, cached on disk
  (flax msgpack + a JSON info file, written atomically) under a name that holds a
  hash of every setting that changes the classifier.
* :func:`digits_features`, :func:`digits_reference_statistics`, :func:`digits_fd`:
  features (float64 numpy), the Gaussian statistics of a split's features, and the
  Frechet distance of generated samples to a split (:mod:`samplax.metrics`).

Augmentation.  Each training image gets isotropic Gaussian pixel noise whose std is
drawn uniformly in [0, ``noise_std``] per image (default 0.1, i.e. up to 5% of the
[-1, 1] range), so that the features -- and hence the FD -- of slightly noisy
generated samples stay close to those of clean digits of the same content, instead
of reacting mostly to the noise (a classifier trained only on clean images never
saw it).  Measured, the effect is small -- this CNN is fairly noise-robust anyway: FD of
the test images plus noise of std 0.1 / 0.2 to the clean test images is 0.36 / 2.9
without the augmentation and 0.36 / 2.8 with it, at the same test accuracy (0.978);
it is kept as a cheap safeguard.  Optional random shifts by up to ``max_shift`` pixels (default 0: off --
on 8x8 images a 1-pixel shift is an eighth of the image, and features invariant to
it would make the FD blind to mis-centred samples).  Evaluation never augments.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Dict, Tuple, Union

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from samplax.data import batch_indices, load_digits_dataset
from samplax.io import atomic_write_bytes, atomic_write_json, is_local
from samplax.metrics import frechet_distance, gaussian_statistics

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
#: bump when the architecture or the training procedure changes (part of the cache key)
CLASSIFIER_VERSION = 1


class DigitsClassifier(nn.Module):
    """CNN for (B, 8, 8, 1) digits: conv3x3(32)-relu-conv3x3(64)-relu-avgpool2 (-> 4x4x64)
    -> flatten -> Dense(features)-relu (the feature layer) -> Dense(10) logits.
    ``__call__(x, return_features=False)``: logits (B, 10), or the features (B, features)."""

    features: int = 64

    @nn.compact
    def __call__(self, x, return_features: bool = False):
        h = nn.relu(nn.Conv(32, (3, 3), padding="SAME", name="conv1")(x))
        h = nn.relu(nn.Conv(64, (3, 3), padding="SAME", name="conv2")(h))
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = h.reshape(h.shape[0], -1)
        f = nn.relu(nn.Dense(self.features, name="feature")(h))
        if return_features:
            return f
        return nn.Dense(NUM_CLASSES, name="head")(f)


class MLPClassifier(nn.Module):
    """Logits (B, num_classes) of an MLP on the flattened input (B, ...): Dense-gelu per hidden size."""

    hidden: tuple = (128, 128)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        h = x.reshape(x.shape[0], -1).astype(jnp.float32)
        for i, width in enumerate(self.hidden):
            h = nn.gelu(nn.Dense(width, name=f"dense{i}")(h))
        return nn.Dense(self.num_classes, name="head")(h)


def _features_of(params) -> int:
    return int(params["feature"]["kernel"].shape[-1])


@jax.jit
def _apply(params, x):
    return DigitsClassifier(features=_features_of(params)).apply({"params": params}, x)


@jax.jit
def _apply_features(params, x):
    return DigitsClassifier(features=_features_of(params)).apply({"params": params}, x, return_features=True)


def init_digits_classifier(key, features: int = 64):
    """Freshly initialised parameters (the ``params`` collection) of a DigitsClassifier."""
    return DigitsClassifier(features=features).init(key, jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32))["params"]


def _as_images(name: str, x) -> jnp.ndarray:
    """(N, 8, 8, 1) float32 from any (N, ...) array of 64 values per example."""
    a = jnp.asarray(x, jnp.float32)
    if a.ndim < 1 or a.shape[0] < 1 or int(np.prod(a.shape[1:])) != 64:
        raise ValueError(f"{name}: expected (N, 8, 8, 1) digits (or any (N, ...) shape with 64 values per "
                         f"example, e.g. (N, 64)), N >= 1, got shape {a.shape}")
    return a.reshape((a.shape[0],) + IMAGE_SHAPE)


def _batched(fn, params, x, batch: int) -> np.ndarray:
    """fn(params, chunk) over chunks of ``batch`` rows (the last padded, so one compile
    per batch size); concatenated as a numpy array."""
    n = x.shape[0]
    bsz = max(1, min(int(batch), n))
    out = []
    for start in range(0, n, bsz):
        chunk = x[start:start + bsz]
        m = chunk.shape[0]
        if m < bsz:
            chunk = jnp.concatenate([chunk, jnp.zeros((bsz - m,) + chunk.shape[1:], chunk.dtype)])
        out.append(np.asarray(fn(params, chunk))[:m])
    return np.concatenate(out)


def digits_features(params, x, batch: int = 1024) -> np.ndarray:
    """Feature-layer activations (N, features) of images x (N, 8, 8, 1) (or (N, 64)),
    as float64 numpy.  Jitted, ``batch`` images at a time.  Inputs are used as given
    (no clipping to [-1, 1]); an image holding NaN or inf gets NaN features (so the FD
    of a diverged sampler is NaN)."""
    x = _as_images("digits_features", x)
    f = _batched(_apply_features, params, x, batch).astype(np.float64)
    # relu maps NaN to 0 on some backends: keep a non-finite image visible as NaN features
    bad = ~np.isfinite(np.asarray(x)).reshape(x.shape[0], -1).all(axis=1)
    f[bad] = np.nan
    return f


def digits_predict(params, x, batch: int = 1024) -> np.ndarray:
    """Predicted classes (N,) int of images x (N, 8, 8, 1) (or (N, 64))."""
    x = _as_images("digits_predict", x)
    return _batched(_apply, params, x, batch).argmax(-1)


def digits_accuracy(params, images, labels) -> float:
    return float(np.mean(digits_predict(params, images) == np.asarray(labels)))


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def _augment(key, x, noise_std, max_shift: int):
    b = x.shape[0]
    k_shift, k_std, k_eps = jax.random.split(key, 3)
    if max_shift > 0:
        s = max_shift
        padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), constant_values=-1.0)  # background is -1
        offs = jax.random.randint(k_shift, (b, 2), 0, 2 * s + 1)
        x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), IMAGE_SHAPE))(padded, offs)
    std = noise_std * jax.random.uniform(k_std, (b, 1, 1, 1), x.dtype)
    return x + std * jax.random.normal(k_eps, x.shape, x.dtype)


def _optimizer(learning_rate, weight_decay, steps):
    """AdamW with the learning rate cosine-decayed from ``learning_rate`` (step 0) to 0 (step
    ``steps``); the arguments may be traced, so one compiled step serves every setting."""
    def schedule(count):
        frac = jnp.minimum(count / steps, 1.0)
        return learning_rate * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return optax.adamw(schedule, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("max_shift",), donate_argnums=(0, 1))
def _train_step(params, opt_state, images, labels, bidx, key, step, hyper, max_shift):
    """One AdamW step on the batch images[bidx] (augmented with fold_in(key, step));
    ``hyper`` = (learning_rate, weight_decay, steps, noise_std) float32 scalars."""
    learning_rate, weight_decay, steps, noise_std = hyper
    model = DigitsClassifier(features=_features_of(params))
    tx = _optimizer(learning_rate, weight_decay, steps)

    def loss_fn(p):
        x = _augment(jax.random.fold_in(key, step), images[bidx], noise_std, max_shift)
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[bidx]).mean()

    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _config(seed, steps, batch_size, learning_rate, features, weight_decay, noise_std, max_shift,
            holdout_fraction, split_seed) -> Dict[str, Any]:
    return dict(model="DigitsClassifier", version=CLASSIFIER_VERSION, seed=int(seed), steps=int(steps),
                batch_size=int(batch_size), learning_rate=float(learning_rate), features=int(features),
                weight_decay=float(weight_decay), noise_std=float(noise_std), max_shift=int(max_shift),
                holdout_fraction=float(holdout_fraction), split_seed=int(split_seed))


def train_digits_classifier(seed: int = 0, steps: int = 1500, batch_size: int = 128, learning_rate: float = 1e-3,
                            *, features: int = 64, weight_decay: float = 1e-4, noise_std: float = 0.1,
                            max_shift: int = 0, holdout_fraction: float = 0.2, split_seed: int = 0
                            ) -> Tuple[Any, Dict[str, Any]]:
    """Train a :class:`DigitsClassifier` on ``load_digits_dataset("train", holdout_fraction,
    split_seed)``; returns ``(params, info)``.

    AdamW (``weight_decay``) with the learning rate cosine-decayed from ``learning_rate``
    to 0 over ``steps``; cross-entropy; the batch at step k is
    ``batch_indices(seed, k, batch_size, n_train)``; the initialisation and the
    augmentation (see the module docstring) come from ``PRNGKey(seed)``.  ``info`` holds
    ``test_accuracy`` (the held-out "test" split), ``train_accuracy`` (clean train
    images), ``steps``, ``seed``, ``final_loss`` (mean training loss of the last 10%
    of steps), ``train_seconds`` and ``config`` (every setting, as in the cache key).
    """
    for name, v, lo in (("seed", seed, 0), ("steps", steps, 1), ("batch_size", batch_size, 1),
                        ("features", features, 1), ("max_shift", max_shift, 0), ("split_seed", split_seed, 0)):
        if isinstance(v, bool) or int(v) != v or v < lo:
            raise ValueError(f"train_digits_classifier: {name} must be an integer >= {lo}, got {v!r}")
    if not (learning_rate > 0 and weight_decay >= 0 and noise_std >= 0):
        raise ValueError(f"train_digits_classifier: need learning_rate > 0, weight_decay >= 0, noise_std >= 0, "
                         f"got {learning_rate!r}, {weight_decay!r}, {noise_std!r}")
    config = _config(seed, steps, batch_size, learning_rate, features, weight_decay, noise_std, max_shift,
                     holdout_fraction, split_seed)
    t0 = time.perf_counter()
    train = load_digits_dataset("train", holdout_fraction, split_seed)
    test = load_digits_dataset("test", holdout_fraction, split_seed)
    n = train.labels.shape[0]
    k_init, k_aug = jax.random.split(jax.random.PRNGKey(seed))
    params = init_digits_classifier(k_init, features)
    hyper = tuple(jnp.asarray(v, jnp.float32) for v in (learning_rate, weight_decay, steps, noise_std))
    opt_state = _optimizer(*hyper[:3]).init(params)
    images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)
    # A Python loop of jitted steps: XLA:CPU runs these convolutions ~70x slower inside a
    # lax.scan (while loop) body than in a top-level computation.
    losses = []
    for k in range(steps):
        bidx = jnp.asarray(batch_indices(seed, k, batch_size, n), jnp.int32)
        params, opt_state, loss = _train_step(params, opt_state, images, labels, bidx, k_aug,
                                              jnp.asarray(k, jnp.int32), hyper, int(max_shift))
        losses.append(loss)
    losses = np.asarray(losses)
    info = dict(
        test_accuracy=digits_accuracy(params, test.images, test.labels),
        train_accuracy=digits_accuracy(params, train.images, train.labels),
        steps=int(steps), seed=int(seed),
        final_loss=float(losses[-max(1, steps // 10):].mean()),
        train_seconds=time.perf_counter() - t0,
        config=config,
    )
    return params, info


def _cache_paths(cache_dir: str, config: Dict[str, Any]) -> Tuple[str, str]:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    stem = os.path.join(cache_dir, f"digits_classifier_seed{config['seed']}_steps{config['steps']}_{digest}")
    return stem + ".msgpack", stem + ".json"


def load_or_train_digits_classifier(cache_dir: str, seed: int = 0, steps: int = 1500, batch_size: int = 128,
                                    learning_rate: float = 1e-3, **kwargs) -> Tuple[Any, Dict[str, Any]]:
    """:func:`train_digits_classifier` cached under ``cache_dir``.

    Files: ``digits_classifier_seed{seed}_steps{steps}_{hash}.msgpack`` (the params,
    ``flax.serialization.to_bytes``) and the matching ``.json`` (the info), where
    ``hash`` is a SHA-256 prefix of every setting (``kwargs`` are those of
    :func:`train_digits_classifier`: features, weight_decay, noise_std, max_shift,
    holdout_fraction, split_seed; plus :data:`CLASSIFIER_VERSION`).  When both exist and
    the JSON's config matches, the params are restored into a freshly initialised
    structure (no training); otherwise the classifier is trained and both files are
    written atomically (params first, so a present JSON implies complete params).  In a
    local ``cache_dir`` an exclusive ``fcntl.flock`` on ``<stem>.lock`` is held meanwhile:
    concurrent callers (pytest-xdist workers, parallel runs) train it once, the others
    wait and load it.
    """
    defaults = dict(features=64, weight_decay=1e-4, noise_std=0.1, max_shift=0, holdout_fraction=0.2, split_seed=0)
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"load_or_train_digits_classifier: unknown arguments {sorted(unknown)}; "
                        f"allowed: {sorted(defaults)}")
    settings = {**defaults, **kwargs}
    config = _config(seed, steps, batch_size, learning_rate, **settings)
    params_path, info_path = _cache_paths(cache_dir, config)

    def train():
        return train_digits_classifier(seed, steps, batch_size, learning_rate, **settings)

    if not is_local(cache_dir):
        return _load_or_train(config, params_path, info_path, train)
    # one process trains, the others wait for its files (parallel test workers, sweeps)
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.splitext(params_path)[0] + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _load_or_train(config, params_path, info_path, train)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load_or_train(config: Dict[str, Any], params_path: str, info_path: str, train: Callable
                   ) -> Tuple[Any, Dict[str, Any]]:
    if os.path.exists(params_path) and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("config") == config:
            template = init_digits_classifier(jax.random.PRNGKey(0), config["features"])
            with open(params_path, "rb") as f:
                restored = flax.serialization.from_bytes(template, f.read())
            shapes = jax.tree_util.tree_map(np.shape, restored)
            if shapes == jax.tree_util.tree_map(np.shape, template):
                return jax.tree_util.tree_map(jnp.asarray, restored), info
    params, info = train()
    atomic_write_bytes(params_path, flax.serialization.to_bytes(params))
    atomic_write_json(info_path, info)
    return params, info


# ---------------------------------------------------------------------------------------
# Frechet distance of digits samples
# ---------------------------------------------------------------------------------------
def digits_reference_statistics(params, split: str = "test", holdout_fraction: float = 0.2, split_seed: int = 0
                                ) -> Tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) float64 of the classifier features of a digits split
    ("train", "test" or "all"; :func:`samplax.metrics.gaussian_statistics`)."""
    data = load_digits_dataset(split, holdout_fraction, split_seed)
    return gaussian_statistics(digits_features(params, data.images))


def digits_fd(params, samples, reference: Union[str, Tuple[np.ndarray, np.ndarray]] = "test",
              holdout_fraction: float = 0.2, split_seed: int = 0) -> float:
    """Frechet distance between the classifier features of ``samples`` (N, 8, 8, 1) (or
    (N, 64)), N >= 2, and those of a reference: a split name ("test": the held-out
    images, "train", "all") or precomputed ``(mean, cov)``
    (:func:`digits_reference_statistics`).  NaN if the samples hold NaN/inf.

    The estimate is biased upwards at finite sample sizes (the Gaussians are fitted to
    N and 359 points in 64-D), so compare generators at equal N, against the floor of
    real digits at that N.  With the default classifier (seed 0, 1500 steps, test
    accuracy 0.978): the 1,438 train images score 2.46 against the test split, random
    359-image subsets of them 5-10, the test images plus Gaussian noise of std 0.1 / 0.2
    / 0.4 score 0.28 / 2.7 / 31, a single class 510-1330, uniform noise in [-1, 1] 770.
    """
    if isinstance(reference, str):
        mu_r, cov_r = digits_reference_statistics(params, reference, holdout_fraction, split_seed)
    else:
        mu_r, cov_r = reference
    return frechet_distance(*gaussian_statistics(digits_features(params, samples)), mu_r, cov_r)


__all__ = [
    "DigitsClassifier", "init_digits_classifier", "train_digits_classifier", "load_or_train_digits_classifier",
    "digits_features", "digits_predict", "digits_accuracy", "digits_reference_statistics", "digits_fd",
]
