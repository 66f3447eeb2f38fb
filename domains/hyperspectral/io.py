"""Hyperspectral cubes in memory and on disk: readers, validation, atomic writers.

In memory a cube is an :class:`xarray.DataArray` with dims ``(band, y, x)``, a float
``wavelength(band)`` coordinate in nanometres and a boolean ``good_band(band)`` coordinate
(the ENVI bad-band list, ``bbl``: 1 = good). Cubes read from disk are lazy (dask-chunked, one
chunk per block of bands by ``y`` rows) until computed.

Readers (:func:`read_cube` dispatches on the name):

- ENVI (``.hdr`` + data file, Harris/L3Harris "ENVI Header Format"): through the pure-Python
  ``spectral`` package (SPy), which honours ``interleave`` (bsq/bil/bip), ``byte order``,
  ``data type`` and ``header offset``. ``wavelength`` with ``wavelength units`` (nanometres or
  micrometres, converted to nm), ``bbl``, ``data ignore value`` (those pixels become NaN) and
  ``map info`` / ``coordinate system string`` (kept verbatim as attributes) are read.
- MATLAB ``.mat``: v4/v5/v7 through :func:`scipy.io.loadmat`, v7.3 (HDF5) through ``h5py``
  (whose axes are MATLAB's reversed); the variable is named by the user, the band axis is
  MATLAB's last (``H x W x B``, as the ICVL and CAVE files) unless told otherwise.
- netCDF / HDF5 (``.nc``, ``.h5``, ``.nc4``) through ``h5netcdf`` and zarr stores through
  xarray: a variable with dims ``(band, y, x)`` and a ``wavelength`` coordinate.

Validation (:func:`check_cube`): the band count and wavelengths the user declares must match
the file's (0.5 nm tolerance); wavelengths must increase; a band that is entirely NaN or
entirely zero is refused naming the file, the variable and the band, unless
``bad_bands="mask"``, which marks it bad (``good_band = False``) instead: restoration then
treats it as a dropped band. NaN pixels inside good bands are kept as NaN (missing data;
restoration treats them as dead pixels).

Writers (:func:`write_netcdf`, :func:`write_zarr`, :func:`write_envi`) keep the wavelengths,
bad-band list, units and attributes, and are atomic (:mod:`diffsci.core.fileio`): a failed
write leaves no file that looks complete and never touches the input.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from diffsci.core.fileio import atomic_dir, atomic_path, refuse_pickle_codecs

__all__ = [
    "CubeError",
    "make_cube",
    "read_cube",
    "read_envi",
    "read_mat",
    "read_xarray",
    "check_cube",
    "write_netcdf",
    "write_zarr",
    "write_envi",
    "create_zarr_like",
    "declared_wavelengths",
    "ENVI_DTYPES",
]

#: ENVI ``data type`` codes (ENVI Header Format) and numpy types.
ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
_MICRONS = {"micrometers", "micrometer", "microns", "micron", "um", "µm"}
_NANOMETRES = {"nanometers", "nanometer", "nanometres", "nm"}
#: Wavelength agreement tolerance between a file and what the user declares (nm).
WAVELENGTH_TOL_NM = 0.5
_CHUNK_ROWS = 256


class CubeError(ValueError):
    """A cube file the reader refuses; the message names the file, the key and the fix."""


# ----------------------------------------------------------------------------- in memory
def make_cube(
    data: Any,
    wavelength: Sequence[float] | np.ndarray,
    *,
    good_band: Sequence[bool] | np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
    name: str = "reflectance",
) -> xr.DataArray:
    """A cube ``(band, y, x)`` with its ``wavelength`` (nm) and ``good_band`` coordinates.

    Parameters
    ----------
    data
        Array-like (numpy or dask) of shape ``(bands, rows, columns)``.
    wavelength
        Band centres in nanometres, one per band, increasing.
    good_band
        The bad-band list (True = good); default all good.
    attrs
        Attributes kept with the cube (units, ``map info`` ...).
    """
    wl = np.asarray(wavelength, dtype=np.float64)
    if data.ndim != 3:
        raise CubeError(f"a cube is (band, y, x); got an array of shape {tuple(data.shape)}")
    if wl.shape != (data.shape[0],):
        raise CubeError(f"{data.shape[0]} bands but {wl.size} wavelengths")
    gb = np.ones(wl.size, bool) if good_band is None else np.asarray(good_band, bool)
    da = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"wavelength": ("band", wl), "good_band": ("band", gb)},
        name=name,
        attrs=dict(attrs or {}),
    )
    da["wavelength"].attrs["units"] = "nm"
    return da


def declared_wavelengths(spec: Any, bands: int | None = None) -> np.ndarray | None:
    """Wavelengths the user declares in a config: a list (nm), or ``{start, stop}`` (nm,
    inclusive, evenly spaced over ``bands``), or ``None``."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        if bands is None:
            raise CubeError("wavelength {start, stop} needs the band count to space the bands")
        return np.linspace(float(spec["start"]), float(spec["stop"]), int(bands))
    return np.asarray(spec, dtype=np.float64)


# ----------------------------------------------------------------------------- ENVI
def _envi_paths(path: Path) -> tuple[Path, Path | None]:
    """``(header, data file or None)`` for a header or a data file name."""
    if path.suffix.lower() == ".hdr":
        hdr = path
    else:
        cands = [path.with_suffix(".hdr"), Path(str(path) + ".hdr")]
        hdr = next((c for c in cands if c.is_file()), cands[0])
    if not hdr.is_file():
        raise FileNotFoundError(f"{path}: no ENVI header ({hdr.name}) beside it")
    if path.suffix.lower() != ".hdr":
        return hdr, path if path.is_file() else None
    stem = hdr.with_suffix("")
    for ext in ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".IMG", ".DAT"):
        cand = Path(str(stem) + ext)
        if cand.is_file():
            return hdr, cand
    return hdr, None


def _wavelengths_nm(meta: Mapping[str, Any], hdr: Path, bands: int) -> np.ndarray | None:
    wl = meta.get("wavelength")
    if wl is None:
        return None
    wl = np.asarray([float(v) for v in wl])
    if wl.size != bands:
        raise CubeError(f"{hdr}: 'wavelength' lists {wl.size} values but 'bands' = {bands}")
    units = str(meta.get("wavelength units", "")).strip().lower()
    if units in _MICRONS or (units in ("", "unknown") and wl.max() < 30):
        return wl * 1000.0
    if units in _NANOMETRES or units in ("", "unknown"):
        return wl
    raise CubeError(
        f"{hdr}: 'wavelength units' = {meta.get('wavelength units')!r}; diffsci reads "
        "nanometers or micrometers (convert the header's wavelengths)"
    )


def _check_envi_size(hdr: Path, data: Path, meta: Mapping[str, Any]) -> None:
    dt = int(meta.get("data type", 4))
    if dt not in ENVI_DTYPES:
        raise CubeError(f"{hdr}: 'data type' = {dt} is not a real ENVI type diffsci reads")
    n = int(meta["samples"]) * int(meta["lines"]) * int(meta["bands"])
    need = n * np.dtype(ENVI_DTYPES[dt]).itemsize + int(meta.get("header offset", 0))
    have = data.stat().st_size
    if have < need:
        raise CubeError(
            f"{data}: truncated ENVI data file: {have} bytes, but the header {hdr.name} "
            f"(samples x lines x bands x {np.dtype(ENVI_DTYPES[dt]).itemsize} bytes + header "
            f"offset) needs {need}; the copy is incomplete, copy the file again"
        )


class _EnviWindows:
    """The ENVI data as a ``(bands, lines, samples)`` array-like whose every read maps the
    file (SPy's ``open_memmap``, any interleave), copies the window and unmaps it.

    A memory map held for the whole read keeps every page read so far resident in the
    process (counted in its RSS), so a tiled pass over a scene larger than memory would end
    holding the whole file; here only the windows being used are.
    """

    ndim = 3

    def __init__(self, hdr: Path, data: Path) -> None:
        self.hdr, self.data = hdr, data
        mm = self._open()
        self.shape, self.dtype = tuple(mm.shape), mm.dtype
        del mm

    def _open(self) -> np.ndarray:
        import spectral.io.envi as envi

        return envi.open(str(self.hdr), str(self.data)).open_memmap(interleave="bsq")

    def __getitem__(self, key: Any) -> np.ndarray:
        mm = self._open()
        out = np.array(mm[key])
        del mm
        return out


def read_envi(path: str | os.PathLike, *, chunk_rows: int = _CHUNK_ROWS) -> xr.DataArray:
    """Read an ENVI image (header + data) lazily as a cube.

    Parameters
    ----------
    path
        The ``.hdr`` header or the data file beside it.
    chunk_rows
        Rows per dask chunk.

    Notes
    -----
    Header keys follow the ENVI Header Format (L3Harris documentation): ``samples``,
    ``lines``, ``bands``, ``interleave``, ``byte order``, ``data type``, ``header offset``,
    ``wavelength``, ``wavelength units``, ``bbl``, ``data ignore value``, ``map info``. SPy
    (``spectral.io.envi``) parses the header and memory-maps the data in its interleave.
    """
    import dask.array as dsa
    import spectral.io.envi as envi

    hdr, data = _envi_paths(Path(path))
    if data is None:
        raise FileNotFoundError(
            f"{hdr}: ENVI header without its data file (looked for {hdr.with_suffix('')}"
            "[.img|.dat|.raw|.bsq|.bil|.bip]); copy the data file beside the header"
        )
    try:
        meta = envi.read_envi_header(str(hdr))
    except Exception as e:  # noqa: BLE001 - SPy raises several types for bad headers
        raise CubeError(f"{hdr}: not a readable ENVI header ({type(e).__name__}: {e})") from e
    for key in ("samples", "lines", "bands"):
        if key not in meta:
            raise CubeError(f"{hdr}: ENVI header lacks the required key {key!r}")
    _check_envi_size(hdr, data, meta)
    src = _EnviWindows(hdr, data)
    bands = int(meta["bands"])
    arr = dsa.from_array(src, chunks=(bands, min(chunk_rows, src.shape[1]), src.shape[2]))
    arr = arr.astype(np.float32)
    ignore = meta.get("data ignore value")
    if ignore is not None:
        arr = dsa.where(arr == np.float32(float(ignore)), np.float32(np.nan), arr)
    wl = _wavelengths_nm(meta, hdr, bands)
    if wl is None:
        wl = np.full(bands, np.nan)
    bbl = meta.get("bbl")
    good = None if bbl is None else [float(v) != 0 for v in bbl]
    keep = (
        "map info",
        "coordinate system string",
        "description",
        "sensor type",
        "reflectance scale factor",
    )
    attrs = {k.replace(" ", "_"): _flat(meta[k]) for k in keep if k in meta}
    attrs.update(source=str(data), header=str(hdr), interleave=str(meta.get("interleave", "bsq")))
    if ignore is not None:
        attrs["data_ignore_value"] = float(ignore)
    return make_cube(arr, wl, good_band=good, attrs=attrs)


def _flat(v: Any) -> str:
    return "{" + ", ".join(map(str, v)) + "}" if isinstance(v, list) else str(v)


# ----------------------------------------------------------------------------- MATLAB
def _mat_variables_h5(f: Any) -> list[str]:
    return sorted(k for k in f.keys() if not k.startswith("#"))


def _load_mat(path: Path, variable: str, wavelength_variable: str | None):
    """``(array in MATLAB axis order, wavelengths or None)`` of a v5 or v7.3 .mat file."""
    import scipy.io

    names = [n for n in (variable, wavelength_variable) if n]
    try:
        mat = scipy.io.loadmat(str(path), variable_names=names)
        present = sorted(k for k, _, _ in scipy.io.whosmat(str(path)))
        get = mat.get
    except NotImplementedError:  # v7.3 is HDF5; h5py reverses MATLAB's axes
        from diffsci.core.fileio import open_hdf5

        with open_hdf5(path, what="MATLAB v7.3 file") as f:
            present = _mat_variables_h5(f)
            mat = {n: np.asarray(f[n]).T for n in names if n in f}
        get = mat.get
    except ValueError as e:
        raise CubeError(f"{path}: not a readable MATLAB file ({e})") from e
    if get(variable) is None:
        raise CubeError(
            f"{path}: no variable {variable!r}; the file holds: {', '.join(present) or 'none'} "
            "(name the cube's variable in the config's files.variable)"
        )
    wl = None
    if wavelength_variable:
        if get(wavelength_variable) is None:
            raise CubeError(
                f"{path}: no wavelength variable {wavelength_variable!r}; the file holds: "
                f"{', '.join(present)}"
            )
        wl = np.asarray(get(wavelength_variable), dtype=np.float64).ravel()
    return np.asarray(get(variable)), wl


def read_mat(
    path: str | os.PathLike,
    variable: str,
    *,
    band_axis: int = -1,
    wavelength_variable: str | None = None,
) -> xr.DataArray:
    """Read a cube from a MATLAB ``.mat`` file (v5 via scipy, v7.3 via h5py).

    Parameters
    ----------
    variable
        The cube's variable; an error lists the variables present when it is absent.
    band_axis
        The band axis in MATLAB's order (default last: ``rows x columns x bands``, as the
        ICVL (Arad & Ben-Shahar, ECCV 2016) and CAVE files).
    wavelength_variable
        A variable of the file holding the band centres (nm), if any; otherwise the caller
        declares them (:func:`read_cube`'s ``wavelength``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MATLAB file")
    arr, wl = _load_mat(path, variable, wavelength_variable)
    if arr.ndim != 3:
        raise CubeError(f"{path}: variable {variable!r} has shape {arr.shape}, not a 3-D cube")
    cube = np.moveaxis(arr, band_axis, 0).astype(np.float32)
    if wl is None:
        wl = np.full(cube.shape[0], np.nan)
    if wl.size != cube.shape[0]:
        raise CubeError(
            f"{path}: {wavelength_variable!r} has {wl.size} values but {variable!r} has "
            f"{cube.shape[0]} bands on axis {band_axis}"
        )
    return make_cube(cube, wl, attrs={"source": str(path), "variable": variable})


# ----------------------------------------------------------------------------- netCDF / zarr
def read_xarray(path: str | os.PathLike, variable: str | None = None) -> xr.DataArray:
    """Read a cube variable ``(band, y, x)`` with a ``wavelength`` coordinate from a netCDF
    file or a zarr store (lazily, dask-chunked)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such netCDF file or zarr store")
    if path.suffix == ".zarr" or path.is_dir():
        refuse_pickle_codecs(path)  # issue 25: a zarr v2 'pickle' codec would run code
    try:
        if path.suffix == ".zarr" or path.is_dir():
            ds = xr.open_zarr(path)
        else:
            ds = xr.open_dataset(path, engine="h5netcdf", chunks={})
    except Exception as e:  # noqa: BLE001 - xarray backends raise many types
        raise CubeError(f"{path}: not a readable netCDF/zarr file ({type(e).__name__}: {e})") from e
    cubes = [n for n, v in ds.data_vars.items() if v.dims == ("band", "y", "x")]
    name = variable or (cubes[0] if len(cubes) == 1 else None)
    if name is None or name not in ds.data_vars:
        raise CubeError(
            f"{path}: no cube variable {variable!r}; (band, y, x) variables present: "
            f"{', '.join(cubes) or 'none'} (name one in files.variable)"
        )
    da = ds[name]
    if da.dims != ("band", "y", "x"):
        raise CubeError(f"{path}: variable {name!r} has dims {da.dims}, expected (band, y, x)")
    wl = da["wavelength"].values if "wavelength" in da.coords else np.full(da.sizes["band"], np.nan)
    gb = da["good_band"].values if "good_band" in da.coords else None
    attrs = {**da.attrs, "source": str(path), "variable": name}
    return make_cube(da.data.astype(np.float32), wl, good_band=gb, attrs=attrs, name=name)


# ----------------------------------------------------------------------------- dispatch
def read_cube(
    path: str | os.PathLike,
    *,
    variable: str | None = None,
    wavelength: Any = None,
    bands: int | None = None,
    bad_bands: str = "error",
    band_axis: int = -1,
    wavelength_variable: str | None = None,
) -> xr.DataArray:
    """Read and check a cube from ENVI, MATLAB, netCDF or zarr.

    Parameters
    ----------
    path
        ``.hdr`` (or its data file), ``.mat``, ``.nc``/``.nc4``/``.h5`` or ``.zarr``.
    variable
        The cube's variable (required for ``.mat``; for netCDF/zarr when several cubes).
    wavelength
        What the user declares (list in nm or ``{start, stop}``): checked against the file's,
        and used when the file has none.
    bands
        The band count the user declares (checked).
    bad_bands
        ``"error"`` (refuse all-NaN or all-zero bands) or ``"mask"`` (mark them bad).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mat":
        if not variable:
            raise CubeError(f"{path}: a .mat file needs the cube's variable name (files.variable)")
        cube = read_mat(
            path, variable, band_axis=band_axis, wavelength_variable=wavelength_variable
        )
    elif suffix in (".nc", ".nc4", ".h5", ".zarr") or path.is_dir():
        cube = read_xarray(path, variable)
    else:
        cube = read_envi(path)
    return check_cube(
        cube, source=str(path), wavelength=wavelength, bands=bands, bad_bands=bad_bands
    )


def _check_wavelengths(
    cube: xr.DataArray, source: str, declared: np.ndarray | None
) -> xr.DataArray:
    wl = cube["wavelength"].values
    if declared is not None:
        if declared.size != wl.size:
            raise CubeError(
                f"{source}: the file has {wl.size} bands but {declared.size} wavelengths are "
                "declared (files.wavelength)"
            )
        if np.isfinite(wl).all():
            worst = float(np.abs(wl - declared).max())
            if worst > WAVELENGTH_TOL_NM:
                i = int(np.argmax(np.abs(wl - declared)))
                raise CubeError(
                    f"{source}: wavelength of band {i} is {wl[i]:.2f} nm in the file but "
                    f"{declared[i]:.2f} nm is declared (files.wavelength; off by {worst:.2f} nm)"
                )
        else:
            cube = cube.assign_coords(wavelength=("band", declared))
            wl = declared
    if not np.isfinite(wl).all():
        raise CubeError(
            f"{source}: no wavelengths in the file; declare them (files.wavelength: a list in "
            "nm, or {start, stop})"
        )
    if wl.size > 1 and np.any(np.diff(wl) <= 0):
        raise CubeError(f"{source}: wavelengths must increase band by band; got {wl[:5]}...")
    cube["wavelength"].attrs["units"] = "nm"
    return cube


def _band_status(cube: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Per band: all values NaN, all finite values zero (one lazy pass)."""
    import dask.array as dsa

    d = cube.data if isinstance(cube.data, dsa.Array) else dsa.from_array(cube.data)
    finite = dsa.isfinite(d)
    n_finite = finite.sum(axis=(1, 2))
    max_abs = dsa.where(finite, abs(d), 0).max(axis=(1, 2))
    n_finite, max_abs = dsa.compute(n_finite, max_abs)
    return np.asarray(n_finite) == 0, np.asarray(max_abs) == 0


def check_cube(
    cube: xr.DataArray,
    *,
    source: str,
    wavelength: Any = None,
    bands: int | None = None,
    bad_bands: str = "error",
) -> xr.DataArray:
    """Check a cube against what the user declares; refuse or mask dead bands.

    Raises
    ------
    CubeError
        Band count or wavelengths other than declared, no wavelengths at all, non-increasing
        wavelengths, or (``bad_bands="error"``) a band entirely NaN or entirely zero.
    """
    if bad_bands not in ("error", "mask"):
        raise ValueError(f"bad_bands must be 'error' or 'mask', got {bad_bands!r}")
    nb = cube.sizes["band"]
    if bands is not None and nb != int(bands):
        raise CubeError(f"{source}: the file has {nb} bands but {bands} are declared (files.bands)")
    cube = _check_wavelengths(cube, source, declared_wavelengths(wavelength, nb))
    all_nan, all_zero = _band_status(cube)
    dead = (all_nan | all_zero) & cube["good_band"].values
    if dead.any():
        idx = np.flatnonzero(dead)
        kinds = ["NaN" if all_nan[i] else "zero" for i in idx]
        desc = ", ".join(
            f"{i} ({cube['wavelength'].values[i]:.1f} nm, all {k})"
            for i, k in zip(idx, kinds, strict=True)
        )
        if bad_bands == "error":
            raise CubeError(
                f"{source}: variable {cube.name!r}: dead bands {desc}; drop them, list them as "
                "bad bands (ENVI bbl), or set files.bad_bands: mask to treat them as dropped"
            )
        cube = cube.assign_coords(good_band=("band", cube["good_band"].values & ~dead))
    return cube


# ----------------------------------------------------------------------------- writers
def _dataset(cube: xr.DataArray) -> xr.Dataset:
    da = cube.copy()
    da.attrs = {k: v for k, v in da.attrs.items() if isinstance(v, (str, int, float))}
    da["good_band"] = da["good_band"].astype("u1")
    da["wavelength"].attrs["units"] = "nm"
    return da.to_dataset(name=str(cube.name or "reflectance"))


def write_netcdf(cube: xr.DataArray, path: str | os.PathLike) -> Path:
    """Write ``cube`` to netCDF-4 (h5netcdf) atomically, wavelengths and bad bands kept."""
    path = Path(path)
    with atomic_path(path, suffix=".nc") as tmp:
        _dataset(cube).to_netcdf(tmp, engine="h5netcdf")
    return path


def write_zarr(
    cube: xr.DataArray, path: str | os.PathLike, *, chunk_rows: int = _CHUNK_ROWS
) -> Path:
    """Write ``cube`` to a zarr store atomically, chunked by all bands x ``chunk_rows`` rows."""
    path = Path(path)
    ds = _dataset(cube)
    name = next(iter(ds.data_vars))
    ds = ds.chunk({"band": -1, "y": min(chunk_rows, ds.sizes["y"]), "x": -1})
    ds[name].encoding.clear()
    with atomic_dir(path, create=False) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
    return path


def create_zarr_like(cube: xr.DataArray, path: str | os.PathLike, *, chunk_rows: int = _CHUNK_ROWS):
    """An empty float32 zarr store shaped like ``cube`` (its coordinates and attributes
    written, the data chunked by all bands x ``chunk_rows`` rows) and its data array, for
    writers that fill it block by block (tiled restoration). Write it inside
    :func:`diffsci.core.fileio.atomic_dir` so a failed run leaves no store."""
    import dask.array as dsa
    import zarr

    b, h, w = (cube.sizes[k] for k in ("band", "y", "x"))
    rows = min(chunk_rows, h)
    empty = cube.copy(data=dsa.zeros((b, h, w), chunks=(b, rows, w), dtype=np.float32))
    ds = _dataset(empty)
    name = next(iter(ds.data_vars))
    ds[name].encoding.clear()
    ds.to_zarr(path, mode="w", compute=False, zarr_format=2, consolidated=True)
    return zarr.open_array(str(Path(path) / name), mode="r+")


def _envi_header(cube: xr.DataArray, byte_order: int) -> str:
    b, h, w = (cube.sizes[k] for k in ("band", "y", "x"))
    wl = ", ".join(f"{v:.4f}" for v in cube["wavelength"].values)
    bbl = ", ".join(str(int(v)) for v in cube["good_band"].values)
    lines = [
        "ENVI",
        "description = {diffsci hyperspectral cube}",
        f"samples = {w}",
        f"lines = {h}",
        f"bands = {b}",
        "header offset = 0",
        "file type = ENVI Standard",
        "data type = 4",
        "interleave = bsq",
        f"byte order = {byte_order}",
        "wavelength units = Nanometers",
        f"wavelength = {{{wl}}}",
        f"bbl = {{{bbl}}}",
    ]
    if "data_ignore_value" in cube.attrs:
        lines.append(f"data ignore value = {cube.attrs['data_ignore_value']}")
    for key in ("map_info", "coordinate_system_string"):
        if key in cube.attrs:
            lines.append(f"{key.replace('_', ' ')} = {cube.attrs[key]}")
    return "\n".join(lines) + "\n"


def _fill_nan(arr: Any, value: np.float32) -> Any:
    if isinstance(arr, np.ndarray):
        return np.where(np.isnan(arr), value, arr)
    import dask.array as dsa

    return dsa.where(dsa.isnan(arr), value, arr)


def _write_raw(arr: Any, path: Path, dtype: str) -> None:
    """Raw BSQ bytes of ``arr``; a dask array is written chunk by chunk into a memory map,
    so a scene larger than memory streams to disk."""
    if isinstance(arr, np.ndarray):
        arr.astype(dtype).tofile(path)
        return
    import dask.array as dsa

    out = np.memmap(path, dtype=dtype, mode="w+", shape=arr.shape)
    dsa.store(arr, out, lock=True)
    out.flush()
    del out


def write_envi(cube: xr.DataArray, path: str | os.PathLike, *, byte_order: int = 0) -> Path:
    """Write ``cube`` as ENVI float32 BSQ: ``<name>.img`` then ``<name>.hdr``, each atomically.

    A dask-backed cube is computed and written chunk by chunk (never whole in memory).

    The data file is complete before its header appears, so a reader never sees a header
    whose data is partial. NaN pixels are written as the ``data ignore value`` if the cube
    has one. ``byte_order`` 0 = little endian, 1 = big endian (ENVI Header Format).
    """
    path = Path(path)
    hdr = path if path.suffix.lower() == ".hdr" else path.with_suffix(".hdr")
    data = hdr.with_suffix(".img")
    arr = cube.data.astype(np.float32)
    if "data_ignore_value" in cube.attrs:
        ignore = np.float32(cube.attrs["data_ignore_value"])
        arr = _fill_nan(arr, ignore)
    with atomic_path(data, suffix=".img") as tmp:
        _write_raw(arr, tmp, ">f4" if byte_order else "<f4")
    with atomic_path(hdr, suffix=".hdr") as tmp:
        tmp.write_text(_envi_header(cube, byte_order))
    return hdr


def safe_name(path: str | os.PathLike) -> str:
    """A file's stem without every suffix (``scene.hdr`` -> ``scene``), for output names."""
    return re.sub(r"\.(hdr|img|dat|mat|nc|nc4|h5|zarr)$", "", Path(path).name, flags=re.I)
