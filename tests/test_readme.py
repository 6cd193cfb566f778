"""The README's Python examples run as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import hamode

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", README, flags=re.S)]


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    before = set(hamode.list_integrators())
    try:
        exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    finally:
        for name in set(hamode.list_integrators()) - before:
            hamode.integrators.unregister_integrator(name)
