"""Count the model evaluations a sampler really makes, from its jaxpr.

The model's ``apply`` is wrapped in a jitted function with a unique name; the
count walks the traced program, multiplying by the trip count of every
``scan``.  This measures the program, independently of the ``nfe`` a solver
declares (the tests compare the two for every solver).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PROBE_NAME = "_samplax_model_evaluation"


def probe(apply, name: str = PROBE_NAME):
    """``apply`` wrapped in a jitted function called ``name``: free at run time (XLA
    inlines it), visible in the jaxpr, where :func:`count_in_jaxpr` counts it."""
    def wrapped(params, x, t):
        return apply(params, x, t)
    wrapped.__name__ = wrapped.__qualname__ = name
    return jax.jit(wrapped)



def _subjaxprs(eqn):
    for v in eqn.params.values():
        for item in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def _count(jaxpr, probe_name: str = PROBE_NAME) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("jit", "pjit") and eqn.params.get("name") == probe_name:
            n += 1
        elif name == "scan":
            n += eqn.params["length"] * _count(eqn.params["jaxpr"].jaxpr, probe_name)
        elif name == "cond":
            n += max(_count(b.jaxpr, probe_name) for b in eqn.params["branches"])
        elif name == "while":
            inner = _count(eqn.params["body_jaxpr"].jaxpr, probe_name) + _count(eqn.params["cond_jaxpr"].jaxpr,
                                                                              probe_name)
            if inner:
                raise ValueError("count_model_evaluations: a while loop calls the model; its trip count is unknown")
        else:
            n += sum(_count(j, probe_name) for j in _subjaxprs(eqn))
    return n


def count_in_jaxpr(closed_jaxpr, probe_name: str = PROBE_NAME) -> int:
    """Model evaluations (calls of the probe ``probe_name``) in a traced program, each
    scan counted as many times as it iterates."""
    return _count(getattr(closed_jaxpr, "jaxpr", closed_jaxpr), probe_name)


def count_model_evaluations(solver, model, grid, x_shape=(1, 2), dtype=jnp.float32) -> int:
    """Model evaluations of ``sample(solver, model, x, grid)`` for a batch of shape x_shape."""
    from samplax.solvers.base import sample

    probed = model.replace(apply=probe(model.apply))
    x = jax.ShapeDtypeStruct(tuple(x_shape), dtype)
    key = jax.random.PRNGKey(0)
    jaxpr = jax.make_jaxpr(lambda x_: sample(solver, probed, x_, grid, key)[0])(x)
    return _count(jaxpr.jaxpr)
