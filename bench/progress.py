"""Cost of ``fit(progress_every=k)``: an SGD epoch with and without progress lines.

The same ``fit`` call (SGD, batch size 1, a small MLP on random data) with
``progress_every=None`` and ``progress_every=k``, alternating, the fastest epoch of each
``fit`` kept, median over rounds. Lines are printed to a discarded buffer.

    python bench/progress.py --n 20000 --every 5000 --repeats 3
"""

import argparse
import contextlib
import io
import platform

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp import optim


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="examples (= SGD steps per epoch)")
    ap.add_argument("--every", type=int, default=5000, help="progress_every")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.n, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.n), jnp.int32)
    model = jbp.Sequential(
        [jbp.layers.Dense(args.width), jbp.layers.Sigmoid(), jbp.layers.Dense(10)]
    )
    params, _ = model.init(jax.random.key(0), (64,))
    times: dict = {None: [], args.every: []}
    for _ in range(args.repeats):
        for every in times:
            with contextlib.redirect_stdout(io.StringIO()):
                _, h = jbp.fit(
                    model, params, jbp.losses.softmax_cross_entropy, optim.sgd(0.02), (x, y),
                    batch_size=1, epochs=2, key=jax.random.key(1), progress_every=every,
                )  # fmt: skip
            times[every].append(min(r["seconds"] for r in h.records))
    print(f"jax {jax.__version__} on {jax.default_backend()}; {platform.machine()}; "
          f"MLP 64-{args.width}-10, SGD, {args.n} steps per epoch; median of {args.repeats}")  # fmt: skip
    base = float(np.median(times[None]))
    for every, t in times.items():
        m = float(np.median(t))
        label = "no progress lines" if every is None else f"progress_every={every}"
        print(f"  {label:28s} {m * 1e3:8.2f} ms/epoch  {m / args.n * 1e6:6.2f} us/step  "
              f"{m / base:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
