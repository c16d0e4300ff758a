"""The digits classifier (samplax.models.classifier): accuracy on the held-out split,
the on-disk cache, and the sanity of the Frechet distance on its features.

The classifier of the default configuration is trained once per test run: a module
fixture trains it into the reference cache shared by the pytest-xdist workers (under
the cache's file lock, so another worker -- or the digits runner test -- loads the
first one's files instead of training again); a test checks the lock."""
import fcntl
import json
import os
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from samplax.data import load_digits_dataset
from samplax.metrics import frechet_distance, frechet_distance_features, gaussian_statistics
from samplax.models import classifier as clf

STEPS = 1500  # the default: test accuracy 0.978 (seed 0), ~15 s on 2 CPU cores


@pytest.fixture(scope="module")
def trained():
    """(params, info, cache_dir) of the default classifier (seed 0, 1500 steps)."""
    from samplax.experiment.cache import cache_dir as reference_cache
    # the runner's reference cache (tests/conftest.py points it into the work tree): the digits
    # FD tests then load this classifier instead of training it again
    cache_dir = Path(reference_cache())
    params, info = clf.load_or_train_digits_classifier(str(cache_dir), seed=0, steps=STEPS)
    return params, info, str(cache_dir)


def _leaves_bitwise_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_classifier_accuracy_on_the_held_out_split(trained):
    params, info, _ = trained
    test = load_digits_dataset("test")
    acc = clf.digits_accuracy(params, test.images, test.labels)
    print(f"\ndigits classifier: test accuracy {acc:.4f}, train accuracy {info['train_accuracy']:.4f}, "
          f"trained in {info['train_seconds']:.1f} s")
    assert acc == pytest.approx(info["test_accuracy"], abs=1e-12)
    assert acc >= 0.95
    assert info["steps"] == STEPS and info["seed"] == 0
    assert info["config"]["holdout_fraction"] == 0.2 and info["config"]["features"] == 64


def test_features_shapes_and_inputs(trained):
    params = trained[0]
    x = load_digits_dataset("test").images[:37]
    f = clf.digits_features(params, x)
    assert f.shape == (37, 64) and f.dtype == np.float64
    assert np.all(f >= 0)  # the relu feature layer
    # flat (N, 64) inputs, other batch sizes, and padding of the last batch give the same features
    np.testing.assert_array_equal(clf.digits_features(params, x.reshape(37, 64), batch=37), f)
    np.testing.assert_allclose(clf.digits_features(params, x, batch=8), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(clf.digits_predict(params, x).shape, (37,))
    for bad in (np.zeros((3, 8, 8, 2)), np.zeros((0, 8, 8, 1)), np.zeros(64)):
        with pytest.raises(ValueError, match="8, 8, 1"):
            clf.digits_features(params, bad)


def test_cache_round_trip_is_bitwise_and_does_not_retrain(tmp_path, monkeypatch):
    """A short run (20 steps) trained into an empty cache, then loaded: the same bits
    (params and features) and the same info, with training disabled; a different setting
    has a different file; a caller blocks while another holds the cache's lock, then loads
    its files; a missing info file means retraining."""
    kwargs = dict(seed=3, steps=20, batch_size=32, learning_rate=2e-3)
    params, info = clf.load_or_train_digits_classifier(str(tmp_path), **kwargs)
    files = sorted(f for f in os.listdir(tmp_path) if not f.endswith(".lock"))  # (+ the empty lock file)
    assert len(files) == 2 and files[0].startswith("digits_classifier_seed3_steps20_")
    assert {os.path.splitext(f)[1] for f in files} == {".json", ".msgpack"}
    x = load_digits_dataset("test").images

    def no_training(*a, **k):
        raise AssertionError("retrained although the cache holds this classifier")

    monkeypatch.setattr(clf, "train_digits_classifier", no_training)
    params2, info2 = clf.load_or_train_digits_classifier(str(tmp_path), **kwargs)
    _leaves_bitwise_equal(params2, params)
    assert clf.digits_features(params2, x).tobytes() == clf.digits_features(params, x).tobytes()
    assert info2 == json.loads(json.dumps(info))
    # every setting is in the key: another one misses the cache (and would train)
    for other in (dict(kwargs, learning_rate=1e-3), dict(kwargs, batch_size=64), dict(kwargs, features=32),
                  dict(kwargs, holdout_fraction=0.25), dict(kwargs, noise_std=0.0), dict(kwargs, seed=4)):
        with pytest.raises(AssertionError, match="retrained"):
            clf.load_or_train_digits_classifier(str(tmp_path), **other)
    with pytest.raises(TypeError, match="unknown"):
        clf.load_or_train_digits_classifier(str(tmp_path), **kwargs, dropout=0.1)
    # another caller waits while one holds the lock (training, its files not yet written),
    # then loads that one's files instead of training again
    (json_name,) = [f for f in files if f.endswith(".json")]
    saved = (tmp_path / json_name).read_bytes()
    os.unlink(tmp_path / json_name)
    out = []
    with open(tmp_path / (os.path.splitext(files[1])[0] + ".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: out.append(clf.load_or_train_digits_classifier(str(tmp_path),
                                                                                                **kwargs)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not out  # blocked on the lock
        (tmp_path / json_name).write_bytes(saved)  # the holder writes its files, then unlocks
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(timeout=60)
    assert out, "the waiting caller failed (trained again?)"
    _leaves_bitwise_equal(out[0][0], params)
    # a params file without its info file is not trusted
    os.unlink(os.path.join(tmp_path, [f for f in files if f.endswith(".json")][0]))
    with pytest.raises(AssertionError, match="retrained"):
        clf.load_or_train_digits_classifier(str(tmp_path), **kwargs)


def test_training_is_deterministic():
    """Same arguments, same bits (the data order and augmentation are pure functions of the seed)."""
    p1, i1 = clf.train_digits_classifier(seed=1, steps=10, batch_size=16)
    p2, i2 = clf.train_digits_classifier(seed=1, steps=10, batch_size=16)
    _leaves_bitwise_equal(p1, p2)
    assert i1["final_loss"] == i2["final_loss"]
    with pytest.raises(ValueError, match="steps"):
        clf.train_digits_classifier(steps=0)


def test_frechet_distance_on_classifier_features(trained):
    """FD(train split, test split) -- the floor of a perfect generator, which sees the
    train split's distribution -- is far below FD(test, uniform noise) and FD(test, one
    class only); FD(test, test) = 0; noisy test images lie in between, increasing with
    the noise."""
    params = trained[0]
    train, test = load_digits_dataset("train"), load_digits_dataset("test")
    ref = clf.digits_reference_statistics(params, "test")
    f_test = clf.digits_features(params, test.images)
    mu, cov = gaussian_statistics(f_test)
    np.testing.assert_array_equal(ref[0], mu)
    np.testing.assert_array_equal(ref[1], cov)
    assert frechet_distance_features(f_test, f_test) <= 1e-10 * np.trace(cov)
    assert clf.digits_fd(params, test.images) <= 1e-10 * np.trace(cov)

    rng = np.random.default_rng(0)
    fd_floor = clf.digits_fd(params, train.images, "test")
    assert fd_floor == pytest.approx(clf.digits_fd(params, train.images, ref), rel=1e-12)
    fd_noise = clf.digits_fd(params, rng.uniform(-1, 1, size=test.images.shape).astype(np.float32))
    all_ = load_digits_dataset("all")
    fd_class = {c: clf.digits_fd(params, all_.images[all_.labels == c], ref) for c in range(10)}
    noisy = {s: clf.digits_fd(params, test.images + s * rng.standard_normal(test.images.shape), ref)
             for s in (0.05, 0.1, 0.2, 0.4)}
    print(f"\nFD to the test split: train split {fd_floor:.3f}; uniform noise {fd_noise:.1f}; single class "
          + ", ".join(f"{c}: {v:.1f}" for c, v in fd_class.items())
          + "; test + Gaussian noise " + ", ".join(f"std {s}: {v:.3f}" for s, v in noisy.items())
          + f"; tr(cov_test) {np.trace(cov):.1f}")
    assert fd_floor < 0.1 * fd_noise
    assert fd_floor < 0.1 * min(fd_class.values())
    assert min(fd_class.values()) < fd_noise
    assert noisy[0.05] < noisy[0.1] < noisy[0.2] < noisy[0.4] < fd_noise
    assert np.isnan(clf.digits_fd(params, test.images.copy() * np.nan))
    # the float64 Frechet distance is symmetric up to round-off
    g = gaussian_statistics(clf.digits_features(params, train.images))
    assert frechet_distance(*g, *ref) == pytest.approx(frechet_distance(*ref, *g), rel=1e-9)
