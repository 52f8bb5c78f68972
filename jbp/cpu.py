"""CPU runtime settings: how XLA CPU's per-call temporaries meet glibc's ``malloc``.

A compiled XLA CPU program allocates its temporaries when it runs and frees them when it
returns. glibc's ``malloc`` serves any block above its mmap threshold (at most 32 MiB unless
set) with a fresh ``mmap``, so a program whose temporaries outgrow that pays a page fault
for every 4 KiB page on every call. On a 2-core VM, ``perf`` put 28% of the per-example norms
of ``bench/peers.py``'s CNN (batch 256) in the kernel's page-fault and unmap code; with
:func:`tune_malloc` the CNN's gradient, per-example norms and clipped gradient ran 1.3–1.4×
faster (see ``docs/benchmarks.md``). Programs whose temporaries stay small (the MLPs of the
benchmarks) do not change.

jbp never calls :func:`tune_malloc` itself: it changes ``malloc`` for the whole process
(PyTorch, NumPy and everything else in it), and freed memory then stays with the process
instead of going back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_malloc"]

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def _glibc():
    """The process's glibc (``None`` on other systems or C libraries)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (not musl)
    except (OSError, AttributeError):
        return None
    return libc


def tune_malloc(mmap_threshold: int = 2**30, trim_threshold: int = _INT_MAX) -> bool:
    """Keep XLA CPU's per-call temporaries in the heap instead of mapping them on every call.

    Sets glibc's ``M_MMAP_THRESHOLD`` (blocks at least this large get their own ``mmap``) and
    ``M_TRIM_THRESHOLD`` (free memory at the top of the heap beyond this goes back to the
    system) with ``mallopt``, for the whole process, from now on. Call it once, early (a
    notebook's first cell will do; allocations made before keep their place). The
    equivalent before the process starts is the environment variable
    ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647``.

    Worth it on CPU for networks whose compiled step has more than ~32 MiB of temporaries
    (convolutions at batch 128 and up; ``jax.jit(f).lower(*args).compile()
    .memory_analysis().temp_size_in_bytes`` tells); the process then keeps its peak heap.

    Args:
      mmap_threshold: bytes, ``1 … 2**31 − 1`` (default 1 GiB).
      trim_threshold: bytes, ``0 … 2**31 − 1`` (default ``2**31 − 1``).

    Returns:
      ``True`` when glibc accepted both settings; ``False`` on other systems (macOS, Windows,
      musl), where nothing changes.

    Raises:
      TypeError: a threshold is not an int.
      ValueError: a threshold is out of range.
    """
    for name, value, low in (
        ("mmap_threshold", mmap_threshold, 1),
        ("trim_threshold", trim_threshold, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"tune_malloc: {name} must be an int, got {type(value).__name__}")
        if not low <= value <= _INT_MAX:
            raise ValueError(f"tune_malloc: {name} must be in [{low}, 2**31 - 1], got {value}")
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
