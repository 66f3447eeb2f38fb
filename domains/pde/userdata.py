"""The user's trajectories: read (through :mod:`.io`), put on the model's grids, described by a
model card, and checked against one.

A trajectory file brings its own physics and geometry, and the pipeline takes them from the
file rather than from the config:

- the equation: the file attribute (or .mat/.npz variable) ``equation``, else
  ``files.equation`` of the config;
- the viscosity: the attribute ``nu`` (also ``Nu``, ``viscosity``), else PDEBench's file name
  (``1D_Burgers_Sols_Nu0.01.hdf5``), else ``files.nu``; unknown is allowed (``None``);
- the domain: from the ``x`` coordinates, which must be uniform. The period is ``nx * dx``
  (PDEBench stores cell centres); a closed grid whose last point repeats the first one
  (``linspace(-1, 1, nx)`` with ``u(x_0) = u(x_{nx-1})``) loses its duplicate point. A grid
  on ``[-1, 1]`` is a domain of length 2, recorded on the card and in every output's
  coordinates; a model trained on another length refuses it;
- the frame spacing from ``t``; ``files.frame_stride`` keeps every k-th frame and the first
  ``data.nt`` frames are used.

The model card's ``serves`` (:func:`card`) records the equation, the viscosities, the domain
(origin, length, periodic), the grids trained and evaluated with the grid multiple the network
needs, the frame count and spacing; ``normalisation`` the training scale and the range of the
per-trajectory standard deviations; ``sigma`` the noise levels. :func:`check` refuses
(:class:`~diffsci.core.modelcard.Incompatible`) another equation, domain length, frame spacing
or a grid the network cannot serve, and warns (:func:`~diffsci.core.modelcard.warn_outside`) on
a viscosity or an amplitude outside the training range.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffsci.core.modelcard import Incompatible, require, warn_outside

from . import io
from .models import grid_multiple

__all__ = [
    "card",
    "check",
    "conform",
    "equation_of",
    "load",
    "load_checked",
    "nu_of",
    "on_grid",
    "physics",
    "prepare_files",
    "prepared_physics",
]

_NU_ATTRS = ("nu", "Nu", "NU", "viscosity")
_NU_NAME = re.compile(r"_Nu([0-9.eE+-]+?)(?:\.h5|\.hdf5|\.mat|\.npz|_|$)")
_RTOL = 1e-6


def equation_of(data: io.PDEData, cfg: Mapping[str, Any]) -> str:
    """The file's ``equation`` attribute (lower case), else ``files.equation``."""
    eq = data.attrs.get("equation", cfg["files"]["equation"])
    return str(eq).strip().lower()


def nu_of(data: io.PDEData, path: Path, cfg: Mapping[str, Any]) -> float | None:
    """The file's viscosity (attribute, PDEBench file name, ``files.nu``), or ``None``."""
    for key in _NU_ATTRS:
        if key in data.attrs:
            return float(data.attrs[key])
    m = _NU_NAME.search(Path(path).name)
    if m:
        try:
            return float(m.group(1))
        except ValueError:
            pass
    nu = cfg["files"].get("nu")
    return None if nu is None else float(nu)


def _uniform_step(x: np.ndarray, path: Path) -> float:
    if len(x) < 2:
        raise ValueError(f"{path}: x has {len(x)} point(s); a trajectory needs a spatial grid")
    dx = np.diff(x)
    if not np.allclose(dx, dx[0], rtol=1e-4, atol=0) or dx[0] <= 0:
        raise ValueError(
            f"{path}: x is not a uniform increasing grid (spacing {dx.min():.4g} to "
            f"{dx.max():.4g}); the wavelet codec and the FNO need one: resample your "
            "trajectories onto a uniform periodic grid"
        )
    return float(dx[0])


def conform(data: io.PDEData, path: Path, cfg: Mapping[str, Any]) -> io.PDEData:
    """Uniform periodic grid (a repeated endpoint dropped) and frames at ``files.frame_stride``
    (all of them, before cutting to ``data.nt``); attributes ``x0`` and ``domain_length``.

    Raises
    ------
    ValueError
        Not 1-D, a non-uniform ``x``, non-uniform frame spacing.
    """
    if data.spatial_dims != 1:
        raise ValueError(f"{path}: expected 1-D trajectories (N, nt, nx), got {data.u.shape}")
    u, x = data.u, data.x
    dx = _uniform_step(x, path)
    if len(x) > 2 and np.allclose(u[..., 0], u[..., -1], rtol=1e-5, atol=1e-6 * np.abs(u).max()):
        u, x = u[..., :-1], x[:-1]  # a closed periodic grid: the last point repeats the first
    periodic = _periodic(u, path)
    stride = cfg["files"]["frame_stride"]
    u, t = u[:, ::stride], data.t[::stride]
    if len(t) > 1 and not np.allclose(np.diff(t), t[1] - t[0], rtol=1e-3):
        raise ValueError(f"{path}: frames are not evenly spaced in t; resample them in time")
    attrs = {**data.attrs, "x0": float(x[0]), "domain_length": float(len(x) * dx)}
    attrs["periodic"] = periodic
    return io.PDEData(u=np.ascontiguousarray(u), x=x, t=t, attrs=attrs)


def _periodic(u: np.ndarray, path: Path) -> bool:
    """Whether ``u`` continues smoothly across the boundary: the jump from the last point to
    the first is at most twice the largest step inside the grid. Warns otherwise (the FNO
    baseline's Fourier layers take x as periodic)."""
    jump = float(np.abs(u[..., 0] - u[..., -1]).max())
    step = float(np.abs(np.diff(u, axis=-1)).max())
    if jump <= 2 * step + 1e-12:
        return True
    warnings.warn(
        f"{path}: the trajectories are not periodic in x (a jump of {jump:.3g} from the last "
        f"point to the first, interior steps up to {step:.3g}); the FNO baseline treats x as "
        "periodic and the diffusion model has only seen what the training files show",
        stacklevel=3,
    )
    return False


def load(path: str | Path, cfg: Mapping[str, Any]) -> io.PDEData:
    """Read one user file (``files.keys``) and :func:`conform` it."""
    path = Path(path)
    keys = cfg["files"].get("keys") or {}
    limit = cfg["files"].get("max_trajectories")
    return conform(io.read_trajectories(path, keys=keys, max_samples=limit), path, cfg)


def physics(data: io.PDEData, path: Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``{equation, nu, x0, domain_length, dt}`` of a conformed file."""
    dt = float(data.t[1] - data.t[0]) if len(data.t) > 1 else None
    return {
        "periodic": data.attrs["periodic"],
        "equation": equation_of(data, cfg),
        "nu": nu_of(data, path, cfg),
        "x0": data.attrs["x0"],
        "domain_length": data.attrs["domain_length"],
        "dt": dt,
    }


def on_grid(u: np.ndarray, x: np.ndarray, nx: int, *, source: str) -> tuple[np.ndarray, ...]:
    """Every ``(len(x) // nx)``-th point: the file's grid subsampled to ``nx`` points.

    Raises
    ------
    ValueError
        ``nx`` does not divide the file's grid (no subsampling gives it).
    """
    if len(x) % nx:
        raise ValueError(
            f"{source}: the file's grid has {len(x)} points, which {nx} does not divide; set "
            f"data.train_nx / data.eval_nx to divisors of {len(x)} or resample the file"
        )
    k = len(x) // nx
    return u[..., ::k], x[::k]


def _frames(data: io.PDEData, nt: int, source: str) -> io.PDEData:
    if data.u.shape[1] < nt:
        raise ValueError(
            f"{source}: {data.u.shape[1]} frames (after files.frame_stride), data.nt is {nt}; "
            "lower data.nt or files.frame_stride"
        )
    return io.PDEData(u=data.u[:, :nt], x=data.x, t=data.t[:nt], attrs=data.attrs)


def _same(what: str, values: dict[str, Any], *, fix: str) -> Any:
    """The one value of ``{file: value}``; refuse files that differ."""
    distinct = {}
    for f, v in values.items():
        if not any(_close(v, w) for w in distinct.values()):
            distinct[f] = v
    if len(distinct) > 1:
        listed = ", ".join(f"{f}: {v!r}" for f, v in list(distinct.items())[:4])
        raise ValueError(f"the files differ in {what} ({listed}); {fix}")
    return next(iter(values.values()))


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=_RTOL, atol=0))
    return a == b


def _read_split(files: Sequence[Path], cfg: Mapping[str, Any]) -> tuple[io.PDEData, dict]:
    nt = cfg["data"]["nt"]
    datas = [_frames(load(f, cfg), nt, str(f)) for f in files]
    phys = [physics(d, f, cfg) for d, f in zip(datas, files, strict=True)]
    names = [str(f) for f in files]
    shared = {
        "equation": _same(
            "equation",
            dict(zip(names, (p["equation"] for p in phys), strict=True)),
            fix="one model serves one equation: train one model per equation",
        ),
        "nx": _same(
            "grid size",
            dict(zip(names, (len(d.x) for d in datas), strict=True)),
            fix="resample the files onto one grid",
        ),
    }
    for key in ("x0", "domain_length", "dt"):
        _same(key, {n: p[key] for n, p in zip(names, phys, strict=True)}, fix="use one grid")
    u = np.concatenate([d.u for d in datas])
    nus = sorted({p["nu"] for p in phys if p["nu"] is not None})
    attrs = {**{k: phys[0][k] for k in ("x0", "domain_length")}, "equation": shared["equation"]}
    attrs["periodic"] = all(p["periodic"] for p in phys)
    if nus:
        attrs["nu_values"] = np.asarray(nus)
        if len(nus) == 1:
            attrs["nu"] = nus[0]
    attrs["source_files"] = json.dumps(names)
    return io.PDEData(u=u, x=datas[0].x, t=datas[0].t, attrs=attrs), phys[0]


def prepare_files(cfg: Mapping[str, Any], data_dir: Path, splits: Any) -> None:
    """Read the user's files of each split (``splits``: a
    :class:`~diffsci.core.datasource.FileSplits`) and write the pipeline's layout:
    ``{train,validation,test}_nx<N>.h5`` on the configured grids and the training scale.

    Raises
    ------
    ValueError
        A file the readers refuse, files of one split that differ in equation or grid, a test
        split of another equation or domain than the training one, a grid that ``data.*_nx``
        does not divide.
    """
    d = cfg["data"]
    read = {s: _read_split(files, cfg) for s, files in splits.items() if files}
    train, train_phys = read["train"]
    for split, (_, phys) in read.items():
        for key in ("equation", "domain_length", "x0"):
            if not _close(phys[key], train_phys[key]):
                raise ValueError(
                    f"source.{split}: {key} {phys[key]!r} differs from the training files' "
                    f"{train_phys[key]!r}; held-out data must come from the same problem"
                )
    io.write_scale(data_dir, float(train.u.std()))
    grids = {"train": d["train_nx"], "validation": d["train_nx"], "test": d["eval_nx"]}
    for split, (data, _) in read.items():
        for g in grids[split]:
            u, x = on_grid(data.u, data.x, g, source=f"source.{split}")
            io.write_pdebench(
                data_dir / f"{split}_nx{g}.h5",
                u,
                x=x,
                t=data.t,
                attrs={**data.attrs, "split": split},
            )


# --------------------------------------------------------------------------------------------
# the model card and the checks against it


def prepared_physics(path: Path) -> tuple[io.PDEData, dict[str, Any]]:
    """A prepared file and its physics (simulated files carry no ``x0``/``domain_length``:
    the solver's periodic unit interval)."""
    data = io.read_pdebench(path)
    a = data.attrs
    nus = np.atleast_1d(a.get("nu_values", a.get("nu", []))).astype(float).tolist()
    dx = float(data.x[1] - data.x[0])
    return data, {
        "equation": str(a.get("equation", "burgers")),
        "nu": [min(nus), max(nus)] if nus else None,
        "x0": float(a.get("x0", data.x[0])),
        "domain_length": float(a.get("domain_length", len(data.x) * dx)),
        "dt": float(data.t[1] - data.t[0]),
        "periodic": bool(a.get("periodic", True)),
    }


def card(cfg: Mapping[str, Any], data_dir: Path) -> dict[str, Any]:
    """The PDE part of the model card from the prepared data (see the module docstring)."""
    train = io.split_files(data_dir, "train")
    data, phys = prepared_physics(train[max(train)])
    stds = data.u.std(axis=(1, 2))
    m, s = cfg["model"], cfg["sampling"]
    return {
        "serves": {
            **phys,
            "nt": int(data.u.shape[1]),
            "train_nx": sorted(train),
            "eval_nx": sorted(io.split_files(data_dir, "test")),
            "grid_multiple": grid_multiple(cfg),
            "variable": "u",
        },
        "normalisation": {
            "scale": io.read_scale(data_dir),
            "trajectory_std": [float(stds.min()), float(stds.max())],
        },
        "sigma": {
            "data": m["sigma_data"],
            "schedule": m["sigma_schedule"],
            "train_log_normal": [m["p_mean"], m["p_std"]],
            "sampling": [s["sigma_min"], s["sigma_max"]],
        },
    }


def check(
    data: io.PDEData, phys: Mapping[str, Any], card_: Mapping[str, Any], *, source: str
) -> None:
    """Refuse what the carded model cannot serve; warn on values outside its training range.

    ``data`` is conformed (or prepared); ``phys`` its :func:`physics`. The viscosity may be
    ``None`` (unknown): nothing to check then.
    """
    sv = card_["serves"]
    require(
        "the equation",
        phys["equation"],
        sv["equation"],
        source=source,
        fix=f"this model was trained on {sv['equation']} trajectories; train a model on yours "
        "(source: {kind: files} in the config)",
    )
    _check_domain(phys, sv, len(data.x), source)
    k = sv["grid_multiple"]
    if len(data.x) % k:
        lo = len(data.x) // k * k
        raise Incompatible(
            f"{source}: grid nx={len(data.x)} cannot be served: the network needs a multiple "
            f"of {k}; resample the file to nx={lo or k} or {lo + k}"
        )
    if sv.get("periodic", True) and not phys.get("periodic", True):
        warnings.warn(
            f"{source}: not periodic in x but the model was trained on periodic trajectories; "
            "its forecasts near the boundary are extrapolations",
            stacklevel=2,
        )
    nu = phys.get("nu")
    nu = nu[0] if isinstance(nu, list) and nu[0] == nu[1] else nu
    if isinstance(nu, float) and sv.get("nu"):
        warn_outside("viscosity nu", nu, *sv["nu"], source=source)
    lo, hi = card_["normalisation"]["trajectory_std"]
    warn_outside(
        "trajectory std (amplitude)", float(data.u.std(axis=(1, 2)).max()), lo, hi, source=source
    )


def load_checked(
    path: Path, cfg: Mapping[str, Any], card_: Mapping[str, Any]
) -> tuple[io.PDEData, dict[str, Any]]:
    """A file to forecast from (``apply``): read and checked (:func:`check`) except for its frame
    spacing (only the first frame is used; the forecast has the card's). Warns when its grid is
    none the model was trained or evaluated on (served through the wavelet bands' grid
    scaling, untested there)."""
    data = load(path, cfg)
    phys = {**physics(data, path, cfg), "dt": None}
    check(data, phys, card_, source=str(path))
    sv = card_["serves"]
    seen = sorted(set(sv["train_nx"]) | set(sv["eval_nx"]))
    if len(data.x) not in seen:
        warnings.warn(
            f"{path}: grid nx={len(data.x)} is none the model was trained or evaluated on "
            f"({seen}); it is served through the grid scaling of the wavelet bands, untested "
            f"on this grid: resample to one of {seen} for tested forecasts",
            stacklevel=2,
        )
    return data, phys


def _check_domain(phys: Mapping[str, Any], sv: Mapping[str, Any], nx: int, source: str) -> None:
    """Same period, and the same origin up to one grid cell (grid nodes ``i dx`` and cell
    centres ``(i + 1/2) dx``, PDEBench's, describe the same domain)."""
    length = abs(sv["domain_length"])
    for key, what, fix, atol in (
        ("domain_length", "the domain length (period, from the x coordinates)", "rescale x", 0),
        ("x0", "the domain origin (first x coordinate)", "shift x", length / nx),
    ):
        if not np.isclose(phys[key], sv[key], rtol=1e-4, atol=atol + 1e-6 * length):
            raise Incompatible(
                f"{source}: {what} is {phys[key]:.6g} but the model serves "
                f"{sv[key]:.6g} (x in [{sv['x0']:.6g}, {sv['x0'] + sv['domain_length']:.6g})); "
                f"the model knows the grid, not the units: train a model on your data, or "
                f"{fix} if your problem is the same one in other units"
            )
    dt = phys.get("dt")
    if dt is not None and not np.isclose(dt, sv["dt"], rtol=1e-4):
        raise Incompatible(
            f"{source}: frame spacing dt={dt:.6g}, the model forecasts at dt={sv['dt']:.6g}; "
            "set files.frame_stride (or resample in time) so the frames match, or retrain"
        )
