"""Atomic writes: the target appears only when the writer finished."""

from __future__ import annotations

import os
import stat

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


def test_open_hdf5_names_missing_and_non_hdf5_files(tmp_path):
    import h5py

    from diffsci.core.fileio import open_hdf5

    with pytest.raises(FileNotFoundError, match="absent.h5: no such fastMRI file"):
        open_hdf5(tmp_path / "absent.h5", what="fastMRI file")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="text.h5: not a readable HDF5 file"):
        open_hdf5(tmp_path / "text.h5")
    with h5py.File(tmp_path / "ok.h5", "w") as f:
        f["x"] = 1
    with open_hdf5(tmp_path / "ok.h5") as f:
        assert f["x"][()] == 1


def test_written_files_follow_the_umask(tmp_path):
    """Files written atomically get 0666 & ~umask, like a plain open(), not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o077)
        with atomic_path(tmp_path / "b.json") as tmp:
            tmp.write_text("{}")
        assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
