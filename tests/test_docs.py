"""The documentation's runnable examples run.

Every ```python block marked `<!-- tested -->` in README.md and in docs/*.md is executed.
"""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
PATTERN = re.compile(r"<!-- tested -->\s*```python\n(.*?)```", re.S)
BLOCKS = [
    (f.relative_to(ROOT).as_posix(), i, code)
    for f in FILES
    for i, code in enumerate(PATTERN.findall(f.read_text(encoding="utf-8")))
]


def test_readme_has_tested_examples():
    assert sum(name == "README.md" for name, _, _ in BLOCKS) >= 1


def test_docs_have_tested_examples():
    assert sum(name != "README.md" for name, _, _ in BLOCKS) >= 6


@pytest.mark.parametrize("name,i,code", BLOCKS, ids=[f"{n}[{i}]" for n, i, _ in BLOCKS])
def test_docs_example_runs(name, i, code, capsys):
    x64 = jax.config.jax_enable_x64
    try:
        exec(compile(code, f"{name}[block {i}]", "exec"), {"__name__": "__docs__"})
    finally:
        jax.config.update("jax_enable_x64", x64)
