"""One training epoch in Nielsen's configuration: jbp.fit vs a Python loop vs PyTorch (CPU).

Nielsen, *Neural Networks and Deep Learning*, ch. 1: a [784, 30, 10] sigmoid network,
quadratic cost ``C = 1/(2m) Σ ‖y − a‖²`` (``jbp.losses.mse`` on one-hot targets), plain
SGD with learning rate 3.0 and minibatches of 10, one epoch over 50,000 examples (random
data of MNIST's shape: the work per step does not depend on the values).

Contenders, all in this process on the same data, interleaved round by round so that
drifting load on a shared machine hits them alike:

- ``jbp.fit``: one epoch = one compiled ``lax.scan`` over the 5,000 shuffled minibatches
  (the ``seconds`` that ``fit`` reports, which exclude the one-off compilation).
- Python loop: the same ``jbp.make_train_step`` under ``jax.jit``, called 5,000 times from
  Python on minibatches sliced from a numpy array shuffled each epoch. Given every
  advantage: one fixed key (the net has no dropout), no per-step metric read-back.
- Python loop, typical: the same, written as usual — ``key, sub = jax.random.split(key)``
  per step and the step's loss kept (read back once at the end of the epoch).
- PyTorch (if ``import torch`` works): the same net (``nn.Linear``/``nn.Sigmoid``), the same
  cost and ``torch.optim.SGD(lr=3.0)``, minibatches from ``torch.randperm``.

Warm-up first, then ``--repeats`` rounds; medians and ratios are printed side by side.

    python bench/epoch.py                 # full configuration
    python bench/epoch.py --examples 5000 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp import optim
from jbp.layers import Dense, Sigmoid
from jbp.train import fit, make_train_step

try:  # optional contender
    import torch
except Exception:  # pragma: no cover - depends on the environment
    torch = None


def nielsen_net():
    return jbp.Sequential(
        [
            Dense(30, w_init="normal", b_init="normal"),
            Sigmoid(),
            Dense(10, w_init="normal", b_init="normal"),
            Sigmoid(),
        ]
    )


def make_data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 784), dtype=np.float32)
    labels = rng.integers(0, 10, n)
    y = np.eye(10, dtype=np.float32)[labels]
    return x, y


# --- contenders: each returns the seconds of one epoch ---------------------------------


class JbpFit:
    name = "jbp.fit (compiled epoch)"

    def __init__(self, model, params, x, y, batch, lr):
        self.model, self.params, self.batch, self.lr = model, params, batch, lr
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)
        self.round = 0

    def epoch(self):
        self.round += 1
        self.params, hist = fit(
            self.model,
            self.params,
            jbp.losses.mse,
            optim.sgd(self.lr),
            (self.x, self.y),
            batch_size=self.batch,
            epochs=1,
            key=jax.random.key(self.round),
            metrics=("loss",),
            verbose=0,
        )
        self.last_loss = hist["loss"][-1]
        return hist["seconds"][-1]


class PythonLoop:
    name = "Python loop of jitted steps"

    def __init__(self, model, params, x, y, batch, lr):
        opt = optim.sgd(lr)
        self.step = jax.jit(make_train_step(model, jbp.losses.mse, opt))
        self.params, self.opt_state = params, opt.init(params)
        self.x, self.y, self.batch = x, y, batch
        self.rng = np.random.default_rng(1)
        self.key = jax.random.key(0)

    def epoch(self):
        t0 = time.perf_counter()
        order = self.rng.permutation(len(self.x))
        xs, ys = self.x[order], self.y[order]
        p, s, b = self.params, self.opt_state, self.batch
        for i in range(0, len(xs), b):
            p, s, m, _ = self.step(p, s, xs[i : i + b], ys[i : i + b], self.key)
        jax.block_until_ready(p)
        self.params, self.opt_state = p, s
        self.last_loss = float(m["loss"])
        return time.perf_counter() - t0


class TypicalPythonLoop(PythonLoop):
    """The loop as usually written: a fresh key per step, the loss read back per step."""

    name = "Python loop, typical"

    def epoch(self):
        t0 = time.perf_counter()
        order = self.rng.permutation(len(self.x))
        xs, ys = self.x[order], self.y[order]
        p, s, b, key = self.params, self.opt_state, self.batch, self.key
        losses = []
        for i in range(0, len(xs), b):
            key, sub = jax.random.split(key)
            p, s, m, _ = self.step(p, s, xs[i : i + b], ys[i : i + b], sub)
            losses.append(m["loss"])
        self.last_loss = float(np.mean(jax.device_get(losses)))
        self.params, self.opt_state, self.key = p, s, key
        return time.perf_counter() - t0


class TorchLoop:
    name = "PyTorch CPU"

    def __init__(self, x, y, batch, lr, threads):
        torch.manual_seed(0)
        torch.set_num_threads(threads)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(784, 30),
            torch.nn.Sigmoid(),
            torch.nn.Linear(30, 10),
            torch.nn.Sigmoid(),
        )
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.batch = batch

    def epoch(self):
        t0 = time.perf_counter()
        n, b = len(self.x), self.batch
        order = torch.randperm(n)
        xs, ys = self.x[order], self.y[order]
        for i in range(0, n, b):
            xb, yb = xs[i : i + b], ys[i : i + b]
            out = self.net(xb)
            loss = 0.5 * ((out - yb) ** 2).sum() / xb.shape[0]  # Nielsen's quadratic cost
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.last_loss = float(loss.detach())
        return time.perf_counter() - t0


def machine_line(batch, n, repeats, torch_threads=1):
    dev = jax.devices()[0]
    line = (
        f"jax {jax.__version__} on {jax.default_backend()} ({dev.device_kind}); "
        f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}; "
        f"python {platform.python_version()}"
    )
    if torch is not None:
        line += f"; torch {torch.__version__} ({torch_threads} thread(s))"
    else:
        line += "; torch not importable (PyTorch column skipped)"
    return (
        line + f"\nNielsen [784, 30, 10] sigmoid, quadratic cost, SGD lr 3.0, minibatch {batch}, "
        f"{n:,} examples, float32; median of {repeats} epochs after a warm-up epoch"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--examples", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs per contender")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if importable")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch.set_num_threads (1 is fastest for this tiny net: no thread hand-offs per op)",
    )
    args = ap.parse_args(argv)
    global torch
    if args.no_torch:
        torch = None

    print(machine_line(args.batch, args.examples, args.repeats, args.torch_threads), flush=True)
    x, y = make_data(args.examples)
    model = nielsen_net()
    params, _ = model.init(jax.random.key(0), (784,))
    contenders = [
        JbpFit(model, params, x, y, args.batch, args.lr),
        PythonLoop(model, params, x, y, args.batch, args.lr),
        TypicalPythonLoop(model, params, x, y, args.batch, args.lr),
    ]
    if torch is not None:
        contenders.append(TorchLoop(x, y, args.batch, args.lr, args.torch_threads))

    for c in contenders:  # warm-up: compile, first touch of the data
        c.epoch()
    times = {c.name: [] for c in contenders}
    for _ in range(args.repeats):
        for c in contenders:
            times[c.name].append(c.epoch())

    base = statistics.median(times[contenders[0].name])
    steps = -(-args.examples // args.batch)
    print(
        f"{'contender':<30} {'epoch (median)':>15} {'per step':>10} {'jbp.fit speed-up':>17}"
        f"   final train loss"
    )
    for c in contenders:
        med = statistics.median(times[c.name])
        print(
            f"{c.name:<30} {med:>13.3f} s {med / steps * 1e6:>7.1f} us {med / base:>16.1f}x"
            f"   {c.last_loss:.4f}"
        )
    print(
        "(speed-up = contender's epoch time / jbp.fit's; targets: >= 3x the Python loop, "
        ">= 5x PyTorch CPU)"
    )


if __name__ == "__main__":
    main()
