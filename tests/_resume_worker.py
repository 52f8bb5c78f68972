"""Child process of tests/test_resume.py: one small ``fit`` with checkpoints, until killed.

``python tests/_resume_worker.py DIR BLOCK_AT`` runs :func:`train` (``resume=True``) into
``DIR``; the progress line of every epoch is printed and flushed. With ``BLOCK_AT = n > 0``
the n-th ``os.fsync`` prints ``blocked n`` and waits on stdin forever, so the parent can
SIGKILL it exactly there: odd n = in the middle of writing a checkpoint (the temporary file
written, not yet renamed), even n = renamed, directory not yet synced. The parent runs the
same :func:`train` in its own process to compare bit for bit.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)  # as tests/conftest.py: the same programs

import jbp  # noqa: E402
from jbp import optim  # noqa: E402
from jbp.layers import Dense, Dropout, Tanh  # noqa: E402

EPOCHS = 6


def data():
    (x, y), (xt, yt) = jbp.datasets.digits()
    return (x[:320], y[:320]), (xt[:96], yt[:96])


def model_and_params():
    model = jbp.Sequential([Dense(16), Tanh(), Dropout(0.2), Dense(10)])
    params, _ = model.init(jax.random.key(0), (64,))
    return model, params


def train(directory, *, epochs=EPOCHS, resume=True, verbose=1, **overrides):
    """A 64-16-10 MLP with dropout (so the keys of the steps matter), adam, early stopping
    on val_accuracy (so its progress must be restored too); ``overrides`` replace any of
    fit's arguments."""
    train_data, val = data()
    model, params = model_and_params()
    kw = dict(
        batch_size=16,
        epochs=epochs,
        key=jax.random.key(1),
        validation_data=val,
        early_stopping=jbp.EarlyStopping("val_accuracy", patience=4),
        checkpoint_dir=directory,
        resume=resume,
        verbose=verbose,
    )
    kw.update(overrides)
    optimizer = kw.pop("optimizer", optim.adam(3e-3))
    return jbp.fit(model, params, jbp.losses.softmax_cross_entropy, optimizer, train_data, **kw)


def main(directory: str, block_at: int) -> None:
    from _fsync_trap import block_fsync_at

    block_fsync_at(block_at)
    train(directory)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
