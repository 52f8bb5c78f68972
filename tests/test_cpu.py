"""jbp.cpu.tune_malloc: glibc's mmap threshold, checked in a fresh process (it is process-wide)."""

import subprocess
import sys
import textwrap

import pytest

import jbp
from jbp.cpu import _glibc

_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    import jbp

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2

    def mapped_by(nbytes):
        before = libc.mallinfo2().hblkhd
        a = np.ones(nbytes // 8)  # NumPy's data comes from malloc
        grew = libc.mallinfo2().hblkhd - before
        del a
        return grew

    big = 64 * 2**20
    print(mapped_by(big) >= big)  # glibc's default: a block this large gets its own mmap
    print(jbp.cpu.tune_malloc())
    print(mapped_by(big) == 0)  # now it comes from the heap
    """
)


@pytest.mark.slow
@pytest.mark.skipif(_glibc() is None, reason="needs Linux with glibc (mallinfo2)")
def test_tune_malloc_moves_large_blocks_from_mmap_to_the_heap():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out == ["True", "True", "True"], out


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(mmap_threshold=0), ValueError, "mmap_threshold must be in"),
        (dict(mmap_threshold=2**31), ValueError, "mmap_threshold must be in"),
        (dict(trim_threshold=-1), ValueError, "trim_threshold must be in"),
        (dict(mmap_threshold=1.5), TypeError, "mmap_threshold must be an int, got float"),
        (dict(trim_threshold=True), TypeError, "trim_threshold must be an int, got bool"),
    ],
)
def test_tune_malloc_rejects_bad_thresholds(kwargs, error, match):
    with pytest.raises(error, match=match):
        jbp.cpu.tune_malloc(**kwargs)
