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

    python bench/rules.py
    python bench/rules.py --iters 20 --repeats 5 --hidden 256 256
"""

from __future__ import annotations

import argparse
import sys
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


if __name__ == "__main__":
    main()
