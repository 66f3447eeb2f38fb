"""Issue 23 for the single-cell domain: raw counts in ``.raw`` (a few non-integer values, or
scaled per cell without log1p) no longer pass as log-normalised expression; NaN/inf and 1e30
are refused at the reader naming the file and the matrix; the files are never changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from diffsci.domains.singlecell import io, simulate


def _counts(n_cells: int = 40, n_genes: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(2.0, 20.0, n_genes), (n_cells, n_genes)).astype(np.float32)


def _h5ad(path: Path, raw: np.ndarray, *, sparse: bool = True) -> Path:
    """A file whose ``.X`` is log-normalised and whose ``.raw`` holds ``raw``."""
    a = AnnData(X=sp.csr_matrix(raw) if sparse else raw)
    a.var_names = [f"G{i}" for i in range(raw.shape[1])]
    a.obs["bulk_labels"] = np.where(np.arange(raw.shape[0]) % 2, "T", "B")
    a.raw = a.copy()
    a.X = np.log1p(raw / raw.sum(1, keepdims=True).clip(1) * 1e4)
    a.write_h5ad(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (lambda c: c + np.where(np.arange(c.size).reshape(c.shape) == 7, 0.5, 0.0), "values up"),
        (lambda c: c / c.sum(1, keepdims=True).clip(1) * 1e4, "values up to"),
    ],
    ids=["ambient-corrected counts", "scaled counts without log1p"],
)
def test_counts_that_are_not_all_integer_are_not_taken_as_log_normalised(tmp_path, make, found):
    raw = make(_counts()).astype(np.float32)
    assert not io.is_counts(raw) and raw.max() > io.LOG_MAX
    path = _h5ad(tmp_path / "corrected.h5ad", raw)
    before = _sha(path)
    with pytest.raises(ValueError, match=rf"corrected\.h5ad: \.raw\.X holds {found}") as e:
        io.read_cells([path])
    assert "set files.counts: normalise in the config" in str(e.value)
    with pytest.raises(ValueError, match="files.counts: normalise"):
        simulate.load_pbmc(str(path), min_cells=4)
    cells = io.read_cells([path], counts="normalise")
    assert io.dense(cells.X).max() < io.LOG_MAX
    assert np.allclose(np.expm1(io.dense(cells.X)).sum(1), 1e4, rtol=1e-3)
    assert _sha(path) == before


def test_integer_counts_are_found_beyond_the_first_cells(tmp_path):
    raw = _counts(n_cells=400, n_genes=300)
    raw[:350] = 0  # the first 105000 stored values are zeros (empty droplets first)
    assert io.is_counts(raw)
    with pytest.raises(ValueError, match=r"dense\.h5ad: \.raw\.X holds integer counts"):
        io.read_cells([_h5ad(tmp_path / "dense.h5ad", raw, sparse=False)])


def test_log_normalised_and_scaled_data_still_pass():
    logn = np.log1p(_counts() / 3.0)
    assert io.unlogged_max(logn) is None and not io.is_counts(logn)
    z = (logn - logn.mean(0)) / logn.std(0).clip(1e-3) * 20  # z-scores reach past 50
    assert z.max() > io.LOG_MAX and io.unlogged_max(z) is None


@pytest.mark.parametrize(
    ("value", "match"),
    [(np.nan, r"has 1 NaN of \d+ values"), (1e30, r"has 1 of \d+ values of magnitude above")],
)
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_bad_values_in_raw_name_the_file_matrix_cell_and_gene(tmp_path, value, match, sparse):
    raw = np.log1p(_counts())
    raw[3, 4] = value
    path = _h5ad(tmp_path / "bad.h5ad", raw, sparse=sparse)
    before = _sha(path)
    with pytest.raises(ValueError, match=rf"bad\.h5ad: \.raw\.X .*{match}") as e:
        io.read_cells([path], counts="normalise")
    assert str(e.value).endswith("the first is cell '3', gene 'G4'")
    assert _sha(path) == before
