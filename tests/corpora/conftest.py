"""Fixtures for the corpus tests: ``make_tree(adapter)`` builds a tiny corpus tree (see corpus_trees.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from corpus_trees import BUILDERS, Tree


@pytest.fixture
def make_tree(tmp_path: Path, write_wav: Callable[..., Path]) -> Callable[[str], Tree]:
    """``make_tree(adapter) -> Tree`` under a fresh folder of this test's tmp dir."""
    counter = iter(range(1000))

    def _make(adapter: str) -> Tree:
        root = tmp_path / f"{adapter}-{next(counter)}" / "corpus"
        root.mkdir(parents=True)
        return BUILDERS[adapter](Tree(root=root, write_wav=write_wav))

    return _make
