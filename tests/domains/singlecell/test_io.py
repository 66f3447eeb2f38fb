"""Readers and writers: formats, atomic writes, and errors that name the file."""

from __future__ import annotations

import gzip

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from anndata import AnnData

from diffsci.domains.singlecell import io


def _adata(n=6, g=4):
    rng = np.random.default_rng(0)
    return AnnData(
        rng.random((n, g)).astype(np.float32),
        obs=pd.DataFrame({"cell_type": ["a", "b"] * (n // 2)}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(g)]),
    )


def test_h5ad_roundtrip_is_atomic(tmp_path):
    a = _adata()
    path = io.write_h5ad(a, tmp_path / "x.h5ad")
    b = io.read(path)
    np.testing.assert_array_equal(a.X, b.X)
    assert list(b.obs["cell_type"]) == list(a.obs["cell_type"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5ad"]  # no temporary left


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = io.write_h5ad(_adata(), tmp_path / "x.h5ad")
    before = path.read_bytes()

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(AnnData, "write_h5ad", boom)
    with pytest.raises(RuntimeError):
        io.write_h5ad(_adata(8), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5ad"]


def test_hdf5_that_is_not_anndata_names_the_file(tmp_path):
    p = tmp_path / "fake.h5ad"
    with h5py.File(p, "w") as f:
        f["foo"] = np.arange(3)
    before = p.read_bytes()
    with pytest.raises(ValueError, match="fake.h5ad"):
        io.read(p)
    assert p.read_bytes() == before


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5ad"):
        io.read(tmp_path / "nope.h5ad")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported suffix"):
        io.read(tmp_path / "x.csv")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="mtx"):
        io.read(tmp_path / "d")


def test_10x_mtx_directory(tmp_path):
    d = tmp_path / "filtered"
    d.mkdir()
    m = sp.random(5, 3, density=0.6, random_state=0, format="coo") * 10  # genes x cells
    m.data = np.round(m.data)
    with gzip.open(d / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, m)
    with gzip.open(d / "features.tsv.gz", "wt") as f:
        f.writelines(f"ENSG{i}\tgene{i}\tGene Expression\n" for i in range(5))
    with gzip.open(d / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"BC{i}-1\n" for i in range(3))
    a = io.read(d)
    assert a.shape == (3, 5)
    np.testing.assert_allclose(io.dense(a.X), m.toarray().T)


def test_10x_h5(tmp_path):
    p = tmp_path / "filtered_feature_bc_matrix.h5"
    m = sp.csc_matrix(np.array([[1, 0, 2], [0, 3, 0], [4, 0, 0], [0, 0, 5]], dtype=np.int32))
    with h5py.File(p, "w") as f:  # Cell Ranger v3 layout: genes x cells CSC
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
        g["shape"] = np.array(m.shape)
        g["barcodes"] = np.array([b"A-1", b"B-1", b"C-1"])
        ft = g.create_group("features")
        ft["id"] = np.array([b"E0", b"E1", b"E2", b"E3"])
        ft["name"] = np.array([b"g0", b"g1", b"g2", b"g3"])
        ft["feature_type"] = np.array([b"Gene Expression"] * 4)
        ft["genome"] = np.array([b"hg"] * 4)
    a = io.read(p)
    assert a.shape == (3, 4)
    np.testing.assert_allclose(io.dense(a.X), m.toarray().T)


def test_checks_name_the_problem():
    a = _adata()
    with pytest.raises(ValueError, match="no .raw"):
        io.require_raw(a, what="my.h5ad")
    a.raw = a
    assert io.require_raw(a).shape == a.shape
    a.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="my.h5ad.X has 1 non-finite"):
        io.check_finite(a, what="my.h5ad")
    with pytest.raises(KeyError, match="unknown cell_type 'z'"):
        io.require_obs_value(a, "cell_type", "z")
    with pytest.raises(KeyError, match="no obs column 'batch'"):
        io.require_obs_value(a, "batch", "z")


def test_keep_torch_threads_restores_the_thread_count():
    """scanpy calls that reset torch's thread count must not leak it into training."""
    import torch

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with io.keep_torch_threads():
            torch.set_num_threads(2)
        assert torch.get_num_threads() == 1

        @io.keep_torch_threads()
        def bump() -> None:
            torch.set_num_threads(2)

        bump()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)
