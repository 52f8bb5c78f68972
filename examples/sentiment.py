"""Sentiment: is a movie-review sentence fresh or rotten? Embedding-bag + MLP, or an RNN.

The embedded Rotten Tomatoes corpus (Pang & Lee's movie-review sentences;
``jbp.datasets.rotten_tomatoes``): 10,201 train / 2,551 test sentences, 1 = fresh
(positive), 0 = rotten (negative). A vocabulary of the ``--vocab`` most frequent words is
built on the *training* sentences only (``jbp.datasets.Vocabulary``; id 0 = padding,
id 1 = unknown word); each sentence becomes ``--max-len`` ids, right-padded with 0.

Models (``--model``):

  bag   Embedding(vocab, d, pad_id=0) → MeanPool1D (the mean of the sentence's word
        vectors, padding excluded by the mask) → Dense(hidden) → ReLU → Dropout → Dense(1)
  rnn   Embedding(vocab, d, pad_id=0) → SimpleRNN(hidden) (its last real state) →
        Dropout → Dense(1); backpropagation through time, written by hand
  lstm  the same with an LSTM cell

Loss: **one logit and** ``jbp.losses.binary_cross_entropy`` (the stable
``softplus(z) − t·z``; gradient ``(σ(z) − t)/n``) — for two classes it is the same model
as a 2-way softmax with one logit fixed at 0, with half the output weights.
``jbp.losses.accuracy`` reads a ``(n, 1)`` logit as "fresh" when ``z > 0``.

A validation slice of the training sentences picks the epoch to keep (early stopping on
the validation loss, best epoch restored); the test split is only used for the final table,
which compares the test accuracy with the majority-class baseline (always "fresh",
about 57.8%). Offline, on a 2-core CPU: ``bag`` ~10 s, ``rnn`` ~15 s::

    python examples/sentiment.py                   # bag of embeddings, sentiment.png
    python examples/sentiment.py --model rnn
    python examples/sentiment.py --model lstm --dropout 0.3
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp.datasets import Vocabulary, rotten_tomatoes
from jbp.layers import LSTM, Dense, Dropout, Embedding, MeanPool1D, ReLU, SimpleRNN
from jbp.plotting import save_figure

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/_common.py
from _common import (  # noqa: E402
    add_common_args,
    check_gradients_f64,
    example_parser,
    figure_path,
    fit_and_evaluate,
    pyplot_or_none,
    results_table,
    save_plot,
)

PAD_ID = 0  # Vocabulary: id 0 is "<pad>", id 1 is "<unk>"


def build_model(
    kind: str, vocab_size: int, dim: int = 64, hidden: int = 64, dropout: float = 0.5
) -> jbp.Sequential:
    """The ``bag``, ``rnn`` or ``lstm`` sentence classifier (one output logit)."""
    emb = Embedding(vocab_size, dim, pad_id=PAD_ID)
    if kind == "bag":
        return jbp.Sequential(
            [
                emb,
                MeanPool1D(),
                Dense(hidden, w_init="he_normal"),
                ReLU(),
                Dropout(dropout),
                Dense(1),
            ]
        )
    cell = SimpleRNN(hidden) if kind == "rnn" else LSTM(hidden)
    return jbp.Sequential([emb, cell, Dropout(dropout), Dense(1)])


def load(vocab_size: int, max_len: int, val_fraction: float, seed: int, limit: int = 0):
    """Encoded train / validation / test splits and the vocabulary (built on train only)."""
    (texts, y), (texts_te, y_te) = rotten_tomatoes(seed=seed)
    if limit:
        texts, y = texts[:limit], y[:limit]
        texts_te, y_te = texts_te[: max(limit // 4, 1)], y_te[: max(limit // 4, 1)]
    perm = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(round(val_fraction * len(y))))
    va, tr = perm[:n_val], perm[n_val:]
    vocab = Vocabulary.build([texts[i] for i in tr], max_size=vocab_size)
    enc = lambda ts: jnp.asarray(vocab.encode(ts, max_len=max_len)[0], jnp.int32)  # noqa: E731
    lab = lambda a: jnp.asarray(a, jnp.float32)[:, None]  # noqa: E731
    return {
        "vocab": vocab,
        "train": (enc([texts[i] for i in tr]), lab(y[tr])),
        "val": (enc([texts[i] for i in va]), lab(y[va])),
        "test": (enc(texts_te), lab(y_te)),
        "test_texts": texts_te,
    }


def train_and_test(model, params, loss, d: dict, args, key):
    """Adam (``args.lr``, ``args.batch_size``, at most ``args.epochs``) with early stopping on
    the validation loss (``args.patience``, best epoch restored), then the test split and the
    majority-class baseline (the training split's majority label, 1 on a tie); prints the kept
    epoch. Shared with examples/transformer.py.

    Returns:
      ``(params, history, test, majority, base_acc)``: the trained parameters, ``fit``'s
      history, ``evaluate``'s result on the test split, the majority label and its test
      accuracy.
    """
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = d["train"], d["val"], d["test"]
    params, history, test = fit_and_evaluate(
        model,
        params,
        loss,
        (x_tr, y_tr),
        (x_te, y_te),
        lr=args.lr,
        batch_size=min(args.batch_size, len(x_tr)),
        epochs=args.epochs,
        key=key,
        validation=(x_va, y_va),
        patience=args.patience,
    )
    majority = int(np.mean(np.asarray(y_tr)) >= 0.5)
    base_acc = float(np.mean(np.asarray(y_te)[:, 0] == majority))
    print(f"kept epoch {history.best_epoch} of {len(history)}")
    return params, history, test, majority, base_acc


def plot(history, path, title):
    plt = pyplot_or_none()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ep = history["epoch"]
    for ax, (tr, va, label) in zip(
        axes,
        [("loss", "val_loss", "binary cross-entropy"), ("accuracy", "val_accuracy", "accuracy")],
    ):
        ax.plot(ep, history[tr], marker=".", label="train (dropout on)")
        ax.plot(ep, history[va], marker=".", label="validation")
        if history.best_epoch:
            ax.axvline(history.best_epoch, color="gray", ls=":", label="best epoch (kept)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def main(argv=None) -> dict:
    p = example_parser(__doc__, summary=True)
    p.add_argument(
        "--model",
        choices=("bag", "rnn", "lstm"),
        default="bag",
        help="bag of embeddings + MLP (default), SimpleRNN or LSTM",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=15,
        help="maximum epochs (default 15; early stopping usually ends sooner)",
    )
    p.add_argument(
        "--vocab",
        type=int,
        default=10000,
        help="vocabulary size incl. <pad> and <unk> (default 10000)",
    )
    p.add_argument("--max-len", type=int, default=40, help="words kept per sentence (default 40)")
    p.add_argument("--dim", type=int, default=64, help="embedding size (default 64)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout rate (drop probability)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="slice of the training sentences used to pick the epoch (default 0.1)",
    )
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience (epochs)")
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="use only N training sentences (and N/4 test ones): smoke tests",
    )
    add_common_args(p)  # --out DIR (default out/), --seed, --no-plot: examples/_common.py
    args = p.parse_args(argv)
    args.out = figure_path(args.out, "sentiment.png")
    if min(args.epochs, args.max_len, args.dim, args.hidden, args.batch_size, args.patience) < 1:
        p.error("--epochs, --max-len, --dim, --hidden, --batch-size and --patience must be >= 1")
    if args.vocab < 3:
        p.error(f"--vocab must be >= 3 (<pad>, <unk> and at least one word), got {args.vocab}")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must lie in [0, 1)")
    if not 0.0 < args.val_fraction < 0.5:
        p.error("--val-fraction must lie in (0, 0.5)")
    t0 = time.perf_counter()

    d = load(args.vocab, args.max_len, args.val_fraction, args.seed, args.limit)
    (x_tr, y_tr), (x_va, _), (x_te, y_te) = d["train"], d["val"], d["test"]
    vocab = d["vocab"]
    unk = float(np.mean(np.asarray(x_te) == 1) / max(np.mean(np.asarray(x_te) != PAD_ID), 1e-9))
    print(
        f"Rotten Tomatoes: {len(x_tr)} train, {len(x_va)} validation, {len(x_te)} test "
        f"sentences; vocabulary {len(vocab)} ids (train split only; {100 * unk:.1f}% of test "
        f"words unknown); {args.max_len} ids per sentence"
    )

    model = build_model(args.model, len(vocab), args.dim, args.hidden, args.dropout)
    key_init, key_check, key_fit = jax.random.split(jax.random.key(args.seed), 3)
    params, _ = model.init(key_init, x_tr.shape[1:])
    loss = jbp.losses.binary_cross_entropy
    print(model)
    # the proof, in float64, on a few sentences, dropout on
    report = check_gradients_f64(model, loss, params, x_tr[:8], y_tr[:8], key=key_check)
    print(report)

    params, history, test, majority, base_acc = train_and_test(
        model, params, loss, d, args, key_fit
    )
    names = {
        "bag": f"bag of embeddings + MLP ({args.dim}-d, {args.hidden} hidden)",
        "rnn": f"SimpleRNN ({args.hidden} units)",
        "lstm": f"LSTM ({args.hidden} units)",
    }
    print()
    print(
        results_table(
            [
                (f"majority class (always {'fresh' if majority else 'rotten'})", base_acc, None),
                (names[args.model], test["accuracy"], test["loss"]),
            ]
        )
    )
    print(
        f"{args.model} beats the majority-class baseline by "
        f"{100 * (test['accuracy'] - base_acc):+.1f} points"
    )

    logits = np.asarray(jax.jit(model.apply)(params, x_te[:4]))[:, 0]  # one compile, not op by op
    for text, z, t in zip(d["test_texts"][:4], logits, np.asarray(y_te)[:4, 0]):
        prob = 1.0 / (1.0 + np.exp(-z))
        short = text if len(text) <= 70 else text[:67] + "..."
        print(f"  P(fresh) {prob:.2f}  label {'fresh ' if t else 'rotten'}  {short}")

    out = {
        "report": report,
        "history": history,
        "test": test,
        "baseline_accuracy": base_acc,
        "model": args.model,
        "vocab_size": len(vocab),
        "plot": None,
    }
    title = (
        f"Rotten Tomatoes sentiment — {names[args.model]}: "
        f"test accuracy {test['accuracy']:.3f} (majority {base_acc:.3f})"
    )
    out["plot"] = save_plot(args, args.out, lambda path: plot(history, path, title))
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
