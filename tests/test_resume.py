"""fit(..., checkpoint_dir=, resume=True): killed anywhere, resumed bit for bit; bad files refused.

The reference is always an uninterrupted run with the same arguments; "bit for bit" means
``np.array_equal`` on every leaf of the returned parameters, the optimizer state and the
history (every column but the wall-clock ``seconds``).
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings

import jax
import numpy as np
import pytest

import jbp
from jbp import checkpoint as ckpt
from jbp.checkpoint import CheckpointError

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import _resume_worker as worker  # noqa: E402

pytestmark = pytest.mark.slow  # a long integration test: `pytest -m "not slow"` skips it

sys.path.remove(str(ROOT / "tests"))


def _records(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.records]


def _assert_bit_equal(a, b, what):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for i, (u, v) in enumerate(zip(la, lb)):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape, (what, i)
        assert np.array_equal(u.reshape(-1).view(np.uint8), v.reshape(-1).view(np.uint8)), (
            f"{what}: leaf {i} differs"
        )


def _assert_same_run(got, ref):
    (p, h), (p_ref, h_ref) = got, ref
    _assert_bit_equal(p, p_ref, "params")
    _assert_bit_equal(h.opt_state, h_ref.opt_state, "opt_state")
    assert _records(h) == _records(h_ref)
    assert (h.stopped_epoch, h.best_epoch, h.diverged) == (
        h_ref.stopped_epoch,
        h_ref.best_epoch,
        h_ref.diverged,
    )


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run (it checkpoints too, into a directory of its own)."""
    d = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"jbp-resume-ref-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    try:
        yield worker.train(str(d), verbose=0)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run_child(directory, block_at, *, wait_for, delay=0.0):
    """Start the worker, wait for the line starting with ``wait_for`` (then ``delay`` s),
    SIGKILL it; return the lines it printed."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_resume_worker.py"), str(directory), str(block_at)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(120, proc.kill)  # a hung child fails the test, not CI
    watchdog.start()
    try:
        lines = []
        while not (lines and lines[-1].startswith(wait_for)):
            line = proc.stdout.readline()
            assert line, f"worker ended early: {lines} {proc.stderr.read()}"
            lines.append(line.strip())
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL, err
    return lines + rest.splitlines()


def test_sigkill_mid_write_and_anywhere_then_resume_is_bit_identical(tmp_path, reference):
    rng = np.random.default_rng()
    seed = int(rng.integers(1 << 31))
    rng = np.random.default_rng(seed)
    # 1. killed while writing the checkpoint of epoch k: the temporary file is written and
    #    fsync-ed, the rename has not happened (each save makes 2 fsync calls)
    k = int(rng.integers(2, worker.EPOCHS))
    lines = _run_child(tmp_path, 2 * k - 1, wait_for="blocked")
    assert sum(ln.startswith("epoch") for ln in lines) == k, (seed, lines)
    assert any(f.endswith(".tmp") for f in os.listdir(tmp_path)), seed  # mid-write indeed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the previous checkpoint is intact, nothing skipped
        assert ckpt.latest_step(tmp_path) == k - 1
    # 2. resumed in a new process and killed again at a random moment after a random epoch
    e = int(rng.integers(k, worker.EPOCHS))
    lines = _run_child(tmp_path, 0, wait_for=f"epoch {e}/", delay=float(rng.uniform(0, 0.05)))
    assert lines[0].startswith("resumed from"), (seed, lines)
    # 3. resumed here, to the end: the same as never interrupted
    got = worker.train(str(tmp_path), verbose=0)
    _assert_same_run(got, reference)
    assert got[1].resumed_from is not None and got[1].resumed_from >= e - 1, seed
    names = sorted(f for f in os.listdir(tmp_path) if f.startswith("ckpt_"))
    # keep=3; a kill between writing a checkpoint and pruning the oldest leaves one more file,
    # which the next save removes (none comes when that was the run's last epoch)
    assert len(names) <= 4 and not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
    assert names[-3:] == [f"ckpt_{s:08d}.jbp" for s in range(worker.EPOCHS - 2, worker.EPOCHS + 1)]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """A checkpoint directory after 2 of the reference's epochs (copied by each test)."""
    d = tmp_path_factory.mktemp("two") / "ck"
    first = worker.train(str(d), epochs=2, verbose=0)
    return d, first


def _copy(two_epochs, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(two_epochs[0], d)
    return d


def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, two_epochs, reference):
    d = _copy(two_epochs, tmp_path)
    newest = ckpt.step_path(d, 2)
    with open(newest, "r+b") as fh:
        fh.truncate(os.path.getsize(newest) - 100)
    assert _records(two_epochs[1][1]) == _records(reference[1])[:2]
    with pytest.warns(RuntimeWarning, match="skipping step 2"):
        got = worker.train(str(d), verbose=0)  # resumes in this process from epoch 1
    _assert_same_run(got, reference)
    assert got[1].resumed_from == 1
    # the run is complete: resuming again trains nothing (compiles nothing) and returns the same
    again = worker.train(str(d), verbose=0)
    _assert_same_run(again, reference)
    assert again[1].resumed_from == worker.EPOCHS and again[1].compile_seconds == 0.0


def test_a_finished_early_stopped_run_resumes_to_the_same_result(tmp_path):
    (x, y), _ = worker.data()
    model = jbp.Sequential([jbp.Dense(10)])
    params, _ = model.init(jax.random.key(0), (64,))
    kw = dict(
        key=jax.random.key(2),
        verbose=0,
        metrics=("loss",),  # full batch: cheap
        early_stopping=jbp.EarlyStopping("loss", patience=1, min_delta=10.0),
    )
    run = lambda resume=False: jbp.fit(
        model,
        params,
        jbp.losses.softmax_cross_entropy,  # noqa: E731
        jbp.optim.sgd(0.1),
        (x, y),
        epochs=8,
        checkpoint_dir=tmp_path,
        resume=resume,
        **kw,
    )
    ref = run()
    assert ref[1].stopped_epoch == 2  # nothing improves by 10: stops after patience 1
    again = run(resume=True)
    _assert_same_run(again, ref)
    assert again[1].resumed_from == 2 and again[1].compile_seconds == 0.0


def test_a_diverged_run_is_checkpointed_and_resumes_as_finished(tmp_path):
    x = np.linspace(-2.0, 2.0, 32, dtype=np.float32)[:, None]
    model = jbp.Sequential([jbp.Dense(1)])
    params, _ = model.init(jax.random.key(0), (1,))
    run = lambda resume=False: jbp.fit(
        model,
        params,
        jbp.losses.mse,
        jbp.optim.sgd(5.0),  # noqa: E731
        (x, 3 * x),
        batch_size=4,
        epochs=8,
        metrics=("loss",),
        key=jax.random.key(0),
        verbose=0,
        checkpoint_dir=tmp_path,
        resume=resume,
    )
    ref = run()
    assert ref[1].diverged is not None and ref[1].diverged > 1
    assert ckpt.latest_step(tmp_path) == ref[1].diverged - 1
    got = run(resume=True)
    _assert_same_run(got, ref)
    assert got[1].compile_seconds == 0.0  # nothing trained again


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_an_unreadable_only_checkpoint_is_an_error_and_nothing_is_loaded(
    tmp_path, two_epochs, damage
):
    d = _copy(two_epochs, tmp_path)
    os.remove(ckpt.step_path(d, 1))
    f = pathlib.Path(ckpt.step_path(d, 2))
    data = f.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "flip": data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:],
        "garbage": b"not a checkpoint at all" * 10,
    }[damage]
    f.write_bytes(damaged)
    stopper = jbp.EarlyStopping("val_accuracy", patience=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(CheckpointError, match=r"ckpt_00000002\.jbp: "):
            worker.train(str(d), verbose=0, early_stopping=stopper)
    assert f.read_bytes() == damaged  # left as found: no fresh run over it
    assert stopper.best_epoch is None and stopper.wait == 0  # nothing loaded


def test_checkpoints_of_something_else_are_refused(tmp_path, two_epochs):
    d = _copy(two_epochs, tmp_path)
    (x, y), val = worker.data()
    # another model: every mismatching leaf is listed, expected vs found
    model = jbp.Sequential(
        [jbp.Dense(12), jbp.layers.Tanh(), jbp.layers.Dropout(0.2), jbp.Dense(10)]
    )
    params, _ = model.init(jax.random.key(0), (64,))
    with pytest.raises(
        ValueError,
        match=r"(?s)does not match like=.*params\.layers\[0\]\.W: "
        r"expected float32\[64,12\], found float32\[64,16\]",
    ):
        jbp.fit(
            model,
            params,
            jbp.losses.softmax_cross_entropy,
            jbp.optim.adam(3e-3),
            (x, y),
            batch_size=16,
            epochs=3,
            key=jax.random.key(1),
            validation_data=val,
            early_stopping=jbp.EarlyStopping("val_accuracy", patience=4),
            checkpoint_dir=d,
            resume=True,
            verbose=0,
        )
    # another optimizer
    with pytest.raises(ValueError, match=r"(?s)does not match like=.*opt_state"):
        worker.train(str(d), verbose=0, optimizer=jbp.optim.sgd(0.1))
    # without the early stopping whose progress the checkpoint holds
    with pytest.raises(
        ValueError, match=r"holds the progress of the callbacks \['EarlyStopping'\]"
    ):
        worker.train(str(d), verbose=0, early_stopping=None)
    # a checkpoint that jbp.fit did not write
    shutil.rmtree(d)
    ckpt.save_step(d, 1, {"w": np.zeros(3)}, metadata={"step": 1})
    with pytest.raises(CheckpointError, match=r"not a checkpoint written by jbp.fit"):
        worker.train(str(d), verbose=0)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(key=jax.random.key(7)), r"different run \(key: checkpoint"),
        (dict(batch_size=32), r"different run \(batch_size: checkpoint 16, now 32\)"),
    ],
)
def test_resuming_with_other_arguments_is_refused(tmp_path, two_epochs, change, match):
    d = _copy(two_epochs, tmp_path)
    with pytest.raises(ValueError, match=match):
        worker.train(str(d), verbose=0, **change)


def test_checkpoint_arguments_are_checked(tmp_path, two_epochs):
    d = _copy(two_epochs, tmp_path)
    with pytest.raises(
        ValueError,
        match=r"already holds checkpoints \(epochs \[1, 2\]\); "
        r"pass resume=True",
    ):
        worker.train(str(d), resume=False, verbose=0)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        worker.train(None, resume=True, verbose=0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        worker.train(str(tmp_path / "x"), checkpoint_every=0, verbose=0)
    with pytest.raises(ValueError, match="keep"):
        worker.train(str(tmp_path / "x"), keep=0, verbose=0)
    with pytest.raises(TypeError, match="resume: expected True or False"):
        worker.train(str(tmp_path / "x"), resume="yes", verbose=0)
