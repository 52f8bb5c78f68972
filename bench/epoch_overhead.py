"""Where the time of one compiled epoch goes, in Nielsen's configuration.

``bench/epoch.py`` compares ``jbp.fit`` with a Python loop of jitted steps. This script
takes the compiled epoch apart: the same step (``jbp.make_train_step``, [784, 30, 10]
sigmoid net, quadratic cost, SGD lr 3.0, minibatch 10) scanned over the data in several
ways, plus two floors, all in this process on the same data, interleaved round by round
(drifting load on a shared machine hits every variant alike); medians are printed.

Compiled epochs (one ``jax.jit``, timed without compilation):

- ``fit``: the epoch ``jbp.fit`` compiles (``jbp.train.fit._make_epoch``): shuffled
  minibatches gathered a chunk at a time (``jbp.train.batching.scan_batches``).
- ``shuffled copy``: the whole dataset gathered once in shuffled order (a second copy of
  ``x``), then scanned as contiguous batches.
- ``gather per step``: the minibatch gathered by index (``jnp.take``) inside the scan body.
- ``contiguous, unroll k``: no shuffling at all (batches are reshaped slices of the data),
  ``lax.scan(..., unroll=k)`` for k in 1, 2, 4, 8, 16.
- ``contiguous, no metrics`` / ``contiguous, one key``: the step's metrics dropped / the same
  key for every step instead of a split key per step.
- ``plain jax.numpy step``: the same arithmetic written directly in ``jax.numpy`` (no jbp):
  what XLA makes of this step by itself.
- ``empty body``: the scan over the same batches with a trivial body: the loop's own cost.

Host loops (per step, from Python, like ``bench/epoch.py``'s contender):

- ``Python loop, jitted step``: the jitted step called 5,000 times.
- ``Python loop, jitted no-op``: a jitted function with the step's arguments and results
  that does nothing: the dispatch cost alone. A compiled epoch whose step kernels cost ``C``
  per step can be at most ``(D + C) / C`` times faster than the loop, ``D`` the dispatch.

``identical``: the final parameters equal (bit for bit) those of the reference run with
the same batches in the same order (``fit`` for the shuffled variants, ``contiguous,
unroll 1`` for the contiguous ones).

    python bench/epoch_overhead.py                 # 50,000 examples, 7 rounds
    python bench/epoch_overhead.py --examples 5000 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp import optim
from jbp.train import make_train_step
from jbp.train.fit import _make_epoch

try:  # run as a script from the repository root: bench/ is on sys.path
    from epoch import machine_line, make_data, nielsen_net
except ImportError:  # pragma: no cover - imported as bench.epoch_overhead
    from bench.epoch import machine_line, make_data, nielsen_net


def build(n, bs, lr):
    model = nielsen_net()
    params, _ = model.init(jax.random.key(0), (784,))
    opt = optim.sgd(lr)
    step = make_train_step(model, jbp.losses.mse, opt)
    carry0 = (params, opt.init(params), ())
    nb = n // bs

    def body(c, xb, yb, k):
        p, s, st = c
        p, s, m, st = step(p, s, xb, yb, k, st)
        return (p, s, st), m

    def plan(key):  # fit's key scheme: (permutation key, step keys)
        k_perm, k_steps = jax.random.split(key)
        return jax.random.permutation(k_perm, n), jax.random.split(k_steps, nb), k_steps

    def batched(a):
        return a[: nb * bs].reshape((nb, bs) + a.shape[1:])

    def shuffled_copy(carry, x, y, key):
        order, keys, _ = plan(key)
        xs, ys = jnp.take(x, order, axis=0), jnp.take(y, order, axis=0)
        return jax.lax.scan(lambda c, i: body(c, *i), carry, (batched(xs), batched(ys), keys))

    def gather_per_step(carry, x, y, key):
        order, keys, _ = plan(key)

        def f(c, inp):
            idx, k = inp
            return body(c, jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0), k)

        return jax.lax.scan(f, carry, (order[: nb * bs].reshape(nb, bs), keys))

    def contiguous(unroll=1, metrics=True, split_keys=True):
        def epoch(carry, x, y, key):
            _, keys, k_one = plan(key)

            def f(c, inp):
                xb, yb, k = inp
                c, m = body(c, xb, yb, k if split_keys else k_one)
                return c, (m if metrics else None)

            return jax.lax.scan(f, carry, (batched(x), batched(y), keys), unroll=unroll)

        return epoch

    def plain_jnp(carry, x, y, key):
        def f(p, inp):
            xb, yb = inp
            l1, _, l2, _ = p
            a1 = jax.nn.sigmoid(xb @ l1["W"] + l1["b"])
            a2 = jax.nn.sigmoid(a1 @ l2["W"] + l2["b"])
            d2 = (a2 - yb) / bs * a2 * (1 - a2)
            d1 = (d2 @ l2["W"].T) * a1 * (1 - a1)
            g = ({"W": xb.T @ d1, "b": d1.sum(0)}, (), {"W": a1.T @ d2, "b": d2.sum(0)}, ())
            return jax.tree.map(lambda a, b: a - lr * b, p, g), None

        p, _ = jax.lax.scan(f, carry[0], (batched(x), batched(y)))
        return (p, carry[1], carry[2]), None

    def empty(carry, x, y, key):
        c, _ = jax.lax.scan(lambda c, i: (c + i[0][0, 0], None), 0.0, (batched(x), batched(y)))
        return carry, c

    fit_epoch = _make_epoch(step, n=n, batch_size=bs, shuffle=True, drop_last=False, finalizers={})
    epochs = {
        "fit": (fit_epoch, None),
        "shuffled copy": (shuffled_copy, "fit"),
        "gather per step": (gather_per_step, "fit"),
    }
    for k in (1, 2, 4, 8, 16):
        epochs[f"contiguous, unroll {k}"] = (contiguous(unroll=k), "contiguous, unroll 1")
    epochs["contiguous, no metrics"] = (contiguous(metrics=False), "contiguous, unroll 1")
    epochs["contiguous, one key"] = (contiguous(split_keys=False), "contiguous, unroll 1")
    epochs["plain jax.numpy step"] = (plain_jnp, None)
    epochs["empty body"] = (empty, None)
    return step, carry0, epochs


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--examples", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds")
    args = ap.parse_args(argv)
    n, bs = args.examples, args.batch
    if n % bs:
        ap.error("--examples must be a multiple of --batch (every variant runs n/batch steps)")
    steps = n // bs
    head, setup = machine_line(bs, n, args.repeats).split("\n", 1)
    print(head.split("; torch")[0] + "\n" + setup, flush=True)
    xn, yn = make_data(n)
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    step, carry0, epochs = build(n, bs, args.lr)

    compiled = {}
    for name, (fn, _) in epochs.items():
        compiled[name] = jax.jit(fn).lower(carry0, x, y, jax.random.key(1)).compile()

    def run_epoch(name):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled[name](carry0, x, y, jax.random.key(1)))
        return time.perf_counter() - t0, out

    jstep = jax.jit(step)
    noop = jax.jit(lambda p, s, xb, yb, k, st=(): (p, s, {"loss": xb[0, 0]}, st))
    key = jax.random.key(0)

    def loop(f):
        t0 = time.perf_counter()
        p, s = carry0[0], carry0[1]
        order = np.random.default_rng(1).permutation(n)
        xs, ys = xn[order], yn[order]
        for i in range(0, n, bs):
            p, s, _, _ = f(p, s, xs[i : i + bs], ys[i : i + bs], key)
        jax.block_until_ready(p)
        return time.perf_counter() - t0, None

    runs = {name: (lambda name=name: run_epoch(name)) for name in compiled}
    runs["Python loop, jitted step"] = lambda: loop(jstep)
    runs["Python loop, jitted no-op"] = lambda: loop(noop)

    outs = {name: f()[1] for name, f in runs.items()}  # warm-up; results for `identical`
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, f in runs.items():
            times[name].append(f()[0])

    base = statistics.median(times["fit"])
    print(f"{'variant':<28} {'epoch (median)':>15} {'per step':>10} {'/ fit':>7}  identical")
    for name in runs:
        med = statistics.median(times[name])
        ref = epochs.get(name, (None, None))[1]
        same = ""
        if ref is not None:
            a, b = jax.tree.leaves(outs[name][0][0]), jax.tree.leaves(outs[ref][0][0])
            same = "yes" if all(np.array_equal(u, v) for u, v in zip(a, b)) else "NO"
        print(
            f"{name:<28} {med * 1e3:>12.1f} ms {med / steps * 1e6:>7.1f} us {med / base:>7.2f}  {same}"
        )


if __name__ == "__main__":
    main()
