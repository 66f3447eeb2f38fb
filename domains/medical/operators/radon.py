"""Parallel-beam CT: a Radon transform as a sparse matrix (exact adjoint), and its angles.

Geometry (scikit-image's ``radon(..., circle=False)`` convention, in pixel units):

- The image ``(N, N)`` has pixel centres at ``j - (N - 1) / 2`` (column ``x``, row ``y``,
  rows increasing downwards).
- For the angle ``theta`` and detector offset ``t`` the ray is
  ``(x, y) = (t cos theta + s sin theta, -t sin theta + s cos theta)``, ``s`` along the ray;
  at ``theta = 0`` the projection is the sum over rows (one value per column).
- ``n_det`` detector bins of width ``detector_spacing`` (image pixels; default 1) at
  ``t_k = (k - c) * detector_spacing``, where ``c`` is the detector column onto which the
  rotation axis projects (``rotation_center``; default the middle, ``(n_det - 1) / 2``); default
  ``n_det = ceil(N sqrt 2)`` so the whole square is seen at every angle. A real scan's axis is
  rarely on the middle column: :func:`estimate_rotation_center` finds it from the 0 and 180
  degree projections.
- The line integral is a sum of bilinear samples of the image at unit steps ``s``, so one
  projection of an image sums to (about) the image's total mass, as skimage's.

The operator is a ``torch`` sparse CSR matrix built once (and its transpose), so the adjoint
(back-projection) is exact to rounding and both directions are differentiable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from diffsci.core.operators import LinearOperator

__all__ = [
    "ParallelBeamRadon",
    "sparse_view_angles",
    "limited_angle_angles",
    "ct_angles",
    "estimate_rotation_center",
]


def sparse_view_angles(n_views: int) -> np.ndarray:
    """``n_views`` uniform angles in ``[0, 180)`` degrees: ``180 k / n_views``."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    return np.arange(n_views, dtype=np.float64) * 180.0 / n_views


def limited_angle_angles(n_views: int, max_deg: float) -> np.ndarray:
    """``n_views`` uniform angles in ``[0, max_deg)`` degrees (a limited-angle scan)."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if not 0 < max_deg <= 180:
        raise ValueError(f"max_deg must lie in (0, 180], got {max_deg}")
    return np.arange(n_views, dtype=np.float64) * float(max_deg) / n_views


def ct_angles(cfg: Mapping[str, Any]) -> np.ndarray:
    """The projection angles (degrees) of a config's ``ct`` section.

    ``geometry: sparse_view`` gives :func:`sparse_view_angles` of ``n_views``;
    ``limited_angle`` gives :func:`limited_angle_angles` of ``n_views`` over ``max_angle``.

    Parameters
    ----------
    cfg
        The medical config (its ``ct`` section is read).

    Returns
    -------
    numpy.ndarray
        ``float64`` angles in degrees.
    """
    c = cfg["ct"]
    if c["geometry"] == "sparse_view":
        return np.asarray(sparse_view_angles(c["n_views"]), dtype=np.float64)
    return np.asarray(limited_angle_angles(c["n_views"], c["max_angle"]), dtype=np.float64)


def _radon_matrix(
    n: int, angles_deg: np.ndarray, n_det: int, center: float, spacing: float
) -> sp.csr_matrix:
    """The ray-driven bilinear projector as a float64 scipy CSR matrix (duplicates summed);
    detector bin ``k`` at ``(k - center) * spacing`` image pixels from the rotation axis."""
    th = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    c0 = (n - 1) / 2.0
    t = np.arange(n_det, dtype=np.float64) - center
    if spacing != 1.0:
        t = t * spacing
    n_s = int(math.ceil(n * math.sqrt(2))) + 2
    s = np.arange(n_s, dtype=np.float64) - (n_s - 1) / 2.0
    rows, cols, vals = [], [], []
    tt, ss = np.meshgrid(t, s, indexing="ij")  # (n_det, n_s)
    ray = np.broadcast_to(np.arange(n_det)[:, None], tt.shape)
    for a, theta in enumerate(th):
        ca, sa = math.cos(theta), math.sin(theta)
        x = tt * ca + ss * sa + c0
        y = -tt * sa + ss * ca + c0
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = x - x0, y - y0
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        for dx, dy, w in (
            (0, 0, (1 - fx) * (1 - fy)),
            (1, 0, fx * (1 - fy)),
            (0, 1, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < n) & (yi >= 0) & (yi < n) & (w > 1e-12)
            rows.append(a * n_det + ray[ok])
            cols.append(yi[ok] * n + xi[ok])
            vals.append(w[ok])
    shape = (th.size * n_det, n * n)
    coo = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    )
    return coo.tocsr()


def _torch_csr(m: sp.csr_matrix) -> Tensor:
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.as_tensor(m.indptr, dtype=torch.int64),
            torch.as_tensor(m.indices, dtype=torch.int64),
            torch.as_tensor(m.data, dtype=torch.float64),
            size=m.shape,
            check_invariants=False,
        )


class ParallelBeamRadon(LinearOperator):
    """Parallel-beam Radon transform ``(B, 1, N, N) -> (B, 1, n_angles, n_det)``.

    Parameters
    ----------
    n
        Image size ``N`` (square images).
    angles_deg
        Projection angles in degrees (e.g. :func:`sparse_view_angles`).
    n_det
        Detector bins; default ``ceil(N sqrt 2)``.
    rotation_center
        Detector column (0-based, fractional) onto which the rotation axis projects; default
        the middle ``(n_det - 1) / 2``. See :func:`estimate_rotation_center`.
    detector_spacing
        Width of one detector bin in image pixels (default 1: image pixels of the detector's
        pitch; 2 for an image on a grid twice as fine as the detector).

    Notes
    -----
    ``forward`` and ``adjoint`` are products with one sparse matrix and its transpose
    (float64 master copy, cast and moved to the input's dtype/device on first use and
    cached), so the dot-product test holds to rounding. Inputs may be ``(..., N, N)``;
    leading dims are flattened into the batch. Real tensors only. ``pinv``/``prox_l2`` are
    the core's conjugate-gradient fallbacks.
    """

    def __init__(
        self,
        n: int,
        angles_deg: Sequence[float] | np.ndarray,
        n_det: int | None = None,
        *,
        rotation_center: float | None = None,
        detector_spacing: float = 1.0,
    ) -> None:
        self.n = int(n)
        if self.n < 2:
            raise ValueError(f"image size must be >= 2, got {n}")
        self.angles_deg = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
        if self.angles_deg.size == 0:
            raise ValueError("angles_deg is empty")
        self.n_det = int(n_det) if n_det is not None else int(math.ceil(self.n * math.sqrt(2)))
        if not detector_spacing > 0:
            raise ValueError(f"detector_spacing must be > 0, got {detector_spacing}")
        self.detector_spacing = float(detector_spacing)
        middle = (self.n_det - 1) / 2.0
        self.rotation_center = middle if rotation_center is None else float(rotation_center)
        if not -1 <= self.rotation_center <= self.n_det:
            raise ValueError(
                f"rotation_center {rotation_center} lies off the detector (columns 0 to "
                f"{self.n_det - 1})"
            )
        mat = _radon_matrix(
            self.n, self.angles_deg, self.n_det, self.rotation_center, self.detector_spacing
        )
        self._A = _torch_csr(mat)
        self._AT = _torch_csr(mat.T.tocsr())
        self._cache: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}

    @property
    def n_angles(self) -> int:
        return int(self.angles_deg.size)

    @property
    def sino_shape(self) -> tuple[int, int]:
        """``(n_angles, n_det)``."""
        return self.n_angles, self.n_det

    def _mats(self, v: Tensor) -> tuple[Tensor, Tensor]:
        if v.is_complex():
            raise ValueError("ParallelBeamRadon acts on real tensors")
        dt = v.dtype if v.dtype in (torch.float32, torch.float64) else torch.float32
        key = (dt, v.device)
        if key not in self._cache:
            self._cache[key] = (
                self._A.to(dtype=dt).to(v.device),
                self._AT.to(dtype=dt).to(v.device),
            )
        return self._cache[key]

    def forward(self, x: Tensor) -> Tensor:
        """Sinogram ``(..., n_angles, n_det)`` of images ``(..., N, N)``."""
        if tuple(x.shape[-2:]) != (self.n, self.n):
            raise ValueError(f"expected images (..., {self.n}, {self.n}), got {tuple(x.shape)}")
        A, _ = self._mats(x)
        lead = x.shape[:-2]
        flat = x.reshape(-1, self.n * self.n).to(A.dtype)
        out = torch.sparse.mm(A, flat.T).T
        return out.reshape(*lead, self.n_angles, self.n_det)

    def adjoint(self, y: Tensor) -> Tensor:
        """Back-projection ``(..., n_angles, n_det) -> (..., N, N)`` (exact transpose)."""
        if tuple(y.shape[-2:]) != self.sino_shape:
            raise ValueError(
                f"expected sinograms (..., {self.n_angles}, {self.n_det}), got {tuple(y.shape)}"
            )
        _, AT = self._mats(y)
        lead = y.shape[:-2]
        flat = y.reshape(-1, self.n_angles * self.n_det).to(AT.dtype)
        out = torch.sparse.mm(AT, flat.T).T
        return out.reshape(*lead, self.n, self.n)

    def opnorm(self, iters: int = 30) -> float:
        """Spectral norm ``|A|_2`` by power iteration (float64, deterministic start)."""
        g = torch.Generator().manual_seed(0)
        x = torch.rand(1, 1, self.n, self.n, generator=g, dtype=torch.float64)
        s = 0.0
        for _ in range(iters):
            x = self.normal(x)
            s = float(x.norm())
            x = x / s
        return math.sqrt(s)


def _mirror_shift(p0: np.ndarray, p180: np.ndarray) -> float:
    """Sub-pixel shift ``s`` maximising the circular cross-correlation of ``p0`` with the
    mirrored ``p180`` (zero-padded FFT correlation, parabolic peak interpolation)."""
    a = np.asarray(p0, np.float64) - np.mean(p0)
    b = np.asarray(p180, np.float64)[::-1] - np.mean(p180)
    m = 2 * a.size
    xc = np.fft.irfft(np.fft.rfft(a, m) * np.conj(np.fft.rfft(b, m)), m)
    k = int(np.argmax(xc))
    left, mid, right = xc[k - 1], xc[k], xc[(k + 1) % m]
    denom = left - 2 * mid + right
    frac = 0.5 * (left - right) / denom if denom < 0 else 0.0
    shift = k + frac
    return shift - m if shift > m / 2 else shift


def estimate_rotation_center(
    sinogram: np.ndarray | Tensor, angles_deg: Sequence[float] | np.ndarray, *, tol: float = 0.5
) -> float:
    """The detector column of the rotation axis, from two projections 180 degrees apart.

    In parallel beam the projection at ``theta + 180`` is the one at ``theta`` mirrored about
    the rotation axis, so the shift ``s`` that best aligns ``p(theta)`` with the reversed
    ``p(theta + 180)`` (maximum of their cross-correlation) puts the axis at column
    ``(n_det - 1 + s) / 2``. This is the standard 0/180-degree cross-correlation method
    (e.g. TomoPy's ``find_center_pc``, Gürsoy et al., J. Synchrotron Rad. 21, 1188, 2014;
    registration by cross-correlation as Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33,
    156, 2008), here with a parabolic sub-pixel peak.

    Parameters
    ----------
    sinogram
        ``(n_angles, n_det)``, or ``(slices, n_angles, n_det)`` (the slices' projections
        are summed, which averages out noise).
    angles_deg
        The projection angles in degrees.
    tol
        Largest departure (degrees) from an exact 180-degree pair.

    Returns
    -------
    float
        The rotation-axis column, for ``ParallelBeamRadon(rotation_center=...)``.

    Raises
    ------
    ValueError
        No pair of angles 180 degrees apart (within ``tol``): the scan cannot be centred this
        way; give the centre by hand.
    """
    sino = np.asarray(sinogram, dtype=np.float64)
    if sino.ndim == 3:
        sino = sino.sum(0)
    ang = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if sino.ndim != 2 or sino.shape[0] != ang.size:
        raise ValueError(f"sinogram {sino.shape} does not match {ang.size} angles")
    gap = np.abs((ang[None, :] - ang[:, None]) - 180.0)
    i, j = np.unravel_index(int(np.argmin(gap)), gap.shape)
    if gap[i, j] > tol:
        raise ValueError(
            f"no two projections 180 degrees apart (within {tol} deg) among angles "
            f"{ang.min():.4g}..{ang.max():.4g} deg ({ang.size} views); give the rotation centre "
            "by hand"
        )
    shift = _mirror_shift(sino[i], sino[j])
    return (sino.shape[1] - 1 + shift) / 2.0
