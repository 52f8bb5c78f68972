"""Test-suite configuration: float64 is available everywhere.

Tight comparisons run in float64; float32 checks build float32 arrays explicitly, which
also proves that the library keeps the caller's dtype.
"""

import jax

jax.config.update("jax_enable_x64", True)
