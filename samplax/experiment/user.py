"""Bring your own: a user's model, schedule, data set or network named in a config.

A *factory spec* is a string ``"package.module:callable"`` (imported from
``sys.path``; ``python -m`` puts the current directory there) or
``"path/to/file.py:callable"`` (loaded from that file).  Its keyword arguments come
from the config (``model.args``, ``data.options``, ...).  :func:`call_factory`
checks at plan time, before anything is written, that the spec imports, that the
arguments bind to the callable's signature and that the result has the expected
type, and turns each failure into one :class:`ConfigError` naming the field.

The registries (:mod:`samplax.experiment.registry`) stay the home of the built-in
names; a factory is never added to them.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable, Optional

from samplax.experiment.errors import ConfigError

SPEC_FORM = "'package.module:callable' or 'path/to/file.py:callable'"


def _load_file_module(path: str, field: str):
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise ConfigError(field, f"no such file {path!r}; allowed: {SPEC_FORM}")
    name = "samplax_user_" + hashlib.sha1(full.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001  (a user's module may raise anything)
        del sys.modules[name]
        raise ConfigError(field, f"importing {path!r} raised {type(e).__name__}: {e}") from None
    return module


def load_callable(spec: str, field: str) -> Callable:
    """The callable named by ``spec``; ConfigError at ``field`` if it cannot be had."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(p.strip() for p in spec.split(":")):
        raise ConfigError(field, f"must be a factory spec {SPEC_FORM}, got {spec!r}")
    module_name, attr = spec.split(":")
    if module_name.endswith(".py"):
        module = _load_file_module(module_name, field)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ConfigError(field, f"module {module_name!r} is not importable ({e}); it must be on sys.path "
                                     f"(installed, or under the current directory / PYTHONPATH), or give "
                                     f"'path/to/file.py:{attr}'") from None
        except Exception as e:  # noqa: BLE001
            raise ConfigError(field, f"importing {module_name!r} raised {type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            have = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ConfigError(field, f"{module_name!r} has no attribute {attr!r}; its callables: {have[:20]}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(field, f"{spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def source_digest(spec: str) -> Optional[str]:
    """sha1 (12 hex digits) of the source file that defines ``spec``'s module, or None;
    recorded in rows so results say which version of the user's code ran."""
    module_name = spec.split(":")[0]
    try:
        path = module_name if module_name.endswith(".py") else inspect.getsourcefile(importlib.import_module(module_name))
        with open(path, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()[:12]
    except Exception:  # noqa: BLE001
        return None


def call_factory(spec: str, args: Optional[dict], field: str, args_field: str, check: Callable[[Any], str],
                 what: str, extra: Optional[dict] = None):
    """``load_callable(spec)(**args, **extra)``, checked: arguments that do not bind raise
    at ``args_field``; ``check(result)`` returns '' or what is wrong with the result
    (then ConfigError at ``field`` saying it must return ``what``)."""
    fn = load_callable(spec, field)
    kwargs = dict(args or {})
    kwargs.update(extra or {})
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            params = [p for p in sig.parameters if p not in ("self",)]
            raise ConfigError(args_field, f"arguments {sorted(kwargs)} do not fit {spec}{sig}: {e}; "
                                          f"its parameters: {params}") from None
    try:
        out = fn(**kwargs)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(field, f"{spec}(**{kwargs!r}) raised {type(e).__name__}: {e}") from None
    problem = check(out)
    if problem:
        raise ConfigError(field, f"{spec} must return {what}; {problem}")
    return out


def is_diffusion_model(obj) -> str:
    from samplax.models.base import DiffusionModel

    return "" if isinstance(obj, DiffusionModel) else f"got {type(obj).__name__}"


def is_schedule(obj) -> str:
    from samplax.schedules import NoiseSchedule

    return "" if isinstance(obj, NoiseSchedule) else f"got {type(obj).__name__}"


def is_dataset(obj) -> str:
    missing = [a for a in ("name", "shape", "num_classes", "batch") if not hasattr(obj, a)]
    if missing:
        return f"got {type(obj).__name__} without {missing}"
    if not callable(obj.batch):
        return "its batch is not callable"
    return ""


def is_flax_module(obj) -> str:
    import flax.linen as nn

    if not isinstance(obj, nn.Module):
        return f"got {type(obj).__name__}"
    return ""


__all__ = ["load_callable", "call_factory", "source_digest", "is_diffusion_model", "is_schedule", "is_dataset",
           "is_flax_module", "SPEC_FORM"]
