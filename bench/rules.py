"""The cost of the ``jbp.rules.Alignment`` extension inside a training step.

One ``jax.jit``-ed AdamW training step (forward, hand-written backward, optimizer update) of
the Fashion-MNIST MLP of ``examples/learning_rules.py`` (784 → Dense(256) → ReLU → Dense(10),
batch 128, random float32 data) under each learning rule, with and without
``extensions=[Alignment(method)]`` for each ``--methods`` entry (``auto``: the Gram form
for a ``Dense`` layer when it needs fewer multiply-adds; ``direct``: backprop's weight
gradient formed); timed with ``bench/extensions.py``'s ``race`` (warm-up, then ``--repeats``
alternating rounds of ``--iters`` calls, medians). No forward pass is added: the extension
recomputes nothing above the first layer whose backward differs from backprop, one
``δ Wᵀ`` per layer below it, and per rule layer either ``aᵀδ_bp`` (``N·in·out``
multiply-adds) or the Gram form (``N²(in + 2·out)``). ``--hidden 256 256`` adds hidden
layers, ``--batch`` changes ``N``.

Measured (2-core CPU shared with other jobs, load 3-5; medians of 7 rounds; FA / DFA / KP):
batch 128, ``auto`` 1.48 / 1.33 / 1.34× the plain step, ``direct`` 1.64 / 1.48 / 1.44×, the
extension before the Gram form and the skipped layers 1.69 / 1.52 / 1.91× (same machine,
minutes apart); batch 32, ``auto`` 1.34 / 1.18 / 1.24×, before 2.33 / 1.65 / 2.12×. The FLOP
count of ``auto`` at batch 128 is 1.41× (21.5 M extra multiply-adds on the step's 52.4 M):
an exact per-layer angle cannot cost less than ``min(N·in·out, N²(in + 2·out))`` on top of
the step's ``2·N·in·out`` for that layer. At batch 32 the FLOP count is 1.10×; what remains
there is memory traffic (``‖∇W_rule‖`` and, for FA/KP, the sums over ``B`` and ``W``).

``--epoch-steps S`` (default 40; 0 skips it) adds the row of ``fit(..., record=
[Alignment()], record_every=k)``: one compiled epoch of ``fit`` (``S`` minibatches of
``--batch``, AdamW, shuffled) with the extension recorded on every ``k``-th step
(``--record-every``, default 10; also ``k = 1`` and ``k`` > ``S``, which records step 0
only: the ``lax.cond`` alone), against the same epoch without recording, interleaved
rounds in one process, the median of the per-round ratios; the last column checks the
parameters are bit-identical.

Measured (same shared 2-core CPU, load 4-5.5, 15 rounds of 2 epochs of 40 steps, FA / DFA /
KP): ``k = 10`` 1.06 / 1.05 / 1.07× the epoch without recording, ``k = 41`` (step 0 only:
the ``lax.cond`` and the counters) 1.02 / 1.02 / 1.04×, every step 1.44 / 1.28 / 1.40×;
parameters bit-identical. A first version that put the whole step, optimizer update
included, under the ``lax.cond`` cost 1.25× with step 0 only (the conditional copied the
parameters and AdamW's moments every step) and 1.27× for ``k = 10`` (FA).

    python bench/rules.py
    python bench/rules.py --iters 20 --repeats 5 --hidden 256 256
    python bench/rules.py --methods auto --epoch-steps 40 --record-every 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from extensions import data, race  # noqa: E402

import jbp  # noqa: E402
from jbp import optim  # noqa: E402
from jbp.layers import Dense, ReLU  # noqa: E402
from jbp.rules import Alignment, dfa, with_rule  # noqa: E402

LOSS = jbp.losses.softmax_cross_entropy


def step_fn(model, extensions):
    run = jbp.backprop(model, LOSS, extensions=extensions)
    opt = optim.adamw(1e-3, weight_decay=1e-4)

    def step(params, opt_state, state, x, y):
        out = run(params, x, y, state=state)
        updates, opt_state = opt.update(out.grads, opt_state, params)
        return (
            optim.apply_updates(params, updates),
            opt_state,
            out.state,
            out.loss,
            out.extras.get("alignment"),
        )

    return jax.jit(step), opt


def epoch_fn(model, steps, batch, record, every):
    """One compiled epoch of ``fit`` (its own ``_make_epoch``) over ``steps`` batches."""
    from jbp.train.fit import _Compiled, _make_epoch  # noqa: PLC0415 - fit's epoch, as fit builds it
    from jbp.train.record import Recorder  # noqa: PLC0415
    from jbp.train.step import make_recording_step  # noqa: PLC0415

    opt = optim.adamw(1e-3, weight_decay=1e-4)
    step = jbp.make_train_step(model, LOSS, opt, metrics=("loss",))
    recorder = rec_step = None
    if record:
        recorder = Recorder(record, every, steps)
        rec_step = make_recording_step(model, LOSS, opt, record, metrics=("loss",))
    epoch = _make_epoch(
        step,
        n=steps * batch,
        batch_size=batch,
        shuffle=True,
        drop_last=False,
        finalizers={},
        recorder=recorder,
        rec_step=rec_step,
    )
    return _Compiled(epoch), opt


def epoch_row(a, net, rule, model):
    """``fit``'s epoch with ``record=[Alignment()]`` every k steps vs without (one rule)."""
    steps = a.epoch_steps
    x, y = data((784,), steps * a.batch, seed=1)
    params, _ = model.init(jax.random.key(0), (784,))
    state = model.init_state((784,))
    ks = sorted({1, a.record_every, steps + 1})
    fns, outs = {}, {}
    for label, rec, k in [("plain", (), 1)] + [(f"k={k}", (Alignment(),), k) for k in ks]:
        f, opt = epoch_fn(model, steps, a.batch, rec, k)
        carry = (params, opt.init(params), state)
        fns[label] = (lambda f=f, c=carry: lambda: f(c, x, y, jax.random.key(3)))()
        outs[label] = jax.block_until_ready(fns[label]())[0][0]
    for f in fns.values():  # warm-up
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(a.repeats):  # interleaved rounds; a ratio per round, then the median
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(a.epoch_iters):
                out = f()
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - t) / a.epoch_iters)
    t0 = statistics.median(times["plain"])
    med = {k: t0 * statistics.median(u / v for u, v in zip(times[k], times["plain"])) for k in fns}
    same = all(
        all(
            bool((u == v).all())
            for u, v in zip(jax.tree.leaves(outs[k]), jax.tree.leaves(outs["plain"]))
        )
        for k in outs
    )
    label = {1: "every step", steps + 1: f"k={steps + 1} (step 0 only)"}
    print(
        f"  {rule:<14} epoch of {steps} steps {t0 * 1e3:7.2f} ms"
        + "".join(f"   {label.get(k, f'k={k}')} {med[f'k={k}'] / t0:4.2f}×" for k in ks)
        + f"   params bit-identical: {same}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, nargs="+", default=[256])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rules", nargs="+", default=["fa", "dfa", "kolen_pollack"])
    p.add_argument(
        "--methods",
        nargs="+",
        default=["auto", "direct"],
        choices=["auto", "gram", "direct"],
        help="Alignment(method=...) variants to time",
    )
    p.add_argument("--epoch-steps", type=int, default=40, help="steps of the fit epoch (0: skip)")
    p.add_argument("--record-every", type=int, default=10)
    p.add_argument("--epoch-iters", type=int, default=2, help="epochs per timed round")
    a = p.parse_args(argv)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; MLP 784-"
        f"{'-'.join(map(str, a.hidden))}-10, batch {a.batch}, AdamW step"
    )
    net = jbp.Sequential(
        [l for h in a.hidden for l in (Dense(h, w_init="he_normal"), ReLU())] + [Dense(10)]
    )
    x, y = data((784,), a.batch)
    for rule in a.rules:
        model = dfa(net) if rule == "dfa" else with_rule(net, rule)
        params, _ = model.init(jax.random.key(0), (784,))
        state = model.init_state((784,))
        fns, _args = {}, None
        variants = [("step", ())] + [(f"+{m}", (Alignment(m),)) for m in a.methods]
        for label, exts in variants:
            f, opt = step_fn(model, exts)
            fns[label] = (lambda f=f, o=opt.init(params): lambda p, s, x, y: f(p, o, s, x, y))()
        med = race(fns, (params, state, x, y), a.iters, a.repeats)
        t0 = med["step"]
        print(
            f"  {rule:<14} step {t0 * 1e3:7.3f} ms"
            + "".join(
                f"   Alignment({m!r}) {med['+' + m] * 1e3:7.3f} ms = {med['+' + m] / t0:4.2f}×"
                for m in a.methods
            )
        )
    if a.epoch_steps:
        print(
            f"fit epoch, record=[Alignment()] every k steps vs no recording (median of the "
            f"ratios of {a.repeats} interleaved rounds of {a.epoch_iters} epochs):"
        )
        for rule in a.rules:
            model = dfa(net) if rule == "dfa" else with_rule(net, rule)
            epoch_row(a, net, rule, model)


if __name__ == "__main__":
    main()
