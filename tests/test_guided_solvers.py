"""Guidance wrappers as solver options (samplax.solvers.guided): autoguidance at scale 1 or with
an un-inflated bad model is the base solver, its NFE is twice the base's (counted in the
runner's program); minority guidance at strength 0 is the base solver, its classifier is trained
once per model (the runner's statistics cache) and a positive strength lowers the samples' exact
mean log-density; bad options name themselves."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import samplax as sx
from samplax.experiment import sample_config
from samplax.experiment.runner import run as run_experiment
from samplax.solvers import get_solver, model_data, prepare_solver, sample


@pytest.fixture(scope="module")
def problem():
    gmm, sch, _ = sx.load_problem("gmm2d")
    x = jax.random.normal(jax.random.PRNGKey(0), (256, 2))
    return gmm, sch, gmm.model(sch), x, sx.time_grid(sch, 8, "logsnr", end="zero")


def test_autoguidance_identities(problem):
    gmm, sch, model, x, g = problem
    xb, _ = sample(get_solver("unipc", order=2), model, x, g)
    for kw in (dict(scale=1.0, bad_std=2.0), dict(scale=3.0, bad_std=1.0)):
        xa, _ = sample(get_solver("autoguided", base="unipc", order=2, **kw), model, x, g)
        np.testing.assert_allclose(np.asarray(xa), np.asarray(xb), rtol=0, atol=2e-5)
    xw, _ = sample(get_solver("autoguided", base="unipc", order=2, scale=3.0, bad_std=1.5), model, x, g)
    # a wider bad model, w > 1: sharper components, so a higher mean exact log-density
    lp = lambda z: float(jnp.mean(gmm.log_prob_ve(z, 0.0)))  # noqa: E731
    assert lp(xw) > lp(xb) + 0.2, (lp(xw), lp(xb))
    assert get_solver("autoguided", base="unipc", order=2).nfe(8, "zero") == 2 * get_solver("unipc").nfe(8, "zero")


def test_minority_through_the_runner(problem, tmp_path):
    gmm, sch, model, x, g = problem
    # strength 0 is the base solver exactly (library route, with a small classifier)
    m0 = prepare_solver(get_solver("minority", strength=0.0, classifier_steps=50, n_train=512, levels=4), model,
                        model_data(gmm=gmm))
    np.testing.assert_allclose(np.asarray(sample(m0, model, x, g)[0]),
                               np.asarray(sample(get_solver("dpm_solver_pp", order=2), model, x, g)[0]),
                               rtol=0, atol=2e-5)

    def cfg(strength):
        c = sample_config()
        c.model.name = "gmm2d"
        c.solver.name = "minority"
        c.solver.options = dict(strength=strength, classifier_steps=400, n_train=4096, levels=4)
        c.nfe = 10
        c.n_samples = 1024
        return c
    (r0,) = run_experiment(cfg(0.0), str(tmp_path), expect="sample", report=False)
    (r4,) = run_experiment(cfg(6.0), str(tmp_path), expect="sample", report=False)
    assert not r0["prepared"]["cached"] and r4["prepared"]["cached"]  # one classifier for both strengths
    assert r0["nfe_actual"] == r4["nfe_actual"] == 10  # the classifier's gradient is not a model evaluation
    assert r4["metrics"]["mean_log_density"] < r0["metrics"]["mean_log_density"] - 0.1
    (ra,) = run_experiment(_auto_cfg(), str(tmp_path / "auto"), expect="sample", report=False)
    assert ra["nfe_actual"] == 20 and ra["nfe"] == 20  # two model calls per evaluation, counted in the program


def _auto_cfg():
    c = sample_config()
    c.model.name = "gmm2d"
    c.solver.name = "autoguided"
    c.solver.options = dict(scale=2.0, bad_std=1.5)
    c.nfe = 20
    c.n_samples = 256
    return c


@pytest.mark.parametrize("name, kw, field", [("autoguided", dict(scale=-1.0), "scale"),
                                             ("autoguided", dict(bad_std=0.5), "bad_std"),
                                             ("autoguided", dict(base="nope"), "base"),
                                             ("minority", dict(levels=1), "levels"),
                                             ("minority", dict(target_level=12), "target_level"),
                                             ("minority", dict(strength=float("nan")), "strength")])
def test_bad_options(name, kw, field):
    with pytest.raises(ValueError, match=field):
        get_solver(name, **kw)
