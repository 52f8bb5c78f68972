"""Recording extensions' results inside a compiled epoch (``fit(..., record=..., record_every=k)``).

An extension (``jbp.rules.Alignment``, ``jbp.extensions.BatchL2``, ...) costs extra work in
every step it runs in. :class:`Recorder` runs it on every ``k``-th step only: inside the
epoch's ``lax.scan``, step ``j`` (0-based, counted over the epoch, the remainder batch
included) runs the pass (forward, backward, metrics) as ``lax.cond(j % k == 0, pass with
the extensions, plain pass)`` and then the optimizer update
(:func:`jbp.train.step.make_recording_step`), so the amortised cost of an epoch is
``1 + (extension's extra cost) / k`` steps per step, plus one ``lax.cond`` per step. Both
branches compute the same gradient: the parameters, optimizer state and model state are
the same as without recording (bit-identical in the tests).

The scan's carry gains a step counter and, per leaf of each extension's result, the sum of
its finite values and how many there were; after the epoch, :meth:`Recorder.columns` turns
them into the history's columns: the mean over the recorded steps of every leaf, named
``"<extension name>/<key>/<key>..."`` (``"alignment/layers[0]/grad_angle"``), and, per
extension, ``"<name>/nonfinite"``: how many recorded values were NaN/Inf (left out of the
means; a leaf that was never finite has mean NaN). Leaves with more than one element are
stored as nested lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from jbp.extensions.base import Extension

__all__ = ["Recorder", "check_record"]


def check_record(record, record_every) -> tuple[tuple, int]:
    """``(extensions, every)`` from ``fit``'s ``record`` and ``record_every`` arguments.

    Raises:
      TypeError: ``record`` is not an Extension or a list/tuple of them; ``record_every``
        is not an integer.
      ValueError: ``record_every`` < 1; two extensions share a name.
    """
    from jbp.extensions.base import Extension  # noqa: PLC0415

    if isinstance(record_every, bool) or not isinstance(record_every, (int, np.integer)):
        raise TypeError(
            f"record_every: expected a positive integer number of steps, got "
            f"{type(record_every).__name__}"
        )
    if record_every < 1:
        raise ValueError(f"record_every: expected a positive number of steps, got {record_every}")
    if record is None:
        record = ()
    if isinstance(record, Extension):
        record = (record,)
    if not isinstance(record, (list, tuple)):
        raise TypeError(
            f"record: expected a list of extensions (e.g. [jbp.rules.Alignment()]), got "
            f"{type(record).__name__}"
        )
    for i, e in enumerate(record):
        if not isinstance(e, Extension):
            raise TypeError(
                f"record[{i}]: expected an extension instance (e.g. jbp.rules.Alignment()), "
                f"got {e!r}"
            )
    names = [e.name for e in record]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"record: two extensions with the same name {dup}: results would clash")
    return tuple(record), int(record_every)


def _sum_dtype(dtype):
    """Floating results are summed in their dtype; integer and boolean ones in float."""
    return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.result_type(float)


def _key(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


class Recorder:
    """The recording part of an epoch: :meth:`begin`, :meth:`wrap`, :meth:`end` (like
    :class:`jbp.train.progress.Progress`), and :meth:`columns` on the host.

    Args:
      extensions: the extensions to record (their ``name``s key the results).
      every: record on the steps ``j`` with ``j % every == 0``.
      steps: the number of steps in an epoch (for the count of recorded values).
    """

    def __init__(self, extensions: Sequence[Extension], every: int, steps: int):
        self.extensions = tuple(extensions)
        self.names = tuple(e.name for e in self.extensions)
        self.every = int(every)
        self.steps = int(steps)
        self.recorded_steps = -(-self.steps // self.every)  # steps 0, every, 2·every, ...

    def begin(self, carry, like: Any):
        """``carry`` → ``(carry, (0, zero sums, zero counts))``; ``like``: the results'
        structure (``jax.eval_shape`` of one step's results)."""
        sums = jax.tree.map(lambda s: jnp.zeros(s.shape, _sum_dtype(s.dtype)), like)
        counts = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.int32), like)
        return carry, (jnp.zeros((), jnp.int32), sums, counts)

    @staticmethod
    def end(carry):
        """``(carry, (sums, counts))``: the scan's carry and what was recorded."""
        inner, (_, sums, counts) = carry
        return inner, (sums, counts)

    def wrap(self, fn: Callable) -> Callable:
        """``fn(carry, *inputs, on) -> (carry, metrics, results)`` (``on``: a traced bool,
        whether the step computes the extensions) → ``fn(carry, *inputs) -> (carry,
        metrics)`` on the counted carry, with ``on`` true every ``every``-th step."""

        def counted(c, *inputs):
            inner, (i, sums, counts) = c
            on = i % self.every == 0
            inner, m, res = fn(inner, *inputs, on)
            ok = jax.tree.map(lambda v: jnp.isfinite(v) & on, res)
            sums = jax.tree.map(
                lambda s, v, f: s + jnp.where(f, v, 0).astype(s.dtype), sums, res, ok
            )
            counts = jax.tree.map(lambda c, f: c + f.astype(jnp.int32), counts, ok)
            return (inner, (i + 1, sums, counts)), m

        return counted

    def columns(self, recorded) -> dict[str, Any]:
        """Host side: ``(sums, counts)`` (device-got) → ``{column: mean}`` and
        ``{"<name>/nonfinite": count}`` per extension (see the module docstring)."""
        sums, counts = recorded
        out: dict[str, Any] = {}
        for name in self.names:
            bad = 0
            flat_s = jax.tree_util.tree_flatten_with_path(sums[name])[0]
            flat_c = jax.tree.leaves(counts[name])
            for (path, s), c in zip(flat_s, flat_c):
                s, c = np.asarray(s, np.float64), np.asarray(c)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.where(c > 0, s / np.maximum(c, 1), np.nan)
                bad += int(self.recorded_steps * c.size - c.sum())
                col = "/".join([name] + [_key(p) for p in path])
                out[col] = float(mean) if mean.ndim == 0 else mean.tolist()
            out[f"{name}/nonfinite"] = bad
        return out
