"""zea and PICMUS HDF5: round trips through our writers, files written here by plain h5py in
the formats' own layouts (including zea's default Blosc compression through hdf5plugin), and
every bad input of issue 20 refused with the file and key named, the input left unchanged."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from diffsci.domains.ultrasound import io
from diffsci.domains.ultrasound.simulate import LinearArray, plane_wave_scan

N_EL, N_TX, N_AX = 8, 3, 40


def _acq(n_ch: int = 1, frames: int = 2, seed: int = 0) -> io.Acquisition:
    probe = LinearArray(n_el=N_EL)
    scan = plane_wave_scan(probe, [-5.0, 0.0, 5.0])
    scan.initial_times = np.array([1e-6, 2e-6, 3e-6])
    scan.attrs = {"t0_delays": {"unit": "s", "description": "custom description kept"}}
    raw = (
        np.random.default_rng(seed)
        .standard_normal((frames, N_TX, N_AX, N_EL, n_ch))
        .astype(np.float32)
    )
    coords = np.zeros((4, 5, 3), np.float32)
    bf = io.Product(np.ones((frames, 4, 5, 2), np.float32), coords, "-", "beamformed test")
    return io.Acquisition(
        raw, scan, {"beamformed_data": bf}, probe_name="P4", us_machine="M", description="d"
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_scan(a: io.Scan, b: io.Scan) -> None:
    for k in (
        "probe_geometry",
        "initial_times",
        "t0_delays",
        "tx_apodizations",
        "focus_distances",
        "transmit_origins",
        "polar_angles",
    ):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=1e-6, atol=1e-12, err_msg=k)
    for k in ("sampling_frequency", "center_frequency", "demodulation_frequency", "sound_speed"):
        assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-6), k


@pytest.mark.parametrize("layout", ["current", "legacy"])
@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("n_ch", [1, 2])
def test_zea_round_trip(tmp_path, layout, compression, n_ch):
    acq = _acq(n_ch)
    path = io.write_zea(tmp_path / "a.hdf5", acq, layout=layout, compression=compression)
    assert io.zea_layout(path) == layout
    back = io.read_zea(path)
    np.testing.assert_array_equal(back.raw_data, acq.raw_data)
    assert back.is_iq == (n_ch == 2)
    _same_scan(back.scan, acq.scan)
    np.testing.assert_array_equal(
        back.products["beamformed_data"].values, acq.products["beamformed_data"].values
    )
    assert back.scan.attrs["t0_delays"] == {"unit": "s", "description": "custom description kept"}
    assert back.scan.attrs["sampling_frequency"]["unit"] == "Hz"
    assert back.probe_name == "P4" and back.us_machine == "M"
    with h5py.File(path) as f:  # every dataset carries unit and description
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for n in names:
            if n.rsplit("/", 1)[-1] in ("labels", "unit", "description", "name"):  # strings
                continue
            assert {"unit", "description"} <= set(f[n].attrs), n
            if compression and f[n].size > 1:
                assert f[n].compression == "gzip", n


def _write_zea_by_hand(
    path: Path, *, blosc: bool = False, probe_group: bool = False, drop: str | None = None
) -> np.ndarray:
    """A zea >= 0.1 file written with plain h5py (as zea's FileSpec.save lays it out)."""
    kw = {}
    if blosc:
        import hdf5plugin

        kw = dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    probe = LinearArray(n_el=N_EL)
    scan = plane_wave_scan(probe, [0.0, 4.0, -4.0])
    raw = np.random.default_rng(1).standard_normal((2, N_TX, N_AX, N_EL, 1)).astype(np.float32)
    keys = {
        "sampling_frequency": np.float32(probe.sampling_frequency),
        "center_frequency": np.float32(probe.center_frequency),
        "demodulation_frequency": np.float32(probe.center_frequency),
        "initial_times": np.zeros(N_TX, np.float32),
        "t0_delays": scan.t0_delays.astype(np.float32),
        "tx_apodizations": np.ones((N_TX, N_EL), np.float32),
        "focus_distances": np.full(N_TX, np.inf, np.float32),
        "transmit_origins": np.zeros((N_TX, 3), np.float32),
        "polar_angles": scan.polar_angles.astype(np.float32),
    }
    with h5py.File(path, "w") as f:
        f.attrs["probe_name"], f.attrs["us_machine"] = "L11-4v", "Verasonics"
        t = f.create_group("tracks/track_0")
        d = t.create_dataset("data/raw_data", data=raw, chunks=(1, 1, N_AX, N_EL, 1), **kw)
        d.attrs["unit"], d.attrs["description"] = "-", "Raw channel data."
        for k, v in keys.items():
            if k != drop:
                t["scan"].create_dataset(k, data=v) if "scan" in t else t.create_group(
                    "scan"
                ).create_dataset(k, data=v)
                t[f"scan/{k}"].attrs["unit"], t[f"scan/{k}"].attrs["description"] = "u", f"desc {k}"
        geo = probe.geometry.astype(np.float32)
        if probe_group:
            f.create_dataset("probe/probe_geometry", data=geo)
            f["probe/probe_geometry"].attrs["unit"] = "m"
        elif drop != "probe_geometry":
            t.create_dataset("scan/probe_geometry", data=geo)
    return raw


def test_reads_a_blosc_compressed_zea_file_through_hdf5plugin(tmp_path):
    pytest.importorskip("hdf5plugin")
    raw = _write_zea_by_hand(tmp_path / "blosc.hdf5", blosc=True)
    acq = io.read_zea(tmp_path / "blosc.hdf5")
    np.testing.assert_array_equal(acq.raw_data, raw)
    assert acq.scan.attrs["t0_delays"] == {"unit": "u", "description": "desc t0_delays"}
    assert acq.probe_name == "L11-4v"


def test_compressed_file_without_its_filter_names_the_filter(tmp_path, monkeypatch):
    pytest.importorskip("hdf5plugin")
    path = tmp_path / "blosc.hdf5"
    _write_zea_by_hand(path, blosc=True)
    before = _sha(path)
    monkeypatch.setattr(io, "_filter_available", lambda fid: False)
    monkeypatch.setattr(io, "_load_hdf5plugin", lambda: False)
    with pytest.raises(
        io.UltrasoundFileError, match=r"blosc\.hdf5.*raw_data.*Blosc HDF5 filter.*hdf5plugin"
    ):
        io.read_zea(path)
    assert _sha(path) == before


def test_geometry_in_a_probe_group(tmp_path):
    _write_zea_by_hand(tmp_path / "p.hdf5", probe_group=True)
    acq = io.read_zea(tmp_path / "p.hdf5")
    assert acq.scan.n_el == N_EL and acq.scan.attrs["probe_geometry"]["unit"] == "m"


@pytest.mark.parametrize("drop", ["polar_angles", "initial_times", "demodulation_frequency"])
def test_missing_required_scan_key_is_named(tmp_path, drop):
    path = tmp_path / "m.hdf5"
    _write_zea_by_hand(path, drop=drop)
    with pytest.raises(io.UltrasoundFileError, match=rf"m\.hdf5.*{drop}"):
        io.read_zea(path)


def test_missing_probe_geometry_names_scan_and_probe(tmp_path):
    path = tmp_path / "g.hdf5"
    _write_zea_by_hand(path, drop="probe_geometry")
    with pytest.raises(io.UltrasoundFileError, match=r"probe_geometry.*'/probe'"):
        io.read_zea(path)


def test_missing_scan_group_is_named(tmp_path):
    path = tmp_path / "noscan.hdf5"
    with h5py.File(path, "w") as f:
        f["data/raw_data"] = np.zeros((1, 1, 4, 2, 1), np.float32)
    with pytest.raises(io.UltrasoundFileError, match=r"noscan\.hdf5.*'/scan'"):
        io.read_zea(path)


def test_element_counts_that_disagree_are_refused(tmp_path):
    path = io.write_zea(tmp_path / "a.hdf5", _acq(), layout="legacy")
    with h5py.File(path, "a") as f:
        g = f["scan/probe_geometry"][()]
        del f["scan/probe_geometry"]
        f["scan/probe_geometry"] = g[:-1]
        for k in ("t0_delays", "tx_apodizations"):  # the scan is consistent in itself
            del f[f"scan/{k}"]
            f[f"scan/{k}"] = np.zeros((N_TX, N_EL - 1))
    before = _sha(path)
    with pytest.raises(io.UltrasoundFileError, match=r"a\.hdf5.*raw_data.*8 elements.*7"):
        io.read_zea(path)
    assert _sha(path) == before


def test_nan_channel_data_are_refused(tmp_path):
    acq = _acq()
    path = io.write_zea(tmp_path / "n.hdf5", acq)
    with h5py.File(path, "a") as f:
        f["tracks/track_0/data/raw_data"][0, 0, 3, 2, 0] = np.nan
    with pytest.raises(io.UltrasoundFileError, match=r"n\.hdf5.*raw_data.*1 NaN"):
        io.read_zea(path)


def test_writer_is_atomic_and_refuses_inconsistent_data(tmp_path):
    good = io.write_zea(tmp_path / "out.hdf5", _acq())
    before = _sha(good)
    bad = _acq()
    bad.raw_data = bad.raw_data[..., :-1, :]  # 7 elements of data, 8 of geometry
    with pytest.raises(io.UltrasoundFileError, match="elements"):
        io.write_zea(good, bad)
    assert _sha(good) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.hdf5"]  # no temporary left
    with pytest.raises(ValueError, match="compression"):
        io.write_zea(tmp_path / "x.hdf5", _acq(), compression="blosc")
    assert not (tmp_path / "x.hdf5").exists()


# ------------------------------------------------------------------ PICMUS
def _write_picmus_by_hand(
    path: Path, scan_path: Path, n_ch: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """PICMUS's us_dataset layout: data (n_tx, n_el, n_ax), geometry (3, n_el)."""
    rng = np.random.default_rng(2)
    real = rng.standard_normal((N_TX, N_EL, N_AX)).astype(np.float32)
    imag = (
        rng.standard_normal((N_TX, N_EL, N_AX)).astype(np.float32)
        if n_ch == 2
        else np.zeros_like(real)
    )
    x = (np.arange(N_EL) - 3.5) * 0.3e-3
    angles = np.deg2rad([-8.0, 0.0, 8.0])
    with h5py.File(path, "w") as f:
        g = f.create_group("US/US_DATASET0000")
        g["data/real"], g["data/imag"] = real, imag
        g["angles"] = angles
        g["probe_geometry"] = np.stack([x, np.zeros(N_EL), np.zeros(N_EL)])
        g["sampling_frequency"] = np.array([20.832e6])
        g["modulation_frequency"] = np.array([0.0 if n_ch == 1 else 5.208e6])
        g["initial_time"] = np.array([-1e-6])
        g["sound_speed"] = np.array([1540.0])
        g["PRF"] = np.array([100.0])
    with h5py.File(scan_path, "w") as f:
        f["US/US_DATASET0000/x_axis"] = np.linspace(-19e-3, 19e-3, 50)
        f["US/US_DATASET0000/z_axis"] = np.linspace(5e-3, 50e-3, 60)
    return real, imag, float(np.min(np.sin(angles)[:, None] * x[None], 1)[0])


@pytest.mark.parametrize("n_ch", [1, 2])
def test_picmus_reader_maps_axes_and_times(tmp_path, n_ch):
    path, spath = (
        tmp_path / "contrast_speckle_simu_dataset_rf.hdf5",
        tmp_path / "contrast_speckle_simu_scan.hdf5",
    )
    real, imag, m0 = _write_picmus_by_hand(path, spath, n_ch)
    before = _sha(path)
    acq = io.read_acquisition(path)  # finds the *_scan.hdf5 beside it
    assert acq.raw_data.shape == (1, N_TX, N_AX, N_EL, n_ch)
    np.testing.assert_array_equal(acq.raw_data[0, 2, :, 5, 0], real[2, 5, :])
    if n_ch == 2:
        np.testing.assert_array_equal(acq.raw_data[0, 1, :, 4, 1], imag[1, 4, :])
    assert acq.scan.demodulation_frequency == (0.0 if n_ch == 1 else 5.208e6)
    assert acq.scan.probe_geometry.shape == (N_EL, 3)
    # PICMUS times are from the wave crossing the origin; zea's from the first firing
    assert acq.scan.initial_times[0] == pytest.approx(-1e-6 - m0 / 1540.0)
    assert acq.grid["x"].shape == (50,) and acq.grid["z"][0] == pytest.approx(5e-3)
    assert _sha(path) == before
    # and back: our PICMUS writer, then the zea writer, keep everything
    io.write_picmus(tmp_path / "again.hdf5", acq, scan_path=tmp_path / "again_scan.hdf5")
    again = io.read_picmus(tmp_path / "again.hdf5", tmp_path / "again_scan.hdf5")
    np.testing.assert_allclose(again.raw_data, acq.raw_data)
    _same_scan(again.scan, acq.scan)
    zea = io.read_zea(io.write_zea(tmp_path / "as_zea.hdf5", acq))
    np.testing.assert_array_equal(zea.raw_data, acq.raw_data)


def test_picmus_geometry_mismatch_is_named(tmp_path):
    path = tmp_path / "p.hdf5"
    _write_picmus_by_hand(path, tmp_path / "p_scan.hdf5", 1)
    with h5py.File(path, "a") as f:
        g = f["US/US_DATASET0000/probe_geometry"][()]
        del f["US/US_DATASET0000/probe_geometry"]
        f["US/US_DATASET0000/probe_geometry"] = g[:, :-2]
    with pytest.raises(io.UltrasoundFileError, match=r"p\.hdf5.*data/real.*6 elements"):
        io.read_picmus(path)


@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_zea_validator_accepts_our_file(tmp_path, layout, monkeypatch):
    """zea's own checks (``validate_file`` and the full ``File.validate_spec``), where zea
    (the optional extra ``zea``, which ``make test`` installs; it needs keras, run here on the
    torch backend) is installed."""
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "torch"))
    pytest.importorskip("zea", reason="zea (optional test extra) not installed")
    from zea.data.file import File, validate_file

    path = io.write_zea(tmp_path / "ours.hdf5", _acq(), layout=layout)
    assert validate_file(str(path)) == {"status": "success"}
    with File(str(path), "r") as f:
        f.validate_spec()
