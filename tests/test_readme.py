"""The README's runnable examples run: every ```python block marked `<!-- tested -->`."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"<!-- tested -->\s*```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_tested_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, capsys):
    exec(compile(BLOCKS[i], f"README.md[block {i}]", "exec"), {"__name__": "__readme__"})
