"""Test-suite configuration: float64 everywhere; XLA's optimisations off; one shared
compilation cache.

Tight comparisons run in float64; float32 checks build float32 arrays explicitly, which
also proves that the library keeps the caller's dtype.

Compile time is most of the suite's time, so two settings go into the environment before jax
is imported — the pytest-xdist workers and the examples and notebooks that tests run in
subprocesses inherit them:

- ``JAX_DISABLE_MOST_OPTIMIZATIONS=1``: the suite compiles well over a thousand small programs
  and runs each a few times on tiny arrays; XLA's optimisation passes cost more than they
  save (about a fifth to a third less CPU without them). Semantics and tolerances do not
  change; benchmarks and real use compile fully optimised.
- ``XLA_FLAGS`` gains ``--xla_cpu_use_fusion_emitters=false`` (XLA CPU's older elemental
  emitters for fused loops: the same operations, about a third of the compile time of the
  MLIR fusion emitters on this suite's programs) and
  ``--xla_cpu_parallel_codegen_split_count=1`` (one LLVM module per program: the workers
  already use every core). A one-off probe keeps them only if this jaxlib knows them (an
  unknown flag is fatal to XLA), so a newer jax runs the suite unchanged, just slower.
- ``JAX_COMPILATION_CACHE_DIR``: a persistent compilation cache shared by every process of
  this run (a fresh temporary directory, removed at exit), so the eager operations and models
  that many processes compile are compiled once.

``JBP_TEST_XLA_OPT=1`` keeps the optimisations and XLA's default emitters;
``JBP_TEST_NO_CACHE=1`` skips the cache.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

FAST_COMPILE_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"


def _add_fast_compile_flags():
    """Append FAST_COMPILE_FLAGS to XLA_FLAGS if this jaxlib accepts them (probed once, in a
    subprocess; the pytest-xdist workers inherit the result through the environment)."""
    if os.environ.get("JBP_TEST_XLA_FLAGS_PROBED"):
        return
    os.environ["JBP_TEST_XLA_FLAGS_PROBED"] = "1"
    flags = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()
    probe = "import jax; jax.jit(lambda x: x + 1)(1.0).block_until_ready()"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    ok = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120)
    if ok.returncode == 0:
        os.environ["XLA_FLAGS"] = flags


if os.environ.get("JBP_TEST_XLA_OPT", "0") in ("", "0"):
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    _add_fast_compile_flags()
if os.environ.get("JBP_TEST_NO_CACHE", "0") in ("", "0") and not os.environ.get(
    "JAX_COMPILATION_CACHE_DIR"
):  # the first process (pytest, or xdist's controller) makes it; the others inherit it
    _cache = tempfile.mkdtemp(prefix="jbp-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
