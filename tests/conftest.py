"""Shared fixtures.  A persistent compilation cache under the work tree saves
compile time across tests and runs.

Every compiled program is cached (threshold 0 s, not JAX's usual "only compiles
slower than ..."): the suite compiles the same small programs again and again --
in each pytest-xdist worker, in tests that build a fresh ``jax.jit`` of the same
function, in every subprocess -- and a cache read is cheaper than even a 0.1 s
compile (measured on tests/test_solver_tables.py, cold: 233 s of CPU with the
0.5 s threshold, 190 s with none).

The cache is also set through the environment, so every process the tests start
(training / sweep subprocesses killed and rerun, multi-process runs, command-line
runs, the notebooks' kernels) reads and writes the same cache: a rerun after a
kill -9 loads the programs its killed predecessor or the in-process reference run
compiled (tests/test_experiment_resume.py::test_kill_minus_nine_and_resume, cold:
59 s of CPU before, 31 s).  A cache hit is the same executable, so nothing the
tests compare changes."""
import os

import jax

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# The shared reference cache (samplax.experiment.cache) of the tests lives under the work
# tree too, not in the user's ~/.cache; subprocesses inherit it.
os.environ.setdefault("SAMPLAX_CACHE_DIR", os.path.join(os.path.dirname(_CACHE), ".samplax_cache"))
