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


def test_readme_is_a_front_door():
    """Short, an example near the top, links that resolve, and no development diary (that is CHANGELOG.md)."""
    assert len(README.encode()) <= 15_000
    first_example = README.splitlines().index("```python")
    assert first_example < 80, first_example
    diary = re.compile(
        r"this session|the issue's|\bissue \d+|previous release's machine|before these changes|commit [0-9a-f]{7}",
        re.I,
    )
    assert not diary.search(README), diary.search(README).group(0)
    root = Path(__file__).resolve().parents[1]
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)", README):
        assert (root / target).exists(), target
