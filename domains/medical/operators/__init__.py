"""Forward models of the medical domain, one per file, each adjoint-tested.

- :class:`SingleCoilMRI` (:mod:`.single_coil`): undersampled single-coil Cartesian MRI.
- :class:`MultiCoilMRI` (:mod:`.multi_coil`): SENSE multi-coil MRI.
- :class:`RealImageMRI` (:mod:`.real_image`): single-coil MRI of real images,
  Hermitian-completed (the operator the posterior sampler uses).
- :class:`ParallelBeamRadon` (:mod:`.radon`): parallel-beam CT as a sparse matrix, with the
  rotation centre and detector spacing of a real scan (:func:`estimate_rotation_center`).
- :class:`CGPinv` (:mod:`.cg_pinv`): any operator with a fixed-iteration CG pseudo-inverse.

:mod:`.kspace` holds what the MRI operators share (centered FFTs, MONAI k-space masks, the
point reflection, root-sum-of-squares). :data:`OPERATORS` is the registry on which the shared
contract test runs :func:`~diffsci.core.operators.check_adjoint`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffsci.core.operators import OperatorCase

from .cg_pinv import CGPinv
from .kspace import DEFAULT_CENTER_FRACTIONS, fft2c, ifft2c, kspace_mask, reflect, rss
from .multi_coil import MultiCoilMRI
from .radon import (
    ParallelBeamRadon,
    ct_angles,
    estimate_rotation_center,
    limited_angle_angles,
    sparse_view_angles,
)
from .real_image import RealImageMRI
from .single_coil import SingleCoilMRI

__all__ = [
    "OPERATORS",
    "CGPinv",
    "DEFAULT_CENTER_FRACTIONS",
    "MultiCoilMRI",
    "ParallelBeamRadon",
    "RealImageMRI",
    "SingleCoilMRI",
    "ct_angles",
    "estimate_rotation_center",
    "fft2c",
    "ifft2c",
    "kspace_mask",
    "limited_angle_angles",
    "reflect",
    "rss",
    "sparse_view_angles",
]

_N = 16  # image side of the registry's cases: small, so the adjoint test is fast


def _mask() -> torch.Tensor:
    return kspace_mask(_N, acceleration=4, kind="equispaced", seed=0)


def _single_coil() -> OperatorCase:
    return OperatorCase(SingleCoilMRI(_mask()), (2, 1, _N, _N), torch.complex128)


def _multi_coil() -> OperatorCase:
    from ..simulate import simulate_sensitivity_maps

    maps = simulate_sensitivity_maps(4, (_N, _N), dtype=torch.complex128)
    return OperatorCase(MultiCoilMRI(_mask(), maps), (2, 1, _N, _N), torch.complex128)


def _real_image() -> OperatorCase:
    return OperatorCase(RealImageMRI(_mask(), (_N, _N)), (2, 1, _N, _N), torch.float64)


def _radon() -> OperatorCase:
    return OperatorCase(ParallelBeamRadon(_N, sparse_view_angles(6)), (2, 1, _N, _N))


def _radon_off_centre() -> OperatorCase:
    """A real scan's geometry: the axis 1.7 columns off the middle, a coarser detector."""
    op = ParallelBeamRadon(
        _N, sparse_view_angles(7), n_det=19, rotation_center=10.7, detector_spacing=1.3
    )
    return OperatorCase(op, (2, 1, _N, _N))


def _cg_radon() -> OperatorCase:
    op = CGPinv(ParallelBeamRadon(_N, limited_angle_angles(5, 120.0)), iters=10)
    return OperatorCase(op, (2, 1, _N, _N))


#: Zero-argument factories of small instances for the shared adjoint test.
OPERATORS: dict[str, Callable[[], OperatorCase]] = {
    "single_coil_mri": _single_coil,
    "multi_coil_mri": _multi_coil,
    "real_image_mri": _real_image,
    "parallel_beam_radon": _radon,
    "parallel_beam_radon_off_centre": _radon_off_centre,
    "cg_pinv_radon": _cg_radon,
}
