"""Progress lines from inside a compiled epoch.

An epoch of ``fit`` is one compiled ``lax.scan``; with SGD on 50,000 examples that is 50,000
steps before Python sees anything. :class:`Progress` threads a step counter and running sums
of the step metrics through the scan's carry and, every ``every`` steps, hands them to the
host with ``jax.debug.callback`` under a ``lax.cond`` (the other steps pay one integer
compare). The step's arithmetic is unchanged: parameters and history are bit-identical with
and without progress lines.

Used by ``fit(..., progress_every=k)`` for the plain and the DP-SGD epoch; an epoch function
wraps its step with :meth:`Progress.wrap` and its carry with :meth:`Progress.begin` /
:meth:`Progress.end`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

__all__ = ["Progress"]


class Progress:
    """Every ``every`` steps of an epoch of ``steps`` steps, print
    ``  epoch 3/30  step 10000/50000  loss 0.4123  accuracy 0.8750`` (the means of the
    metrics over the epoch's steps so far: a mean of batch means).

    Args:
      every: a positive number of steps between two lines.
      steps: the number of steps in one epoch (for the ``step i/steps`` field).
      epochs: the number of epochs of the run (for ``epoch e/epochs``).
      names: the metrics to show (keys of the step's metrics dict).
      write: where a line goes (default: ``print`` to stdout, flushed).

    The host sets :attr:`epoch` (1-based) before it calls the compiled epoch.
    """

    def __init__(
        self,
        every: int,
        steps: int,
        epochs: int,
        names: Sequence[str],
        write: Callable[[str], None] | None = None,
    ):
        self.every = int(every)
        self.steps = int(steps)
        self.epochs = int(epochs)
        self.names = tuple(names)
        self.epoch = 1
        self.write = write or _print

    def begin(self, carry):
        """``carry`` → ``(carry, (0, zero sums))``: the scan's carry with the counter."""
        return carry, (
            jnp.zeros((), jnp.int32),
            {k: jnp.zeros((), jnp.float32) for k in self.names},
        )

    @staticmethod
    def end(carry):
        """The scan's carry without the counter."""
        return carry[0]

    def wrap(self, fn: Callable) -> Callable:
        """``fn(carry, *inputs) -> (carry, metrics)`` → the same on the counted carry."""

        def counted(c, *inputs):
            inner, (i, sums) = c
            inner, m = fn(inner, *inputs)
            i = i + 1
            sums = {k: sums[k] + m[k].astype(jnp.float32) for k in self.names}
            jax.lax.cond(
                i % self.every == 0,
                lambda: jax.debug.callback(self._report, i, sums, ordered=True),
                lambda: None,
            )
            return (inner, (i, sums)), m

        return counted

    def _report(self, i, sums) -> None:
        i = int(i)
        wi, we = len(str(self.steps)), len(str(self.epochs))
        parts = [f"  epoch {self.epoch:>{we}}/{self.epochs}", f"step {i:>{wi}}/{self.steps}"]
        parts += [f"{k} {float(sums[k]) / i:.4f}" for k in self.names]
        self.write("  ".join(parts))


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
