"""Model files hold only tensors and plain data: opening one never runs code (issue 25)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsci.core.modelfile import (
    FORMAT,
    UnsafeModelFile,
    convert_model_file,
    load_model_file,
    save_model_file,
)

ROOT = Path(__file__).resolve().parents[2]


class _Touch:
    """Unpickling this creates ``marker``: what a crafted model file can do to its reader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_model(path: Path, marker: Path) -> Path:
    """A model file laid out like an old diffsci one whose unpickling runs ``touch marker``."""
    torch.save({"state_dict": {"w": torch.ones(2)}, "step": 1, "card": _Touch(marker)}, path)
    return path


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_round_trip_is_weights_only_and_exact(tmp_path):
    state = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    meta = {"step": 7, "card": {"serves": {"nx": 64}, "mean": np.float64(0.25)}, "note": "x"}
    save_model_file(tmp_path / "m.pt", state, **meta)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # loads with torch's safe loader too
    assert raw["format"] == FORMAT and isinstance(raw["meta"], str)
    mf = load_model_file(tmp_path / "m.pt")
    assert set(mf.state_dict) == set(state)
    assert all(torch.equal(mf.state_dict[k], v) for k, v in state.items())
    assert mf.step == 7 and mf.card == {"serves": {"nx": 64}, "mean": 0.25}
    assert mf.meta["note"] == "x" and mf.provenance == {}


def test_metadata_that_is_not_plain_data_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(TypeError, match="plain data, got object"):
        save_model_file(tmp_path / "m.pt", {"w": torch.ones(1)}, card={"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_a_malicious_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = write_malicious_model(tmp_path / "evil.pt", marker)
    before = _sha(evil)
    with pytest.raises(UnsafeModelFile, match="evil.pt: refused: the file holds pickled"):
        load_model_file(evil)
    with pytest.raises(UnsafeModelFile, match="posix.system|os.system|never unpickles"):
        convert_model_file(evil, tmp_path / "converted.pt")
    assert not marker.exists() and not (tmp_path / "converted.pt").exists()
    assert _sha(evil) == before
    # positive control: a full unpickle of the same file does run its code
    code = f"import torch; torch.load({str(evil)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=120)
    assert marker.exists()


def _old_payload(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A model file as diffsci wrote it before the tensor-only format (a pickled dict; its card
    holds numpy scalars, as some domains' statistics did)."""
    state = {"w": torch.randn(4, 4), "b": torch.zeros(4)}
    card = {"domain": "toy", "normalisation": {"mean": np.float64(1.5), "std": np.float32(2)}}
    payload = {"state_dict": state, "step": 3, "provenance": {"seed": 0}, "card": card}
    torch.save(payload, tmp_path / "old.pt")
    return tmp_path / "old.pt", state


def test_an_old_file_is_refused_with_the_conversion_command(tmp_path):
    old, _ = _old_payload(tmp_path)
    with pytest.raises(UnsafeModelFile) as e:
        load_model_file(old)
    assert f"diffsci convert-model {old} {tmp_path / 'old.safe.pt'}" in str(e.value)


def test_conversion_keeps_weights_and_metadata_and_leaves_the_old_file(tmp_path):
    old, state = _old_payload(tmp_path)
    before = _sha(old)
    mf = convert_model_file(old, tmp_path / "new.pt")
    assert _sha(old) == before
    assert all(torch.equal(mf.state_dict[k], v) for k, v in state.items())
    assert mf.step == 3 and mf.provenance == {"seed": 0}
    assert mf.card["normalisation"] == {"mean": 1.5, "std": 2.0}
    with pytest.raises(FileExistsError, match="new.pt: exists"):
        convert_model_file(old, tmp_path / "new.pt")
    with pytest.raises(FileExistsError):
        convert_model_file(old, old)


def test_unreadable_and_newer_files_are_named(tmp_path):
    save_model_file(tmp_path / "m.pt", {"w": torch.ones(100)}, step=1)
    cut = tmp_path / "cut.pt"
    cut.write_bytes((tmp_path / "m.pt").read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.pt: cannot read the model file"):
        load_model_file(cut)
    torch.save({"format": FORMAT, "format_version": 99, "state_dict": {}, "meta": "{}"}, cut)
    with pytest.raises(UnsafeModelFile, match="format version 99 is newer"):
        load_model_file(cut)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model_file(tmp_path / "nope.pt")


_FORBIDDEN = ("weights_only=False", "pickle.load", "allow_pickle=True", "yaml.load(", "dill.")


def test_no_code_that_unpickles_what_a_user_passes_in():
    hits = []
    for top in ("core", "domains", "benchmarks"):
        for f in (ROOT / top).rglob("*.py"):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if any(p in line for p in _FORBIDDEN):
                    hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


def _pickled_zarr(root: Path, marker: Path) -> Path:
    """A zarr v2 store whose one object array decodes through numcodecs' Pickle codec."""
    import json

    arr = root / "precip"
    arr.mkdir(parents=True)
    (root / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    meta = {"zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "|O", "compressor": None}
    meta |= {"fill_value": None, "filters": [{"id": "pickle", "protocol": 5}], "order": "C"}
    (arr / ".zarray").write_text(json.dumps(meta))
    (arr / ".zattrs").write_text(json.dumps({"_ARRAY_DIMENSIONS": ["x"]}))
    import pickle

    (arr / "0").write_bytes(pickle.dumps(np.array([_Touch(marker)], dtype=object)))
    return root


def test_a_zarr_store_with_pickled_chunks_is_refused_before_opening(tmp_path):
    from diffsci.core.fileio import refuse_pickle_codecs
    from diffsci.domains.precipitation.io import open_xarray

    store = _pickled_zarr(tmp_path / "evil.zarr", tmp_path / "pwned")
    with pytest.raises(ValueError, match="evil.zarr/precip: refused: .*'pickle' codec"):
        refuse_pickle_codecs(store)
    with pytest.raises(ValueError, match="'pickle' codec"):
        open_xarray(store)
    from diffsci.domains.hyperspectral.io import read_xarray

    with pytest.raises(ValueError, match="'pickle' codec"):
        read_xarray(store)
    assert not (tmp_path / "pwned").exists()
    refuse_pickle_codecs(tmp_path / "missing.zarr")  # nothing to check: the reader says so
