"""Small assertion helpers shared by the tests."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from samplax.models import DiffusionModel


def max_rel(a, b):
    """max |a - b| / max |b| (norm-wise relative error of an array)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def assert_rel(a, b, rtol):
    """Every leaf of pytree ``a`` is within ``rtol`` (norm-wise relative) of ``b``'s."""
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.shape(x) == np.shape(y)
        err = max_rel(x, y)
        assert err <= rtol, (err, rtol)


def set_dotted(config, dotted: str, value) -> None:
    """config["a"]["b"]["c"] = value for dotted = "a.b.c" (ConfigDicts or dicts)."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        config = config[p]
    config[leaf] = value


def counting_model(model, counter):
    """The same model, with a host callback that counts its evaluations at run time."""
    def bump(_):
        counter[0] += 1
        return np.int32(0)

    def apply(params, x, t):
        z = io_callback(bump, jax.ShapeDtypeStruct((), jnp.int32), t, ordered=True)
        x0, eps = model.data_noise(x, t)
        return x0 + 0 * z, eps

    return DiffusionModel(apply=apply, params=model.params, schedule=model.schedule, prediction="data_noise")
