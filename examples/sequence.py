"""Embedding + SimpleRNN learning a task that only backpropagation through time can solve.

Synthetic, offline. Each sequence starts with a *key* token (one of the ids
``1..classes``) and continues with random distractor tokens drawn from the whole
vocabulary (the key ids included), for a random total length between ``--min-len`` and
``--max-len``; shorter sequences are right-padded with id 0. The label is the key: only
its *position* tells it apart, so an order-blind bag-of-words model (``Embedding`` +
``MeanPool1D``, trained as a baseline) stays far below the RNN. The network reads the whole sequence and answers from its last real
state, so the gradient that teaches it to remember the key must flow back through every
later step: backpropagation through time (a reverse ``lax.scan`` over the cached hidden
states, written by hand in ``jbp.layers.recurrent``). Padding is handled by the mask that
``Embedding(pad_id=0)`` derives from the ids.

    python examples/sequence.py                 # ~15 s on a 2-core CPU
    python examples/sequence.py --cell lstm --max-len 40

Prints the gradient-check report, the accuracy per epoch (chance = 1/classes) and the
test accuracy.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp.layers import Dense
from jbp.layers.embedding import Embedding
from jbp.layers.masking import MeanPool1D
from jbp.layers.recurrent import LSTM, SimpleRNN

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/_common.py
from _common import (  # noqa: E402
    add_common_args,
    check_gradients_f64,
    example_parser,
    fit_and_evaluate,
)

PAD = 0


def make_data(n, *, classes, vocab, min_len, max_len, rng):
    """ids ``(n, max_len)`` int32 (key first, then distractors in ``1..vocab−1``, then 0s), labels."""
    labels = rng.integers(0, classes, n)
    lengths = rng.integers(min_len, max_len + 1, n)
    ids = rng.integers(1, vocab, (n, max_len))
    ids[:, 0] = labels + 1
    ids[np.arange(max_len)[None, :] >= lengths[:, None]] = PAD
    return jnp.asarray(ids, jnp.int32), jnp.asarray(labels, jnp.int32)


def build_model(cell, vocab, classes, hidden=64):
    """Embedding(pad_id=0) → SimpleRNN/LSTM (last real state) → Dense; ``cell="bag"``: the
    order-blind baseline Embedding → masked MeanPool1D → Dense."""
    if cell == "bag":
        return jbp.Sequential([Embedding(vocab, 16, pad_id=PAD), MeanPool1D(), Dense(classes)])
    rnn = LSTM(hidden) if cell == "lstm" else SimpleRNN(hidden)
    return jbp.Sequential([Embedding(vocab, 16, pad_id=PAD), rnn, Dense(classes)])


def main(argv=None):
    ap = example_parser(__doc__)
    ap.add_argument("--cell", choices=["rnn", "lstm"], default="rnn")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=24)
    ap.add_argument("--min-len", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--no-baseline", action="store_true", help="skip the bag-of-words baseline")
    add_common_args(ap, out=False, plot=False)  # --seed: examples/_common.py
    args = ap.parse_args(argv)
    if not 1 <= args.min_len <= args.max_len:
        ap.error("need 1 <= --min-len <= --max-len")
    if args.vocab <= args.classes:
        ap.error("--vocab must exceed --classes (pad id 0 and the keys 1..classes)")

    rng = np.random.default_rng(args.seed)
    spec = dict(classes=args.classes, vocab=args.vocab, min_len=args.min_len, max_len=args.max_len)
    x_tr, y_tr = make_data(args.train, rng=rng, **spec)
    x_te, y_te = make_data(max(args.train // 4, 1), rng=rng, **spec)
    x_va, y_va = make_data(
        max(args.train // 10, 1), rng=rng, **spec
    )  # validation, not the test set
    model = build_model(args.cell, args.vocab, args.classes, args.hidden)
    key_init, key_fit = jax.random.split(jax.random.key(args.seed))
    params, _ = model.init(key_init, x_tr.shape[1:])
    loss = jbp.losses.softmax_cross_entropy
    print(
        f"key-recall task: {args.classes} classes, lengths {args.min_len}..{args.max_len} "
        f"(padded with id {PAD}), {x_tr.shape[0]} train / {x_va.shape[0]} validation / "
        f"{x_te.shape[0]} test; "
        f"chance accuracy {1 / args.classes:.2f}"
    )
    print(model)

    # the proof, in float64, on a few padded sequences
    report = check_gradients_f64(model, loss, params, x_tr[:6], y_tr[:6])
    print(report)

    training = dict(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, key=key_fit)
    params, history, result = fit_and_evaluate(
        model, params, loss, (x_tr, y_tr), (x_te, y_te), validation=(x_va, y_va), **training
    )
    out = {"report": report, "history": history, "test": result}
    if not args.no_baseline:
        bag = build_model("bag", args.vocab, args.classes)
        p_bag, _ = bag.init(key_init, x_tr.shape[1:])
        _, _, out["baseline"] = fit_and_evaluate(
            bag, p_bag, loss, (x_tr, y_tr), (x_te, y_te), verbose=0, **training
        )
        print(
            f"order-blind baseline (Embedding + MeanPool1D + Dense): test accuracy "
            f"{out['baseline']['accuracy']:.4f}"
        )
    print(
        f"{args.cell.upper()} test accuracy {result['accuracy']:.4f} (chance {1 / args.classes:.2f})"
    )
    return out


if __name__ == "__main__":
    main()
