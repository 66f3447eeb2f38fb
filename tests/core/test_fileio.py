"""Atomic writes: the target appears only when the writer finished."""

from __future__ import annotations

import pytest

from diffsci.core.fileio import atomic_path


def test_success_renames_into_place(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target, suffix=".txt") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".txt")
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
