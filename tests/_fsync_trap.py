"""For the SIGKILL tests' child processes: park the process inside its N-th ``os.fsync``.

The child prints ``blocked N`` and waits on stdin until the parent kills it, so the kill
lands at a known point of a checkpoint write (after the temporary file, before the rename).
"""

import os
import sys


def block_fsync_at(block_at: int) -> None:
    """Replace ``os.fsync`` so that its ``block_at``-th call never returns (0: never)."""
    real_fsync, calls = os.fsync, [0]

    def fsync(fd):
        calls[0] += 1
        if calls[0] == block_at:
            print(f"blocked {calls[0]}", flush=True)
            sys.stdin.read()  # until the parent kills us (or closes stdin: then give up)
            os._exit(3)
        real_fsync(fd)

    os.fsync = fsync
