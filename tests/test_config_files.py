"""Every sample and sweep config under configs/ on an analytic model expands into a valid plan
(its rows, labels and orders), so a config can't rot unnoticed: e.g. a solver whose order
option defaults to None (teleport: its base's order) once broke the plan."""
import importlib
import os

import pytest

from samplax.experiment import decoding, discrete, plan as planlib
from samplax.experiment.config import config_kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
               if f.startswith(("sample_", "sweep_")) or f in ("gmm.py", "gmm64d.py"))


@pytest.mark.parametrize("name", NAMES)
def test_config_file_plans(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    if decoding.is_decoding(config):  # language-model decoding: decoders and their options
        plan = decoding.make_plan(config)
        assert plan.rows and all(r["label"].startswith(r["decoder"]) for r in plan.rows)
        return
    if discrete.is_discrete(config):  # masked diffusion: samplers and their options
        plan = discrete.make_plan(config)
        assert plan.rows and all(r["label"].startswith(r["sampler"]) for r in plan.rows)
        return
    if config.model.get("checkpoint") or config.model.name not in ("gmm2d", "gmm64d"):
        pytest.skip("a trained model's config: planned in tests/test_training_run.py")
    plan = planlib.make_plan(config)
    assert config_kind(config) in ("sample", "sweep") and plan.rows
    for row in plan.rows:
        assert isinstance(row["order"], int) and row["nfe"] >= 1 and row["n_steps"] >= 1, row["label"]
        planlib.rebuild_solver(row)  # the row rebuilds the very solver it names


def test_all_configs_listed():
    assert {"sample_v3", "sample_teleport", "sample_dualfast", "sample_adaptive", "sweep_v3", "sweep_teleport",
            "sweep_dualfast"} <= set(NAMES)


TRAIN_NAMES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.startswith("train_"))


@pytest.mark.parametrize("name", TRAIN_NAMES)
def test_train_config_file_validates(name):
    """Every training config, of every kind (model, raft, offline_rl, snapshot_rl), passes its loop's checks."""
    from samplax.experiment.train_kinds import train_kind, validate_training

    config = importlib.import_module(f"configs.{name}").get_config()
    cfg = validate_training(config)
    assert isinstance(cfg, dict) and train_kind(config) == cfg.get("kind", "model")


def test_an_unknown_training_kind_is_one_config_error():
    import ml_collections

    from samplax.experiment.config import ConfigError
    from samplax.experiment.train_kinds import run_training

    with pytest.raises(ConfigError, match=r"config.kind: unknown training kind 'rlhf'; allowed: \[.*'model', "):
        run_training(ml_collections.ConfigDict(dict(kind="rlhf")), "/nonexistent/never/written")
