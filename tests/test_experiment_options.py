"""Solver options as sweep axes, open mappings on the command line, and the shared
reference cache's checksums."""
import json

import numpy as np
import pytest

from experiments import _overrides
from samplax.experiment import ConfigError, cache, make_plan, run_sweep, sweep_config


def _tiny_sweep():
    c = sweep_config()
    c.n_samples = 128
    c.sweep.solvers, c.sweep.grids, c.sweep.nfes = ("ddim", "unipc"), ("logsnr",), (6,)
    return c


def test_option_axes_sweep_afs_and_variant(tmp_path):
    """afs is an axis of every solver; variant only of UniPC (DDIM runs once per AFS value).
    AFS saves one model evaluation's worth of accuracy differently: the rows differ, and
    each row's options/afs say which setting it is."""
    c = _tiny_sweep()
    c.sweep.option_axes = {"afs": (False, True), "variant": ("bh1", "bh2")}
    rows = run_sweep(c, str(tmp_path / "w"))
    got = sorted((r["solver"], r["options"].get("variant"), r["afs"]) for r in rows)
    assert got == sorted([("ddim", None, False), ("ddim", None, True)]
                         + [("unipc", v, a) for v in ("bh1", "bh2") for a in (False, True)])
    by = {(r["solver"], r["options"].get("variant"), r["afs"]): r["metrics"]["mean_l2"] for r in rows}
    assert by[("unipc", "bh1", False)] != by[("unipc", "bh2", False)]
    assert by[("ddim", None, False)] != by[("ddim", None, True)]
    assert len({r["hash"] for r in rows}) == 6 and all(r["nfe_actual"] == 6 for r in rows)


@pytest.mark.parametrize("axes, path, words", [
    ({"foo": (1, 2)}, "config.sweep.option_axes.foo", ("no solver in sweep.solvers", "'variant'")),
    ({"variant": "bh1"}, "config.sweep.option_axes.variant", ("non-empty tuple",)),
    ({"afs": (0, 1)}, "config.sweep.option_axes.afs", ("true/false",)),
    ({"variant": ("bh1", "bh9")}, "config.sweep.option_axes", ("'bh9'",)),
    ({"order": (1, 2)}, "config.sweep.option_axes.order", ("config.sweep.orders",)),
])
def test_bad_option_axes(axes, path, words):
    c = _tiny_sweep()
    c.sweep.option_axes = axes
    with pytest.raises(ConfigError) as e:
        make_plan(c)
    assert str(e.value).startswith(path), str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_open_mapping_overrides_set_and_unset():
    argv = ["prog", "--config=x.py", "--config.nfe=5", "--config.sweep.solver_options.unipc.variant=bh1",
            "--config.sweep.solver_options.unipc.corrector=False", "--config.model.args.mean=(1.0, 2.0)"]
    rest, found = _overrides.split(argv)
    assert rest == ["prog", "--config=x.py", "--config.nfe=5"]
    c = sweep_config()
    c.lock()
    _overrides.apply(c, found, ["config.sweep.solver_options.unipc.corrector"])
    assert c.sweep.solver_options.unipc.to_dict() == {"variant": "bh1"}
    assert c.model.args.mean == (1.0, 2.0)
    with pytest.raises(ConfigError, match=r"^config.model.args: only applies to a user model"):
        make_plan(c)  # checked like any config value
    _overrides.apply(c, [], ["config.model.args.mean"])
    make_plan(c)  # the result is a valid config
    with pytest.raises(ConfigError, match=r"^config.sweep.solver_options.unipc.variant.x: 'variant' holds 'bh1', not a mapping"):
        _overrides.apply(c, [], ["config.sweep.solver_options.unipc.variant.x"])
    with pytest.raises(ConfigError, match=r"^config.sweep.solver_options.ddim.variant: is not set"):
        _overrides.apply(c, [], ["config.sweep.solver_options.ddim.variant"])
    with pytest.raises(ConfigError, match=r"^--unset: 'config.nfe': only keys of the open mappings"):
        _overrides.apply(c, [], ["config.nfe"])


def test_poisoned_reference_is_detected_and_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLAX_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6.0)

    key = dict(problem="p", n=6)
    np.testing.assert_array_equal(cache.cached_array("ref", key, compute), np.arange(6.0))
    np.testing.assert_array_equal(cache.cached_array("ref", key, compute), np.arange(6.0))
    assert len(calls) == 1  # the second call read the cache
    npy = next(p for p in (tmp_path / "cache" / "references").iterdir() if p.suffix == ".npy")
    data = bytearray(npy.read_bytes())
    data[-8:] = np.float64(99.0).tobytes()  # poison the last value
    npy.write_bytes(bytes(data))
    np.testing.assert_array_equal(cache.cached_array("ref", key, compute), np.arange(6.0))
    assert len(calls) == 2  # detected by its sha256, recomputed, rewritten
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["key"] == key and meta["shape"] == [6]
    np.testing.assert_array_equal(cache.cached_array("ref", key, compute), np.arange(6.0))
    assert len(calls) == 2
