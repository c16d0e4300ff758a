"""samplax.data: toy distributions with known geometry, exact mixture samples,
the digits split, and the deterministic, resumable data order."""
import math

import jax
import numpy as np
import pytest

import samplax
from samplax import data as D

KEY = jax.random.PRNGKey(0)
N = 20000  # one sample size for the toys: eager ops compile once per shape


# --- toys ----------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [D.two_moons, D.checkerboard, D.swiss_roll, D.rings])
def test_toy_shape_dtype_and_jit(fn):
    x = fn(KEY, N)
    assert x.shape == (N, 2) and x.dtype == np.float32
    assert np.all(np.isfinite(np.asarray(x)))
    xj = jax.jit(fn, static_argnums=1)(KEY, N)
    np.testing.assert_allclose(np.asarray(xj), np.asarray(x), atol=1e-5)
    # roughly unit scale (fixed constants, documented per sampler)
    big = np.asarray(x)
    assert np.all(np.abs(big) < 2.0) and np.all((big.std(0) > 0.3) & (big.std(0) < 1.2))


def _moon_distances(x):
    """Distances (n, 2) of points in native coordinates to the upper and lower moon arcs."""
    def arc(q, upper):
        on_side = q[:, 1] >= 0 if upper else q[:, 1] <= 0
        d_circle = np.abs(np.linalg.norm(q, axis=1) - 1.0)
        d_ends = np.minimum(np.hypot(q[:, 0] - 1, q[:, 1]), np.hypot(q[:, 0] + 1, q[:, 1]))
        return np.where(on_side, d_circle, d_ends)

    return np.stack([arc(x, True), arc(x - np.array([1.0, 0.5]), False)], 1)


def test_two_moons_geometry():
    n = N
    clean = np.asarray(D.two_moons(KEY, n, noise=0.0), np.float64) * D.TWO_MOONS_SCALE + D.TWO_MOONS_OFFSET
    d = _moon_distances(clean)
    assert d.min(1).max() < 1e-5
    frac_upper = np.mean(d[:, 0] < d[:, 1])
    assert abs(frac_upper - 0.5) < 0.02  # std 0.0035
    # with noise: distance to the nearest arc is of the order of the noise
    sigma = 0.05
    noisy = np.asarray(D.two_moons(KEY, n, noise=sigma), np.float64) * D.TWO_MOONS_SCALE + D.TWO_MOONS_OFFSET
    mean_d = _moon_distances(noisy).min(1).mean()
    assert 0.5 * sigma < mean_d < 1.0 * sigma  # ~ sqrt(2/pi) sigma = 0.8 sigma, a little less near the arcs' crossings
    # angles uniform on the upper moon: mean of x_native over the upper moon ~ E[cos t] = 0
    upper = clean[d[:, 0] < d[:, 1]]
    assert abs(upper[:, 0].mean()) < 0.03 and abs(upper[:, 1].mean() - 2 / math.pi) < 0.02


@pytest.mark.parametrize("squares", [4, 5])
def test_checkerboard_black_squares_uniform(squares):
    n = N
    x = np.asarray(D.checkerboard(KEY, n, squares=squares), np.float64)
    assert np.all(np.abs(x) <= D.CHECKERBOARD_HALF_WIDTH + 1e-5)
    native = x * squares / (2 * D.CHECKERBOARD_HALF_WIDTH) + squares / 2
    cells = D._black_cells(squares)
    assert len(cells) == (squares * squares + 1) // 2
    # every point is within float32 rounding of a black (closed) cell
    lo = cells[None, :, :].astype(np.float64)
    gap = np.maximum(0.0, np.maximum(lo - native[:, None, :], native[:, None, :] - (lo + 1)))
    assert np.linalg.norm(gap, axis=-1).min(1).max() < 1e-5
    # ... and the parity of floor(x) + floor(y) is even (bar points within rounding of a grid line)
    f = np.floor(native)
    near_line = np.any(np.abs(native - np.round(native)) < 1e-5, axis=1)
    assert near_line.mean() < 1e-3
    assert np.all((f[~near_line].sum(1) % 2) == 0)
    # black cells used uniformly: chi-square with len(cells) - 1 dof (mean 7 or 12); generous bound
    ij = np.clip(f, 0, squares - 1).astype(int)
    counts = np.bincount(ij[:, 0] * squares + ij[:, 1], minlength=squares * squares)
    used = counts[cells[:, 0] * squares + cells[:, 1]]
    assert used.sum() >= n - 5
    expected = n / len(cells)
    chi2 = np.sum((used - expected) ** 2 / expected)
    assert chi2 < 3 * len(cells) + 30
    # within a cell, positions are uniform: fractional parts have mean 1/2, var 1/12
    frac = native - f
    np.testing.assert_allclose(frac.mean(0), 0.5, atol=0.01)
    np.testing.assert_allclose(frac.var(0), 1 / 12, atol=0.003)
    if squares % 2 == 0:  # the documented scale: each coordinate uniform, std exactly 1
        np.testing.assert_allclose(x.std(0), 1.0, atol=0.02)


def test_checkerboard_noise():
    x0 = np.asarray(D.checkerboard(KEY, N), np.float64)
    x1 = np.asarray(D.checkerboard(KEY, N, noise=0.1), np.float64)
    np.testing.assert_allclose((x1 - x0).std(), 0.1, rtol=0.05)


@pytest.mark.parametrize("n_rings", [2, 3])
def test_rings_radii(n_rings):
    n, sigma = N, 0.03
    radii = D.ring_radii(n_rings)
    np.testing.assert_allclose(radii, D.RINGS_OUTER_RADIUS * np.arange(1, n_rings + 1) / n_rings)
    x = np.asarray(D.rings(KEY, n, n_rings=n_rings, noise=sigma), np.float64)
    r = np.linalg.norm(x, axis=1)
    k = np.argmin(np.abs(r[:, None] - radii[None]), axis=1)
    dev = r - radii[k]
    # radial deviation ~ N(0, sigma^2): mean |dev| = sqrt(2/pi) sigma, nothing beyond ~5 sigma
    assert abs(np.abs(dev).mean() / sigma - math.sqrt(2 / math.pi)) < 0.05
    assert np.abs(dev).max() < 6 * sigma
    np.testing.assert_allclose(np.bincount(k, minlength=n_rings) / n, 1 / n_rings, atol=0.015)
    # angles uniform
    a = np.arctan2(x[:, 1], x[:, 0])
    assert abs(np.cos(a).mean()) < 0.03 and abs(np.sin(a).mean()) < 0.03
    # noise-free: exactly on the rings
    r0 = np.linalg.norm(np.asarray(D.rings(KEY, N, n_rings=n_rings, noise=0.0), np.float64), axis=1)
    assert np.abs(r0[:, None] - radii[None]).min(1).max() < 1e-5


def test_swiss_roll_radius_is_unwrapped_angle():
    n = N
    x = np.asarray(D.swiss_roll(KEY, n, noise=0.0), np.float64) * D.SWISS_ROLL_SCALE
    t_lo, t_hi = D.SWISS_ROLL_T_RANGE
    r = np.linalg.norm(x, axis=1)
    assert r.min() >= t_lo - 1e-4 and r.max() <= t_hi + 1e-4
    # the radius equals the angle modulo 2 pi ...
    theta = np.arctan2(x[:, 1], x[:, 0])
    wrap = np.mod(r - theta + np.pi, 2 * np.pi) - np.pi
    assert np.abs(wrap).max() < 1e-4
    # ... so unwrapping the angle with the turn number recovers the radius; radius ~ U(t_lo, t_hi)
    unwrapped = theta + 2 * np.pi * np.round((r - theta) / (2 * np.pi))
    assert np.corrcoef(r, unwrapped)[0, 1] > 0.999
    np.testing.assert_allclose(np.quantile(r, [0.25, 0.5, 0.75]), t_lo + (t_hi - t_lo) * np.array([0.25, 0.5, 0.75]),
                               atol=0.15)  # 5 standard errors
    # with the default noise the same holds approximately
    xn = np.asarray(D.swiss_roll(KEY, n), np.float64) * D.SWISS_ROLL_SCALE
    rn = np.linalg.norm(xn, axis=1)
    thn = np.arctan2(xn[:, 1], xn[:, 0])
    assert np.corrcoef(rn, thn + 2 * np.pi * np.round((rn - thn) / (2 * np.pi)))[0, 1] > 0.9


# --- Gaussian mixtures --------------------------------------------------------------------------
@pytest.mark.parametrize("problem", ["gmm2d", "gmm64d"])
def test_gmm_moments(problem):
    n = 50000
    gmm, _, _ = samplax.load_problem(problem)
    x, lab = D.gmm_samples(jax.random.PRNGKey(1), n, problem=problem)
    assert x.shape == (n, gmm.dim) and x.dtype == np.float32 and lab.dtype == np.int32
    x = np.asarray(x, np.float64)
    mu, cov = np.asarray(gmm.mean(), np.float64), np.asarray(gmm.covariance(), np.float64)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mu) < 5 * se_mean + 1e-6)
    xc = x - mu  # exact mean: each entry of the covariance estimate is an average of products
    sq = xc**2
    prod_sd = np.sqrt(sq.T @ sq / n - (xc.T @ xc / n) ** 2)
    assert np.all(np.abs(xc.T @ xc / n - cov) < 5.5 * prod_sd / np.sqrt(n) + 1e-6)
    # labels are the components: frequencies match the weights, samples sit near their component's mean
    w = np.asarray(gmm.weights, np.float64)
    freq = np.bincount(np.asarray(lab), minlength=w.size) / n
    assert np.all(np.abs(freq - w) < 5 * np.sqrt(w * (1 - w) / n))
    means = np.asarray(gmm.means, np.float64)
    stds = np.asarray(gmm.stds, np.float64)
    resid = (x - means[lab]) / stds[lab][:, None]
    np.testing.assert_allclose(resid.mean(), 0.0, atol=0.01)
    np.testing.assert_allclose(resid.std(), 1.0, atol=0.01)


# --- digits ---------------------------------------------------------------------------------------
def test_digits_splits():
    from sklearn.datasets import load_digits

    raw = load_digits()
    tr, te, al = (D.load_digits_dataset(s) for s in ("train", "test", "all"))
    for d in (tr, te, al):
        n = d.labels.shape[0]
        assert d.images.shape == (n, 8, 8, 1) and d.images.dtype == np.float32 and d.labels.dtype == np.int32
        assert d.images.min() >= -1.0 and d.images.max() <= 1.0
        assert set(np.unique(d.labels)) == set(range(10))
        np.testing.assert_array_equal(d.labels, raw.target[d.indices])
        np.testing.assert_array_equal(d.images.reshape(n, 64), raw.data[d.indices] / 8.0 - 1.0)
        assert np.all(np.diff(d.indices) > 0)
    assert al.images.min() == -1.0 and al.images.max() == 1.0 and al.labels.shape == (D.DIGITS_SIZE,)
    assert tr.images.min() == -1.0 and tr.images.max() == 1.0
    assert len(tr.labels) + len(te.labels) == D.DIGITS_SIZE
    assert not set(tr.indices) & set(te.indices)
    # stratified: each class's test share is round(0.2 n_c)
    for c in range(10):
        n_c = np.sum(raw.target == c)
        assert np.sum(te.labels == c) == math.floor(0.2 * n_c + 0.5)
    # deterministic and cached; another seed gives another split of the same sizes
    assert D.load_digits_dataset("train") is tr
    np.testing.assert_array_equal(D.load_digits_dataset("train", seed=0).indices, tr.indices)
    other = D.load_digits_dataset("test", seed=1)
    assert len(other.indices) == len(te.indices) and not np.array_equal(other.indices, te.indices)
    assert not tr.images.flags.writeable


def test_digits_bad_inputs():
    with pytest.raises(ValueError, match="allowed.*'train', 'test', 'all'"):
        D.load_digits_dataset("validation")
    for f in (0.0, 1.0, -0.1, "x"):
        with pytest.raises(ValueError, match="holdout_fraction"):
            D.load_digits_dataset("train", holdout_fraction=f)
    with pytest.raises(ValueError, match="split"):
        D.make_dataset("digits", split="valid")


# --- data order ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return D.make_dataset("digits")


def _one_epoch_each(stream, size):
    for e in range(len(stream) // size):
        np.testing.assert_array_equal(np.bincount(stream[e * size:(e + 1) * size], minlength=size), 1)


def test_digits_order_is_concatenated_epoch_permutations(digits):
    size = digits.size
    assert size == len(D.load_digits_dataset("train").labels)
    divisor = next(b for b in range(3, size + 1) if size % b == 0)  # 719 for 1438 train images
    for bs in (64, divisor, size, 2 * size + 5):
        steps = max(1, (3 * size) // bs + 1)
        stream = np.concatenate([digits.indices(7, k, bs) for k in range(steps)])
        assert stream.shape == (steps * bs,)
        n_ep = -(-steps * bs // size)
        expected = np.concatenate([D.epoch_permutation(7, e, size) for e in range(n_ep)])[:steps * bs]
        np.testing.assert_array_equal(stream, expected)
        _one_epoch_each(stream, size)
    # successive epochs are shuffled differently
    assert not np.array_equal(D.epoch_permutation(7, 0, size), D.epoch_permutation(7, 1, size))


def test_digits_batch_matches_indices_and_resumes(digits):
    data = D.load_digits_dataset("train")
    bs = 100  # does not divide 1438: batches straddle epochs
    run = [digits.batch(3, k, bs) for k in range(20)]
    for k, (x, y) in enumerate(run):
        idx = digits.indices(3, k, bs)
        assert x.shape == (bs, 8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(np.asarray(x), data.images[idx])
        np.testing.assert_array_equal(np.asarray(y), data.labels[idx])
    resumed = D.make_dataset("digits")  # a fresh object, as after a restart at step 12
    for k in range(12, 20):
        x, y = resumed.batch(3, k, bs)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(run[k][0]))
        np.testing.assert_array_equal(np.asarray(y), np.asarray(run[k][1]))
    # another seed or step: another batch
    assert not np.array_equal(np.asarray(digits.batch(4, 0, bs)[0]), np.asarray(run[0][0]))
    assert not np.array_equal(digits.indices(4, 0, bs), digits.indices(3, 0, bs))
    assert not np.array_equal(digits.indices(3, 1, bs), digits.indices(3, 0, bs))


@pytest.mark.parametrize("name", list(D.DATASETS))
def test_every_dataset_batch_is_pure(name):
    ds = D.make_dataset(name)
    assert ds.name == name
    x, y = ds.batch(0, 5, 32)
    x2, y2 = ds.batch(0, 5, 32)
    assert x.shape == (32,) + ds.shape and x.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x2))
    if ds.num_classes:
        assert y.shape == (32,) and y.dtype == np.int32 and 0 <= int(y.min()) and int(y.max()) < ds.num_classes
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))
    else:
        assert y is None and y2 is None
    assert not np.array_equal(np.asarray(ds.batch(0, 6, 32)[0]), np.asarray(x))
    assert not np.array_equal(np.asarray(ds.batch(1, 5, 32)[0]), np.asarray(x))
    # a fresh object (a resumed run) gives the same batch
    np.testing.assert_array_equal(np.asarray(D.make_dataset(name).batch(0, 5, 32)[0]), np.asarray(x))
    assert (ds.size is None) == (name not in ("digits", "clusters_mix"))


def test_generator_batch_key_and_jit():
    ds = D.make_dataset("rings", n_rings=3, noise=0.01)
    x, _ = ds.batch(11, 4, 64)
    key = jax.random.fold_in(jax.random.PRNGKey(11), 4)
    direct = D.rings(key, 64, n_rings=3, noise=0.01)
    np.testing.assert_allclose(np.asarray(x), np.asarray(direct), atol=1e-6)  # jit vs eager rounding
    xj = jax.jit(lambda s, k: ds.batch(s, k, 64)[0])(11, 4)  # seed and step may be traced
    np.testing.assert_allclose(np.asarray(xj), np.asarray(x), atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*'two_moons'.*'digits'"):
        D.make_dataset("mnist")
    for name in ("two_moons", "digits"):
        ds = D.make_dataset(name)
        for bs in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match="batch_size"):
                ds.batch(0, 0, bs)
        with pytest.raises(ValueError, match="step"):
            ds.batch(0, -1, 8)
    with pytest.raises(ValueError, match="unknown keyword.*'squares'"):
        D.make_dataset("two_moons", squares=3)
    with pytest.raises(ValueError, match="no keyword"):
        D.make_dataset("gmm2d", noise=0.1)
    with pytest.raises(ValueError, match="noise"):
        D.make_dataset("rings", noise=-1.0)
    with pytest.raises(ValueError, match="n_rings"):
        D.rings(KEY, 10, n_rings=0)
    with pytest.raises(ValueError, match="squares"):
        D.checkerboard(KEY, 10, squares=0)
    with pytest.raises(ValueError, match="size"):
        D.batch_indices(0, 0, 4, 0)
