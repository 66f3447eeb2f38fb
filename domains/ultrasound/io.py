"""Ultrasound file formats: zea HDF5 (legacy and current layouts) and PICMUS HDF5.

One in-memory object, :class:`Acquisition` (channel data plus its :class:`Scan`), is read
from and written to:

- **zea, current layout** (zea >= 0.1, the OpenH-RF community format; ``zea/data/spec.py``
  of tue-bmd/zea, release 0.1.8): root attributes ``zea_version``, ``probe_name``,
  ``us_machine``, ``description``; ``/probe`` (``ProbeSpec``: ``probe_geometry`` (n_el, 3) m,
  ``element_width``, ``name``); one or
  more ``/tracks/track_N/`` groups, each with ``data/`` (``raw_data`` of shape
  ``(n_frames, n_tx, n_ax, n_el, n_ch)``, ``n_ch`` 1 = RF, 2 = IQ; derived products such as
  ``beamformed_data``, ``envelope_data``, ``image`` as groups holding ``values`` and
  ``coordinates`` (per-pixel ``[x, y, z]`` in metres)) and ``scan/`` (required:
  ``sampling_frequency``, ``center_frequency``,
  ``demodulation_frequency`` Hz, ``initial_times`` (n_tx,) s, ``t0_delays`` (n_tx, n_el) s,
  ``tx_apodizations`` (n_tx, n_el), ``focus_distances`` (n_tx,) m (inf or 0 = plane wave),
  ``transmit_origins`` (n_tx, 3) m, ``polar_angles`` (n_tx,) rad; optional ``sound_speed``,
  ...). Files of development versions that keep ``probe_geometry`` in ``/scan`` are read too,
  as is the flat ``/data`` + ``/scan`` form of the same keys.
- **zea, legacy layout** (``zea/data/data_format.yaml``): ``/data/{raw_data, aligned_data,
  beamformed_data, envelope_data, image}`` as plain arrays and ``/scan`` with
  ``probe_geometry``, ``t0_delays``, ``sampling_frequency``, ``center_frequency`` (required
  here) and the optional transmit keys.
- **PICMUS** (Liebgott et al., "The Plane-wave Imaging Challenge in Medical UltraSound",
  IEEE IUS 2016; its ``us_dataset`` HDF5 export): ``/US/US_DATASET0000/`` with
  ``data/real`` and ``data/imag`` stored ``(n_tx, n_el, n_ax)``, ``angles`` (rad),
  ``probe_geometry`` ``(3, n_el)``, ``sampling_frequency``, ``modulation_frequency`` (0 in RF
  files), ``initial_time``, ``sound_speed``, ``PRF``; the image grid in a separate
  ``*_scan.hdf5`` (``x_axis``, ``z_axis``).

Every dataset's ``unit`` and ``description`` attributes are kept (:attr:`Scan.attrs`,
:attr:`Acquisition.attrs`) and written back. zea's default compression is Blosc through
``hdf5plugin``: it is imported when a file needs it; without it the reader names the
filter, the file and the key. Our writers use no compression or gzip and are atomic
(:func:`diffsci.core.fileio.atomic_path`): a failed write leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from diffsci.core.fileio import atomic_path, open_hdf5

__all__ = [
    "UltrasoundFileError",
    "Scan",
    "Acquisition",
    "Product",
    "read_zea",
    "write_zea",
    "read_picmus",
    "write_picmus",
    "read_acquisition",
    "zea_layout",
    "plane_wave_t0_delays",
    "REQUIRED_SCAN_KEYS",
    "LEGACY_REQUIRED_SCAN_KEYS",
    "FILTER_NAMES",
]

#: ``/scan`` keys zea >= 0.1 requires (``ScanSpec`` fields without a default), besides the
#: probe geometry (in ``/scan`` or ``/probe``).
REQUIRED_SCAN_KEYS = (
    "sampling_frequency",
    "center_frequency",
    "demodulation_frequency",
    "initial_times",
    "t0_delays",
    "tx_apodizations",
    "focus_distances",
    "transmit_origins",
    "polar_angles",
)
#: ``/scan`` keys the legacy layout needs for beamforming (``data_format.yaml``).
LEGACY_REQUIRED_SCAN_KEYS = (
    "probe_geometry",
    "t0_delays",
    "sampling_frequency",
    "center_frequency",
)

#: Units and descriptions written when a key has none of its own (zea's FIELD_METADATA).
DEFAULT_META: dict[str, tuple[str, str]] = {
    "probe_geometry": ("m", "Probe geometry (x, y, z) per element."),
    "sampling_frequency": ("Hz", "Sampling frequency."),
    "center_frequency": ("Hz", "Center frequency of the transmit pulse."),
    "demodulation_frequency": ("Hz", "Demodulation frequency."),
    "initial_times": ("s", "A/D converter start times per transmit."),
    "t0_delays": ("s", "Transmit delays per element."),
    "tx_apodizations": ("-", "Transmit apodization per element."),
    "focus_distances": ("m", "Transmit focus distances."),
    "transmit_origins": ("m", "Transmit beam origins (x, y, z)."),
    "polar_angles": ("rad", "Polar angles of transmit beams."),
    "sound_speed": ("m/s", "Speed of sound."),
    "element_width": ("m", "Element width of the probe."),
    "raw_data": ("-", "Raw channel data."),
    "aligned_data": ("-", "Time-of-flight corrected data."),
    "beamformed_data": ("-", "Beamformed (beamsummed) data."),
    "envelope_data": ("-", "Envelope-detected data."),
    "image": ("dB", "Log-compressed B-mode image."),
}

#: HDF5 filter ids registered by ``hdf5plugin`` -> names (for the error naming the filter).
FILTER_NAMES = {
    32001: "Blosc",
    32026: "Blosc2",
    32004: "LZ4",
    32008: "Bitshuffle",
    32015: "Zstandard",
    307: "BZip2",
    32017: "SZ",
}
_SCALARS = ("sampling_frequency", "center_frequency", "demodulation_frequency")
_PROBE_KEYS = ("probe_geometry", "element_width")
#: The zea format version our current-layout files follow (``zea_version`` root attribute;
#: validated with zea 0.1.8's ``validate_file`` and ``File.validate_spec``).
ZEA_FORMAT_VERSION = "0.1.8"
_PRODUCTS = ("beamformed_data", "envelope_data", "image")


class UltrasoundFileError(ValueError):
    """A file that cannot be read as the format it claims; the message names file and key."""


@dataclass
class Scan:
    """Acquisition geometry and transmit sequence, in zea's names and SI units.

    Times follow zea: ``t0_delays[tx, el]`` is when element ``el`` fires, shifted so the first
    element fires at 0; ``initial_times[tx]`` is the time of the first recorded sample after the
    first firing. Coordinates are ``(x, y, z)``: x lateral, z depth (zea ``ScanSpec``).

    Attributes
    ----------
    attrs
        ``{key: {"unit": ..., "description": ...}}`` as read from the file (kept on write).
    """

    probe_geometry: np.ndarray
    sampling_frequency: float
    center_frequency: float
    demodulation_frequency: float
    initial_times: np.ndarray
    t0_delays: np.ndarray
    tx_apodizations: np.ndarray
    focus_distances: np.ndarray
    transmit_origins: np.ndarray
    polar_angles: np.ndarray
    sound_speed: float = 1540.0
    element_width: float | None = None
    attrs: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def n_el(self) -> int:
        return int(self.probe_geometry.shape[0])

    @property
    def n_tx(self) -> int:
        return int(self.t0_delays.shape[0])

    @property
    def is_plane_wave(self) -> np.ndarray:
        """Per transmit: focus distance inf or 0 (zea's plane-wave convention)."""
        f = np.asarray(self.focus_distances, dtype=np.float64)
        return np.isinf(f) | (f == 0)

    def check(self, source: str = "scan") -> None:
        """Shapes agree with ``n_tx`` and ``n_el``; raise naming the key otherwise."""
        n_tx, n_el = self.n_tx, self.n_el
        shapes = {
            "probe_geometry": (n_el, 3),
            "t0_delays": (n_tx, n_el),
            "tx_apodizations": (n_tx, n_el),
            "initial_times": (n_tx,),
            "focus_distances": (n_tx,),
            "transmit_origins": (n_tx, 3),
            "polar_angles": (n_tx,),
        }
        for key, want in shapes.items():
            got = tuple(np.shape(getattr(self, key)))
            if got != want:
                raise UltrasoundFileError(
                    f"{source}: key {key!r} has shape {got}, expected {want} "
                    f"(n_tx={n_tx} from t0_delays, n_el={n_el} from probe_geometry)"
                )


@dataclass
class Product:
    """A derived data product: ``values`` (frames, z, x[, ch]) and per-pixel ``coordinates``
    ``(z, x, 3)`` (``[x, y, z]`` in metres), as zea's ``Map`` groups."""

    values: np.ndarray
    coordinates: np.ndarray | None = None
    unit: str = "-"
    description: str = ""


@dataclass
class Acquisition:
    """Channel data of one file (one zea track or one PICMUS dataset) and its scan.

    Attributes
    ----------
    raw_data
        ``(n_frames, n_tx, n_ax, n_el, n_ch)`` float32; ``n_ch`` 1 = RF, 2 = IQ (zea).
    scan
        The :class:`Scan`.
    products
        Derived products by zea name (``beamformed_data``, ``envelope_data``, ``image``).
    grid
        Optional image grid ``{"x": (nx,), "z": (nz,)}`` in metres (PICMUS scan files).
    """

    raw_data: np.ndarray | None
    scan: Scan
    products: dict[str, Product] = field(default_factory=dict)
    probe_name: str = "unknown"
    us_machine: str = "unknown"
    description: str = ""
    grid: dict[str, np.ndarray] | None = None
    attrs: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def is_iq(self) -> bool:
        return self.raw_data is not None and self.raw_data.shape[-1] == 2


# ----------------------------------------------------------------------------- helpers
def plane_wave_t0_delays(x_el: np.ndarray, angles: np.ndarray, c: float) -> np.ndarray:
    """zea ``t0_delays`` ``(n_tx, n_el)`` of steered plane waves from element x positions:
    ``(x_e sin(theta) - min_e x_e sin(theta)) / c`` (the first element fires at 0)."""
    d = np.sin(np.asarray(angles, np.float64))[:, None] * np.asarray(x_el, np.float64)[None]
    return (d - d.min(1, keepdims=True)) / c


def _filter_available(fid: int) -> bool:
    import h5py

    return bool(h5py.h5z.filter_avail(fid))


def _load_hdf5plugin() -> bool:
    """Import ``hdf5plugin`` (registers Blosc & co. with HDF5); False if not installed."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        return False
    return True


def _dataset_filters(ds: Any) -> list[int]:
    plist = ds.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


def _read(f: Any, key: str, path: Path) -> np.ndarray:
    """Read dataset ``key`` of open file ``f``, making sure its filters are available."""
    if key not in f:
        raise UltrasoundFileError(f"{path}: required key {key!r} is missing")
    ds = f[key]
    for fid in _dataset_filters(ds):
        if fid < 256 or _filter_available(fid):
            continue
        if _load_hdf5plugin() and _filter_available(fid):
            continue
        name = FILTER_NAMES.get(fid, f"filter id {fid}")
        raise UltrasoundFileError(
            f"{path}: key {key!r} is compressed with the {name} HDF5 filter (id {fid}), which "
            "is not available: install hdf5plugin (pip install 'diffsci[ultrasound]' or "
            "pip install hdf5plugin) to read zea's default compression"
        )
    return np.asarray(ds[()])


def _meta(ds: Any) -> dict[str, str]:
    out = {}
    for k in ("unit", "description"):
        if k in ds.attrs:
            v = ds.attrs[k]
            out[k] = v.decode() if isinstance(v, bytes) else str(v)
    return out


def _attr_str(f: Any, key: str, default: str) -> str:
    v = f.attrs.get(key, default)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return str(v.tolist())
    return str(v)


def _scalar(v: np.ndarray) -> float:
    a = np.asarray(v, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("empty")
    if not np.all(a == a[0]):
        raise ValueError("per-transmit values differ")
    return float(a[0])


def zea_layout(path: str | Path) -> str:
    """``"current"`` (``/tracks``), ``"flat"`` (``/data`` + ``/scan`` with the current
    required keys) or ``"legacy"``; raises naming the file if it is not zea HDF5."""
    with open_hdf5(path, what="zea HDF5 file") as f:
        return _layout(f, Path(path))


def _layout(f: Any, path: Path) -> str:
    if "tracks" in f:
        return "current"
    if "scan" not in f:
        raise UltrasoundFileError(
            f"{path}: required key '/scan' is missing (not a zea HDF5 file: zea files hold "
            "'/tracks/track_N/{data,scan}' or legacy '/data' and '/scan')"
        )
    if "data" not in f:
        raise UltrasoundFileError(f"{path}: required key '/data' is missing (zea HDF5 file)")
    scan = f["scan"]
    if any(k in scan for k in ("n_ax", "n_el", "n_frames")):  # legacy's required counts
        return "legacy"
    return "flat" if all(k in scan for k in REQUIRED_SCAN_KEYS) else "legacy"


# ----------------------------------------------------------------------------- zea reader
def _probe_geometry(f: Any, base: str, path: Path) -> tuple[np.ndarray, dict, float | None]:
    """Geometry from ``/probe`` (zea >= 0.1) if the file has it, else from the scan."""
    for grp in ("probe", f"{base}/probe"):
        if grp in f:
            key = next((k for k in ("probe_geometry", "geometry") if k in f[grp]), None)
            if key is None:
                raise UltrasoundFileError(
                    f"{path}: required key '/{grp}/probe_geometry' is missing (the /probe group "
                    "holds the element positions (n_el, 3) in metres)"
                )
            g = _read(f, f"{grp}/{key}", path).astype(np.float64)
            w = f[grp].get("element_width")
            return g, _meta(f[f"{grp}/{key}"]), (float(w[()]) if w is not None else None)
    key = f"{base}/scan/probe_geometry"
    if key not in f:
        raise UltrasoundFileError(
            f"{path}: required key '/{key}' is missing (no '/probe' group either): the element "
            "positions (n_el, 3) in metres are needed to beamform"
        )
    return _read(f, key, path).astype(np.float64), _meta(f[key]), None


def _scan_value(f: Any, key: str, path: Path, required: bool, default: Any) -> Any:
    if key in f:
        return _read(f, key, path)
    if required:
        raise UltrasoundFileError(f"{path}: required key '/{key}' is missing")
    return default


def _read_scan(f: Any, base: str, path: Path, layout: str) -> Scan:
    s = f"{base}/scan" if base else "scan"
    if s not in f:
        raise UltrasoundFileError(f"{path}: required key '/{s}' is missing")
    geom, gmeta, width = _probe_geometry(f, base, path)
    need = set(REQUIRED_SCAN_KEYS) if layout != "legacy" else set(LEGACY_REQUIRED_SCAN_KEYS)
    n_el = geom.shape[0]
    t0 = _scan_value(f, f"{s}/t0_delays", path, "t0_delays" in need, None)
    n_tx = int(np.shape(t0)[0]) if t0 is not None else 1
    vals: dict[str, Any] = {}
    for key in _SCALARS:
        v = _scan_value(f, f"{s}/{key}", path, key in need, None)
        try:
            vals[key] = _scalar(v) if v is not None else None
        except ValueError as e:
            raise UltrasoundFileError(
                f"{path}: key '/{s}/{key}' must be one value for all transmits ({e}); "
                "per-transmit frequencies are not supported"
            ) from e
    if vals["demodulation_frequency"] is None:
        vals["demodulation_frequency"] = vals["center_frequency"]
    defaults = {
        "initial_times": np.zeros(n_tx),
        "t0_delays": np.zeros((n_tx, n_el)),
        "tx_apodizations": np.ones((n_tx, n_el)),
        "focus_distances": np.full(n_tx, np.inf),
        "transmit_origins": np.zeros((n_tx, 3)),
        "polar_angles": np.zeros(n_tx),
    }
    arrays = {
        k: np.asarray(_scan_value(f, f"{s}/{k}", path, k in need, d), dtype=np.float64)
        for k, d in defaults.items()
    }
    c = _scan_value(f, f"{s}/sound_speed", path, False, None)
    w = _scan_value(f, f"{s}/element_width", path, False, None)
    attrs = {k: _meta(f[f"{s}/{k}"]) for k in f[s] if hasattr(f[f"{s}/{k}"], "shape")}
    attrs["probe_geometry"] = gmeta
    scan = Scan(
        probe_geometry=geom,
        sampling_frequency=vals["sampling_frequency"],
        center_frequency=vals["center_frequency"],
        demodulation_frequency=vals["demodulation_frequency"],
        sound_speed=float(np.ravel(c)[0]) if c is not None else 1540.0,
        element_width=float(np.ravel(w)[0]) if w is not None else width,
        attrs=attrs,
        **arrays,
    )
    scan.check(f"{path}: /{s}")
    return scan


def _check_raw(raw: np.ndarray, scan: Scan, path: Path, key: str) -> np.ndarray:
    if raw.ndim == 4:  # legacy files without the channel axis: RF
        raw = raw[..., None]
    if raw.ndim != 5 or raw.shape[-1] not in (1, 2):
        raise UltrasoundFileError(
            f"{path}: key '/{key}' has shape {raw.shape}; zea raw_data is (n_frames, n_tx, n_ax, "
            "n_el, n_ch) with n_ch 1 (RF) or 2 (IQ)"
        )
    if raw.shape[3] != scan.n_el:
        raise UltrasoundFileError(
            f"{path}: key '/{key}' has {raw.shape[3]} elements (axis 3 of {raw.shape}) but the "
            f"probe geometry has {scan.n_el}: data and geometry disagree; check that the probe "
            "geometry belongs to this acquisition"
        )
    if raw.shape[1] != scan.n_tx:
        raise UltrasoundFileError(
            f"{path}: key '/{key}' has {raw.shape[1]} transmits (axis 1 of {raw.shape}) but "
            f"t0_delays has {scan.n_tx}"
        )
    if not np.isfinite(raw).all():
        bad = int((~np.isfinite(raw)).sum())
        raise UltrasoundFileError(
            f"{path}: key '/{key}' holds {bad} NaN/inf values; channel data must be finite "
            "(mask or drop the broken frames or channels before using this file)"
        )
    return raw.astype(np.float32)


def _read_product(f: Any, key: str, path: Path) -> Product:
    node = f[key]
    if hasattr(node, "shape"):  # legacy: a plain array
        return Product(_read(f, key, path), None, **_meta(node))
    vals = _read(f, f"{key}/values", path)
    coords = _read(f, f"{key}/coordinates", path) if "coordinates" in node else None
    m = _meta(node["values"])
    for k in ("unit", "description"):
        if k in node and k not in m:
            v = node[k][()]
            m[k] = v.decode() if isinstance(v, bytes) else str(v)
    return Product(vals, coords, **m)


def read_zea(path: str | Path, *, track: int = 0) -> Acquisition:
    """Read one acquisition (``track``) of a zea HDF5 file, either layout.

    Raises
    ------
    UltrasoundFileError
        Naming the file and key: a missing required ``/scan`` or ``/probe`` key, element or
        transmit counts that disagree between data and geometry, NaN/inf channel data, or a
        compressed dataset whose filter is not available (install ``hdf5plugin``).
    """
    path = Path(path)
    with open_hdf5(path, what="zea HDF5 file") as f:
        layout = _layout(f, path)
        base = ""
        if layout == "current":
            base = f"tracks/track_{track}"
            if base not in f:
                have = sorted(f["tracks"].keys())
                raise UltrasoundFileError(f"{path}: key '/{base}' is missing (tracks: {have})")
        scan = _read_scan(f, base, path, layout)
        dkey = f"{base}/data" if base else "data"
        if dkey not in f:
            raise UltrasoundFileError(f"{path}: required key '/{dkey}' is missing")
        raw = None
        attrs: dict[str, dict[str, str]] = {}
        if "raw_data" in f[dkey]:
            raw = _check_raw(_read(f, f"{dkey}/raw_data", path), scan, path, f"{dkey}/raw_data")
            attrs["raw_data"] = _meta(f[f"{dkey}/raw_data"])
        products = {k: _read_product(f, f"{dkey}/{k}", path) for k in _PRODUCTS if k in f[dkey]}
        if raw is None and not products:
            raise UltrasoundFileError(
                f"{path}: '/{dkey}' holds neither raw_data nor a derived product "
                f"({', '.join(_PRODUCTS)})"
            )
        return Acquisition(
            raw_data=raw,
            scan=scan,
            products=products,
            probe_name=_attr_str(f, "probe_name", _attr_str(f, "probe", "unknown")),
            us_machine=_attr_str(f, "us_machine", "unknown"),
            description=_attr_str(f, "description", ""),
            attrs=attrs,
        )


# ----------------------------------------------------------------------------- zea writer
def _put(g: Any, key: str, value: Any, meta: Mapping[str, str] | None, compression) -> None:
    arr = np.asarray(value)
    comp = compression if arr.ndim > 0 and arr.size > 1 else None
    ds = g.create_dataset(key, data=arr, compression=comp)
    unit, desc = DEFAULT_META.get(key, ("-", ""))
    meta = meta or {}
    ds.attrs["unit"] = meta.get("unit", unit)
    ds.attrs["description"] = meta.get("description", desc)


def _scan_items(scan: Scan) -> dict[str, Any]:
    items = {
        "probe_geometry": np.asarray(scan.probe_geometry, np.float32),
        "sampling_frequency": np.float32(scan.sampling_frequency),
        "center_frequency": np.float32(scan.center_frequency),
        "demodulation_frequency": np.float32(scan.demodulation_frequency),
        "initial_times": np.asarray(scan.initial_times, np.float32),
        "t0_delays": np.asarray(scan.t0_delays, np.float32),
        "tx_apodizations": np.asarray(scan.tx_apodizations, np.float32),
        "focus_distances": np.asarray(scan.focus_distances, np.float32),
        "transmit_origins": np.asarray(scan.transmit_origins, np.float32),
        "polar_angles": np.asarray(scan.polar_angles, np.float32),
        "sound_speed": np.float32(scan.sound_speed),
    }
    if scan.element_width is not None:
        items["element_width"] = np.float32(scan.element_width)
    return items


def _write_probe(g: Any, acq: Acquisition, compression) -> None:
    """zea >= 0.1's ``/probe`` group (``ProbeSpec``): geometry, element width, name."""
    s = acq.scan
    _put(
        g,
        "probe_geometry",
        np.asarray(s.probe_geometry, np.float32),
        s.attrs.get("probe_geometry"),
        compression,
    )
    if s.element_width is not None:
        _put(g, "element_width", np.float32(s.element_width), s.attrs.get("element_width"), None)
    g.create_dataset("name", data=acq.probe_name, dtype=_str_dtype())


def _write_product(g: Any, key: str, p: Product, layout: str, compression) -> None:
    if layout == "legacy":
        _put(
            g,
            key,
            np.asarray(p.values, np.float32),
            {"unit": p.unit, "description": p.description},
            compression,
        )
        return
    sub = g.create_group(key)
    meta = {"unit": p.unit, "description": p.description}
    _put(sub, "values", np.asarray(p.values), meta, compression)
    if p.coordinates is not None:
        _put(
            sub,
            "coordinates",
            np.asarray(p.coordinates, np.float32),
            {"unit": "m", "description": "Per-pixel [x, y, z] positions."},
            compression,
        )
    if key == "beamformed_data":
        labels = ["RF"] if p.values.shape[-1] == 1 else ["I", "Q"]
        sub.create_dataset("labels", data=np.array(labels, dtype=object), dtype=_str_dtype())
    sub.create_dataset("unit", data=p.unit, dtype=_str_dtype())
    sub.create_dataset("description", data=p.description, dtype=_str_dtype())


def _str_dtype():
    import h5py

    return h5py.string_dtype(encoding="utf-8")


def _write_zea_body(f: Any, acq: Acquisition, layout: str, compression) -> None:
    """Everything :func:`write_zea` puts into the open file ``f``."""
    f.attrs["probe_name"] = acq.probe_name
    f.attrs["us_machine"] = acq.us_machine
    f.attrs["description"] = acq.description
    if layout == "current":
        f.attrs["zea_version"] = ZEA_FORMAT_VERSION
        f.attrs["written_by"] = "diffsci"
        _write_probe(f.create_group("probe"), acq, compression)
        root = f.create_group("tracks/track_0")
    else:
        f.attrs["probe"] = acq.probe_name
        root = f
    data, scan = root.create_group("data"), root.create_group("scan")
    if acq.raw_data is not None:
        _put(
            data,
            "raw_data",
            np.asarray(acq.raw_data, np.float32),
            acq.attrs.get("raw_data"),
            compression,
        )
    for key, p in acq.products.items():
        _write_product(data, key, p, layout, compression)
    for key, v in _scan_items(acq.scan).items():
        if layout == "current" and key in _PROBE_KEYS:  # zea >= 0.1: under /probe
            continue
        _put(scan, key, v, acq.scan.attrs.get(key), compression)
    if layout == "legacy" and acq.raw_data is not None:
        n_frames, n_tx, n_ax, n_el, n_ch = acq.raw_data.shape
        for k, v in dict(n_frames=n_frames, n_tx=n_tx, n_ax=n_ax, n_el=n_el, n_ch=n_ch).items():
            _put(
                scan,
                k,
                np.int64(v),
                {"unit": "-", "description": f"The number of {k[2:]}."},
                None,
            )


def write_zea(
    path: str | Path,
    acq: Acquisition,
    *,
    layout: str = "current",
    compression: str | None = None,
) -> Path:
    """Write ``acq`` as a zea HDF5 file, atomically.

    Parameters
    ----------
    layout
        ``"current"`` (``/tracks/track_0/{data,scan}``, zea >= 0.1 ``FileSpec.save``) or
        ``"legacy"`` (``/data`` + ``/scan`` with ``n_ax``, ``n_el``, ``n_tx``, ``n_ch``,
        ``n_frames``, as ``data_format.yaml``).
    compression
        ``None`` or ``"gzip"`` (readable by plain h5py; we never write Blosc).
    """
    import h5py

    if layout not in ("current", "legacy"):
        raise ValueError(f"layout must be 'current' or 'legacy', got {layout!r}")
    if compression not in (None, "gzip"):
        raise ValueError(f"compression must be None or 'gzip', got {compression!r}")
    acq.scan.check(f"{path}: scan to write")
    if acq.raw_data is not None:
        _check_raw(np.asarray(acq.raw_data), acq.scan, Path(path), "raw_data (to write)")
    with atomic_path(path, suffix=".hdf5") as tmp, h5py.File(tmp, "w") as f:
        _write_zea_body(f, acq, layout, compression)
    return Path(path)


# ----------------------------------------------------------------------------- PICMUS
_PICMUS = "US/US_DATASET0000"
#: The L11-4v probe's centre frequency in PICMUS (5.208 MHz): its RF files store
#: ``modulation_frequency`` 0 and no centre frequency, so the reader assumes this one.
PICMUS_CENTER_FREQUENCY = 5.208e6


def read_picmus(path: str | Path, scan_path: str | Path | None = None) -> Acquisition:
    """Read a PICMUS ``us_dataset`` HDF5 file (and optionally its ``*_scan.hdf5`` grid).

    PICMUS stores ``data/real`` and ``data/imag`` as ``(n_tx, n_el, n_ax)``, the geometry as
    ``(3, n_el)`` and its times relative to the plane wave crossing the origin; this maps them
    onto zea's axes ``(1, n_tx, n_ax, n_el, n_ch)`` (``n_ch`` 1 when ``modulation_frequency``
    is 0, i.e. RF, else 2 = IQ) and zea's time reference (first element fires at 0):
    ``initial_times = initial_time - min_e(x_e sin(theta)) / c``. RF files without a
    ``center_frequency`` get the L11-4v's (:data:`PICMUS_CENTER_FREQUENCY`).
    """
    path = Path(path)
    with open_hdf5(path, what="PICMUS HDF5 file") as f:
        if _PICMUS not in f:
            raise UltrasoundFileError(f"{path}: required key '/{_PICMUS}' is missing (not PICMUS)")
        g = _PICMUS
        real = _read(f, f"{g}/data/real", path)
        imag = _read(f, f"{g}/data/imag", path) if f"{g}/data/imag" in f else np.zeros_like(real)
        geom = _read(f, f"{g}/probe_geometry", path).astype(np.float64)
        angles = np.ravel(_read(f, f"{g}/angles", path)).astype(np.float64)
        fs = _scalar(_read(f, f"{g}/sampling_frequency", path))
        fmod = _scalar(_read(f, f"{g}/modulation_frequency", path))
        t_init = _scalar(_read(f, f"{g}/initial_time", path))
        c = _scalar(_read(f, f"{g}/sound_speed", path))
        fc = _scalar(f[f"{g}/center_frequency"][()]) if f"{g}/center_frequency" in f else fmod
        attrs = {
            k: _meta(f[f"{g}/{k}"]) for k in ("angles", "sampling_frequency") if f"{g}/{k}" in f
        }
    if geom.ndim != 2 or geom.shape[0] != 3:
        raise UltrasoundFileError(
            f"{path}: key '/{g}/probe_geometry' has shape {geom.shape}, expected (3, n_el)"
        )
    if real.ndim != 3 or real.shape[1] != geom.shape[1]:
        raise UltrasoundFileError(
            f"{path}: key '/{g}/data/real' has shape {real.shape} but the probe geometry has "
            f"{geom.shape[1]} elements: PICMUS data are (n_tx, n_el, n_ax)"
        )
    if real.shape[0] != angles.size:
        raise UltrasoundFileError(
            f"{path}: key '/{g}/data/real' has {real.shape[0]} transmits, angles {angles.size}"
        )
    iq = fmod != 0
    chans = [real, imag] if iq else [real]
    raw = np.stack([np.transpose(ch, (0, 2, 1)) for ch in chans], -1)[None]
    x_el = geom[0]
    m = (np.sin(angles)[:, None] * x_el[None]).min(1)
    scan = Scan(
        probe_geometry=geom.T.copy(),
        sampling_frequency=fs,
        center_frequency=fc if fc else PICMUS_CENTER_FREQUENCY,
        demodulation_frequency=fmod,
        initial_times=t_init - m / c,
        t0_delays=plane_wave_t0_delays(x_el, angles, c),
        tx_apodizations=np.ones((angles.size, x_el.size)),
        focus_distances=np.full(angles.size, np.inf),
        transmit_origins=np.zeros((angles.size, 3)),
        polar_angles=angles,
        sound_speed=c,
        attrs=attrs,
    )
    raw = _check_raw(raw, scan, path, f"{g}/data/real")
    grid = _read_picmus_grid(Path(scan_path)) if scan_path is not None else None
    return Acquisition(raw, scan, probe_name="PICMUS L11-4v", us_machine="Verasonics", grid=grid)


def _read_picmus_grid(path: Path) -> dict[str, np.ndarray]:
    with open_hdf5(path, what="PICMUS scan file") as f:
        x = np.ravel(_read(f, f"{_PICMUS}/x_axis", path)).astype(np.float64)
        z = np.ravel(_read(f, f"{_PICMUS}/z_axis", path)).astype(np.float64)
    return {"x": x, "z": z}


def write_picmus(
    path: str | Path, acq: Acquisition, *, frame: int = 0, scan_path: str | Path | None = None
) -> Path:
    """Write one frame of a plane-wave ``acq`` in PICMUS's layout (inverse of
    :func:`read_picmus`), and its grid (``acq.grid``) to ``scan_path``; both atomic."""
    import h5py

    s = acq.scan
    if acq.raw_data is None or not s.is_plane_wave.all():
        raise ValueError("PICMUS holds plane-wave channel data only")
    data = np.asarray(acq.raw_data[frame], np.float64)  # (n_tx, n_ax, n_el, n_ch)
    real = np.transpose(data[..., 0], (0, 2, 1))
    imag = np.transpose(data[..., 1], (0, 2, 1)) if data.shape[-1] == 2 else np.zeros_like(real)
    m = (np.sin(s.polar_angles)[:, None] * s.probe_geometry[:, 0][None]).min(1)
    t_pic = np.asarray(s.initial_times) + m / s.sound_speed
    fmod = s.demodulation_frequency if data.shape[-1] == 2 else 0.0
    with atomic_path(path, suffix=".hdf5") as tmp, h5py.File(tmp, "w") as f:
        g = f.create_group(_PICMUS)
        g.create_dataset("data/real", data=real.astype(np.float32))
        g.create_dataset("data/imag", data=imag.astype(np.float32))
        g["angles"] = np.asarray(s.polar_angles, np.float64)
        g["probe_geometry"] = np.asarray(s.probe_geometry, np.float64).T
        g["sampling_frequency"] = np.float64(s.sampling_frequency)
        g["modulation_frequency"] = np.float64(fmod)
        g["center_frequency"] = np.float64(s.center_frequency)
        if np.ptp(t_pic) > 1e-3 / s.sampling_frequency:  # float32 files: a sample's 1/1000
            raise ValueError(
                f"{path}: PICMUS holds one initial_time for all transmits, but this acquisition "
                f"starts recording at {t_pic.tolist()} s after each wave crosses the origin; "
                "write it as zea instead"
            )
        g["initial_time"] = np.float64(np.mean(t_pic))
        g["sound_speed"] = np.float64(s.sound_speed)
        g["PRF"] = np.float64(1000.0)
    if scan_path is not None:
        if acq.grid is None:
            raise ValueError("write_picmus: scan_path given but acq.grid is None")
        with atomic_path(scan_path, suffix=".hdf5") as tmp, h5py.File(tmp, "w") as f:
            g = f.create_group(_PICMUS)
            g["x_axis"] = np.asarray(acq.grid["x"], np.float64)
            g["z_axis"] = np.asarray(acq.grid["z"], np.float64)
    return Path(path)


def read_acquisition(path: str | Path) -> Acquisition:
    """zea or PICMUS, by content (``/US/US_DATASET0000`` means PICMUS); PICMUS's grid file
    beside it is read too (``<name>_dataset_rf.hdf5`` / ``_iq`` -> ``<name>_scan.hdf5``, as the
    challenge names them, or ``<stem>_scan.hdf5``)."""
    path = Path(path)
    with open_hdf5(path, what="ultrasound HDF5 file") as f:
        picmus = _PICMUS in f
    if not picmus:
        return read_zea(path)
    stem = path.name.rsplit(".", 1)[0]
    base = stem.removesuffix("_rf").removesuffix("_iq")
    for cand in (base.removesuffix("_dataset") + "_scan.hdf5", base + "_scan.hdf5"):
        if (path.parent / cand).is_file() and cand != path.name:
            return read_picmus(path, path.parent / cand)
    return read_picmus(path)


def with_raw(acq: Acquisition, raw: np.ndarray) -> Acquisition:
    """A copy of ``acq`` with other channel data (same scan)."""
    return replace(acq, raw_data=np.asarray(raw, np.float32), products={})
