"""``fit``: one training loop for full-batch gradient descent, SGD and minibatch training.

One knob, ``batch_size``, picks the algorithm (see :mod:`jbp.train.batching`). **One epoch is
one compiled function**: a ``lax.scan`` of the step (:func:`jbp.train.make_train_step`) over
the ⌊n/k⌋ full batches of the shuffled data, then — when k does not divide n — one more step
on the remaining ``r = n mod k`` examples, inside the same compiled function. That last step
sees a batch of its true size ``r``, so its gradient (and the mean-reduced loss) is averaged
over ``r`` exactly. ``drop_last=True`` skips it instead. There is no Python per step.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jbp import checkpoint as ckpt
from jbp._validate import (
    check_augment,
    check_batch_size,
    check_bool,
    check_data,
    check_epochs,
    check_grad_fn,
    check_key,
    check_mesh,
    check_mesh_batches,
    check_model_and_loss,
    check_model_input,
    check_opt_state,
    check_optimizer,
    check_params,
    check_regularizer,
    check_state,
    check_targets,
)
from jbp._validate import eval_batch_size as check_eval_batch_size
from jbp.callbacks import EarlyStopping, as_callback, format_epoch
from jbp.history import History
from jbp.metrics import get_metrics
from jbp.train.batching import (
    auto_mesh,
    batch_plan,
    data_sharding,
    mesh_shardings,
    replicate,
    scan_batches,
    shard_data,
)
from jbp.train.evaluate import make_eval
from jbp.train.progress import Progress
from jbp.train.record import Recorder, check_record
from jbp.train.step import make_recording_step, make_train_step

__all__ = ["fit", "DivergenceError", "ON_NONFINITE"]


def _make_epoch(
    step,
    *,
    n,
    batch_size,
    shuffle,
    drop_last,
    finalizers,
    mesh=None,
    progress=None,
    recorder=None,
    rec_step=None,
):
    """``epoch(carry, x, y, key) -> (carry, mean_metrics)``, one compiled function.

    Keys: ``k_perm, k_steps = split(key)``; the order is ``permutation(k_perm, n)`` (or
    ``arange(n)`` without shuffling, and always for full-batch GD, where the order cannot
    matter); batch ``j`` is ``order[j·k : (j+1)·k]`` and its step gets
    ``split(k_steps, steps)[j]``; the remainder batch is ``order[nb·k:]``.
    ``progress``: a :class:`jbp.train.progress.Progress` (lines from inside the epoch).
    ``recorder``: a :class:`jbp.train.record.Recorder`; then every step is ``rec_step``
    (:func:`jbp.train.step.make_recording_step`), computing the extensions every
    ``recorder.every``-th step, and ``mean_metrics["record"]`` is ``(sums, counts)`` of
    their results.
    """
    bs, nb, rem = batch_plan(n, batch_size, drop_last)
    n_steps = nb + (1 if rem else 0)
    permute = shuffle and not (nb == 1 and rem == 0)

    def run(carry, xb, yb, k):
        params, opt_state, state = carry
        params, opt_state, m, state = step(params, opt_state, xb, yb, k, state)
        m.pop("extras", None)
        return (params, opt_state, state), m

    def run_recorded(carry, xb, yb, k, on):
        params, opt_state, state = carry
        params, opt_state, m, state, res = rec_step(params, opt_state, xb, yb, k, state, on)
        return (params, opt_state, state), m, res

    body = run if recorder is None else recorder.wrap(run_recorded)

    def epoch(carry, x, y, key):
        k_perm, k_steps = jax.random.split(key)
        keys = jax.random.split(k_steps, n_steps)
        order = jax.random.permutation(k_perm, n) if permute else None
        plan = dict(bs=bs, nb=nb, rem=rem, order=order, sharding=data_sharding(mesh))
        if recorder is not None:  # the carry gains a step counter and the recorded sums
            params, _, state = carry
            like = rec_step.result_shapes(
                params, *_batch_spec(x, y, bs if nb else rem), keys[0], state
            )
            if nb and rem:
                last = rec_step.result_shapes(params, *_batch_spec(x, y, rem), keys[0], state)
                _check_same_shapes(like, last, rem)
            carry = recorder.begin(carry, like)
        if progress is None:
            carry, means = scan_batches(body, carry, x, y, keys, **plan)
        else:  # the carry gains a step counter and running sums (jbp.train.progress)
            carry, means = scan_batches(
                progress.wrap(body), progress.begin(carry), x, y, keys, **plan
            )
            carry = progress.end(carry)
        means = {k: finalizers.get(k, _same)(v) for k, v in means.items()}
        if recorder is not None:
            carry, means["record"] = recorder.end(carry)
        return carry, means

    return epoch


def _batch_spec(x, y, size):
    return tuple(jax.ShapeDtypeStruct((size,) + a.shape[1:], a.dtype) for a in (x, y))


def _check_same_shapes(like, last, rem):
    """The recorded results of the remainder batch (``rem`` examples) must have the shapes
    of a full batch's (they are summed over the epoch)."""
    if jax.tree.structure(last) != jax.tree.structure(like) or any(
        a.shape != b.shape for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(like))
    ):
        raise ValueError(
            f"record: the extensions' results depend on the batch size (per-example "
            f"quantities?), so the last batch of {rem} examples cannot be averaged with the "
            f"full ones; pass drop_last=True, a batch_size that divides the data, or record "
            f"batch-size-independent quantities"
        )


def _same(v):
    return v


def _shown(logs, recorded):
    """The epoch line's fields: the recorded extensions' columns are left out (they are
    many: ``history.as_table()`` shows them)."""
    return {k: v for k, v in logs.items() if k not in recorded} if recorded else logs


class _Compiled:
    """``jax.jit`` compiled ahead of time per input signature, so compile time is measured
    apart from the epochs (``seconds``). With a ``mesh``: the outputs are replicated over
    it; the inputs keep the layout they were placed with (data split by example, the
    carry replicated)."""

    def __init__(self, fn, mesh=None):
        if mesh is None:
            self.jitted = jax.jit(fn)
        else:
            self.jitted = jax.jit(fn, **mesh_shardings(mesh))
        self.cache = {}
        self.compile_seconds = 0.0

    def __call__(self, *args):
        leaves, tree = jax.tree.flatten(args)
        sig = (
            tree,
            tuple(
                (np.shape(a), jnp.result_type(a), getattr(a, "weak_type", False)) for a in leaves
            ),
        )
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


# --------------------------------------------------------------------------------------
# non-finite losses: stop, raise or ignore
# --------------------------------------------------------------------------------------

ON_NONFINITE = ("stop", "raise", "ignore")


class DivergenceError(FloatingPointError):
    """``fit(..., on_nonfinite="raise")``: the training loss or the parameters became NaN/Inf."""


@jax.jit
def _tree_finite(tree):
    leaves = [
        jnp.all(jnp.isfinite(a))
        for a in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(a), jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _nonfinite(train_m, params) -> str | None:
    """Why the epoch diverged (``"loss nan"``, ``"non-finite parameters"``), or ``None``."""
    loss = float(train_m["loss"])
    if not math.isfinite(loss):
        return f"loss {loss}"
    if not bool(_tree_finite(params)):
        return f"non-finite parameters (loss {loss:.6g})"
    return None


# --------------------------------------------------------------------------------------
# checkpoints and resume
# --------------------------------------------------------------------------------------

_CKPT_FORMAT = "jbp.fit"
_CKPT_VERSION = 1


def _fingerprint(x, y, key, *, batch_size, shuffle, drop_last, grad_fn, privacy) -> dict:
    """What must not change between a run and its resumption for the result to be identical
    (the model's structure and shapes are checked by ``restore(like=...)``)."""
    data = (
        jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    )
    return {
        "x": [list(x.shape), str(x.dtype)],
        "y": [list(y.shape), str(y.dtype)],
        "key": np.asarray(data).astype(np.int64).ravel().tolist(),
        "batch_size": batch_size,
        "shuffle": shuffle,
        "drop_last": drop_last,
        "grad_fn": grad_fn,
        "privacy": None if privacy is None else repr(privacy),
    }


def _callback_states(cbs):
    """``(metadata, arrays)`` of the callbacks that keep progress (``state_dict``)."""
    metas, arrays = [], []
    for c in cbs:
        if hasattr(c, "state_dict"):
            m, a = c.state_dict()
            metas.append({"type": type(c).__name__, "meta": m, "arrays": a is not None})
            arrays.append(a)
    return metas, arrays


def _save_checkpoint(directory, epoch, carry, history, cbs, fingerprint, keep, finished):
    metas, arrays = _callback_states(cbs)
    params, opt_state, state = carry
    tree = {"params": params, "opt_state": opt_state, "state": state, "callbacks": arrays}
    meta = {
        "format": _CKPT_FORMAT,
        "version": _CKPT_VERSION,
        "epoch": epoch,
        "history": history.records,
        "stopped_epoch": history.stopped_epoch,
        "diverged": history.diverged,
        "finished": finished,
        "fingerprint": fingerprint,
        "callbacks": metas,
    }
    return ckpt.save_step(directory, epoch, tree, metadata=meta, keep=keep)


def _load_checkpoint(directory, carry, cbs, fingerprint):
    """``None`` when ``directory`` holds no checkpoint; else ``(epoch, carry, metadata, path)``
    of the newest complete one, with the callbacks' progress restored. Nothing is changed
    when the checkpoint is unreadable or belongs to another run (the error says which)."""
    step = ckpt.latest_step(directory)  # skips damaged files, with a RuntimeWarning
    if step is None:
        if _existing_steps(directory):  # files there, none readable: never start afresh
            ckpt.restore_step(directory)  # raises CheckpointError listing each file
        return None
    path = ckpt.step_path(directory, step)
    meta = ckpt.read_metadata(path)
    if not (isinstance(meta, dict) and meta.get("format") == _CKPT_FORMAT):
        raise ckpt.CheckpointError(
            f"{path}: not a checkpoint written by jbp.fit (no "
            f"'{_CKPT_FORMAT}' metadata); use another checkpoint_dir"
        )
    if meta.get("version") != _CKPT_VERSION:
        raise ckpt.CheckpointError(
            f"{path}: jbp.fit checkpoint version {meta.get('version')}, "
            f"this jbp reads version {_CKPT_VERSION}"
        )
    saved = meta["fingerprint"]
    diff = [
        f"{k}: checkpoint {saved.get(k)!r}, now {v!r}"
        for k, v in fingerprint.items()
        if saved.get(k) != v
    ]
    if diff:
        raise ValueError(
            f"resume: {path} was written by a different run ({'; '.join(diff)}); "
            f"pass the same data, key and batching, or another checkpoint_dir"
        )
    metas, _ = _callback_states(cbs)
    if [m["type"] for m in metas] != [m["type"] for m in meta["callbacks"]]:
        raise ValueError(
            f"resume: {path} holds the progress of the callbacks "
            f"{[m['type'] for m in meta['callbacks']]}, this run has "
            f"{[m['type'] for m in metas]} (early_stopping must match)"
        )
    params, opt_state, state = carry
    like = {
        "params": params,
        "opt_state": opt_state,
        "state": state,
        "callbacks": [
            {"params": params, "state": state} if m["arrays"] else None for m in meta["callbacks"]
        ],
    }
    tree = ckpt.restore(path, like=like)  # verifies checksums, structure, shapes, dtypes
    stateful = [c for c in cbs if hasattr(c, "state_dict")]
    for c, m, a in zip(stateful, meta["callbacks"], tree["callbacks"]):
        c.load_state_dict(m["meta"], a)
    return int(meta["epoch"]), (tree["params"], tree["opt_state"], tree["state"]), meta, path


def _existing_steps(directory) -> list:
    """The steps of the ``ckpt_*.jbp`` files in ``directory`` (complete or not), oldest first."""
    return [s for s, _ in ckpt._steps(directory)]  # noqa: SLF001 - the module's own listing


def _check_checkpoint_args(checkpoint_dir, checkpoint_every, keep, resume):
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint_dir: expected a directory path (str or os.PathLike), got "
            f"{type(checkpoint_dir).__name__}"
        )
    if (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, numbers.Integral)
        or checkpoint_every < 1
    ):
        raise ValueError(
            f"checkpoint_every: expected an integer >= 1 (epochs between "
            f"checkpoints), got {checkpoint_every!r}"
        )
    if keep is not None and (
        isinstance(keep, bool) or not isinstance(keep, numbers.Integral) or keep < 1
    ):
        raise ValueError(f"keep: expected an integer >= 1 or None (keep all), got {keep!r}")
    resume = check_bool("resume", resume)
    if resume and checkpoint_dir is None:
        raise ValueError("resume: resume=True needs checkpoint_dir (where the checkpoints are)")
    found = [] if checkpoint_dir is None or resume else _existing_steps(checkpoint_dir)
    if found:
        raise ValueError(
            f"checkpoint_dir: {os.fspath(checkpoint_dir)} already holds checkpoints "
            f"(epochs {found}); pass resume=True to continue that run, or use an "
            f"empty directory"
        )
    return resume


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------


def fit(
    model,
    params,
    loss,
    optimizer,
    train_data,
    *,
    batch_size: int | None = None,
    epochs: int,
    key,
    validation_data=None,
    metrics=("loss", "accuracy"),
    early_stopping: EarlyStopping | int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    augment: Callable | None = None,
    regularizer=None,
    callbacks=(),
    verbose: int = 1,
    grad_fn: str = "manual",
    state=None,
    opt_state=None,
    eval_batch_size: int | None = 1024,
    privacy=None,
    on_nonfinite: str = "stop",
    checkpoint_dir=None,
    checkpoint_every: int = 1,
    keep: int | None = 3,
    resume: bool = False,
    mesh=None,
    progress_every: int | None = None,
    record=(),
    record_every: int = 1,
):
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
    - ``progress_every=k`` (with ``verbose=1``): also a line every ``k`` steps from inside
      the compiled epoch (``jax.debug.callback``; :mod:`jbp.train.progress`) with the
      step count and the running means of the train metrics — for long epochs such as
      SGD on 50,000 examples. The arithmetic is unchanged (bit-identical parameters and
      history). Not combined with ``mesh``.
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
    - ``on_nonfinite``: what a NaN/Inf epoch loss (or NaN/Inf parameters) does.
      ``"stop"`` (default): stop at once and return the parameters (and optimizer and model
      state) of the last finite epoch; the diverged epoch's record is the last of the
      history and ``history.diverged`` is its number (the progress line says so).
      ``"raise"``: raise :class:`DivergenceError` (a ``FloatingPointError``) naming the
      epoch. ``"ignore"``: train on.
    - ``mesh``: a ``jax.sharding.Mesh`` with a ``"data"`` axis (e.g.
      :func:`jbp.distributed.data_mesh`): data-parallel training. Every batch is split by
      example over the ``"data"`` axis (``NamedSharding(mesh, P("data"))``), the
      parameters, optimizer state and model state are replicated (``P()``), and the same
      compiled epoch runs under ``jax.jit`` with those shardings: XLA (GSPMD) turns each
      batch mean into per-device partial sums and one all-reduce, so the gradient is the
      exact mean over the whole batch, as on one device (up to summation order). BatchNorm
      uses the statistics of the whole (global) batch, not per-device ones. Every batch —
      the remainder batch too — must split evenly over the devices: otherwise
      ``ValueError`` naming ``batch_size`` and the device count (no padding is done; use
      a multiple, or ``drop_last=True`` for the remainder). Data already laid out as a
      global ``jax.Array`` (:func:`jbp.distributed.process_local_shard`, several
      processes) is used as it is. Not combined with ``privacy``.
    - ``record=[ext, ...]``, ``record_every=k``: engine extensions (e.g.
      :class:`jbp.rules.Alignment`: angles to backprop per layer) computed *inside the
      compiled epoch* on the steps ``j % k == 0`` (``j`` counts the epoch's steps from 0, the
      remainder batch included; ``k`` larger than the epoch records step 0 only): those
      steps run the training step with the extensions, the others the plain step
      (``lax.cond``), so an epoch costs ``1 + extra/k`` plain steps per step. The update
      is the same (parameters bit-identical with and without recording). Every leaf of
      each extension's result is averaged over the epoch's recorded steps (each on its
      batch, with the parameters before that step's update) and added to the history as
      ``"<name>/<key>/..."`` (``"alignment/layers[0]/grad_angle"``; leaves with several
      elements as nested lists); NaN/Inf values are left out of the mean and counted in
      ``"<name>/nonfinite"`` (a leaf never finite in the epoch is NaN). The epoch line
      leaves these columns out; they are kept by checkpoints like every column.
      :meth:`jbp.rules.AlignmentRecord.from_history` and :func:`jbp.rules.plot_alignment`
      read them. Results must not depend on the batch size when the last batch is smaller
      (``ValueError`` otherwise). Not combined with ``privacy`` or ``mesh``; needs
      ``grad_fn="manual"``.
    - ``checkpoint_dir``: after every ``checkpoint_every`` epochs (and after the last one,
      an early stop, a divergence or Ctrl-C) save the parameters, optimizer state, model
      state, history, epoch counter and early-stopping progress there with
      :func:`jbp.checkpoint.save_step` (atomic: a process killed mid-write leaves the
      previous file intact), keeping the newest ``keep``. ``resume=True`` continues from
      the newest complete checkpoint: epoch ``e`` still uses ``fold_in(key, e)``, so an
      interrupted and resumed run is bit-identical to an uninterrupted one with the same
      arguments (the history's ``seconds`` aside); a run that had finished (all epochs,
      early stopping, divergence) returns what it returned. The checkpoint must come from
      the same data shapes, key and batching (``ValueError`` naming what differs) and the
      same model and optimizer (structure, shapes and dtypes: ``ValueError`` listing each
      leaf); a truncated or corrupt newest file is skipped with a ``RuntimeWarning``, and
      when no file is readable :class:`jbp.checkpoint.CheckpointError` is raised —
      nothing is loaded. Without ``resume``, a ``checkpoint_dir`` that already holds
      checkpoints is refused. Other callbacks are not saved (they start afresh).

    Bad arguments raise ``ValueError``/``TypeError`` naming the argument before anything
    is compiled: besides types and ranges, ``params`` are checked against
    ``model.init``'s shapes (:func:`jbp.check_params`), ``opt_state`` against
    ``optimizer.init(params)``, ``state`` against ``model.init_state``, the targets of
    ``train_data`` and ``validation_data`` against the loss (``loss.check_targets``:
    labels in range, binary targets in [0, 1], shapes) and their inputs against the input
    layer (``Embedding`` ids in the vocabulary) — checks that cannot run once compiled.
    Ctrl-C between epochs returns the parameters so far (``history.interrupted``).
    """
    # ---- checks, all before compiling ----
    check_model_and_loss(model, loss, regularizer)
    check_optimizer(optimizer)
    check_grad_fn(grad_fn)
    check_augment(augment)
    epochs = check_epochs(epochs)
    key = check_key(key)
    metric_objs = get_metrics(metrics)
    shuffle = check_bool("shuffle", shuffle)
    drop_last = check_bool("drop_last", drop_last)
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite: expected one of {ON_NONFINITE}, got {on_nonfinite!r}")
    resume = _check_checkpoint_args(checkpoint_dir, checkpoint_every, keep, resume)
    x, y = check_data("train_data", train_data)
    n = x.shape[0]
    in_shape = tuple(x.shape[1:])
    batch_size = check_batch_size(batch_size, n)
    n_dev = check_mesh(mesh)
    mesh = auto_mesh(mesh)
    if n_dev is not None:
        if privacy is not None:
            raise ValueError(
                "mesh: data-parallel training over a mesh is not combined with "
                "privacy (DP-SGD) yet; pass mesh=None"
            )
        check_mesh_batches(n_dev, *batch_plan(n, batch_size, drop_last)[::2])
    out_shape = check_params(model, params, in_shape)
    check_targets(loss, y, out_shape, name="train_data: y")
    check_model_input(model, x, name="train_data: x")
    val = None
    if validation_data is not None:
        val = check_data("validation_data", validation_data)
        if val[0].shape[1:] != x.shape[1:]:
            raise ValueError(
                f"validation_data: x has example shape {tuple(val[0].shape[1:])}, "
                f"train_data's x has {tuple(x.shape[1:])}"
            )
        check_targets(loss, val[1], out_shape, name="validation_data: y")
        check_model_input(model, val[0], name="validation_data: x")
        eval_bs = check_eval_batch_size(eval_batch_size, val[0].shape[0], "eval_batch_size")
        if n_dev is not None:
            vbs, _, vrem = batch_plan(val[0].shape[0], eval_bs)
            check_mesh_batches(n_dev, vbs, vrem, name="eval_batch_size", drop_last_hint=False)
    if regularizer is not None:
        check_regularizer(regularizer, params)
    if isinstance(verbose, bool) or not isinstance(verbose, numbers.Integral):
        raise TypeError(f"verbose: expected 0 (silent) or 1 (a line per epoch), got {verbose!r}")
    if progress_every is not None:
        if isinstance(progress_every, bool) or not isinstance(progress_every, numbers.Integral):
            raise TypeError(
                f"progress_every: expected None or a positive number of steps, "
                f"got {type(progress_every).__name__}"
            )
        if progress_every < 1:
            raise ValueError(
                f"progress_every: expected a positive number of steps, got {progress_every}"
            )
        if n_dev is not None:
            raise ValueError(
                "progress_every: progress lines from inside the epoch are not combined with "
                "mesh (every device would report); pass progress_every=None"
            )
    record, record_every = check_record(record, record_every)
    if record:
        if privacy is not None:
            raise ValueError(
                "record: recording extensions inside the epoch is not combined with privacy "
                "(DP-SGD builds its own epoch of clipped per-example gradients); pass "
                "record=() and use a callback (e.g. jbp.rules.AlignmentHistory)"
            )
        if n_dev is not None:
            raise ValueError(
                "record: recording extensions inside the epoch is not combined with mesh "
                "(data-parallel training) yet; pass record=() or mesh=None"
            )
        if grad_fn != "manual":
            raise ValueError(
                f"record: extensions read the hand-written backward; they need "
                f"grad_fn='manual', got grad_fn={grad_fn!r}"
            )
        taken = {"epoch", "seconds", "penalty", "epsilon"} | {m.name for m in metric_objs}
        taken |= {f"val_{m.name}" for m in metric_objs}
        clash = [e.name for e in record if e.name in taken]
        if clash:
            raise ValueError(f"record: extension names {clash} are names of history columns")
    if hasattr(callbacks, "on_epoch_end") or callable(callbacks):
        callbacks = (callbacks,)
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks: expected a list of callbacks, got {type(callbacks).__name__}")
    cbs = [as_callback(c, f"callbacks[{i}]") for i, c in enumerate(callbacks)]
    if early_stopping is not None:
        if isinstance(early_stopping, numbers.Integral) and not isinstance(early_stopping, bool):
            early_stopping = EarlyStopping(
                "val_loss" if val is not None else "loss", patience=int(early_stopping)
            )
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(
                f"early_stopping: expected jbp.EarlyStopping(...) or an integer "
                f"patience, got {type(early_stopping).__name__}"
            )
        cbs.append(early_stopping)  # last: it sees what the other callbacks added
    columns = [m.name for m in metric_objs] + (["penalty"] if regularizer is not None else [])
    if val is not None:
        columns += [f"val_{m.name}" for m in metric_objs]
    for c in cbs:
        mon = getattr(c, "monitor", None)
        if isinstance(c, EarlyStopping) and mon not in columns:
            hint = (
                " (val_* columns need validation_data)"
                if mon.startswith("val_") and val is None
                else ""
            )
            raise ValueError(
                f"early_stopping: monitor {mon!r} is not a column of this run; "
                f"columns: {', '.join(columns)}{hint}"
            )

    if state is None:
        state = model.init_state(in_shape)
    else:
        check_state(model, state, in_shape)
    if opt_state is None:
        opt_state = optimizer.init(params)
    else:
        check_opt_state(optimizer, opt_state, params)

    # ---- build and compile ----
    finalizers = {m.name: m.finalize for m in metric_objs}
    names = [m.name for m in metric_objs]

    def progress_for(n_steps):
        if progress_every is None or not verbose:
            return None
        return Progress(progress_every, n_steps, epochs, names)

    if privacy is not None:  # DP-SGD: jbp.dp.sgd builds the whole epoch
        from jbp.dp.sgd import check_fit_privacy, make_private_epoch  # noqa: PLC0415

        check_fit_privacy(privacy, batch_size=batch_size, n=n, grad_fn=grad_fn, drop_last=drop_last)
        progress = progress_for(privacy.steps_for())
        columns += ["dp_clipped", "dp_rows", "dp_dropped"]
        epoch_fn = _Compiled(
            make_private_epoch(
                privacy,
                model,
                loss,
                optimizer,
                n=n,
                regularizer=regularizer,
                metrics=names,
                augment=augment,
                finalizers=finalizers,
                progress=progress,
            )
        )
    else:
        _, nb_, rem_ = batch_plan(n, batch_size, drop_last)
        progress = progress_for(nb_ + (1 if rem_ else 0))
        step_args = dict(regularizer=regularizer, grad_fn=grad_fn, metrics=names, augment=augment)
        step = make_train_step(model, loss, optimizer, **step_args)
        recorder = rec_step = None
        if record:
            recorder = Recorder(record, record_every, nb_ + (1 if rem_ else 0))
            rec_step = make_recording_step(model, loss, optimizer, record, **step_args)
        epoch = _make_epoch(
            step,
            n=n,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            finalizers=finalizers,
            mesh=mesh,
            progress=progress,
            recorder=recorder,
            rec_step=rec_step,
        )
        epoch_fn = _Compiled(epoch, mesh=mesh)
    eval_fn = None
    if val is not None:
        eval_fn = _Compiled(
            make_eval(model, loss, metric_objs, n=val[0].shape[0], batch_size=eval_bs, mesh=mesh),
            mesh=mesh,
        )

    history = History(epochs=epochs)
    for c in cbs:
        if hasattr(c, "on_train_begin"):
            c.on_train_begin()
    carry = _strong((params, opt_state, state))
    if mesh is not None:
        carry = replicate(carry, mesh)
        x, y = shard_data((x, y), mesh)
        if val is not None:
            val = shard_data(val, mesh)

    # ---- resume from the newest complete checkpoint ----
    start, finished, saved_epoch = 0, None, None
    fingerprint = None
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(
            x,
            y,
            key,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            grad_fn=grad_fn,
            privacy=privacy,
        )
    if resume:
        loaded = _load_checkpoint(checkpoint_dir, carry, cbs, fingerprint)
        if loaded is not None:
            start, carry, meta, path = loaded
            saved_epoch = start
            history.records = [dict(r) for r in meta["history"]]
            history.stopped_epoch = meta["stopped_epoch"]
            history.diverged = meta["diverged"]
            history.resumed_from = start
            finished = meta["finished"]
            if verbose:
                done = f"; the run had finished ({finished})" if finished else ""
                print(f"resumed from {path}: {start} epoch(s) done{done}", flush=True)

    def save(epoch, why=None):
        nonlocal saved_epoch
        _save_checkpoint(checkpoint_dir, epoch, carry, history, cbs, fingerprint, keep, why)
        saved_epoch = epoch

    in_epoch = False  # Ctrl-C inside the compiled epoch leaves carry, history, callbacks in step
    try:
        for e in range(start, epochs if finished is None else start):
            compile_before = epoch_fn.compile_seconds + (
                eval_fn.compile_seconds if eval_fn else 0.0
            )
            k_epoch = _epoch_key(key, e)
            if progress is not None:
                progress.epoch = e + 1
            t0 = time.perf_counter()
            in_epoch = True
            new_carry, train_m = epoch_fn(carry, x, y, k_epoch)
            train_m = jax.device_get(train_m)
            in_epoch = False
            recorded = {} if not record else recorder.columns(train_m.pop("record"))
            # ---- non-finite loss or parameters: stop (keep the last finite), raise, ignore ----
            why = None if on_nonfinite == "ignore" else _nonfinite(train_m, new_carry[0])
            if why is not None and on_nonfinite == "raise":
                raise DivergenceError(
                    f"fit: training diverged at epoch {e + 1}: {why}; the "
                    f"parameters after epoch {e} were the last finite ones "
                    f"(on_nonfinite='stop' returns them)"
                )
            val_m = {}
            if eval_fn is not None:  # also for a diverged epoch: its record keeps every column
                val_m = jax.device_get(eval_fn(new_carry[0], new_carry[2], *val))
            compile_now = (
                epoch_fn.compile_seconds
                + (eval_fn.compile_seconds if eval_fn else 0.0)
                - compile_before
            )
            seconds = time.perf_counter() - t0 - compile_now
            logs = {"epoch": e + 1}
            logs.update({k: float(train_m[k]) for k in columns if k in train_m})
            logs.update({f"val_{m.name}": float(val_m[m.name]) for m in metric_objs if val_m})
            logs.update(recorded)
            if privacy is not None:
                logs["epsilon"] = privacy.epsilon_after(e + 1)
            logs["seconds"] = seconds
            if why is not None:  # on_nonfinite="stop": the carry stays at epoch e
                history.append(logs)
                history.diverged = e + 1
                if verbose:
                    print(
                        format_epoch(e + 1, epochs, _shown(logs, recorded), compile_now), flush=True
                    )
                    kept = f"the parameters after epoch {e}" if e else "the initial parameters"
                    print(
                        f"diverged at epoch {e + 1}: {why}; stopped, returning {kept}", flush=True
                    )
                if checkpoint_dir is not None:
                    save(e, "diverged")
                break
            carry = new_carry
            stop = False
            for c in cbs:  # may add entries to logs (e.g. a test accuracy): they are kept
                if c.on_epoch_end(e + 1, logs, carry[0], carry[2]):
                    stop = True
            logs["seconds"] = logs.pop("seconds")
            history.append(logs)
            if verbose:
                print(format_epoch(e + 1, epochs, _shown(logs, recorded), compile_now), flush=True)
            if stop:
                history.stopped_epoch = e + 1
            # ---- checkpoint ----
            if checkpoint_dir is not None and (
                stop or (e + 1) % checkpoint_every == 0 or e + 1 == epochs
            ):
                save(e + 1, "stopped" if stop else None)
            if stop:
                break
    except KeyboardInterrupt:
        history.interrupted = True
        if verbose:
            print(f"interrupted after {len(history)} epoch(s)", flush=True)
        if checkpoint_dir is not None and in_epoch and saved_epoch != len(history):
            save(len(history))  # only from a consistent point: inside the compiled epoch

    params, opt_state, state = carry
    for c in cbs:
        if hasattr(c, "on_train_end"):
            replaced = c.on_train_end(params, state)
            if replaced is not None:
                params, state = replaced
    if early_stopping is not None:
        history.best_epoch = early_stopping.best_epoch
        if verbose and early_stopping.stopped_epoch is not None:
            restored = (
                f"; restored epoch {early_stopping.best_epoch}"
                if early_stopping.restore_best and early_stopping.best_epoch
                else ""
            )
            print(
                f"early stopping at epoch {early_stopping.stopped_epoch}: "
                f"{early_stopping.monitor} did not improve for {early_stopping.patience} "
                f"epoch(s){restored}",
                flush=True,
            )
    history.compile_seconds = epoch_fn.compile_seconds + (
        eval_fn.compile_seconds if eval_fn else 0.0
    )
    history.state = state
    history.opt_state = opt_state
    return params, history
