"""One training loop for full-batch gradient descent, SGD and minibatch training.

One knob, ``batch_size``, picks the algorithm of the seed:

==================  ======================  =========================================
``batch_size``      algorithm               steps per epoch (n examples)
==================  ======================  =========================================
``None`` (or ``n``)  full-batch GD           1: the gradient averaged over all n
``1``               stochastic GD (SGD)     n: one example each, reshuffled every epoch
``k``               minibatch GD            ⌈n/k⌉: each gradient averaged over its batch
==================  ======================  =========================================

- :func:`make_train_step` builds the pure, jit-able step
  ``step(params, opt_state, x, y, key) -> (params, opt_state, metrics)``: forward, loss,
  the hand-written backward (or ``jax.grad`` with ``grad_fn="autodiff"``), regularizer,
  optimizer update. A *stateful* model (``model.stateful``, e.g. BatchNorm) gets
  ``step(params, opt_state, x, y, key, state) -> (params, opt_state, metrics, state)``.
- :func:`fit` runs epochs. **One epoch is one compiled function**: a ``lax.scan`` of
  ``step`` over the ⌊n/k⌋ full batches of the shuffled data, then — when k does not divide
  n — one more ``step`` on the remaining ``r = n mod k`` examples, inside the same compiled
  function. That last step sees a batch of its true size ``r``, so its gradient (and the
  mean-reduced loss) is averaged over ``r`` exactly: no padding, no masks, no weights.
  ``drop_last=True`` skips it instead. There is no Python per step.
- :func:`evaluate` computes loss and metrics on a data set in (compiled) chunks.
"""
from __future__ import annotations

import math
import numbers
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jbp.callbacks import EarlyStopping, as_callback, format_epoch
from jbp.core import Layer, _check_batch, _check_model_and_loss, loss_value_and_grad
from jbp.history import History
from jbp.metrics import get_metrics

__all__ = ["make_train_step", "fit", "evaluate", "parse_batch_size", "batch_plan"]

_GRAD_FNS = ("manual", "autodiff")


def _apply_updates(params, updates):
    try:  # jbp.optim is the project's; fall back to the protocol's definition
        from jbp.optim import apply_updates
    except ImportError:  # pragma: no cover
        return jax.tree.map(lambda p, u: jnp.asarray(p + u).astype(jnp.result_type(p)),
                            params, updates)
    return apply_updates(params, updates)


def _check_optimizer(optimizer):
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer: expected an optimizer with .init(params) and "
                        f".update(grads, state, params) (e.g. jbp.optim.sgd(0.1)), "
                        f"got {type(optimizer).__name__}")


def _check_grad_fn(grad_fn):
    if grad_fn not in _GRAD_FNS:
        raise ValueError(f"grad_fn: expected 'manual' (the hand-written backward) or "
                         f"'autodiff' (jax.grad), got {grad_fn!r}")


def _check_augment(augment):
    if augment is not None and not callable(augment):
        raise TypeError(f"augment: expected a callable augment(key, x) -> x, "
                        f"got {type(augment).__name__}")


# --------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------

def make_train_step(model: Layer, loss, optimizer, *, regularizer=None, grad_fn: str = "manual",
                    metrics=("loss",), augment: Callable | None = None) -> Callable:
    """The pure, jit-able training step.

    Stateless model: ``step(params, opt_state, x, y, key) -> (params, opt_state, metrics)``.
    Stateful model (``model.stateful``):
    ``step(params, opt_state, x, y, key, state) -> (params, opt_state, metrics, state)``.

    Inside, on the batch ``(x, y)``::

        k_aug, k_fwd = jax.random.split(key)
        x = augment(k_aug, x)                          # if augment is given
        pred, cache = model.forward(params, x, key=k_fwd, train=True)
                                                       # forward_with_state if stateful
        grads = model.backward(params, cache, loss.grad(pred, y))   # grad_fn="manual"
        grads += regularizer.grad(params)              # if regularizer is given
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = apply_updates(params, updates)

    This is :func:`jbp.value_and_grad` (hand-written) or :func:`jbp.autodiff_value_and_grad`
    (``grad_fn="autodiff"``: ``jax.value_and_grad`` of the same forward and loss, with the
    model state as auxiliary output), written out so the step also keeps ``pred`` for the
    metrics. ``metrics`` is a dict of scalars computed on this batch *before* the update:
    ``"loss"`` (the data loss, without the penalty), ``"penalty"`` (the regularizer's
    value, when given) and the requested metric names (see :mod:`jbp.metrics`).
    """
    _check_model_and_loss(model, loss, regularizer)
    _check_optimizer(optimizer)
    _check_grad_fn(grad_fn)
    _check_augment(augment)
    metric_objs = get_metrics(metrics)
    stateful = bool(model.stateful)

    def forward(params, state, x, key):
        if stateful:
            return model.forward_with_state(params, state, x, key=key, train=True)
        pred, cache = model.forward(params, x, key=key, train=True)
        return pred, cache, state

    def grads_and_aux(params, state, x, y, key):
        if grad_fn == "manual":
            pred, cache, new_state = forward(params, state, x, key)
            data_loss, dpred = loss_value_and_grad(loss, pred, y)
            grads, _ = model.backward(params, cache, dpred)
            penalty = None
            if regularizer is not None:
                penalty = regularizer.value(params)
                grads = jax.tree.map(jnp.add, grads, regularizer.grad(params))
            return grads, data_loss, penalty, pred, new_state

        def objective(p):
            pred, _, new_state = forward(p, state, x, key)
            data_loss = loss.value(pred, y)
            penalty = regularizer.value(p) if regularizer is not None else None
            total = data_loss if penalty is None else data_loss + penalty
            return total, (data_loss, penalty, pred, new_state)

        (_, (data_loss, penalty, pred, new_state)), grads = \
            jax.value_and_grad(objective, has_aux=True)(params)
        return grads, data_loss, penalty, pred, new_state

    def core(params, opt_state, x, y, key, state):
        x, y = _check_batch(x, y)
        k_aug, k_fwd = jax.random.split(key)
        if augment is not None:
            x = augment(k_aug, x)
        grads, data_loss, penalty, pred, new_state = grads_and_aux(params, state, x, y, k_fwd)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = _apply_updates(params, updates)
        pred = jax.lax.stop_gradient(pred)
        out = {"loss": data_loss}
        if penalty is not None:
            out["penalty"] = penalty
        for m in metric_objs[1:]:
            out[m.name] = m.fn(pred, y, loss)
        out = {k: jnp.asarray(v, dtype=jnp.result_type(float)) for k, v in out.items()}
        return params, opt_state, out, new_state

    if stateful:
        def step(params, opt_state, x, y, key, state):
            return core(params, opt_state, x, y, key, state)
    else:
        def step(params, opt_state, x, y, key):
            params, opt_state, out, _ = core(params, opt_state, x, y, key, ())
            return params, opt_state, out

    step.stateful = stateful
    return step


# --------------------------------------------------------------------------------------
# Batching: one knob
# --------------------------------------------------------------------------------------

def parse_batch_size(text) -> int | None:
    """Command-line spelling of the knob: ``"gd"``/``"full"`` → ``None`` (full batch),
    ``"sgd"`` → ``1``, ``"32"`` → ``32``."""
    if text is None:
        return None
    if isinstance(text, numbers.Integral) and not isinstance(text, bool):
        return int(text)
    word = str(text).strip().lower()
    if word in ("gd", "full", "none", "batch"):
        return None
    if word == "sgd":
        return 1
    try:
        return int(word)
    except ValueError:
        raise ValueError(f"batch_size: expected 'gd' (full batch), 'sgd' (1) or a positive "
                         f"integer, got {text!r}") from None


def batch_plan(n: int, batch_size: int | None, drop_last: bool = False) -> tuple[int, int, int]:
    """``(batch_size, full_batches, remainder)`` of one epoch over ``n`` examples."""
    bs = n if batch_size is None else int(batch_size)
    full, rem = divmod(n, bs)
    return bs, full, 0 if drop_last else rem


def _step_fn(step, stateful):
    def run(carry, xb, yb, k):
        params, opt_state, state = carry
        if stateful:
            params, opt_state, m, state = step(params, opt_state, xb, yb, k, state)
        else:
            params, opt_state, m = step(params, opt_state, xb, yb, k)
        return (params, opt_state, state), m
    return run


#: Shuffled batches are gathered from the data this many bytes at a time (a chunk of
#: consecutive batches), then scanned as contiguous slices: one gather per chunk instead of
#: one per step. On CPU a gather per tiny step (Nielsen's minibatch of 10) costs about as
#: much as the step itself, mostly in thread hand-offs; per chunk it is amortised.
_CHUNK_BYTES = 1 << 21


def _chunk_batches(bs, nb, x, y):
    row = x.dtype.itemsize * math.prod(x.shape[1:]) + y.dtype.itemsize * math.prod(y.shape[1:])
    return max(1, min(nb, _CHUNK_BYTES // max(1, bs * row)))


def _make_epoch(step, *, n, batch_size, shuffle, drop_last, stateful, finalizers):
    """``epoch(carry, x, y, key) -> (carry, mean_metrics)``, one compiled function.

    Keys: ``k_perm, k_steps = split(key)``; the order is ``permutation(k_perm, n)`` (or
    ``arange(n)`` without shuffling, and always for full-batch GD, where the order cannot
    matter); batch ``j`` is ``order[j·k : (j+1)·k]`` and its step gets
    ``split(k_steps, steps)[j]``; the remainder batch is ``order[nb·k:]``.
    """
    bs, nb, rem = batch_plan(n, batch_size, drop_last)
    n_steps = nb + (1 if rem else 0)
    permute = shuffle and not (nb == 1 and rem == 0)
    run = _step_fn(step, stateful)

    def scan_slices(carry, xs, ys, keys):
        return jax.lax.scan(lambda c, inp: run(c, *inp), carry, (xs, ys, keys))

    def gather(a, idx, batches):
        return jnp.take(a, idx, axis=0, mode="clip").reshape((batches, bs) + a.shape[1:])

    def epoch(carry, x, y, key):
        k_perm, k_steps = jax.random.split(key)
        keys = jax.random.split(k_steps, n_steps)
        if permute:
            order = jax.random.permutation(k_perm, n)
            chunk = _chunk_batches(bs, nb, x, y)
            q, s = divmod(nb, chunk)
            parts = []
            if q:
                def outer(c, inp):
                    i, ks = inp
                    return scan_slices(c, gather(x, i, chunk), gather(y, i, chunk), ks)

                carry, m = jax.lax.scan(
                    outer, carry, (order[:q * chunk * bs].reshape(q, chunk * bs),
                                   keys[:q * chunk].reshape((q, chunk) + keys.shape[1:])))
                parts.append(m)
            if s:
                i = order[q * chunk * bs:nb * bs]
                carry, m = scan_slices(carry, gather(x, i, s), gather(y, i, s),
                                       keys[q * chunk:nb])
                parts.append(m)
            ms = {k: jnp.concatenate([jnp.ravel(m[k]) for m in parts]) for k in parts[0]}
            if rem:
                tail = order[nb * bs:]
                xt, yt = jnp.take(x, tail, axis=0), jnp.take(y, tail, axis=0)
        else:
            xs = x[:nb * bs].reshape((nb, bs) + x.shape[1:])
            ys = y[:nb * bs].reshape((nb, bs) + y.shape[1:])
            carry, ms = scan_slices(carry, xs, ys, keys[:nb])
            if rem:
                xt, yt = x[nb * bs:], y[nb * bs:]
        sums = {k: jnp.sum(v) * bs for k, v in ms.items()}
        if rem:
            carry, mt = run(carry, xt, yt, keys[nb])
            sums = {k: sums[k] + mt[k] * rem for k in sums}
        count = nb * bs + rem
        return carry, {k: finalizers.get(k, _same)(v / count) for k, v in sums.items()}

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


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------

def _make_eval(model, loss, metric_objs, *, n, batch_size, stateful):
    bs, nb, rem = batch_plan(n, batch_size)

    def predict(params, state, xb):
        if stateful:
            return model.forward_with_state(params, state, xb, train=False)[0]
        return model.apply(params, xb, train=False)

    def on_batch(params, state, xb, yb):
        pred = predict(params, state, xb)
        return {m.name: jnp.asarray(m.fn(pred, yb, loss), dtype=jnp.result_type(float))
                for m in metric_objs}

    def run(params, state, x, y):
        xs = x[:nb * bs].reshape((nb, bs) + x.shape[1:])
        ys = y[:nb * bs].reshape((nb, bs) + y.shape[1:])
        _, ms = jax.lax.scan(lambda c, inp: (c, on_batch(params, state, *inp)), None, (xs, ys))
        sums = {k: jnp.sum(v) * bs for k, v in ms.items()}
        if rem:
            mt = on_batch(params, state, x[nb * bs:], y[nb * bs:])
            sums = {k: sums[k] + mt[k] * rem for k in sums}
        return {m.name: m.finalize(sums[m.name] / n) for m in metric_objs}

    return run


def evaluate(model: Layer, params, loss, data, *, metrics=("loss", "accuracy"),
             batch_size: int | None = 1024, state=None) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``data = (x, y)`` (``train=False``), as floats.

    Computed in chunks of ``batch_size`` examples (``None``: all at once) inside one
    compiled function; the chunk means are weighted by chunk size, so the result is the
    mean over the data set whatever the chunking. ``state``: the model's non-trainable
    state (stateful models; ``model.init_state`` when ``None``).
    """
    _check_model_and_loss(model, loss)
    metric_objs = get_metrics(metrics)
    x, y = _check_data("data", data)
    n = x.shape[0]
    batch_size = _eval_batch_size(batch_size, n)
    stateful = bool(model.stateful)
    if stateful and state is None:
        state = model.init_state(tuple(x.shape[1:]))
    fn = _eval_function(model, loss, metric_objs, n, batch_size, stateful)
    out = fn(params, state if stateful else (), x, y)
    return {m.name: float(out[m.name]) for m in metric_objs}


_EVAL_CACHE: dict = {}


def _eval_function(model, loss, metric_objs, n, batch_size, stateful):
    """The jitted evaluation, cached per (model, loss, metrics, n, chunk) so that calling
    :func:`evaluate` every epoch (a callback) compiles once, not every time."""
    build = lambda: jax.jit(_make_eval(model, loss, metric_objs, n=n, batch_size=batch_size,
                                       stateful=stateful))
    try:
        cache_key = (model, loss, tuple(m.name for m in metric_objs), n, batch_size, stateful)
        hash(cache_key)
    except TypeError:  # an unhashable model or loss: no caching
        return build()
    fn = _EVAL_CACHE.get(cache_key)
    if fn is None:
        if len(_EVAL_CACHE) >= 32:
            _EVAL_CACHE.pop(next(iter(_EVAL_CACHE)))
        fn = _EVAL_CACHE[cache_key] = build()
    return fn


# --------------------------------------------------------------------------------------
# Checks at the boundary (before anything is compiled)
# --------------------------------------------------------------------------------------

def _check_data(name, data):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name}: expected a pair (x, y) of arrays, got "
                        f"{type(data).__name__}" + (f" of length {len(data)}"
                                                    if isinstance(data, (tuple, list)) else ""))
    x, y = data
    out = []
    for part, a in (("x", x), ("y", y)):
        if not isinstance(a, (jax.Array, np.ndarray)):
            given = type(a).__name__
            try:
                a = np.asarray(a)
            except Exception:
                a = np.asarray(None)
            if a.dtype == object:
                raise TypeError(f"{name}: {part} must be a numeric array, got {given}")
        if a.ndim == 0:
            raise ValueError(f"{name}: {part} needs a leading example axis, got a scalar")
        if not (jnp.issubdtype(a.dtype, jnp.number) or jnp.issubdtype(a.dtype, jnp.bool_)):
            raise TypeError(f"{name}: {part} must be numeric, got dtype {a.dtype}")
        out.append(a)
    x, y = out
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: x and y must have the same number of examples, got "
                         f"x with {x.shape[0]} (shape {tuple(x.shape)}) and y with {y.shape[0]} "
                         f"(shape {tuple(y.shape)})")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty data (0 examples)")
    for part, a in (("x", x), ("y", y)):
        if jnp.issubdtype(a.dtype, jnp.inexact) and not _all_finite(a):
            bad = int(a.size - int(np.isfinite(np.asarray(a)).sum()))
            raise ValueError(f"{name}: {part} contains {bad} NaN or Inf value(s); "
                             f"clean or impute the data before training")
    return jnp.asarray(x), jnp.asarray(y)


@jax.jit
def _all_finite_jax(a):
    return jnp.all(jnp.isfinite(a))


def _all_finite(a) -> bool:
    """One fused pass, no array-sized temporary (min/max propagate NaN; ±Inf show)."""
    if isinstance(a, np.ndarray):
        return bool(np.isfinite(a.min()) and np.isfinite(a.max()))
    return bool(_all_finite_jax(a))


def _check_batch_size(batch_size, n, name="batch_size"):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"{name}: expected None (full batch), or an integer "
                        f"(1 = SGD, k = minibatch), got {batch_size!r}")
    if batch_size <= 0:
        raise ValueError(f"{name}: must be a positive integer (1 = SGD), got {batch_size}")
    if batch_size > n:
        raise ValueError(f"{name}: {batch_size} is larger than the data ({n} examples); use "
                         f"batch_size=None (or {n}) for full-batch gradient descent")
    return int(batch_size)


def _eval_batch_size(batch_size, n, name="batch_size"):
    """Chunk size for evaluation: ``None`` or a positive int, capped at ``n``."""
    if batch_size is None:
        return None
    return min(_check_batch_size(batch_size, 2 ** 62, name), n)


def _check_epochs(epochs):
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral):
        raise TypeError(f"epochs: expected a positive integer, got {epochs!r}")
    if epochs <= 0:
        raise ValueError(f"epochs: must be a positive integer, got {epochs}")
    return int(epochs)


def _check_key(key):
    if not isinstance(key, jax.Array):
        raise TypeError(f"key: expected a jax.random key (jax.random.key(seed)), "
                        f"got {type(key).__name__}")
    return key


def _epoch_key(key, epoch_index):
    return jax.random.fold_in(key, epoch_index)


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------

def fit(model: Layer, params, loss, optimizer, train_data, *, batch_size: int | None = None,
        epochs: int, key, validation_data=None, metrics=("loss", "accuracy"),
        early_stopping: EarlyStopping | int | None = None, shuffle: bool = True,
        drop_last: bool = False, augment: Callable | None = None, regularizer=None,
        callbacks=(), verbose: int = 1, grad_fn: str = "manual", state=None,
        opt_state=None, eval_batch_size: int | None = 1024):
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

    Bad arguments raise ``ValueError``/``TypeError`` naming the argument before anything
    is compiled. Ctrl-C between epochs returns the parameters so far
    (``history.interrupted``).
    """
    # ---- checks, all before compiling ----
    _check_model_and_loss(model, loss, regularizer)
    _check_optimizer(optimizer)
    _check_grad_fn(grad_fn)
    _check_augment(augment)
    epochs = _check_epochs(epochs)
    key = _check_key(key)
    metric_objs = get_metrics(metrics)
    x, y = _check_data("train_data", train_data)
    n = x.shape[0]
    batch_size = _check_batch_size(batch_size, n)
    val = None
    if validation_data is not None:
        val = _check_data("validation_data", validation_data)
        if val[0].shape[1:] != x.shape[1:]:
            raise ValueError(f"validation_data: x has example shape {tuple(val[0].shape[1:])}, "
                             f"train_data's x has {tuple(x.shape[1:])}")
        eval_bs = _eval_batch_size(eval_batch_size, val[0].shape[0], "eval_batch_size")
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

    stateful = bool(model.stateful)
    if stateful and state is None:
        state = model.init_state(tuple(x.shape[1:]))
    if not stateful:
        state = ()
    if opt_state is None:
        opt_state = optimizer.init(params)

    # ---- build and compile ----
    step = make_train_step(model, loss, optimizer, regularizer=regularizer, grad_fn=grad_fn,
                           metrics=[m.name for m in metric_objs], augment=augment)
    finalizers = {m.name: m.finalize for m in metric_objs}
    epoch_fn = _Compiled(_make_epoch(step, n=n, batch_size=batch_size, shuffle=bool(shuffle),
                                     drop_last=bool(drop_last), stateful=stateful,
                                     finalizers=finalizers))
    eval_fn = None
    if val is not None:
        eval_fn = _Compiled(_make_eval(model, loss, metric_objs, n=val[0].shape[0],
                                       batch_size=eval_bs, stateful=stateful))

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
