"""Metrics on cases with known answers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samplax.metrics import projections, sliced_wasserstein2, sliced_wasserstein2_host


def test_projections_are_unit_and_fixed_by_the_key():
    p = projections(jax.random.PRNGKey(0), 5, 64)
    np.testing.assert_allclose(np.linalg.norm(p, axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(p, projections(jax.random.PRNGKey(0), 5, 64))


def test_sliced_w2_of_a_shift():
    """A point set vs the same set shifted by m: each projection is shifted by theta.m,
    so SW2^2 = mean_l (theta_l.m)^2 exactly, which tends to |m|^2 / d for uniform
    directions (checked loosely: Monte Carlo over 1024 directions)."""
    d, n, L = 4, 5000, 1024
    z = jax.random.normal(jax.random.PRNGKey(1), (n, d))
    m = jnp.array([1.0, -2.0, 0.5, 0.0])
    proj = projections(jax.random.PRNGKey(2), d, L)
    sw = float(sliced_wasserstein2(z, z + m, proj))
    assert abs(sw - float(jnp.sqrt(jnp.mean((m @ proj) ** 2)))) < 1e-5
    assert abs(sw / float(jnp.linalg.norm(m) / np.sqrt(d)) - 1) < 0.1
    assert float(sliced_wasserstein2(z, z, proj)) == 0.0
    # permutation invariance: an empirical measure does not depend on the order of its points
    perm = jax.random.permutation(jax.random.PRNGKey(3), n)
    assert abs(float(sliced_wasserstein2(z[perm], z + m, proj)) - sw) < 1e-5


def test_sliced_w2_of_a_scale():
    """A point set vs the same set scaled by 2: sorted projections scale by 2, so
    SW2^2 = mean over directions and points of (theta.z)^2 exactly (-> 1 for N(0, I))."""
    z = jax.random.normal(jax.random.PRNGKey(4), (5000, 3))
    proj = projections(jax.random.PRNGKey(5), 3, 256)
    sw = float(sliced_wasserstein2(z, 2.0 * z, proj))
    assert abs(sw - float(jnp.sqrt(jnp.mean((z @ proj) ** 2)))) < 1e-5
    assert abs(sw - 1.0) < 0.05


def test_sliced_w2_rejects_mismatched_shapes():
    proj = projections(jax.random.PRNGKey(0), 2, 8)
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein2(jnp.zeros((10, 2)), jnp.zeros((11, 2)), proj)


def test_host_version_is_the_same_quantity():
    x = jax.random.normal(jax.random.PRNGKey(6), (3000, 5))
    y = 0.7 * jax.random.normal(jax.random.PRNGKey(7), (3000, 5)) + 0.3
    proj = projections(jax.random.PRNGKey(8), 5, 64)
    assert abs(sliced_wasserstein2_host(x, y, proj) - float(sliced_wasserstein2(x, y, proj))) < 1e-5
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein2_host(np.zeros((3, 2)), np.zeros((4, 2)), proj[:2])
