"""Test-suite configuration: float64 is available everywhere; XLA's optimisations are off.

Tight comparisons run in float64; float32 checks build float32 arrays explicitly, which
also proves that the library keeps the caller's dtype.

The suite compiles well over a thousand small programs and runs each a few times on tiny
arrays, so XLA's optimisation passes cost far more compile time than they save: with
``jax_disable_most_optimizations`` the suite needs about a third less CPU. Semantics do not
change (the tolerances are the same; benchmarks and real use compile fully optimised). It is
set through the environment, before jax is imported, so the examples and notebooks that tests
run in subprocesses inherit it. ``JBP_TEST_XLA_OPT=1`` runs the suite fully optimised.
"""

import os

if os.environ.get("JBP_TEST_XLA_OPT", "0") in ("", "0"):
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
