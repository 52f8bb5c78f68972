"""Execute every notebook in ``notebooks/`` with nbclient, as CI does (issue 17).

Each notebook runs in a fresh ``python3`` kernel started from the current interpreter, with
the checkout under test first on ``PYTHONPATH`` (so ``import jbp`` in the kernel resolves to
this worktree, and the notebooks' Colab install cell is a no-op). A failing cell fails the
test with the cell's source and traceback. Needs the ``test`` extra (nbclient, nbformat,
ipykernel); skipped without them.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from nbclient.exceptions import CellExecutionError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TIMEOUT_S = 300  # per cell; a notebook takes seconds


def _kernel_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def run_notebook(path: pathlib.Path, workdir: pathlib.Path):
    """Execute ``path`` in a kernel of this interpreter; return the executed notebook.

    Raises:
      CellExecutionError: a cell raised (its message holds the cell and traceback).
    """
    nb = nbformat.read(str(path), as_version=4)
    from jupyter_client.manager import KernelManager  # noqa: PLC0415 (comes with nbclient)

    km = KernelManager(kernel_name="python3")
    # the kernel is this interpreter, whatever kernelspecs the machine has
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=_kernel_env(), cwd=str(workdir))
    return nb


def test_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"tutorial.ipynb", "per_example.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_stored_clean(path):
    """Notebooks are stored without outputs and open in Colab from a badge."""
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: stored with outputs"
            )
    badge = f"https://colab.research.google.com/github/jbp-dev/jbp/blob/main/notebooks/{path.name}"
    assert badge in nb.cells[0].source
    install = nb.cells[1].source
    assert "import jbp" in install and "except ImportError" in install and "%pip install" in install


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    error = None
    try:
        nb = run_notebook(path, tmp_path)
    except CellExecutionError as e:
        error = ANSI.sub("", str(e))  # IPython colours its tracebacks
    if error is not None:  # the cell's source and traceback, without pytest's frames
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    # no cell printed a traceback it caught and swallowed
    out = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "Traceback" not in out


def test_failing_cell_fails(tmp_path):
    """A notebook whose cell raises fails with that cell's error; the kernel sees this jbp."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import jbp, pathlib\nprint(pathlib.Path(jbp.__file__).resolve())"
        ),
        nbformat.v4.new_code_cell("raise ValueError('boom from a cell')"),
    ]
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(CellExecutionError, match="boom from a cell"):
        run_notebook(path, tmp_path)
    nb.cells = nb.cells[:1]
    nbformat.write(nb, str(path))
    done = run_notebook(path, tmp_path)
    assert done.cells[0].outputs[0]["text"].strip() == str(ROOT / "jbp" / "__init__.py")
