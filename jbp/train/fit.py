"""``fit``: one training loop for full-batch gradient descent, SGD and minibatch training.

One knob, ``batch_size``, picks the algorithm (see :mod:`jbp.train.batching`). **One epoch is
one compiled function**: a ``lax.scan`` of the step (:func:`jbp.train.make_train_step`) over
the ⌊n/k⌋ full batches of the shuffled data, then — when k does not divide n — one more step
on the remaining ``r = n mod k`` examples, inside the same compiled function. That last step
sees a batch of its true size ``r``, so its gradient (and the mean-reduced loss) is averaged
over ``r`` exactly. ``drop_last=True`` skips it instead. There is no Python per step.
"""
from __future__ import annotations

import numbers
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jbp._validate import (check_augment, check_batch_size, check_data, check_epochs,
                           check_grad_fn, check_key, check_model_and_loss, check_optimizer,
                           eval_batch_size as check_eval_batch_size)
from jbp.callbacks import EarlyStopping, as_callback, format_epoch
from jbp.history import History
from jbp.metrics import get_metrics
from jbp.train.batching import batch_plan, scan_batches
from jbp.train.evaluate import make_eval
from jbp.train.step import make_train_step

__all__ = ["fit"]


def _make_epoch(step, *, n, batch_size, shuffle, drop_last, finalizers):
    """``epoch(carry, x, y, key) -> (carry, mean_metrics)``, one compiled function.

    Keys: ``k_perm, k_steps = split(key)``; the order is ``permutation(k_perm, n)`` (or
    ``arange(n)`` without shuffling, and always for full-batch GD, where the order cannot
    matter); batch ``j`` is ``order[j·k : (j+1)·k]`` and its step gets
    ``split(k_steps, steps)[j]``; the remainder batch is ``order[nb·k:]``.
    """
    bs, nb, rem = batch_plan(n, batch_size, drop_last)
    n_steps = nb + (1 if rem else 0)
    permute = shuffle and not (nb == 1 and rem == 0)

    def run(carry, xb, yb, k):
        params, opt_state, state = carry
        params, opt_state, m, state = step(params, opt_state, xb, yb, k, state)
        m.pop("extras", None)
        return (params, opt_state, state), m

    def epoch(carry, x, y, key):
        k_perm, k_steps = jax.random.split(key)
        keys = jax.random.split(k_steps, n_steps)
        order = jax.random.permutation(k_perm, n) if permute else None
        carry, means = scan_batches(run, carry, x, y, keys, bs=bs, nb=nb, rem=rem, order=order)
        return carry, {k: finalizers.get(k, _same)(v) for k, v in means.items()}

    return epoch


def _same(v):
    return v


class _Compiled:
    """``jax.jit`` compiled ahead of time per input signature, so compile time is measured
    apart from the epochs (``seconds``)."""

    def __init__(self, fn):
        self.jitted = jax.jit(fn)
        self.cache = {}
        self.compile_seconds = 0.0

    def __call__(self, *args):
        leaves, tree = jax.tree.flatten(args)
        sig = (tree, tuple((np.shape(a), jnp.result_type(a), getattr(a, "weak_type", False))
                           for a in leaves))
        fn = self.cache.get(sig)
        if fn is None:
            t0 = time.perf_counter()
            fn = self.cache[sig] = self.jitted.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - t0
        return fn(*args)


def _strong(tree):
    """Leaves as committed, non-weakly-typed arrays (so signatures stay fixed across epochs)."""
    return jax.tree.map(lambda a: jnp.array(a, dtype=jnp.asarray(a).dtype), tree)


def _epoch_key(key, epoch_index):
    return jax.random.fold_in(key, epoch_index)



def fit(model, params, loss, optimizer, train_data, *, batch_size: int | None = None,
        epochs: int, key, validation_data=None, metrics=("loss", "accuracy"),
        early_stopping: EarlyStopping | int | None = None, shuffle: bool = True,
        drop_last: bool = False, augment: Callable | None = None, regularizer=None,
        callbacks=(), verbose: int = 1, grad_fn: str = "manual", state=None,
        opt_state=None, eval_batch_size: int | None = 1024, privacy=None):
    """Train ``model`` from ``params``; return ``(params, history)``.

    ``batch_size``: ``None`` (or n) = full-batch gradient descent, ``1`` = SGD (the data
    reshuffled every epoch), ``k`` = minibatch; each step's gradient is the mean over its
    batch. With ``n mod k = r > 0`` the last step of an epoch trains on the ``r`` remaining
    examples, averaged over ``r`` (``drop_last=True`` skips them; with shuffling, a
    different ``r`` each epoch). One epoch is one compiled function: a ``lax.scan`` of the
    step over the batches, plus that last step.

    Randomness comes only from ``key``: epoch ``e`` (0-based) uses
    ``jax.random.fold_in(key, e)``, split into the shuffling key and one key per step
    (each step splits its key into the ``augment`` key and the forward key, e.g. for
    dropout). The same key gives identical parameters and history.

    - ``validation_data=(x_val, y_val)``: evaluated after every epoch (``train=False``) →
      ``val_loss``, ``val_<metric>``; in chunks of ``eval_batch_size``.
    - ``metrics``: names from :data:`jbp.metrics.METRICS` (``"loss"``, ``"accuracy"``,
      ``"mse"``, ``"rmse"``, ``"mae"``). Train metrics are the example-weighted mean over
      the epoch's batches, each computed on its batch before that step's update.
    - ``regularizer`` (``value(params)``, ``grad(params)``): added to the gradient; the
      history reports the data ``loss`` and the ``penalty`` separately.
    - ``augment(key, x) -> x``: applied to every training batch inside the compiled epoch.
    - ``early_stopping``: an :class:`EarlyStopping`, or an int ``patience`` for
      ``EarlyStopping("val_loss", patience)`` (``"loss"`` without validation data).
    - ``callbacks``: functions ``callback(epoch, logs, params) -> bool | None`` or
      :class:`jbp.callbacks.Callback` objects, called after each epoch in order (early
      stopping last); returning ``True`` stops training. ``logs`` is the epoch's record:
      entries a callback adds to it (say ``logs["test_accuracy"]``) go into the history
      and the progress line.
    - ``verbose=1``: one line per epoch; ``0``: silent.
    - ``grad_fn="autodiff"``: ``jax.grad`` instead of the hand-written backward.
    - ``state``: initial non-trainable state of a stateful model (default
      ``model.init_state``); the final one is ``history.state``.
    - ``opt_state``: to resume an optimizer (default ``optimizer.init(params)``); the
      final one is ``history.opt_state``.
    - ``privacy=jbp.dp.DPConfig(...)``: DP-SGD (:mod:`jbp.dp.sgd`): each epoch is
      ``steps_per_epoch`` Poisson-sampled, padded, clipped and noised steps in one
      ``lax.scan`` (``batch_size``, ``shuffle`` are then unused; leave ``batch_size=None``);
      the history gains ``epsilon`` (ε spent so far, :func:`jbp.dp.epsilon`),
      ``dp_clipped``, ``dp_rows`` and ``dp_dropped`` per epoch.

    Bad arguments raise ``ValueError``/``TypeError`` naming the argument before anything
    is compiled. Ctrl-C between epochs returns the parameters so far
    (``history.interrupted``).
    """
    # ---- checks, all before compiling ----
    check_model_and_loss(model, loss, regularizer)
    check_optimizer(optimizer)
    check_grad_fn(grad_fn)
    check_augment(augment)
    epochs = check_epochs(epochs)
    key = check_key(key)
    metric_objs = get_metrics(metrics)
    x, y = check_data("train_data", train_data)
    n = x.shape[0]
    batch_size = check_batch_size(batch_size, n)
    val = None
    if validation_data is not None:
        val = check_data("validation_data", validation_data)
        if val[0].shape[1:] != x.shape[1:]:
            raise ValueError(f"validation_data: x has example shape {tuple(val[0].shape[1:])}, "
                             f"train_data's x has {tuple(x.shape[1:])}")
        eval_bs = check_eval_batch_size(eval_batch_size, val[0].shape[0], "eval_batch_size")
    if isinstance(verbose, bool) or not isinstance(verbose, numbers.Integral):
        raise TypeError(f"verbose: expected 0 (silent) or 1 (a line per epoch), got {verbose!r}")
    if hasattr(callbacks, "on_epoch_end") or callable(callbacks):
        callbacks = (callbacks,)
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks: expected a list of callbacks, got {type(callbacks).__name__}")
    cbs = [as_callback(c, f"callbacks[{i}]") for i, c in enumerate(callbacks)]
    if early_stopping is not None:
        if isinstance(early_stopping, numbers.Integral) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping("val_loss" if val is not None else "loss",
                                           patience=int(early_stopping))
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping: expected jbp.EarlyStopping(...) or an integer "
                            f"patience, got {type(early_stopping).__name__}")
        cbs.append(early_stopping)  # last: it sees what the other callbacks added
    columns = [m.name for m in metric_objs] + (["penalty"] if regularizer is not None else [])
    if val is not None:
        columns += [f"val_{m.name}" for m in metric_objs]
    for c in cbs:
        mon = getattr(c, "monitor", None)
        if isinstance(c, EarlyStopping) and mon not in columns:
            hint = (" (val_* columns need validation_data)"
                    if mon.startswith("val_") and val is None else "")
            raise ValueError(f"early_stopping: monitor {mon!r} is not a column of this run; "
                             f"columns: {', '.join(columns)}{hint}")

    if state is None:
        state = model.init_state(tuple(x.shape[1:]))
    if opt_state is None:
        opt_state = optimizer.init(params)

    # ---- build and compile ----
    finalizers = {m.name: m.finalize for m in metric_objs}
    if privacy is not None:  # DP-SGD: jbp.dp.sgd builds the whole epoch
        from jbp.dp.sgd import check_fit_privacy, make_private_epoch  # noqa: PLC0415

        check_fit_privacy(privacy, batch_size=batch_size, n=n, grad_fn=grad_fn,
                          drop_last=drop_last)
        columns += ["dp_clipped", "dp_rows", "dp_dropped"]
        epoch_fn = _Compiled(make_private_epoch(
            privacy, model, loss, optimizer, n=n, regularizer=regularizer,
            metrics=[m.name for m in metric_objs], augment=augment, finalizers=finalizers))
    else:
        step = make_train_step(model, loss, optimizer, regularizer=regularizer,
                               grad_fn=grad_fn, metrics=[m.name for m in metric_objs],
                               augment=augment)
        epoch_fn = _Compiled(_make_epoch(step, n=n, batch_size=batch_size,
                                         shuffle=bool(shuffle), drop_last=bool(drop_last),
                                         finalizers=finalizers))
    eval_fn = None
    if val is not None:
        eval_fn = _Compiled(make_eval(model, loss, metric_objs, n=val[0].shape[0],
                                      batch_size=eval_bs))

    history = History(epochs=epochs)
    for c in cbs:
        if hasattr(c, "on_train_begin"):
            c.on_train_begin()
    carry = _strong((params, opt_state, state))

    try:
        for e in range(epochs):
            compile_before = epoch_fn.compile_seconds + (eval_fn.compile_seconds if eval_fn else 0.0)
            k_epoch = _epoch_key(key, e)
            t0 = time.perf_counter()
            new_carry, train_m = epoch_fn(carry, x, y, k_epoch)
            train_m = jax.device_get(train_m)
            val_m = {}
            if eval_fn is not None:
                val_m = jax.device_get(eval_fn(new_carry[0], new_carry[2], *val))
            compile_now = (epoch_fn.compile_seconds + (eval_fn.compile_seconds if eval_fn else 0.0)
                           - compile_before)
            seconds = time.perf_counter() - t0 - compile_now
            carry = new_carry
            logs = {"epoch": e + 1}
            logs.update({k: float(train_m[k]) for k in columns if k in train_m})
            logs.update({f"val_{m.name}": float(val_m[m.name]) for m in metric_objs if val_m})
            if privacy is not None:
                logs["epsilon"] = privacy.epsilon_after(e + 1)
            logs["seconds"] = seconds
            stop = False
            for c in cbs:  # may add entries to logs (e.g. a test accuracy): they are kept
                if c.on_epoch_end(e + 1, logs, carry[0], carry[2]):
                    stop = True
            logs["seconds"] = logs.pop("seconds")
            history.append(logs)
            if verbose:
                print(format_epoch(e + 1, epochs, logs, compile_now), flush=True)
            if stop:
                history.stopped_epoch = e + 1
                break
    except KeyboardInterrupt:
        history.interrupted = True
        if verbose:
            print(f"interrupted after {len(history)} epoch(s)", flush=True)

    params, opt_state, state = carry
    for c in cbs:
        if hasattr(c, "on_train_end"):
            replaced = c.on_train_end(params, state)
            if replaced is not None:
                params, state = replaced
    if early_stopping is not None:
        history.best_epoch = early_stopping.best_epoch
        if verbose and early_stopping.stopped_epoch is not None:
            restored = (f"; restored epoch {early_stopping.best_epoch}"
                        if early_stopping.restore_best and early_stopping.best_epoch else "")
            print(f"early stopping at epoch {early_stopping.stopped_epoch}: "
                  f"{early_stopping.monitor} did not improve for {early_stopping.patience} "
                  f"epoch(s){restored}", flush=True)
    history.compile_seconds = epoch_fn.compile_seconds + (eval_fn.compile_seconds if eval_fn else 0.0)
    history.state = state
    history.opt_state = opt_state
    return params, history
