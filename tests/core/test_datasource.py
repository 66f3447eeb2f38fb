"""User-data sources: file lists and globs per split, clear errors, dataset fingerprints."""

from __future__ import annotations

import pytest

from diffsci.core.datasource import fingerprint, resolve_source


@pytest.fixture()
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.h5", "b.h5", "c.h5", "t.h5"):
        (tmp_path / name).write_bytes(name.encode())
    return tmp_path


def test_simulate_is_the_default():
    assert resolve_source({}) is None
    assert resolve_source({"source": {"kind": "simulate"}}) is None


def test_globs_and_paths_resolve_per_split(files):
    src = {"kind": "files", "train": ["[ab].h5"], "validation": ["c.h5"], "test": ["t.h5"]}
    s = resolve_source({"source": src})
    assert [p.name for p in s.train] == ["a.h5", "b.h5"]
    assert [p.name for p in s.validation] == ["c.h5"] and [p.name for p in s.test] == ["t.h5"]


def test_a_pattern_matching_nothing_names_the_key(files):
    with pytest.raises(FileNotFoundError, match=r"source.test: .nope\*.h5. matches no file"):
        resolve_source({"source": {"kind": "files", "train": ["a.h5"], "test": ["nope*.h5"]}})


def test_a_file_in_two_splits_is_refused(files):
    with pytest.raises(ValueError, match="both source.train and source.test"):
        resolve_source({"source": {"kind": "files", "train": ["*.h5"], "test": ["t.h5"]}})


def test_files_without_a_test_split_are_refused(files):
    with pytest.raises(ValueError, match="source.test: needed"):
        resolve_source({"source": {"kind": "files", "train": ["a.h5"]}})


def test_fingerprint_follows_bytes_not_provenance(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "x.bin").write_bytes(b"123")
    (d / "provenance.json").write_text('{"created": 1}')
    fp = fingerprint([d])
    (d / "provenance.json").write_text('{"created": 2}')
    assert fingerprint([d]) == fp
    (d / "x.bin").write_bytes(b"124")
    assert fingerprint([d]) != fp


def test_a_folder_counts_as_one_input(files):
    (files / "store.zarr").mkdir()
    (files / "store.zarr" / ".zgroup").write_text("{}")
    s = resolve_source({"source": {"kind": "files", "train": ["*.zarr"], "test": ["t.h5"]}})
    assert [p.name for p in s.train] == ["store.zarr"]
