"""Shared fixtures.  A persistent compilation cache under the work tree saves
compile time across runs (JAX only caches compiles slower than 0.5 s)."""
import os

import jax

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# The shared reference cache (samplax.experiment.cache) of the tests lives under the work
# tree too, not in the user's ~/.cache; subprocesses inherit it.
os.environ.setdefault("SAMPLAX_CACHE_DIR", os.path.join(os.path.dirname(_CACHE), ".samplax_cache"))
