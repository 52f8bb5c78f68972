"""Child process of tests/test_checkpoint.py's kill test: save checkpoints until killed.

``python tests/_checkpoint_writer.py DIR START BLOCK_AT`` saves ``tree_for(i)`` for
``i = START, START+1, ...`` with ``save_step(DIR, i, ..., keep=2)`` and then
``save(DIR/single.jbp, ...)``, printing ``step i`` / ``single i`` after each completes.
With ``BLOCK_AT = n > 0`` the n-th ``os.fsync`` call prints ``blocked n`` and waits on
stdin forever, so the parent can SIGKILL it at exactly that point (odd n: the temporary
file's fsync, before the rename; even n: the directory's fsync, after it). The parent
re-creates the trees with :func:`tree_for` to check what it finds.
"""

import functools
import os
import sys

import numpy as np

N = 1 << 20  # float32 elements: 4 MiB per checkpoint


@functools.lru_cache(maxsize=1)
def _base() -> np.ndarray:
    return np.random.default_rng(7).standard_normal(N).astype(np.float32)


def tree_for(i: int) -> dict:
    """The tree saved at step ``i``: every step's differs in every leaf."""
    base = _base()
    return {
        "w": base + np.float32(i),
        "i": np.int64(i),
        "rest": (base[:7] * np.float32(i + 1), [np.uint8(i % 251)]),
    }


def main(directory: str, start: int, block_at: int) -> None:
    from _fsync_trap import block_fsync_at

    from jbp import checkpoint

    block_fsync_at(block_at)
    single = os.path.join(directory, "single.jbp")
    i = start
    while True:
        tree = tree_for(i)
        checkpoint.save_step(directory, i, tree, metadata={"i": i}, keep=2)
        print(f"step {i}", flush=True)
        checkpoint.save(single, tree, metadata={"i": i})
        print(f"single {i}", flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
